//! The operator killed (SIGKILL) in the middle of its token guarantees and
//! started again: what it was doing is completed from the state on the API
//! server, not from memory.
//!
//! This binary runs its own operator processes, so it needs the API server
//! without the shared operator: `e2e/test.sh` runs it after the rest, once
//! that one is stopped (`--ignored`).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use cellule_e2e::{Env, apply_sample_site, cellule_api, eventually, in_namespace};
use cellule_operator::tokens;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(60);
const PRE: i64 = 15;

/// The operator as deployed, logging to the e2e logs; ready when this
/// returns. A restarted process is a new Lease identity: it waits for the
/// killed one's Lease to expire; a 5 s Lease (10 s deployed) keeps that
/// wait short.
async fn start_operator(run: usize) -> anyhow::Result<Child> {
    cellule_e2e::spawn_operator(
        "cellule-operator-e2e",
        &format!("operator-restart-{run}"),
        &[
            ("CELLULE_LEASE_DURATION", "5s"),
            ("CELLULE_LEASE_RENEW_BEFORE", "2s"),
        ],
    )
    .await
}

/// SIGKILL: no shutdown, no last write.
async fn kill(mut operator: Child) -> anyhow::Result<()> {
    operator.start_kill()?;
    operator.wait().await?;
    Ok(())
}

async fn grant_status(client: &Client, ns: &str) -> anyhow::Result<Value> {
    Ok(cellule_api(client, ns, "WorkerGrant")
        .get("laptop-alice")
        .await?
        .data["status"]
        .clone())
}

async fn config_map(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<ConfigMap>> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// The token the grant's Secret holds.
async fn held_token(client: &Client, ns: &str) -> anyhow::Result<Option<String>> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt("laptop-alice-token")
        .await?
        .and_then(|s| s.data)
        .and_then(|d| {
            d.get("token")
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        }))
}

