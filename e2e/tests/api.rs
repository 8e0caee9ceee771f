//! The `cellule.ai` API on the real API server: the samples apply, the
//! schema defaults what it should, every invalid manifest of `e2e/invalid/`
//! is refused with a message naming its field, and one-way fields stay so.

use cellule_e2e::{cellule_api, in_namespace, install_crds, yaml_documents};
use kube::{
    Client,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

fn kind_of(doc: &Value) -> String {
    doc["kind"].as_str().expect("a kind").to_owned()
}

fn dynamic(doc: &Value) -> DynamicObject {
    serde_json::from_value(doc.clone()).expect("a Kubernetes object")
}

#[tokio::test]
async fn samples_apply_cleanly_with_server_side_apply() {
    in_namespace("samples", |client: Client, ns: String| async move {
        install_crds(&client).await;
        let samples = yaml_documents("config/samples");
        assert!(
            samples.len() >= 6,
            "expected the full sample set, found {}",
            samples.len()
        );
        for (file, doc) in &samples {
            let name = doc["metadata"]["name"].as_str().unwrap();
            cellule_api(&client, &ns, &kind_of(doc))
                .patch(
                    name,
                    &PatchParams::apply("cellule-e2e").force(),
                    &Patch::Apply(doc),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{file}: {} {name} refused: {e}", kind_of(doc)))?;
        }
        // What the API server stored reads back as the operator's typed API.
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let typed: cellule_operator::api::Pool =
            serde_json::from_value(serde_json::to_value(&pool)?)?;
        assert_eq!(typed.spec.tiers.len(), 2);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_api_server_fills_in_documented_defaults() {
    in_namespace("defaults", |client: Client, ns: String| async move {
        install_crds(&client).await;
        let (_, base) = yaml_documents("e2e/invalid")
            .into_iter()
            .find(|(file, _)| file == "valid-pool.yaml")
            .expect("valid-pool.yaml");
        let created = cellule_api(&client, &ns, "Pool").create(&PostParams::default(), &dynamic(&base)).await?;
        let spec = &created.data["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["verification"], json!({"spotCheckPercent": 3, "cheatThresholdPercent": 30, "mode": "Sampled", "workersPerRequest": 2, "deterministic": false}));
        assert_eq!(spec["privacy"]["mode"], "Balanced");
        assert_eq!(spec["rateLimit"]["requestsPerMinutePerSigner"], 60);
        assert_eq!(spec["federation"]["antiReplayWindow"], "60s");
        assert_eq!(spec["workers"]["heartbeatInterval"], "5m");
        assert_eq!(spec["workers"]["port"], 8443);
        assert_eq!(spec["tokens"]["defaultTtl"], "720h");
        assert_eq!(spec["tokens"]["approvalRequired"], true);
        assert_eq!(spec["failover"], json!({"failOverAfter": "30s", "failBackAfter": "5m"}));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn every_invalid_manifest_is_refused_with_a_message_naming_its_field() {
    in_namespace("invalid", |client: Client, ns: String| async move {
        install_crds(&client).await;
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let corpus = yaml_documents("e2e/invalid");
        let mut invalid = 0;
        let mut failures = vec![];
        for (file, doc) in &corpus {
            let api = cellule_api(&client, &ns, &kind_of(doc));
            let result = api.create(&dry_run, &dynamic(doc)).await;
            if file.starts_with("valid-") {
                if let Err(e) = result {
                    failures.push(format!("{file}: the valid base was refused: {e}"));
                }
                continue;
            }
            invalid += 1;
            let text =
                std::fs::read_to_string(cellule_e2e::repo_path(&format!("e2e/invalid/{file}")))?;
            let expected: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect: "))
                .collect();
            assert!(!expected.is_empty(), "{file} has no '# expect:' line");
            match result {
                Ok(_) => failures.push(format!("{file}: accepted")),
                Err(kube::Error::Api(status)) => {
                    let message = status.message.clone();
                    for want in &expected {
                        if !message.contains(want) {
                            failures.push(format!("{file}: message lacks {want:?}: {message}"));
                        }
                    }
                    // The first expectation is the field path: it must be
                    // where the message says the problem is.
                    if !message.contains(&format!("{}: ", expected[0]))
                        && !message.contains(&format!("{}[", expected[0]))
                    {
                        failures.push(format!(
                            "{file}: message does not point at {}: {message}",
                            expected[0]
                        ));
                    }
                }
                Err(other) => failures.push(format!("{file}: unexpected error {other}")),
            }
        }
        assert!(
            invalid >= 30,
            "the corpus has only {invalid} invalid manifests"
        );
        assert!(
            failures.is_empty(),
            "{} of {invalid} cases wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Ok(())
    })
    .await;
}

async fn refused(api: &kube::Api<DynamicObject>, name: &str, patch: Value) -> String {
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => panic!("update {patch} was accepted"),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn one_way_fields_cannot_be_undone() {
    in_namespace("oneway", |client: Client, ns: String| async move {
        install_crds(&client).await;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let (_, base) = yaml_documents("e2e/invalid")
            .into_iter()
            .find(|(f, _)| f == "valid-workergrant.yaml")
            .unwrap();
        grants
            .create(&PostParams::default(), &dynamic(&base))
            .await?;

        grants
            .patch(
                "valid",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true, "rotation": 2}})),
            )
            .await?;
        let message = refused(&grants, "valid", json!({"spec": {"revoked": false}})).await;
        assert!(
            message.contains("spec.revoked") && message.contains("cannot be set back to false"),
            "{message}"
        );
        let message = refused(
            &grants,
            "valid",
            json!({"spec": {"poolRef": {"name": "lyon"}}}),
        )
        .await;
        assert!(
            message.contains("spec.poolRef") && message.contains("immutable"),
            "{message}"
        );
        let message = refused(&grants, "valid", json!({"spec": {"approvedBy": "carol"}})).await;
        assert!(
            message.contains("spec.approvedBy") && message.contains("cannot be changed"),
            "{message}"
        );
        let message = refused(
            &grants,
            "valid",
            json!({"spec": {"requestedBy": "mallory"}}),
        )
        .await;
        assert!(
            message.contains("spec.requestedBy") && message.contains("immutable"),
            "{message}"
        );
        let message = refused(&grants, "valid", json!({"spec": {"rotation": 1}})).await;
        assert!(
            message.contains("spec.rotation") && message.contains("only increase"),
            "{message}"
        );

        for kind in ["NpuServer", "PeerTrust"] {
            let api = cellule_api(&client, &ns, kind);
            let file = format!("valid-{}.yaml", kind.to_lowercase());
            let (_, base) = yaml_documents("e2e/invalid")
                .into_iter()
                .find(|(f, _)| *f == file)
                .unwrap();
            api.create(&PostParams::default(), &dynamic(&base)).await?;
            let message = refused(
                &api,
                "valid",
                json!({"spec": {"poolRef": {"name": "lyon"}}}),
            )
            .await;
            assert!(
                message.contains("spec.poolRef") && message.contains("immutable"),
                "{kind}: {message}"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_explain_documents_the_api_from_the_server() {
    let client = cellule_e2e::admin_client().await;
    install_crds(&client).await;
    let kubeconfig = cellule_e2e::Env::var("CELLULE_E2E_KUBECONFIG");
    let explain = cellule_e2e::run_tool(
        "kubectl",
        &[
            "--kubeconfig",
            &kubeconfig,
            "explain",
            "pools.spec.verification",
            "--recursive=false",
        ],
        &[],
    )
    .await
    .expect("kubectl explain");
    for needle in [
        "spotCheckPercent",
        "Percent of answers re-checked by another worker",
        "workersPerRequest",
    ] {
        assert!(
            explain.contains(needle),
            "kubectl explain lacks {needle:?}:\n{explain}"
        );
    }
    let explain = cellule_e2e::run_tool(
        "kubectl",
        &[
            "--kubeconfig",
            &kubeconfig,
            "explain",
            "workergrants.spec.revoked",
        ],
        &[],
    )
    .await
    .expect("kubectl explain");
    assert!(explain.contains("Cannot be set back to false"), "{explain}");
}
