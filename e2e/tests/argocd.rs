//! The Argo CD health checks of `config/argocd`, run by Argo CD's own code
//! (`argocd-health`, built by `build-tools.sh` from the argo-cd Go module:
//! its settings manager reads the argocd-cm that `kubectl kustomize
//! config/argocd` renders, its Lua VM runs the checks through
//! gitops-engine's `GetResourceHealth`, as `argocd admin settings
//! resource-overrides health` does) on objects read back from the e2e
//! cluster in each state the operator gives them, with the shared operator
//! reconciling. Every row asserts one exact health status.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    Env, cellule_api, deny_writes, eventually,
    failover::{self, NPU, POOL, Site, TIER},
    federation::{pool_client, report},
    in_namespace, merge_patch, repo_path, run_tool, sample_documents, wait_condition,
};
use kube::{
    Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// One object as the cluster showed it, and the health Argo CD must give it.
struct Row {
    what: &'static str,
    object: Value,
    status: &'static str,
    /// A part of the message Argo CD must show.
    message: &'static str,
}

struct Table {
    client: Client,
    ns: String,
    rows: Vec<Row>,
}

impl Table {
    /// The live object, once `check` holds on it, as a row.
    async fn take(
        &mut self,
        what: &'static str,
        kind: &str,
        name: &str,
        check: impl Fn(&Value) -> bool,
        status: &'static str,
        message: &'static str,
    ) -> anyhow::Result<Value> {
        let object = wait_for(&self.client, &self.ns, kind, name, what, check).await?;
        self.rows.push(Row {
            what,
            object: object.clone(),
            status,
            message,
        });
        Ok(object)
    }
}

/// The `cellule.ai` object `kind`/`name` as JSON, once `check` holds.
async fn wait_for(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let api = cellule_api(client, ns, kind);
    eventually(&format!("{kind} {name}: {what}"), WAIT, || async {
        let mut object = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        if check(&object) {
            Ok(object)
        } else {
            Err(object["status"].to_string())
        }
    })
    .await
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Condition `type_` has `status` and `reason`.
fn has(object: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

/// The status is about the current spec.
fn observed(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

fn phase(object: &Value, phase: &str) -> bool {
    observed(object) && object["status"]["phase"] == phase
}

/// The documents of `config/samples/` of `kind`.
fn samples(kind: &str) -> Vec<Value> {
    sample_documents()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

async fn apply(client: &Client, ns: &str, object: &Value) -> anyhow::Result<()> {
    let kind = object["kind"].as_str().context("kind")?;
    let name = object["metadata"]["name"].as_str().context("name")?;
    cellule_api(client, ns, kind)
        .patch(
            name,
            &PatchParams::apply("cellule-e2e").force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Refuses every status write of the `resource` objects named in `names`
/// in `ns` (an admission policy), in force once a dry-run status write of
/// `names[0]`, which must exist, is refused; the closure returned lifts it.
async fn deny_status(
    client: &Client,
    ns: &str,
    kind: &str,
    resource: &str,
    names: &[&str],
) -> anyhow::Result<impl AsyncFnOnce() + use<>> {
    let message = format!("e2e: status writes of {names:?} refused");
    let listed = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let lift = deny_writes(
        client,
        ns,
        &format!("status-{}", names[0]),
        json!({"apiGroups": ["cellule.ai"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": [format!("{resource}/status")]}),
        &format!("!(object.metadata.name in [{listed}])"),
        &message,
    )
    .await?;
    let api = cellule_api(client, ns, kind);
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the status fault in force", WAIT, || async {
        let probe = json!({"status": {"observedGeneration": 0}});
        match api
            .patch_status(names[0], &dry, &Patch::Merge(&probe))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("status writes of") => Ok(()),
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await?;
    Ok(lift)
}

/// Lifts a [`deny_status`] fault and waits until the status of each of
/// `names` describes its current generation again. The refused writes
/// left the operator in error backoff: a metadata change to each object
/// brings a reconcile now.
async fn lift_status_fault(
    lift: impl AsyncFnOnce(),
    client: &Client,
    ns: &str,
    kind: &str,
    names: &[&str],
) -> anyhow::Result<()> {
    lift().await;
    let api = cellule_api(client, ns, kind);
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the status fault lifted", WAIT, || async {
        let probe = json!({"status": {"observedGeneration": 0}});
        match api
            .patch_status(names[0], &dry, &Patch::Merge(&probe))
            .await
        {
            Ok(_) => Ok(()),
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await?;
    for name in names {
        let poke = json!({"metadata": {"annotations": {"e2e.cellule.ai/poke": jiff::Timestamp::now().to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&poke))
            .await?;
        wait_for(client, ns, kind, name, "status caught up", observed).await?;
    }
    Ok(())
}

/// The argocd-cm that `config/argocd` renders, checked to hold exactly the
/// four `.lua` files of `config/argocd/health` under Argo CD's keys.
async fn argocd_cm() -> anyhow::Result<String> {
    let dir = repo_path("config/argocd");
    let rendered = run_tool("kubectl", &["kustomize", &dir.to_string_lossy()], &[]).await?;
    let cm: Value = serde_yaml::from_str(&rendered)?;
    ensure!(
        cm["kind"] == "ConfigMap" && cm["metadata"]["name"] == "argocd-cm",
        "{rendered}"
    );
    let data = cm["data"].as_object().context("argocd-cm data")?;
    let expected = [
        ("Pool", "pool.lua"),
        ("NpuServer", "npuserver.lua"),
        ("WorkerGrant", "workergrant.lua"),
        ("PeerTrust", "peertrust.lua"),
    ];
    ensure!(
        data.len() == expected.len(),
        "argocd-cm keys: {:?}",
        data.keys()
    );
    for (kind, file) in expected {
        let key = format!("resource.customizations.health.cellule.ai_{kind}");
        let source = std::fs::read_to_string(dir.join("health").join(file))?;
        ensure!(
            data.get(&key).and_then(Value::as_str) == Some(source.as_str()),
            "{key} is not {file}"
        );
    }
    Ok(rendered)
}

/// Argo CD's health of every row's object, in order: (status, message).
async fn assess(ns: &str, rows: &[Row]) -> anyhow::Result<(Vec<(String, String)>, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("cellule-argocd-{ns}"));
    std::fs::create_dir_all(&dir)?;
    let cm: PathBuf = dir.join("argocd-cm.yaml");
    std::fs::write(&cm, argocd_cm().await?)?;
    let objects = dir.join("objects.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rows.iter().map(|r| r.object.clone()).collect::<Vec<_>>()});
    std::fs::write(&objects, serde_json::to_vec_pretty(&list)?)?;
    let out = run_tool(
        "argocd-health",
        &[
            "-argocd-cm",
            &cm.to_string_lossy(),
            &objects.to_string_lossy(),
        ],
        &[],
    )
    .await?;
    let results: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        results.len() == rows.len(),
        "{} results for {} objects: {out}",
        results.len(),
        rows.len()
    );
    let assessed = results
        .iter()
        .zip(rows)
        .map(|(r, row)| {
            ensure!(
                r["name"] == row.object["metadata"]["name"] && r["kind"] == row.object["kind"],
                "results out of order: {r} for {}",
                row.what
            );
            Ok((
                r["status"].as_str().unwrap_or_default().to_owned(),
                r["message"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((assessed, dir))
}

/// A sample of `config/samples/` of `kind` named `name`, renamed `rename`.
fn sample_as(kind: &str, name: &str, rename: &str) -> anyhow::Result<Value> {
    let mut doc = samples(kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .with_context(|| format!("sample {kind} {name}"))?;
    doc["metadata"] = json!({ "name": rename });
    Ok(doc)
}

/// A tier of the Pool's status is served by `served_by`.
fn tier_served_by(pool: &Value, served_by: &str) -> bool {
    pool["status"]["tiers"].as_array().is_some_and(|ts| {
        ts.iter()
            .any(|t| t["name"] == TIER && t["servedBy"] == served_by)
    })
}

/// The samples' WorkerGrants, then one invalid, one suspended, one
/// revoked and one expired.
async fn grants(t: &mut Table) -> anyhow::Result<()> {
    let (client, ns) = (t.client.clone(), t.ns.clone());
    for doc in samples("WorkerGrant") {
        apply(&client, &ns, &doc).await?;
    }
    let grant = "WorkerGrant";
    t.take(
        "WorkerGrant active",
        grant,
        "laptop-alice",
        |o| phase(o, "Active") && has(o, "Ready", "True", "TokenValid"),
        "Healthy",
        "TokenValid",
    )
    .await?;
    t.take(
        "WorkerGrant waiting for approval",
        grant,
        "laptop-contractor",
        |o| phase(o, "PendingApproval") && has(o, "Reconciling", "True", "PendingApproval"),
        "Progressing",
        "PendingApproval",
    )
    .await?;

    // A second grant for the worker id of laptop-alice.
    let mut twin = sample_as(grant, "laptop-alice", "laptop-alice-twin")?;
    twin["spec"]["owner"] = json!("mallory@example.com");
    twin["spec"]["requestedBy"] = json!("mallory@example.com");
    apply(&client, &ns, &twin).await?;
    t.take(
        "WorkerGrant invalid (worker id taken)",
        grant,
        "laptop-alice-twin",
        |o| phase(o, "Invalid") && has(o, "Stalled", "True", "WorkerIdInUse"),
        "Degraded",
        "WorkerIdInUse",
    )
    .await?;

    let mut spare = sample_as(grant, "laptop-alice", "laptop-spare")?;
    spare["spec"]["workerId"] = json!("pc-0099");
    spare["spec"]["suspended"] = json!(true);
    apply(&client, &ns, &spare).await?;
    t.take(
        "WorkerGrant suspended",
        grant,
        "laptop-spare",
        |o| phase(o, "Suspended") && has(o, "Ready", "True", "Suspended"),
        "Suspended",
        "Suspended",
    )
    .await?;

    merge_patch(
        &client,
        &ns,
        grant,
        "laptop-alice",
        json!({"spec": {"revoked": true}}),
    )
    .await?;
    t.take(
        "WorkerGrant revoked",
        grant,
        "laptop-alice",
        |o| phase(o, "Revoked") && has(o, "Ready", "True", "Revoked"),
        "Healthy",
        "Revoked",
    )
    .await?;

    // Approved, with an end a few seconds from now.
    let end = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3)?;
    let approve =
        json!({"spec": {"approvedBy": "bob.durand@example.com", "expiresAt": end.to_string()}});
    merge_patch(&client, &ns, grant, "laptop-contractor", approve).await?;
    t.take(
        "WorkerGrant expired",
        grant,
        "laptop-contractor",
        |o| phase(o, "Expired") && has(o, "Ready", "True", "Expired"),
        "Healthy",
        "Expired",
    )
    .await?;
    Ok(())
}

/// The samples' PeerTrusts, then one refused and one downgraded.
async fn peers(t: &mut Table) -> anyhow::Result<()> {
    let (client, ns) = (t.client.clone(), t.ns.clone());
    for doc in samples("PeerTrust") {
        apply(&client, &ns, &doc).await?;
    }
    let peer = "PeerTrust";
    t.take(
        "PeerTrust at its level",
        peer,
        "lyon",
        |o| {
            observed(o)
                && o["status"]["effectiveTrustLevel"] == 2
                && has(o, "Ready", "True", "Trusted")
        },
        "Healthy",
        "trusted at level 2",
    )
    .await?;

    // Pinning the pool's own federation key.
    let pool = wait_for(&client, &ns, "Pool", POOL, "a federation key", |o| {
        o["status"]["federation"]["publicKey"].is_string()
    })
    .await?;
    let mut mirror = sample_as(peer, "marseille", "mirror")?;
    mirror["spec"]["site"] = json!("mirror");
    mirror["spec"]["publicKey"] = pool["status"]["federation"]["publicKey"].clone();
    apply(&client, &ns, &mirror).await?;
    t.take(
        "PeerTrust refused (its key is the pool's own)",
        peer,
        "mirror",
        |o| observed(o) && has(o, "Stalled", "True", "PeerKeyIsOwnKey"),
        "Degraded",
        "PeerKeyIsOwnKey",
    )
    .await?;

    // The pool reports 30 mismatches in 100 answers of lyon.
    let as_pool = pool_client(&client, &ns, POOL).await?;
    report(
        &as_pool,
        &ns,
        POOL,
        "lyon",
        r#"{"mismatches": 30, "samples": 100}"#,
    )
    .await?;
    t.take(
        "PeerTrust downgraded by reputation",
        peer,
        "lyon",
        |o| {
            observed(o)
                && has(o, "Downgraded", "True", "MismatchThreshold")
                && has(o, "Stalled", "True", "Downgraded")
        },
        "Degraded",
        "Downgraded",
    )
    .await?;
    Ok(())
}

/// A PeerTrust with no status yet, and the Pool with a status of its
/// previous generation: the operator's status writes refused meanwhile.
async fn not_yet_observed(t: &mut Table) -> anyhow::Result<()> {
    let (client, ns) = (t.client.clone(), t.ns.clone());
    let fault = ["marseille", "fresh"];
    let lift = deny_status(&client, &ns, "PeerTrust", "peertrusts", &fault).await?;
    let mut fresh = sample_as("PeerTrust", "marseille", "fresh")?;
    fresh["spec"]["site"] = json!("fresh");
    fresh["spec"]["publicKey"] = json!(cellule_e2e::federation::random_key());
    apply(&client, &ns, &fresh).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.take(
        "PeerTrust just created (no status yet)",
        "PeerTrust",
        "fresh",
        |o| o.get("status").is_none_or(Value::is_null),
        "Progressing",
        "first status",
    )
    .await?;
    lift_status_fault(lift, &client, &ns, "PeerTrust", &fault).await?;

    let lift = deny_status(&client, &ns, "Pool", "pools", &[POOL]).await?;
    let change = json!({"spec": {"rateLimit": {"requestsPerMinutePerSigner": 61}}});
    merge_patch(&client, &ns, "Pool", POOL, change).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.take(
        "Pool with a stale status (Ready for the previous generation)",
        "Pool",
        POOL,
        |o| {
            o["metadata"]["generation"].as_i64() > o["status"]["observedGeneration"].as_i64()
                && has(o, "Ready", "True", "Available")
        },
        "Progressing",
        "observe generation",
    )
    .await?;
    lift_status_fault(lift, &client, &ns, "Pool", &[POOL]).await
}

/// A new NpuServer that cannot start, then the tier's NPU server down, its
/// fallback down too, and both back.
async fn npu_down(t: &mut Table, site: &Site) -> anyhow::Result<()> {
    let (client, ns) = (t.client.clone(), t.ns.clone());
    let mut pending = failover::npu_document(site);
    pending["metadata"] = json!({"name": "pending"});
    pending["spec"]["nodeSelector"]["kubernetes.io/hostname"] = json!("no-such-node");
    apply(&client, &ns, &pending).await?;
    t.take(
        "NpuServer rolling out (never healthy yet)",
        "NpuServer",
        "pending",
        |o| {
            observed(o)
                && has(o, "Healthy", "False", "TooFewReplicasReady")
                && has(o, "Reconciling", "True", "DeploymentUnavailable")
        },
        "Progressing",
        "DeploymentUnavailable",
    )
    .await?;

    let names = async |selector: String| -> anyhow::Result<Vec<String>> {
        let pods = failover::pods(&client, &ns, &selector).await?;
        let names: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        ensure!(!names.is_empty(), "no pod matches {selector}");
        Ok(names)
    };
    let npu_pods = names(failover::npu_selector()).await?;
    for pod in &npu_pods {
        failover::toggle_pod(&client, &ns, pod, false).await?;
    }
    t.take(
        "Pool with a tier failed over (NPU down)",
        "Pool",
        POOL,
        |o| {
            observed(o)
                && has(o, "Degraded", "True", "NpuUnavailable")
                && tier_served_by(o, "CpuFailover")
        },
        "Degraded",
        "NpuUnavailable",
    )
    .await?;
    t.take(
        "NpuServer down (was healthy)",
        "NpuServer",
        NPU,
        |o| observed(o) && has(o, "Healthy", "False", "TooFewReplicasReady"),
        "Degraded",
        "TooFewReplicasReady",
    )
    .await?;

    let workers = names(failover::worker_selector()).await?;
    for pod in &workers {
        failover::toggle_pod(&client, &ns, pod, false).await?;
    }
    t.take(
        "Pool with a tier served by nothing (NPU and fallback down)",
        "Pool",
        POOL,
        |o| {
            observed(o)
                && has(o, "Degraded", "True", "TierUnavailable")
                && tier_served_by(o, "Unavailable")
        },
        "Degraded",
        "TierUnavailable",
    )
    .await?;

    for pod in workers.iter().chain(&npu_pods) {
        failover::toggle_pod(&client, &ns, pod, true).await?;
    }
    t.take(
        "NpuServer healthy again",
        "NpuServer",
        NPU,
        |o| {
            observed(o)
                && has(o, "Healthy", "True", "EnoughReplicasReady")
                && has(o, "Ready", "True", "Available")
        },
        "Healthy",
        "Available",
    )
    .await?;
    t.take(
        "Pool with every tier served again",
        "Pool",
        POOL,
        |o| {
            observed(o) && has(o, "Degraded", "False", "AllTiersServed") && tier_served_by(o, "Npu")
        },
        "Healthy",
        "Available",
    )
    .await?;
    Ok(())
}

/// The Pool made Paranoid (its peers suspended), then given a TLS Secret
/// name that does not exist (stalled).
async fn pool_changes(t: &mut Table) -> anyhow::Result<()> {
    let (client, ns) = (t.client.clone(), t.ns.clone());
    let paranoid = json!({"spec": {"privacy": {"mode": "Paranoid"}}});
    merge_patch(&client, &ns, "Pool", POOL, paranoid).await?;
    t.take(
        "PeerTrust suspended (pool Paranoid)",
        "PeerTrust",
        "marseille",
        |o| {
            observed(o)
                && has(o, "Suspended", "True", "Paranoid")
                && has(o, "Ready", "True", "Suspended")
        },
        "Suspended",
        "Paranoid",
    )
    .await?;

    let absent = json!({"spec": {"tls": {"name": "paris-tls-absent"}}});
    merge_patch(&client, &ns, "Pool", POOL, absent).await?;
    wait_condition(&client, &ns, "Pool", POOL, "Stalled", "True", WAIT).await?;
    t.take(
        "Pool stalled (spec names an absent Secret)",
        "Pool",
        POOL,
        |o| observed(o) && has(o, "Stalled", "True", "TlsSecretMissing"),
        "Degraded",
        "TlsSecretMissing",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn argo_cd_gives_each_state_its_health() {
    assert!(
        Env::bin("argocd-health").exists(),
        "argocd-health is missing from {}: run e2e/scripts/build-tools.sh",
        Env::var("CELLULE_E2E_BIN")
    );
    in_namespace("argocd", |client: Client, ns: String| async move {
        let mut t = Table {
            client: client.clone(),
            ns: ns.clone(),
            rows: vec![],
        };
        // The fail-over site: Pool paris (tier heavy on NpuServer qwen,
        // falling back to light's CPU workers).
        let site = Site::new("1s", "1s");
        failover::site_ready(&client, &ns, &site).await?;
        t.take("Pool ready", "Pool", POOL, |o| {
            observed(o)
                && has(o, "Ready", "True", "Available")
                && has(o, "Degraded", "False", "AllTiersServed")
        }, "Healthy", "Available")
        .await?;
        t.take("NpuServer ready", "NpuServer", NPU, |o| {
            observed(o)
                && has(o, "Ready", "True", "Available")
                && has(o, "Healthy", "True", "EnoughReplicasReady")
        }, "Healthy", "Available")
        .await?;
        grants(&mut t).await?;
        peers(&mut t).await?;
        not_yet_observed(&mut t).await?;
        npu_down(&mut t, &site).await?;
        pool_changes(&mut t).await?;

        let (results, dir) = assess(&ns, &t.rows).await?;
        let mut failures = vec![];
        println!("{:<62} {:<11} {:<11} message", "state", "expected", "Argo CD");
        for (row, (status, message)) in t.rows.iter().zip(&results) {
            println!("{:<62} {:<11} {:<11} {message}", row.what, row.status, status);
            if status != row.status || !message.contains(row.message) {
                failures.push(format!(
                    "{}: expected {} with a message containing {:?}; Argo CD says {status}: {message}",
                    row.what, row.status, row.message
                ));
            }
        }
        ensure!(
            failures.is_empty(),
            "{}\n(the objects and argocd-cm are in {})",
            failures.join("\n"),
            dir.display()
        );
        Ok(())
    })
    .await;
}
