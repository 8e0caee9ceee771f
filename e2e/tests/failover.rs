//! NPU → CPU fail-over of a tier's routing (issue 13), on the real control
//! plane with KWOK pods: readiness is switched off and on with the KWOK
//! annotations (pods: `cellule.ai/e2e-ready`, nodes:
//! `cellule.ai/e2e-node-ready`), and what the operator does is read as a
//! client reads it: the tier's EndpointSlice (through a watch, with the
//! instant each change arrived), the Pool's status and Events, `kubectl get
//! pools`, and the routing the pool itself sees through `cellule-verifier`
//! (`GET /routing`, running with the pool's ServiceAccount).
//!
//! Every test has its own namespace and short hold times. The NPU pods of
//! every test are pinned to node `npu-1`, except the one test that turns a
//! node NotReady, whose pods alone are on `npu-2`: run with
//! `--test-threads 4` (as e2e/test.sh does), the tests do not disturb each
//! other. The only other test that turns a node NotReady (harness.rs, also
//! npu-2) is in another binary, and `cargo test` runs binaries one after
//! the other (a runner that runs binaries side by side, such as
//! cargo-nextest, would need a node of this test's own).

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    Env, cellule_api, eventually,
    failover::{
        FALLBACK, NPU, NodeDown, POOL, Site, TIER, backends, condition_of, count_events,
        ensure_between, ensure_switches, is_ready, latest_event, merge_pool_tiers, model_of,
        npu_selector, pod_ip, pod_port, pods, pool, ready_ips, route, seconds_between, service,
        site_ready, start_verifier, switches, tier_of, time, toggle_pod, wait_node_ready,
        wait_route, wait_tier, wait_verifier_routing, watch_route, worker_selector,
    },
    in_namespace, run_tool,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{Api, Client};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `heavy` served by its fallback, as the Pool's status says it.
fn failed_over(tier: &Value) -> bool {
    tier["servedBy"] == "CpuFailover"
}

fn on_npu(tier: &Value) -> bool {
    tier["servedBy"] == "Npu"
}

/// The status of `heavy` while it is served by `light` because `ready` of
/// `required` NPU pods are ready.
fn ensure_failover_status(
    pool: &kube::api::DynamicObject,
    ready: i64,
    required: i64,
) -> anyhow::Result<()> {
    let tier = tier_of(pool, TIER);
    ensure!(tier["servedBy"] == "CpuFailover", "servedBy: {tier}");
    ensure!(tier["via"] == FALLBACK, "via: {tier}");
    ensure!(
        tier["model"] == model_of(FALLBACK).as_str(),
        "model now: {tier}"
    );
    ensure!(tier["reason"] == "NpuUnavailable", "reason: {tier}");
    ensure!(tier["service"] == service(TIER).as_str(), "service: {tier}");
    ensure!(time(&tier["since"]).is_some(), "since: {tier}");
    let npu = &tier["npu"];
    ensure!(
        npu["server"] == NPU
            && npu["ready"] == ready
            && npu["required"] == required
            && npu["healthy"] == false,
        "npu: {tier}"
    );
    let status = &pool.data["status"];
    ensure!(
        status["routing"] == "light=cpu heavy=cpu(failover)",
        "routing: {}",
        status["routing"]
    );
    let degraded = condition_of(pool, "Degraded");
    ensure!(
        degraded["status"] == "True" && degraded["reason"] == "NpuUnavailable",
        "Degraded: {degraded}"
    );
    let message = degraded["message"].as_str().unwrap_or_default();
    for needle in [
        TIER.to_owned(),
        NPU.to_owned(),
        format!("has {ready} ready"),
        format!("({required} needed)"),
        "since".to_owned(),
    ] {
        ensure!(
            message.contains(&needle),
            "the Degraded message does not say {needle:?}: {message}"
        );
    }
    let ready_condition = condition_of(pool, "Ready");
    ensure!(
        ready_condition["status"] == "True",
        "Ready while degraded: {ready_condition}"
    );
    Ok(())
}