async fn key_states(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let pool = cellule_api(client, ns, "Pool").get("paris").await?;
    Ok(pool.data["status"]["signingKeys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            (
                k["kid"].as_str().unwrap_or_default().to_owned(),
                k["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_killed_mid_guarantee_completes_it_after_a_restart() {
    in_namespace("restart", |client: Client, ns: String| async move {
        let operator = start_operator(1).await?;
        apply_sample_site(&client, &ns).await?;
        cellule_e2e::merge_patch(&client, &ns, "Pool", "paris", json!({"spec": {"tokens": {"signingKeyPrePublication": format!("{PRE}s")}}})).await?;
        let first = eventually("laptop-alice Active", WAIT, || async {
            let status = grant_status(&client, &ns).await.map_err(|e| e.to_string())?;
            let jti = status["token"]["jti"].as_str().map(str::to_owned);
            let held = held_token(&client, &ns).await.map_err(|e| e.to_string())?;
            match (jti, held) {
                (Some(jti), Some(_)) if status["phase"] == "Active" => Ok(jti),
                _ => Err(status.to_string()),
            }
        })
        .await?;

        // 1. Killed between the two writes of a rotation: the status names
        // the new token, the Secret (refused) still holds the old one.
        // Revocation list writes are refused too, so the old token cannot
        // be revoked before the kill.
        let lift = cellule_e2e::deny_secret_writes(&client, &ns, "laptop-alice-token").await?;
        let lift_lists = cellule_e2e::deny_revocation_writes(&client, &ns).await?;
        cellule_e2e::merge_patch(&client, &ns, "WorkerGrant", "laptop-alice", json!({"spec": {"rotation": 1}})).await?;
        eventually("the new jti in status while the Secret is refused", WAIT, || async {
            let status = grant_status(&client, &ns).await.map_err(|e| e.to_string())?;
            (status["observedRotation"] == 1 && status["token"]["jti"] != first.as_str())
                .then_some(())
                .ok_or(status.to_string())
        })
        .await?;
        let listed = cellule_e2e::revoked(&client, &ns, "paris").await?;
        ensure!(!listed.contains_key(&first), "the old token revoked despite the fault: {listed:?}");
        kill(operator).await?;
        // While it is down, the faults go.
        lift().await;
        lift_lists().await;

        let restarted = std::time::Instant::now();
        let operator = start_operator(2).await?;
        let ready = restarted.elapsed();
        // The old token is on the revocation lists...
        eventually("the old jti revoked", WAIT, || async {
            let list = cellule_e2e::revoked(&client, &ns, "paris").await.map_err(|e| e.to_string())?;
            list.contains_key(&first).then_some(()).ok_or(format!("{list:?}"))
        })
        .await?;
        let list_back = restarted.elapsed();
        // ...and the Secret holds the token the status names, which verifies.
        let jti = eventually("Secret and status agree", WAIT, || async {
            let status = grant_status(&client, &ns).await.map_err(|e| e.to_string())?;
            let jti = status["token"]["jti"].as_str().unwrap_or_default().to_owned();
            let held = held_token(&client, &ns).await.map_err(|e| e.to_string())?;
            let held = held.and_then(|t| tokens::unverified_claims(&t)).map(|c| c.jti);
            (held.as_deref() == Some(jti.as_str()) && jti != first)
                .then_some(jti.clone())
                .ok_or(format!("status {jti}, Secret {held:?}"))
        })
        .await?;
        let agreed = restarted.elapsed();
        let jwks_cm = config_map(&client, &ns, "paris-jwks").await?.context("jwks")?;
        let data = jwks_cm.data.context("jwks data")?;
        let claims = tokens::verify(
            &held_token(&client, &ns).await?.context("token")?,
            &serde_json::from_str(&data["jwks.json"])?,
            &cellule_e2e::revoked(&client, &ns, "paris").await?,
            &serde_json::from_str(&data["policy.json"])?,
            jiff::Timestamp::now().as_second(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(claims.jti == jti);
        println!("restart 1: ready in {ready:?}; old jti revoked {list_back:?} and Secret/status agreeing {agreed:?} after the start");

        // 2. Killed while a new key waits out its pre-publication: it
        // signs once that is over, after the restart, and the old key's
        // private half is deleted.
        cellule_e2e::merge_patch(&client, &ns, "Pool", "paris", json!({"spec": {"tokens": {"signingKeyGeneration": 1}}})).await?;
        let (new_kid, published_at) = eventually("a pending key", WAIT, || async {
            let pool = cellule_api(&client, &ns, "Pool").get("paris").await.map_err(|e| e.to_string())?;
            let keys = pool.data["status"]["signingKeys"].clone();
            keys.as_array()
                .into_iter()
                .flatten()
                .find(|k| k["state"] == "Pending" && k["publishedAt"].is_string())
                .map(|k| (k["kid"].as_str().unwrap_or_default().to_owned(), k["publishedAt"].as_str().unwrap_or_default().to_owned()))
                .ok_or(keys.to_string())
        })
        .await?;
        kill(operator).await?;
        let published_at: jiff::Timestamp = published_at.parse()?;
        ensure!(
            jiff::Timestamp::now().as_second() < published_at.as_second() + PRE,
            "killed after the pre-publication had ended: the case is not exercised"
        );
        tokio::time::sleep(Duration::from_secs(PRE as u64 + 2)).await;
        let restarted = std::time::Instant::now();
        let operator = start_operator(3).await?;
        eventually("the new key signing after the restart", WAIT, || async {
            let states = key_states(&client, &ns).await.map_err(|e| e.to_string())?;
            let retired = states.values().filter(|s| *s == "Retired").count();
            (states.get(&new_kid).map(String::as_str) == Some("Signing") && retired == 1)
                .then_some(())
                .ok_or(format!("{states:?}"))
        })
        .await?;
        println!("restart 2: the pending key signing {:?} after the start", restarted.elapsed());
        let ring = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("paris-signing-keys")
            .await?;
        let ring: tokens::KeyRing = serde_json::from_slice(&ring.data.context("ring")?[tokens::ring::RING_KEY].0)?;
        ensure!(
            ring.keys.iter().filter(|k| k.seed.is_some()).count() == 1,
            "one private key left: {ring:?}"
        );
        kill(operator).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_restarted_during_a_registry_outage_leaves_verified_workloads_as_they_are() {
    use cellule_e2e::images::{
        apply, image_verified, npu_server, push, scratch, sign, spare_registry,
        wait_deployment_image,
    };
    use k8s_openapi::api::apps::v1::Deployment;
    in_namespace("restart-img", |client: Client, ns: String| async move {
        let operator = start_operator(10).await?;
        apply_sample_site(&client, &ns).await?;
        let dir = scratch(&ns);
        let key = std::path::PathBuf::from(Env::var("CELLULE_E2E_COSIGN_KEY"));
        let (spare, mut registry) = spare_registry().await?;
        let reference = format!("{spare}/restart/npu:1");
        let digest = push(&dir, &reference, "restart").await?;
        sign(&key, &format!("{spare}/restart/npu@{digest}")).await?;
        apply(
            &client,
            &ns,
            &npu_server("kept", &reference, &["cellule-signing"], "10s"),
        )
        .await?;
        let deployment = cellule_operator::names::npu_server("kept");
        wait_deployment_image(
            &client,
            &ns,
            &deployment,
            &format!("{spare}/restart/npu@{digest}"),
        )
        .await?;
        cellule_e2e::wait_condition(&client, &ns, "NpuServer", "kept", "Ready", "True", WAIT)
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let before = deployments.get(&deployment).await?;
        // The registry keeps manifests in memory: a copy (image and
        // signature, same bytes) in the main registry, to put back later.
        let backup = format!("{}/{ns}/backup", Env::registry());
        let signature = cellule_e2e::images::sig_tag(&format!("{spare}/restart/npu"), &digest);
        let signature_backup = cellule_e2e::images::sig_tag(&backup, &digest);
        cellule_e2e::run_tool("crane", &["copy", &reference, &format!("{backup}:1")], &[]).await?;
        cellule_e2e::run_tool("crane", &["copy", &signature, &signature_backup], &[]).await?;

        // SIGKILL, and the registry goes away: the new process has no
        // cached decision and cannot make one.
        kill(operator).await?;
        registry.kill().await?;
        let operator = start_operator(11).await?;
        let condition =
            image_verified(&client, &ns, "NpuServer", "kept", "RegistryUnavailable").await?;
        println!("after the restart: {}", condition["message"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = deployments.get(&deployment).await?;
        ensure!(
            during.metadata.generation == before.metadata.generation && during.spec == before.spec,
            "the Deployment was written while nothing could be verified"
        );
        let status = cellule_api(&client, &ns, "NpuServer")
            .get("kept")
            .await?
            .data["status"]
            .clone();
        ensure!(
            status["image"]["digest"] == digest.as_str(),
            "the status forgot what runs: {status}"
        );

        // The registry is back, with the same image and signature:
        // verified, and the same digest means no rollout.
        let (_, registry) = spare_registry().await?;
        cellule_e2e::run_tool("crane", &["copy", &format!("{backup}:1"), &reference], &[]).await?;
        cellule_e2e::run_tool("crane", &["copy", &signature_backup, &signature], &[]).await?;
        image_verified(&client, &ns, "NpuServer", "kept", "Verified").await?;
        let after = deployments.get(&deployment).await?;
        ensure!(
            after.metadata.generation == before.metadata.generation && after.spec == before.spec,
            "the Deployment was rolled although the digest did not change"
        );
        drop(registry);
        kill(operator).await
    })
    .await;
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_killed_during_the_fail_back_hold_fails_back_once_on_time() {
    use cellule_e2e::failover::{
        Site, TIER, backends, ensure_between, ensure_switches, npu_selector, pods, site_ready,
        switches, toggle_pod, wait_tier, watch_route,
    };
    const HOLD: f64 = 15.0;
    in_namespace("restart-fo", |client: Client, ns: String| async move {
        let operator = start_operator(20).await?;
        site_ready(&client, &ns, &Site::new("0s", "15s")).await?;
        let baseline = switches(&client, &ns).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        let pod = pods(&client, &ns, &npu_selector())
            .await?
            .first()
            .and_then(|p| p.metadata.name.clone())
            .context("an NPU pod")?;
        toggle_pod(&client, &ns, &pod, false).await?;
        slices.until("heavy on the CPU workers", WAIT, |r| r.backend == "cpu").await?;
        wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| t["servedBy"] == "CpuFailover").await?;

        // Ready again: the 15 s hold starts at the pod's Ready transition.
        let mark = slices.len();
        let up = toggle_pod(&client, &ns, &pod, true).await?;
        wait_tier(&client, &ns, "FailBackPending", Duration::from_secs(5), |t, _| {
            t["servedBy"] == "CpuFailover" && t["reason"] == "FailBackPending"
        })
        .await?;
        // SIGKILL 5 s into the hold, down for 3 s.
        let kill_at = up.checked_add(jiff::SignedDuration::from_secs(5))?;
        if let Ok(wait) = Duration::try_from(kill_at.duration_since(jiff::Timestamp::now())) {
            tokio::time::sleep(wait).await;
        }
        kill(operator).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarted = jiff::Timestamp::now();
        let operator = start_operator(21).await?;
        ensure!(
            cellule_e2e::failover::seconds_between(jiff::Timestamp::now(), up) < HOLD - 2.0,
            "the operator came back after the hold: the case is not exercised"
        );
        // Back on the NPU pod when the hold ends as counted from the pod,
        // not 15 s after the restart.
        let back = slices
            .first_from(mark, "heavy back on its NPU pod", Duration::from_secs(40), |r| r.backend != "cpu")
            .await?;
        ensure!(back.value.backend == "npu", "after the hold: {:?}", back.value);
        ensure_between("the fail-back", back.wall, up, HOLD, HOLD + 3.0)?;
        println!(
            "restart during the fail-back hold: back on NPU {:.2} s after the pod's Ready transition, {:.2} s after the restart",
            cellule_e2e::failover::seconds_between(back.wall, up),
            cellule_e2e::failover::seconds_between(back.wall, restarted)
        );
        // Nothing more afterwards: one switch each way.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let changes = backends(&slices.all());
        ensure!(changes == ["npu", "cpu", "npu"], "backends seen: {changes:?}");
        wait_tier(&client, &ns, "heavy on NPU", WAIT, |t, _| t["servedBy"] == "Npu").await?;
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1 + 1)).await?;
        kill(operator).await
    })
    .await;
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_killed_keeps_level_3_and_a_downgrade_without_a_flap() {
    use cellule_e2e::federation::{
        Window, apply, condition, config_peers, endpoint, federate, federation_secret,
        in_two_namespaces, paris_and_lyon, peer_trust, pool_client, random_key, report, summary,
        wait_config_peers, wait_level, wait_peer, watch_level,
    };
    in_two_namespaces("restart-fed", |client: Client, a: String, b: String| async move {
        let operator = start_operator(30).await?;
        let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
        let window = Window::fresh(3600).await?;
        federate(&client, &paris, &lyon, &window, 3).await?;
        // Lyon's pool reports paris wrong too often: lyon's trust in paris
        // is downgraded to 2; paris's trust in lyon stays 3.
        let as_lyon = pool_client(&client, &b, "lyon").await?;
        report(&as_lyon, &b, "lyon", "paris", r#"{"mismatches": 40, "samples": 100}"#).await?;
        wait_peer(&client, &b, "paris", "downgraded", |o| {
            o["status"]["effectiveTrustLevel"] == 2 && condition(o, "Downgraded").is_some()
        })
        .await?;
        wait_config_peers(&client, &a, "paris", "lyon at 3", |p| p.iter().any(|l| l["name"] == "lyon" && l["trustLevel"] == 3)).await?;
        wait_config_peers(&client, &b, "lyon", "paris at 2", |p| p.iter().any(|l| l["name"] == "paris" && l["trustLevel"] == 2)).await?;
        // Settled: what the operator wrote, as it stands.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peer = |ns: &str, name: &str| {
            let api = cellule_api(&client, ns, "PeerTrust");
            let name = name.to_owned();
            async move { anyhow::Ok(serde_json::to_value(api.get(&name).await?)?) }
        };
        // The versions of the pool's config and of its live peers list.
        let config_version = |ns: &str, pool: &str| {
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            let names = [cellule_operator::names::config(pool), cellule_operator::names::peers(pool)];
            async move {
                let mut versions = vec![];
                for name in names {
                    versions.push(api.get(&name).await?.metadata.resource_version);
                }
                anyhow::Ok(versions)
            }
        };
        let (ours, theirs) = (peer(&a, "lyon").await?, peer(&b, "paris").await?);
        let (paris_secret, lyon_secret) = (federation_secret(&client, &a, "paris").await?, federation_secret(&client, &b, "lyon").await?);
        let (paris_config, lyon_config) = (config_version(&a, "paris").await?, config_version(&b, "lyon").await?);
        let (ours_seen, theirs_seen) = (watch_level(&client, &a, "lyon"), watch_level(&client, &b, "paris"));
        ensure!(ours_seen.current().await? == Some(3) && theirs_seen.current().await? == Some(2), "not settled");

        kill(operator).await?;
        let restarted = std::time::Instant::now();
        let operator = start_operator(31).await?;
        // The new process at work: a new peer of paris judged and in its
        // config, next to lyon, still at 3.
        apply(&client, &a, &peer_trust("marseille", "paris", "marseille", None, &endpoint(Some("10.40.0.10"), None, 8443), &random_key(), 1)).await?;
        wait_level(&client, &a, "marseille", 1).await?;
        wait_config_peers(&client, &a, "paris", "marseille next to lyon at 3", |p| {
            p.iter().any(|l| l["name"] == "marseille") && p.iter().any(|l| l["name"] == "lyon" && l["trustLevel"] == 3)
        })
        .await?;
        let working = restarted.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;

        // Nothing it had decided was decided again differently: the same
        // levels all along, the same statuses (not even rewritten), the
        // same nonce ledgers (not recorded again), lyon's config untouched.
        let levels = |t: &cellule_e2e::failover::Timeline<Option<i32>>| t.all().into_iter().map(|s| s.value).collect::<Vec<_>>();
        ensure!(levels(&ours_seen) == [Some(3)], "paris's trust in lyon across the restart: {:?}", levels(&ours_seen));
        ensure!(levels(&theirs_seen) == [Some(2)], "lyon's trust in paris across the restart: {:?}", levels(&theirs_seen));
        let (ours_after, theirs_after) = (peer(&a, "lyon").await?, peer(&b, "paris").await?);
        for (before, after) in [(&ours, &ours_after), (&theirs, &theirs_after)] {
            ensure!(before["status"] == after["status"], "status changed across the restart:\n{}\n{}", summary(before), summary(after));
            ensure!(
                before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"],
                "{} rewritten across the restart",
                after["metadata"]["name"]
            );
        }
        ensure!(theirs_after["status"]["reputation"]["downgrade"]["mismatches"] == 40, "{}", theirs_after["status"]);
        for (ns, pool, before) in [(&a, "paris", &paris_secret), (&b, "lyon", &lyon_secret)] {
            let after = federation_secret(&client, ns, pool).await?;
            ensure!(after.0 == before.0, "{pool}'s federation keys changed across the restart");
            ensure!(after.1 == before.1, "{pool}'s nonce ledger changed across the restart: {} → {}", before.1, after.1);
            ensure!(after.1[&window.nonce].is_object(), "{pool}'s ledger lost the nonce: {}", after.1);
            ensure!(after.2 == before.2, "{pool}'s federation Secret rewritten across the restart");
        }
        ensure!(config_version(&b, "lyon").await? == lyon_config, "lyon's config or peers rewritten across the restart");
        let paris_after = config_version(&a, "paris").await?;
        ensure!(paris_after[0] == paris_config[0], "paris's config rewritten across the restart (a peer change restarts no pool)");
        ensure!(paris_after[1] != paris_config[1], "paris's peers without marseille");
        let peers = config_peers(&client, &b, "lyon").await?.context("lyon's config")?;
        ensure!(peers.len() == 1 && peers[0]["trustLevel"] == 2, "{peers:?}");
        println!("restart: the new operator at work {working:?} after the start; no level, status or ledger moved");
        kill(operator).await
    })
    .await;
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_down_across_not_after_drops_level_3_as_it_starts() {
    use cellule_e2e::federation::{
        Window, federate, federation_secret, in_two_namespaces, paris_and_lyon, wait_config_peers,
        wait_handshake, watch_level,
    };
    in_two_namespaces(
        "restart-expiry",
        |client: Client, a: String, b: String| async move {
            let operator = start_operator(40).await?;
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let window = Window::fresh(12).await?;
            federate(&client, &paris, &lyon, &window, 3).await?;
            let levels = watch_level(&client, &a, "lyon");
            ensure!(levels.current().await? == Some(3), "not at 3");
            kill(operator).await?;
            ensure!(
                jiff::Timestamp::now() < window.not_after,
                "killed after notAfter: the case is not exercised"
            );
            // Down across notAfter, and a little after.
            let wait =
                window.not_after.as_millisecond() - jiff::Timestamp::now().as_millisecond() + 2_000;
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait)?)).await;
            ensure!(
                levels.all().len() == 1,
                "the level moved while no operator ran: {:?}",
                levels.all()
            );
            let started = std::time::Instant::now();
            let operator = start_operator(41).await?;
            let ready = started.elapsed();
            levels
                .until("level 2 after the start", WAIT, |l| *l == Some(2))
                .await?;
            let dropped = started.elapsed();
            wait_handshake(&client, &a, "lyon", "False", "HandshakeExpired").await?;
            wait_config_peers(&client, &a, "paris", "lyon at 2", |p| {
                p.iter().any(|l| {
                    l["name"] == "lyon" && l["trustLevel"] == 2 && l["level3Until"].is_null()
                })
            })
            .await?;
            cellule_e2e::eventually("the nonce pruned", WAIT, || async {
                let (_, nonces, _) = federation_secret(&client, &a, "paris")
                    .await
                    .map_err(|e| e.to_string())?;
                nonces
                    .get(&window.nonce)
                    .is_none()
                    .then_some(())
                    .ok_or(nonces.to_string())
            })
            .await?;
            println!("expired while down: ready {ready:?} after the start, level 2 at {dropped:?}");
            ensure!(
                dropped - ready < Duration::from_secs(5),
                "level 2 only {:?} after the operator was ready",
                dropped - ready
            );
            kill(operator).await
        },
    )
    .await;
}

/// A policy refusing every status write of PeerTrusts in `ns` (the fault:
/// a full quota, an admission webhook down), in force when this returns;
/// the closure lifts it.
async fn deny_peer_trust_status(
    client: &Client,
    ns: &str,
    probe: &str,
) -> anyhow::Result<impl AsyncFnOnce() + use<>> {
    use kube::api::{Patch, PatchParams};
    let lift = cellule_e2e::deny_writes(
        client,
        ns,
        "peer-status",
        json!({"apiGroups": ["cellule.ai"], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": ["peertrusts/status"]}),
        "false",
        "e2e: PeerTrust status writes refused",
    )
    .await?;
    let api = cellule_api(client, ns, "PeerTrust");
    eventually("the fault in force", WAIT, || async {
        let dry = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        match api
            .patch_status(
                probe,
                &dry,
                &Patch::Merge(json!({"status": {"effectiveTrustLevel": 1}})),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("status writes refused") => Ok(()),
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await?;
    Ok(lift)
}

/// Killed between taking a handshake's nonce and saying level 3: the
/// restarted operator grants it with the nonce as taken (not taken again,
/// not refused as reused), and the level never showed 3 before the nonce
/// was in the ledger.
#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn an_operator_killed_between_the_nonce_and_the_status_grants_level_3_once() {
    use cellule_e2e::federation::{
        Window, federation_secret, in_two_namespaces, paris_and_lyon, sign_both, wait_level,
        wait_peer, watch_level,
    };
    in_two_namespaces(
        "restart-nonce",
        |client: Client, a: String, b: String| async move {
            let operator = start_operator(50).await?;
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let window = Window::fresh(3600).await?;
            let signed = sign_both(&client, &paris, &lyon, &window).await?;
            let countersigned = |o: &Value| {
                o["status"]["countersignature"].is_object()
                    && o["status"]["observedGeneration"] == o["metadata"]["generation"]
            };
            let a_half = wait_peer(&client, &a, "lyon", "countersigned", countersigned).await?;
            let b_half = wait_peer(&client, &b, "paris", "countersigned", countersigned).await?;
            let complete = |trust: &Value, other: &Value| {
                let mut done = trust.clone();
                done["spec"]["handshake"]["peerCountersignature"] =
                    other["status"]["countersignature"].clone();
                done["spec"]["trustLevel"] = json!(3);
                done
            };
            let levels = watch_level(&client, &a, "lyon");
            ensure!(levels.current().await? == Some(2), "not at 2 before");
            let lift = deny_peer_trust_status(&client, &a, "lyon").await?;
            cellule_e2e::federation::apply(&client, &a, &complete(&signed.a_trust, &b_half))
                .await?;
            cellule_e2e::federation::apply(&client, &b, &complete(&signed.b_trust, &a_half))
                .await?;
            wait_level(&client, &b, "paris", 3).await?;
            // Paris's pool took the nonce; its status could not say so.
            let (_, taken, version) = eventually("the nonce in paris's ledger", WAIT, || async {
                let secret = federation_secret(&client, &a, "paris")
                    .await
                    .map_err(|e| e.to_string())?;
                secret
                    .1
                    .get(&window.nonce)
                    .is_some()
                    .then_some(secret.clone())
                    .ok_or(secret.1.to_string())
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            kill(operator).await?;
            lift().await;
            ensure!(
                levels.all().iter().all(|s| s.value == Some(2)),
                "a level while the status was refused: {:?}",
                levels.all()
            );
            let operator = start_operator(51).await?;
            let obj = wait_level(&client, &a, "lyon", 3).await?;
            ensure!(
                obj["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "HandshakeVerified" && c["status"] == "True"),
                "{}",
                obj["status"]
            );
            let (_, after, after_version) = federation_secret(&client, &a, "paris").await?;
            ensure!(
                after == taken,
                "the ledger changed across the restart: {taken} → {after}"
            );
            ensure!(
                after_version == version,
                "the ledger rewritten across the restart"
            );
            let seen: Vec<Option<i32>> = levels.all().into_iter().map(|s| s.value).collect();
            ensure!(seen == [Some(2), Some(3)], "levels seen: {seen:?}");
            kill(operator).await
        },
    )
    .await;
}
