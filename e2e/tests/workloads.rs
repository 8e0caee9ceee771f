//! Pool and NpuServer reconciled by the running operator (started by
//! e2e/test.sh under its own ServiceAccount and RBAC) on the real API
//! server: the samples become running workloads in a namespace that
//! enforces Pod Security `restricted`.

use std::time::Duration;

use anyhow::ensure;
use cellule_e2e::{
    Env, apply_samples, audited_writes, cellule_api, create_secret, eventually, in_namespace,
    install_crds, sample_site_ready, wait_condition,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const OWNED: &str = "app.kubernetes.io/managed-by=cellule-operator";

async fn names<K>(client: &Client, ns: &str) -> anyhow::Result<Vec<String>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(OWNED))
        .await?;
    let mut names: Vec<String> = list.items.iter().map(|o| o.name_any()).collect();
    names.sort();
    Ok(names)
}

/// Every object the operator made in `ns`, as `Kind/name`.
async fn owned_objects(client: &Client, ns: &str) -> Result<Vec<String>, String> {
    let lists = [
        ("Deployment", names::<Deployment>(client, ns).await),
        ("Service", names::<Service>(client, ns).await),
        ("ConfigMap", names::<ConfigMap>(client, ns).await),
        ("NetworkPolicy", names::<NetworkPolicy>(client, ns).await),
        ("ServiceAccount", names::<ServiceAccount>(client, ns).await),
        (
            "PodDisruptionBudget",
            names::<PodDisruptionBudget>(client, ns).await,
        ),
    ];
    let mut all = vec![];
    for (kind, names) in lists {
        all.extend(
            names
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|n| format!("{kind}/{n}")),
        );
    }
    Ok(all)
}