/// `heavy` back on its NPU server, in the status.
fn ensure_npu_status(pool: &kube::api::DynamicObject, required: i64) -> anyhow::Result<()> {
    let tier = tier_of(pool, TIER);
    ensure!(
        tier["servedBy"] == "Npu"
            && tier["reason"] == "NpuHealthy"
            && tier["model"] == model_of(TIER).as_str(),
        "heavy: {tier}"
    );
    ensure!(tier["via"].is_null(), "via while on the NPU server: {tier}");
    ensure!(
        tier["npu"]["healthy"] == true && tier["npu"]["required"] == required,
        "npu: {tier}"
    );
    let status = &pool.data["status"];
    ensure!(
        status["routing"] == "light=cpu heavy=npu",
        "routing: {}",
        status["routing"]
    );
    let degraded = condition_of(pool, "Degraded");
    ensure!(
        degraded["status"] == "False" && degraded["reason"] == "AllTiersServed",
        "Degraded: {degraded}"
    );
    Ok(())
}

/// The NPU pods that are Ready and not going away (after a rollout, the
/// old ReplicaSet's pods may still be listed, being deleted).
async fn npu_pod_names(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(pods(client, ns, &npu_selector())
        .await?
        .iter()
        .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect())
}

async fn cpu_ips(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let ips = ready_ips(client, ns, &worker_selector()).await?;
    ensure!(!ips.is_empty(), "no ready CPU worker");
    Ok(ips)
}

#[tokio::test]
async fn npu_pods_not_ready_fail_the_tier_over_to_cpu_and_back_after_the_hold() {
    in_namespace("fo-pods", |client: Client, ns: String| async move {
        // Two NPU pods, both needed: one NotReady is below the minimum.
        let site = Site::new("2s", "6s").npu(2, 0, 2);
        site_ready(&client, &ns, &site).await?;
        let baseline = switches(&client, &ns).await?;
        // The routing reaches the pool through its live channel: no volume
        // of the routing ConfigMap, and the pool's pods are not rolled by a
        // switch.
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let pool_deployment = deployments.get(&format!("{POOL}-pool")).await?;
        let volumes =
            serde_json::to_value(&pool_deployment)?["spec"]["template"]["spec"]["volumes"].clone();
        ensure!(
            !volumes
                .to_string()
                .contains(cellule_e2e::failover::ROUTING_CM),
            "the routing ConfigMap is mounted: {volumes}"
        );
        let slices = watch_route(&client, &ns, TIER);
        let (_verifier, addr) = start_verifier(&client, &ns).await?;
        let service_address = format!("{}.{ns}.svc:8080", service(TIER));
        wait_verifier_routing(&addr, TIER, "the pool sees heavy on its NPU server", |t| {
            t["servedBy"] == "Npu"
                && t["model"] == model_of(TIER).as_str()
                && t["service"] == service_address.as_str()
        })
        .await?;

        // The tier's Service: selector-less, ClusterIP, 8080 "http".
        let svc = Api::<Service>::namespaced(client.clone(), &ns)
            .get(&service(TIER))
            .await?;
        let spec = svc.spec.context("Service spec")?;
        ensure!(
            spec.selector.as_ref().is_none_or(|s| s.is_empty()),
            "a selector: {:?}",
            spec.selector
        );
        ensure!(
            spec.type_.as_deref().unwrap_or("ClusterIP") == "ClusterIP",
            "type {:?}",
            spec.type_
        );
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        ensure!(
            ports == [(Some("http".to_owned()), 8080)],
            "ports {ports:?}"
        );

        let npu = pods(&client, &ns, &npu_selector()).await?;
        ensure!(
            npu.len() == 2 && npu.iter().all(is_ready),
            "two ready NPU pods"
        );
        let npu_port = pod_port(&npu[0]).context("NPU pod port")?;
        let before = slices.current().await?;
        ensure!(
            before.ports == [("http".to_owned(), npu_port, "TCP".to_owned())],
            "slice ports on the NPU backend: {before:?}"
        );
        let (victim, survivor) = (
            npu[0].metadata.name.clone().unwrap_or_default(),
            pod_ip(&npu[1]).context("ip")?,
        );

        // 1. The pod NotReady: 1/2 ready. failOverAfter 2s: the NPU server
        // keeps the tier (its ready pod only) until then.
        let mark = slices.len();
        let down = toggle_pod(&client, &ns, &victim, false).await?;
        let cpu = cpu_ips(&client, &ns).await?;
        let switched = slices
            .first_from(mark, "the slice on the CPU workers", WAIT, |r| {
                r.backend == "cpu"
            })
            .await?;
        let pending: Vec<_> = slices
            .all()
            .into_iter()
            .skip(mark)
            .take_while(|s| s.at < switched.at)
            .collect();
        ensure!(
            pending
                .iter()
                .any(|s| s.value.is("npu", &BTreeSet::from([survivor.clone()]))),
            "during FailOverPending the slice should hold the one ready NPU pod: {pending:?}"
        );
        // The hold counts from the pod's Ready transition (1 s resolution).
        ensure_between("the fail-over", switched.wall, down, 2.0, 5.0)?;
        let worker = pods(&client, &ns, &worker_selector()).await?;
        let cpu_port = worker.first().and_then(pod_port).context("worker port")?;
        let routed = wait_route(&client, &ns, TIER, "cpu", &cpu, WAIT).await?;
        ensure!(
            routed.ports == [("http".to_owned(), cpu_port, "TCP".to_owned())],
            "slice ports on the CPU backend: {routed:?}"
        );

        let failed = wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| {
            failed_over(t)
        })
        .await?;
        ensure_failover_status(&failed, 1, 2)?;
        let since = time(&tier_of(&failed, TIER)["since"]).context("since")?;
        ensure_between("status since", since, down, 1.0, 5.0)?;
        let event = latest_event(&client, &ns, "FailedOver", down).await?;
        ensure!(
            event.type_.as_deref() == Some("Warning"),
            "FailedOver type: {event:?}"
        );
        let note = event.note.clone().unwrap_or_default();
        ensure!(
            note.contains(TIER) && note.contains(NPU) && note.contains("has 1 ready"),
            "the FailedOver Event does not tell this fail-over: {note}"
        );
        let table = run_tool(
            "kubectl",
            &[
                "--kubeconfig",
                &Env::var("CELLULE_E2E_KUBECONFIG"),
                "get",
                "pools",
                "-n",
                &ns,
            ],
            &[],
        )
        .await?;
        ensure!(
            table.contains("heavy=cpu(failover)"),
            "kubectl get pools:\n{table}"
        );
        let seen = wait_verifier_routing(&addr, TIER, "the pool sees heavy on light", |t| {
            t["servedBy"] == "CpuFailover"
                && t["via"] == FALLBACK
                && t["model"] == model_of(FALLBACK).as_str()
                && t["reason"] == "NpuUnavailable"
                && t["service"] == service_address.as_str()
                && time(&t["since"]).is_some()
        })
        .await?;
        ensure!(
            seen["resourceVersion"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "resourceVersion: {seen}"
        );

        // 2. Ready again: the tier stays on CPU for failBackAfter (6s) from
        // the pod's Ready transition, then moves back.
        let mark = slices.len();
        let up = toggle_pod(&client, &ns, &victim, true).await?;
        wait_tier(
            &client,
            &ns,
            "FailBackPending",
            Duration::from_secs(4),
            |t, _| failed_over(t) && t["reason"] == "FailBackPending",
        )
        .await?;
        let back = slices
            .first_from(mark, "the slice back on the NPU pods", WAIT, |r| {
                r.backend != "cpu"
            })
            .await?;
        ensure!(
            back.value.backend == "npu",
            "after the hold: {:?}",
            back.value
        );
        ensure_between("the fail-back", back.wall, up, 6.0, 9.0)?;
        let npu_ips = ready_ips(&client, &ns, &npu_selector()).await?;
        wait_route(&client, &ns, TIER, "npu", &npu_ips, WAIT).await?;
        let restored = wait_tier(&client, &ns, "heavy back on NPU", WAIT, |t, _| on_npu(t)).await?;
        ensure_npu_status(&restored, 2)?;
        let since = time(&tier_of(&restored, TIER)["since"]).context("since")?;
        ensure_between("status since after the fail-back", since, up, 5.0, 9.0)?;
        let event = latest_event(&client, &ns, "FailedBack", up).await?;
        ensure!(
            event.type_.as_deref() == Some("Normal"),
            "FailedBack type: {event:?}"
        );
        wait_verifier_routing(
            &addr,
            TIER,
            "the pool sees heavy back on its NPU server",
            |t| t["servedBy"] == "Npu" && t["model"] == model_of(TIER).as_str(),
        )
        .await?;
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1 + 1)).await?;
        let after = deployments.get(&format!("{POOL}-pool")).await?;
        ensure!(
            after.metadata.generation == pool_deployment.metadata.generation,
            "the pool's Deployment was changed by the switches (generation {:?} → {:?})",
            pool_deployment.metadata.generation,
            after.metadata.generation
        );
        let changes = backends(&slices.all());
        ensure!(
            changes == ["npu", "cpu", "npu"],
            "backends seen: {changes:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_npu_node_not_ready_fails_the_tier_over() {
    in_namespace("fo-node", |client: Client, ns: String| async move {
        // This test's pods alone are on npu-2.
        let site = Site::new("0s", "3s").on("npu-2");
        site_ready(&client, &ns, &site).await?;
        let baseline = switches(&client, &ns).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        let mark = slices.len();
        let node = NodeDown::start(&client, "npu-2").await?;
        let down = wait_node_ready(&client, "npu-2", false).await?;
        let cpu = cpu_ips(&client, &ns).await?;
        let switched = slices
            .first_from(mark, "the slice on the CPU workers", WAIT, |r| {
                r.is("cpu", &cpu)
            })
            .await?;
        ensure_between("the fail-over", switched.wall, down, 0.0, 3.0)?;
        // The pod itself still says Ready: the node's condition did it.
        let npu = pods(&client, &ns, &npu_selector()).await?;
        ensure!(
            npu.iter().all(is_ready),
            "KWOK left the pods Ready on a NotReady node"
        );
        let failed = wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| {
            failed_over(t)
        })
        .await?;
        ensure_failover_status(&failed, 0, 1)?;
        let event = latest_event(&client, &ns, "FailedOver", down).await?;
        let note = event.note.clone().unwrap_or_default();
        ensure!(
            note.contains(NPU) && note.contains("has 0 ready"),
            "the FailedOver Event does not tell this fail-over: {note}"
        );

        let mark = slices.len();
        let up = node.restore(&client).await?;
        let back = slices
            .first_from(mark, "the slice back on the NPU pod", WAIT, |r| {
                r.backend != "cpu"
            })
            .await?;
        ensure!(
            back.value.backend == "npu",
            "after the hold: {:?}",
            back.value
        );
        ensure_between("the fail-back", back.wall, up, 3.0, 6.0)?;
        let npu_ips = ready_ips(&client, &ns, &npu_selector()).await?;
        wait_route(&client, &ns, TIER, "npu", &npu_ips, WAIT).await?;
        let restored = wait_tier(&client, &ns, "heavy back on NPU", WAIT, |t, _| on_npu(t)).await?;
        ensure_npu_status(&restored, 1)?;
        latest_event(&client, &ns, "FailedBack", up).await?;
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1 + 1)).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn flapping_readiness_switches_at_most_once_each_way() {
    in_namespace("fo-flap", |client: Client, ns: String| async move {
        let site = Site::new("0s", "5s");
        site_ready(&client, &ns, &site).await?;
        let baseline = switches(&client, &ns).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        let pod = npu_pod_names(&client, &ns)
            .await?
            .pop()
            .context("an NPU pod")?;
        // NotReady, Ready, ... every 2 s for 32 s, ending Ready.
        let mut last_up = None;
        for i in 0..16 {
            let ready = i % 2 == 1;
            cellule_e2e::failover::set_pod_ready(&client, &ns, &pod, ready).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            if ready {
                last_up = Some(i);
            }
        }
        ensure!(last_up == Some(15), "the flapping ends Ready");
        let up = cellule_e2e::failover::wait_pod_ready(&client, &ns, &pod, true).await?;
        let up = cellule_e2e::failover::ready_since(&up).context("Ready since")?;
        let back = slices
            .until("back on the NPU pod", WAIT, |r| r.backend == "npu")
            .await?;
        ensure_between("the fail-back after the flapping", back.wall, up, 5.0, 8.0)?;
        let changes = backends(&slices.all());
        ensure!(
            changes == ["npu", "cpu", "npu"],
            "backends seen while flapping: {changes:?}"
        );
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1 + 1)).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_lost_with_a_hot_spare_is_no_fail_over() {
    in_namespace("fo-spare", |client: Client, ns: String| async move {
        // Two replicas and a hot spare; two needed.
        let site = Site::new("0s", "3s").npu(2, 1, 2);
        site_ready(&client, &ns, &site).await?;
        let baseline = switches(&client, &ns).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        let names = npu_pod_names(&client, &ns).await?;
        ensure!(names.len() == 3, "three NPU pods: {names:?}");
        let mark = slices.len();
        toggle_pod(&client, &ns, &names[0], false).await?;
        let two = ready_ips(&client, &ns, &npu_selector()).await?;
        ensure!(two.len() == 2, "two ready: {two:?}");
        // The slice drops the NotReady pod, and stays on the NPU server
        // well past failOverAfter (0s).
        slices
            .first_from(mark, "the slice on the two ready NPU pods", WAIT, |r| {
                r.is("npu", &two)
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let seen = backends(&slices.all()[mark..]);
        ensure!(
            seen == ["npu"],
            "a spare lost but the backend changed: {seen:?}"
        );
        let now = pool(&client, &ns).await?;
        let tier = tier_of(&now, TIER);
        ensure!(
            on_npu(&tier) && tier["reason"] == "NpuHealthy",
            "heavy: {tier}"
        );
        ensure!(
            tier["npu"]["ready"] == 2
                && tier["npu"]["required"] == 2
                && tier["npu"]["healthy"] == true,
            "npu: {tier}"
        );
        ensure!(
            condition_of(&now, "Degraded")["status"] == "False",
            "Degraded: {}",
            condition_of(&now, "Degraded")
        );
        ensure!(
            switches(&client, &ns).await? == baseline,
            "a switch Event while a spare covered"
        );

        // A second pod lost: 1/2, the tier fails over at once.
        toggle_pod(&client, &ns, &names[1], false).await?;
        let cpu = cpu_ips(&client, &ns).await?;
        slices
            .first_from(mark, "the slice on the CPU workers", WAIT, |r| {
                r.is("cpu", &cpu)
            })
            .await?;
        let failed = wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| {
            failed_over(t)
        })
        .await?;
        ensure_failover_status(&failed, 1, 2)?;
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1)).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn with_no_ready_fallback_the_tier_is_unavailable_and_its_service_never_empty_while_a_backend_is_ready()
 {
    in_namespace("fo-none", |client: Client, ns: String| async move {
        let site = Site::new("0s", "6s");
        site_ready(&client, &ns, &site).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        let npu = npu_pod_names(&client, &ns).await?.pop().context("an NPU pod")?;
        let workers: Vec<String> = pods(&client, &ns, &worker_selector())
            .await?
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        ensure!(workers.len() == 2, "two workers: {workers:?}");
        let npu_ips = ready_ips(&client, &ns, &npu_selector()).await?;

        // Every CPU worker NotReady: heavy stays on its NPU server.
        for w in &workers {
            toggle_pod(&client, &ns, w, false).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(slices.current().await?.is("npu", &npu_ips), "heavy left its NPU server: {:?}", slices.current().await?);

        // The NPU pod NotReady too: nothing can serve heavy.
        let nothing_from = toggle_pod(&client, &ns, &npu, false).await?;
        let unavailable = wait_tier(&client, &ns, "heavy Unavailable", WAIT, |t, _| t["servedBy"] == "Unavailable").await?;
        let tier = tier_of(&unavailable, TIER);
        ensure!(tier["reason"] == "FallbackUnavailable", "heavy: {tier}");
        ensure!(
            unavailable.data["status"]["routing"].as_str().is_some_and(|r| r.contains("heavy=unavailable")),
            "routing: {}",
            unavailable.data["status"]["routing"]
        );
        let degraded = condition_of(&unavailable, "Degraded");
        ensure!(degraded["status"] == "True" && degraded["reason"] == "TierUnavailable", "Degraded: {degraded}");
        ensure!(degraded["message"].as_str().unwrap_or_default().contains(TIER), "Degraded: {degraded}");
        let event = latest_event(&client, &ns, "TierUnavailable", nothing_from).await?;
        ensure!(event.type_.as_deref() == Some("Warning"), "TierUnavailable: {event:?}");
        slices.until("heavy's slice without a ready endpoint", WAIT, |r| r.ips.is_empty()).await?;

        // The NPU pod Ready again, within the fail-back hold: the slice
        // takes it at once (never empty while a backend has a ready pod).
        let mark = slices.len();
        let something_from = toggle_pod(&client, &ns, &npu, true).await?;
        let npu_ips = ready_ips(&client, &ns, &npu_selector()).await?;
        let refilled = slices.first_from(mark, "the slice on the ready NPU pod", WAIT, |r| r.is("npu", &npu_ips)).await?;
        ensure_between("the slice refilled", refilled.wall, something_from, 0.0, 3.0)?;
        wait_tier(&client, &ns, "heavy back on NPU", WAIT, |t, _| on_npu(t)).await?;
        // Empty only while nothing was ready.
        for s in slices.all() {
            if s.value.ips.is_empty() {
                ensure!(
                    s.wall >= nothing_from && s.wall <= refilled.wall,
                    "the slice was empty at {} with a ready backend (nothing ready from {nothing_from} to {something_from})",
                    s.wall
                );
            }
        }

        // Without a fallback tier, heavy is Unavailable for that reason.
        let tiers = json!([
            {"name": FALLBACK, "model": model_of(FALLBACK), "backend": "Cpu"},
            {"name": TIER, "model": model_of(TIER), "backend": "Npu", "npuServerRef": {"name": NPU}},
        ]);
        merge_pool_tiers(&client, &ns, tiers).await?;
        for w in &workers {
            toggle_pod(&client, &ns, w, true).await?;
        }
        toggle_pod(&client, &ns, &npu, false).await?;
        let none = wait_tier(&client, &ns, "heavy Unavailable without fallback", WAIT, |t, _| {
            t["servedBy"] == "Unavailable" && t["reason"] == "NoFallback"
        })
        .await?;
        ensure!(condition_of(&none, "Degraded")["reason"] == "TierUnavailable", "Degraded: {}", condition_of(&none, "Degraded"));
        // CPU workers are ready, but they are no backend of heavy now.
        let r = eventually("heavy's slice without a ready endpoint", WAIT, || async {
            let r = route(&client, &ns, TIER).await.map_err(|e| e.to_string())?;
            r.ips.is_empty().then_some(r.clone()).ok_or(format!("{r:?}"))
        })
        .await?;
        ensure!(r.backend != "cpu", "heavy without a fallback routed to {r:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_npu_server_or_removed_tier_takes_its_routing_along() {
    in_namespace("fo-remove", |client: Client, ns: String| async move {
        let site = Site::new("0s", "2s");
        site_ready(&client, &ns, &site).await?;
        // The NpuServer deleted: its pods go, heavy falls back to light.
        cellule_api(&client, &ns, "NpuServer")
            .delete(NPU, &Default::default())
            .await?;
        let cpu = cpu_ips(&client, &ns).await?;
        wait_route(&client, &ns, TIER, "cpu", &cpu, WAIT).await?;
        let failed = wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| {
            failed_over(t)
        })
        .await?;
        ensure!(
            tier_of(&failed, TIER)["npu"]["ready"] == 0,
            "heavy: {}",
            tier_of(&failed, TIER)
        );
        ensure!(
            failed.data["status"]["routing"] == "light=cpu heavy=cpu(failover)",
            "routing: {}",
            failed.data["status"]["routing"]
        );

        // The tier removed from the Pool: its Service and slice go, and
        // the routing (status, ConfigMap) forgets it.
        let tiers = json!([{"name": FALLBACK, "model": model_of(FALLBACK), "backend": "Cpu"}]);
        merge_pool_tiers(&client, &ns, tiers).await?;
        let services = Api::<Service>::namespaced(client.clone(), &ns);
        eventually("heavy's Service and slice deleted", WAIT, || async {
            let svc = services
                .get_opt(&service(TIER))
                .await
                .map_err(|e| e.to_string())?;
            let r = route(&client, &ns, TIER).await.map_err(|e| e.to_string())?;
            (svc.is_none() && r.slices == 0)
                .then_some(())
                .ok_or(format!("Service {}, {r:?}", svc.is_some()))
        })
        .await?;
        ensure!(
            services.get_opt(&service(FALLBACK)).await?.is_some(),
            "light's Service went too"
        );
        let now = wait_tier(&client, &ns, "heavy gone from the status", WAIT, |t, s| {
            t.is_null() && s["routing"] == "light=cpu"
        })
        .await?;
        ensure!(
            condition_of(&now, "Degraded")["status"] == "False",
            "Degraded: {}",
            condition_of(&now, "Degraded")
        );
        let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
            .get(cellule_e2e::failover::ROUTING_CM)
            .await?;
        ensure!(
            cellule_e2e::failover::routing_config_tier(&cm, TIER).is_null(),
            "heavy still in {:?}",
            cm.data
        );
        ensure!(
            !cellule_e2e::failover::routing_config_tier(&cm, FALLBACK).is_null(),
            "light missing from {:?}",
            cm.data
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn odd_settings_a_minimum_never_reached_and_zero_hold_times() {
    in_namespace("fo-odd", |client: Client, ns: String| async move {
        // Pinned to a node that does not exist: no NPU pod ever becomes
        // ready, two are needed. The Pool serves, heavy on light.
        let site = Site::new("0s", "0s").npu(2, 0, 2).on("npu-absent");
        cellule_e2e::failover::apply_site(&client, &ns, &site).await?;
        cellule_e2e::wait_condition(
            &client,
            &ns,
            "Pool",
            POOL,
            "Ready",
            "True",
            Duration::from_secs(90),
        )
        .await?;
        let failed = wait_tier(
            &client,
            &ns,
            "heavy on light from the start",
            Duration::from_secs(60),
            |t, _| failed_over(t),
        )
        .await?;
        ensure_failover_status(&failed, 0, 2)?;
        let cpu = cpu_ips(&client, &ns).await?;
        wait_route(&client, &ns, TIER, "cpu", &cpu, WAIT).await?;
        let slices = watch_route(&client, &ns, TIER);
        slices.current().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            backends(&slices.all()) == ["cpu"],
            "heavy moved with no NPU pod: {:?}",
            backends(&slices.all())
        );
        ensure!(
            count_events(&client, &ns, "FailedBack").await? == 0,
            "a FailedBack with no NPU pod"
        );

        // The pods placed: with failBackAfter 0s heavy moves to them as
        // soon as both are ready; with failOverAfter 0s it leaves as soon as
        // one is not.
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "NpuServer",
            NPU,
            json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "npu-1"}}}),
        )
        .await?;
        let npu_ips = eventually("two ready NPU pods", Duration::from_secs(60), || async {
            let ips = ready_ips(&client, &ns, &npu_selector())
                .await
                .map_err(|e| e.to_string())?;
            (ips.len() == 2)
                .then_some(ips.clone())
                .ok_or(format!("{ips:?}"))
        })
        .await?;
        let back = slices
            .until("heavy on its NPU pods", WAIT, |r| r.is("npu", &npu_ips))
            .await?;
        let ready_at = pods(&client, &ns, &npu_selector())
            .await?
            .iter()
            .filter_map(cellule_e2e::failover::ready_since)
            .max()
            .context("ready times")?;
        ensure_between(
            "the fail-back with a 0s hold",
            back.wall,
            ready_at,
            0.0,
            3.0,
        )?;
        ensure_npu_status(
            &wait_tier(&client, &ns, "heavy on NPU", WAIT, |t, _| on_npu(t)).await?,
            2,
        )?;
        let victim = npu_pod_names(&client, &ns).await?.remove(0);
        // Two fail-overs and fail-backs, a second apart: each FailedOver
        // Event on-call reads tells of the fail-over that just happened.
        for ready in [false, true, false, true] {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let mark = slices.len();
            let at = toggle_pod(&client, &ns, &victim, ready).await?;
            let want = if ready { "npu" } else { "cpu" };
            let seen = slices
                .first_from(mark, want, WAIT, |r| r.backend == want)
                .await?;
            ensure_between(
                &format!("the switch to {want} with 0s holds"),
                seen.wall,
                at,
                0.0,
                3.0,
            )?;
            if !ready {
                let failed =
                    wait_tier(&client, &ns, "heavy failed over", WAIT, |t, _| failed_over(t))
                        .await?;
                let since = tier_of(&failed, TIER)["since"]
                    .as_str()
                    .context("since")?
                    .to_owned();
                let event = latest_event(&client, &ns, "FailedOver", at).await?;
                let note = event.note.clone().unwrap_or_default();
                ensure!(
                    note.contains(&format!("since {since}")) && note.contains("has 1 ready"),
                    "the latest FailedOver Event tells of another fail-over than the one since {since}: {note} ({:?})",
                    event.series
                );
            }
        }
        eventually("two FailedBack Events", WAIT, || async {
            let n = count_events(&client, &ns, "FailedBack")
                .await
                .map_err(|e| e.to_string())?;
            (n >= 2).then_some(()).ok_or(format!("{n}"))
        })
        .await?;
        let final_ = wait_tier(&client, &ns, "heavy on NPU", WAIT, |t, _| on_npu(t)).await?;
        let since = time(&tier_of(&final_, TIER)["since"]).context("since")?;
        ensure!(
            seconds_between(jiff::Timestamp::now(), since) < 30.0,
            "since {since} not updated by the switches"
        );
        Ok(())
    })
    .await;
}

/// A burst of readiness changes, far more pod events than any buffer of
/// the operator holds (256 per subscription): routing ends where the pods
/// end, with one switch each way.
#[tokio::test]
async fn a_burst_of_readiness_changes_ends_in_the_right_routing_with_one_switch_each_way() {
    in_namespace("fo-burst", |client: Client, ns: String| async move {
        // Four pods, all four needed: any of them NotReady fails over.
        let site = Site::new("0s", "8s").npu(4, 0, 4);
        site_ready(&client, &ns, &site).await?;
        let baseline = switches(&client, &ns).await?;
        let names = npu_pod_names(&client, &ns).await?;
        // 100 rounds of every pod off then on, as fast as the API server
        // takes them: 800 annotations, and as many status writes by KWOK.
        for round in 0..100 {
            for ready in [false, true] {
                let patches = names
                    .iter()
                    .map(|pod| cellule_e2e::failover::set_pod_ready(&client, &ns, pod, ready));
                futures::future::try_join_all(patches)
                    .await
                    .with_context(|| format!("round {round}"))?;
            }
        }
        let npu_ips = eventually("every NPU pod Ready after the burst", WAIT, || async {
            let ips = ready_ips(&client, &ns, &npu_selector())
                .await
                .map_err(|e| e.to_string())?;
            (ips.len() == 4)
                .then_some(ips.clone())
                .ok_or(format!("{ips:?}"))
        })
        .await?;
        wait_route(&client, &ns, TIER, "npu", &npu_ips, WAIT).await?;
        let restored = wait_tier(&client, &ns, "heavy back on NPU", WAIT, |t, _| on_npu(t)).await?;
        ensure_npu_status(&restored, 4)?;
        ensure_switches(&client, &ns, (baseline.0 + 1, baseline.1 + 1)).await?;
        Ok(())
    })
    .await;
}

/// A Pool blocked on something else (its TLS Secret deleted) still routes:
/// its NPU pods go NotReady, the tier's slice moves to the CPU workers and
/// its status says so, while the Pool stays Stalled for the Secret.
#[tokio::test]
async fn a_blocked_pool_still_fails_over() {
    in_namespace("fo-blocked", |client: Client, ns: String| async move {
        let site = Site::new("0s", "3s");
        site_ready(&client, &ns, &site).await?;
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
            .delete("paris-tls", &Default::default())
            .await?;
        cellule_e2e::wait_condition(&client, &ns, "Pool", POOL, "Stalled", "True", WAIT).await?;
        let pod = npu_pod_names(&client, &ns)
            .await?
            .pop()
            .context("an NPU pod")?;
        toggle_pod(&client, &ns, &pod, false).await?;
        let cpu = cpu_ips(&client, &ns).await?;
        wait_route(&client, &ns, TIER, "cpu", &cpu, WAIT).await?;
        let failed = wait_tier(
            &client,
            &ns,
            "heavy on light while blocked",
            WAIT,
            |t, _| failed_over(t),
        )
        .await?;
        let stalled = condition_of(&failed, "Stalled");
        ensure!(
            stalled["status"] == "True" && stalled["reason"] == "TlsSecretMissing",
            "still stalled for the Secret: {stalled}"
        );
        ensure!(
            condition_of(&failed, "Degraded")["reason"] == "NpuUnavailable",
            "Degraded: {}",
            condition_of(&failed, "Degraded")
        );
        // And back after the hold, still blocked.
        toggle_pod(&client, &ns, &pod, true).await?;
        let npu = ready_ips(&client, &ns, &npu_selector()).await?;
        wait_route(&client, &ns, TIER, "npu", &npu, WAIT).await?;
        wait_tier(
            &client,
            &ns,
            "heavy back on NPU while blocked",
            WAIT,
            |t, _| on_npu(t),
        )
        .await?;
        Ok(())
    })
    .await;
}