#[tokio::test]
async fn samples_become_running_workloads_with_owner_references() {
    in_namespace("site", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        assert_eq!(
            names::<Deployment>(&client, &ns).await?,
            ["heavy-npu", "paris--light-workers", "paris-pool"]
        );
        // The tier Services: paris--heavy, paris--light.
        assert_eq!(
            names::<Service>(&client, &ns).await?,
            [
                "heavy-npu",
                "paris--heavy",
                "paris--light",
                "paris--light-workers",
                "paris-pool"
            ]
        );
        assert_eq!(
            names::<ConfigMap>(&client, &ns).await?,
            [
                "paris-config",
                "paris-jwks",
                "paris-peer-reports",
                "paris-peers",
                "paris-routing"
            ]
        );
        assert_eq!(names::<ServiceAccount>(&client, &ns).await?, ["paris-pool"]);
        assert_eq!(
            names::<PodDisruptionBudget>(&client, &ns).await?,
            ["paris-pool"]
        );
        assert_eq!(
            names::<NetworkPolicy>(&client, &ns).await?,
            [
                "heavy-npu",
                "paris--light-workers",
                "paris-default-deny",
                "paris-peers",
                "paris-pool"
            ]
        );
        // Every owned object has a controller owner reference to its CR.
        for deployment in Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(OWNED))
            .await?
        {
            let owner = deployment
                .owner_references()
                .first()
                .cloned()
                .expect("an owner reference");
            ensure!(
                owner.controller == Some(true),
                "{} owner is not a controller ref",
                deployment.name_any()
            );
            let expected = if deployment.name_any() == "heavy-npu" {
                "NpuServer"
            } else {
                "Pool"
            };
            ensure!(
                owner.kind == expected,
                "{} is owned by a {}",
                deployment.name_any(),
                owner.kind
            );
        }
        // Pods were admitted by Pod Security `restricted` and run; NPU pods on NPU nodes.
        let npu = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("heavy-npu")
            .await?;
        ensure!(
            npu.status.and_then(|s| s.ready_replicas) == Some(3),
            "2 replicas + 1 hot spare ready"
        );
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/component=npu-server"))
            .await?;
        for pod in &pods.items {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            ensure!(node.starts_with("npu-"), "NPU pod on {node}");
        }
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        ensure!(
            pool.data["status"]["routing"] == "light=cpu heavy=npu",
            "routing: {}",
            pool.data["status"]["routing"]
        );
        ensure!(
            pool.data["status"]["observedGeneration"] == pool.metadata.generation.unwrap(),
            "observedGeneration"
        );
        // The rendered config carries the spec's settings.
        let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("paris-config")
            .await?;
        let text = &config.data.unwrap()["pool.yaml"];
        for needle in [
            "spotCheckPercent: 3",
            "requestsPerMinutePerSigner: 60",
            "antiReplayWindow: 60s",
            "heartbeatInterval: 5m",
        ] {
            ensure!(text.contains(needle), "config lacks {needle}:\n{text}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_hand_edit_is_put_back_and_a_removed_worker_set_is_deleted() {
    in_namespace("drift", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .patch(
                "paris-pool",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 5}})),
            )
            .await?;
        eventually("paris-pool back to 2 replicas", WAIT, || async {
            let replicas = deployments
                .get("paris-pool")
                .await
                .map_err(|e| e.to_string())?
                .spec
                .and_then(|s| s.replicas);
            if replicas == Some(2) {
                Ok(())
            } else {
                Err(format!("{replicas:?}"))
            }
        })
        .await?;

        // A setting of the Pool changes the rendered config, which rolls
        // the pool's pods (checksum annotation on the template).
        let checksum = |d: Deployment| {
            d.spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get("cellule.ai/config-sha256").cloned())
        };
        let before = checksum(deployments.get("paris-pool").await?).expect("a config checksum");
        cellule_api(&client, &ns, "Pool")
            .patch(
                "paris",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rateLimit": {"requestsPerMinutePerSigner": 30}}})),
            )
            .await?;
        eventually("the pool's pods roll to the new config", WAIT, || async {
            let d = deployments
                .get("paris-pool")
                .await
                .map_err(|e| e.to_string())?;
            match checksum(d) {
                Some(now) if now != before => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("paris-config")
            .await?;
        ensure!(
            config.data.unwrap()["pool.yaml"].contains("requestsPerMinutePerSigner: 30"),
            "config re-rendered"
        );

        // Drop the in-cluster worker set: its Deployment, Service and policy go.
        cellule_api(&client, &ns, "Pool")
            .patch(
                "paris",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"cpuWorkers": null}})),
            )
            .await?;
        eventually("paris--light-workers objects deleted", WAIT, || async {
            let left = owned_objects(&client, &ns).await?;
            if left.iter().any(|o| o.ends_with("/paris--light-workers")) {
                Err(format!("{left:?}"))
            } else {
                Ok(())
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deleting_the_pool_removes_everything_it_made() {
    in_namespace("delete", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        cellule_api(&client, &ns, "NpuServer")
            .delete("heavy", &DeleteParams::foreground())
            .await?;
        cellule_api(&client, &ns, "Pool")
            .delete("paris", &DeleteParams::foreground())
            .await?;
        eventually(
            "every owned object gone, the signing and federation keys too",
            WAIT,
            || async {
                let mut left = owned_objects(&client, &ns).await?;
                let keys =
                    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns);
                for secret in ["paris-signing-keys", "paris-federation"] {
                    if keys
                        .get_opt(secret)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some()
                    {
                        left.push(format!("Secret/{secret}"));
                    }
                }
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:?}"))
                }
            },
        )
        .await
    })
    .await;
}

#[tokio::test]
async fn a_missing_database_secret_is_reported_then_the_pool_comes_up() {
    in_namespace("nodb", |client: Client, ns: String| async move {
        install_crds(&client).await;
        create_secret(
            &client,
            &ns,
            "paris-tls",
            &[("tls.crt", "c"), ("tls.key", "k")],
        )
        .await?;
        apply_samples(&client, &ns).await?;
        let pool = wait_condition(&client, &ns, "Pool", "paris", "Stalled", "True", WAIT).await?;
        let ready = pool.data["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        ensure!(
            ready["status"] == "False" && ready["reason"] == "DatabaseSecretMissing",
            "{ready}"
        );
        ensure!(
            ready["message"].as_str().unwrap().contains("\"paris-db\""),
            "message names the Secret: {ready}"
        );
        ensure!(
            names::<Deployment>(&client, &ns)
                .await?
                .iter()
                .all(|n| n != "paris-pool"),
            "no pool Deployment yet"
        );
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        ensure!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("DatabaseSecretMissing")),
            "a DatabaseSecretMissing Event"
        );

        create_secret(&client, &ns, "paris-db", &[("dsn", "postgres://db")]).await?;
        wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", WAIT).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_no_op_resync_makes_no_write() {
    in_namespace("noop", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        // Quantities the API server stores in another form (0.5 → 500m,
        // 1024Mi → 1Gi): they must still compare equal.
        let mut pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        pool.data["spec"]["cpuWorkers"][0]["resources"] =
            json!({"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}});
        let workers = json!({"spec": {"cpuWorkers": pool.data["spec"]["cpuWorkers"]}});
        cellule_api(&client, &ns, "Pool")
            .patch("paris", &PatchParams::default(), &Patch::Merge(&workers))
            .await?;
        let npu_resources = json!({"spec": {"resources": {"requests": {"cpu": "0.5", "memory": "32768Mi"}}}});
        cellule_api(&client, &ns, "NpuServer")
            .patch("heavy", &PatchParams::default(), &Patch::Merge(&npu_resources))
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        eventually("the 0.5 CPU applied", WAIT, || async {
            let d = deployments.get("paris--light-workers").await.map_err(|e| e.to_string())?;
            let cpu = serde_json::to_value(&d).map_err(|e| e.to_string())?["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"].clone();
            if cpu == "500m" { Ok(()) } else { Err(cpu.to_string()) }
        })
        .await?;
        // Both rollouts (the workers' and the NPU servers') complete...
        for (kind, name) in [("Pool", "paris"), ("NpuServer", "heavy")] {
            eventually(&format!("{kind} {name} rolled out"), WAIT, || async {
                let object = cellule_api(&client, &ns, kind).get(name).await.map_err(|e| e.to_string())?;
                let status = &object.data["status"];
                let ready = status["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                // Ready for the spec just patched, not still for the old one.
                let current = status["observedGeneration"] == object.metadata.generation.unwrap_or_default();
                let settled = current && (kind == "Pool" || status["readyReplicas"] == status["desiredReplicas"]);
                (ready && settled).then_some(()).ok_or(status.to_string())
            })
            .await?;
        }
        let operator = Env::var("CELLULE_E2E_OPERATOR_USER");
        // ...and their last status updates settle.
        let mut before = audited_writes(&operator, &ns).len();
        eventually("the operator goes quiet", WAIT, || {
            let now = audited_writes(&operator, &ns).len();
            let settled = now == before;
            before = now;
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if settled {
                    Ok(())
                } else {
                    Err(format!("{now} writes so far"))
                }
            }
        })
        .await?;
        let before = audited_writes(&operator, &ns);
        let reconciles_before = reconciles_logged(&ns);
        // Touch the Pool, the NpuServer and an owned object: each triggers
        // a reconcile that finds nothing to do.
        let touch = json!({"metadata": {"annotations": {"e2e.cellule.ai/touch": "1"}}});
        cellule_api(&client, &ns, "Pool")
            .patch("paris", &PatchParams::default(), &Patch::Merge(&touch))
            .await?;
        cellule_api(&client, &ns, "NpuServer")
            .patch("heavy", &PatchParams::default(), &Patch::Merge(&touch))
            .await?;
        // (Not a Deployment: Kubernetes bumps a Deployment's generation on
        // any metadata change, which is a real, if short, rollout.)
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .patch(
                "paris-config",
                &PatchParams::default(),
                &Patch::Merge(&touch),
            )
            .await?;
        eventually("the resyncs to run", WAIT, || async {
            let n = reconciles_logged(&ns);
            if n >= reconciles_before + 3 {
                Ok(())
            } else {
                Err(format!("{n} reconciles"))
            }
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes = audited_writes(&operator, &ns).split_off(before.len());
        println!(
            "no-op resync: {} reconciles, {} writes",
            reconciles_logged(&ns) - reconciles_before,
            writes.len()
        );
        ensure!(
            writes.is_empty(),
            "a no-op resync made {} writes:\n{}",
            writes.len(),
            writes.join("\n")
        );
        Ok(())
    })
    .await;
}

/// Reconciles of objects in `ns` the operator logged (debug level).
fn reconciles_logged(ns: &str) -> usize {
    let log = std::fs::read_to_string(Env::var("CELLULE_E2E_OPERATOR_LOG")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("reconciled") && l.contains(&format!("namespace={ns}")))
        .count()
}
