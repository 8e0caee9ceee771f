//! Leader election with real operator processes: only the Lease holder
//! reconciles; a standby takes over when the leader is SIGKILLed (within the
//! Lease duration) and at once when it is SIGTERMed (it hands over); a
//! leader steps down when its Lease is taken or cannot be renewed.
//!
//! The figures are end to end: from the signal to a spec change made
//! meanwhile showing in the Pool's status (`observedGeneration`).
//!
//! Runs its own operator processes: `e2e/test.sh` runs it once the shared
//! operator is stopped (`--ignored`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellule_e2e::{Env, apply_sample_site, cellule_api, eventually, in_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use serde_json::json;
use tokio::process::Child;

const NS: &str = "cellule-system";
const LEASE: &str = "cellule-operator";
const WAIT: Duration = Duration::from_secs(60);

/// A replica as the Deployment runs it (pod `name`), logging to
/// `<logs>/<name>.log`.
async fn replica(name: &str) -> anyhow::Result<Child> {
    cellule_e2e::spawn_operator(name, name, &[]).await
}

fn log_of(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(&Env::var("CELLULE_E2E_LOGS")).join(format!("{name}.log")),
    )
    .unwrap_or_default()
}

/// The pod whose process holds the Lease (an identity is
/// `<pod>_<random>`: one per process).
async fn holder(client: &Client) -> Result<String, String> {
    let lease = Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .map_err(|e| e.to_string())?;
    let identity = lease
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or_else(|| "no holder".to_owned())?;
    Ok(identity
        .rsplit_once('_')
        .map_or(identity.clone(), |(pod, _)| pod.to_owned()))
}

async fn wait_holder(client: &Client, among: &[&str], within: Duration) -> anyhow::Result<String> {
    eventually(
        &format!("one of {among:?} holds the Lease"),
        within,
        || async {
            let h = holder(client).await?;
            among.contains(&h.as_str()).then_some(h.clone()).ok_or(h)
        },
    )
    .await
}

/// Changes the Pool's spec; returns its new generation.
async fn touch_pool(client: &Client, ns: &str, step: u32) -> anyhow::Result<i64> {
    let patch =
        json!({"spec": {"tokens": {"signingKeyPrePublication": format!("{}s", 10 + step)}}});
    let pool = cellule_api(client, ns, "Pool")
        .patch(
            "paris",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    pool.metadata.generation.context("generation")
}

/// Waits until the Pool's status is about `generation`.
async fn reconciled(
    client: &Client,
    ns: &str,
    generation: i64,
    within: Duration,
) -> anyhow::Result<()> {
    let pools = cellule_api(client, ns, "Pool");
    eventually(
        &format!("Pool paris reconciled at generation {generation}"),
        within,
        || async {
            let pool = pools.get("paris").await.map_err(|e| e.to_string())?;
            let observed = pool.data["status"]["observedGeneration"].as_i64();
            (observed == Some(generation))
                .then_some(())
                .ok_or(format!("{observed:?}"))
        },
    )
    .await
}

async fn sigterm(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("pid")?.to_string();
    ensure!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    Ok(())
}

async fn exit_of(child: &mut Child, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
    Ok(tokio::time::timeout(within, child.wait())
        .await
        .context("the process did not exit")??)
}

/// How many replicas said they lead, and that none has exited.
fn leaders_among(replicas: &mut BTreeMap<String, Child>) -> anyhow::Result<Vec<String>> {
    let mut leading = Vec::new();
    for (name, child) in replicas.iter_mut() {
        ensure!(
            child.try_wait()?.is_none(),
            "{name} exited:\n{}",
            log_of(name)
        );
        if log_of(name).contains("INFO cellule_operator: leading") {
            leading.push(name.clone());
        }
    }
    Ok(leading)
}

#[tokio::test]
#[ignore = "runs its own operator processes: e2e/test.sh runs it once the shared operator is stopped"]
async fn one_leader_reconciles_a_standby_takes_over_on_kill_and_at_once_on_sigterm() {
    in_namespace("leader", |client: Client, ns: String| async move {
        // Three replicas: two standbys contend at each takeover.
        let mut replicas = BTreeMap::new();
        for name in ["leader-a", "leader-b", "leader-c"] {
            replicas.insert(name.to_owned(), replica(name).await?);
        }
        // The previous holder (the restart tests' replica) may hold it for
        // up to one Lease duration.
        let first = wait_holder(&client, &["leader-a", "leader-b", "leader-c"], Duration::from_secs(30)).await?;
        apply_sample_site(&client, &ns).await?;
        let generation = touch_pool(&client, &ns, 0).await?;
        reconciled(&client, &ns, generation, WAIT).await?;
        // Only the leader runs controllers.
        ensure!(leaders_among(&mut replicas)? == [first.clone()], "leaders: {:?}", leaders_among(&mut replicas)?);
        for (name, _) in replicas.iter().filter(|(n, _)| **n != first) {
            let log = log_of(name);
            ensure!(log.contains("waiting to lead") && !log.contains("controllers running") && !log.contains("reconciled"),
                "the standby {name} reconciled:\n{log}");
        }

        // SIGKILL: no hand-over; one of the two standbys waits out the Lease.
        let killed = Instant::now();
        let mut leader = replicas.remove(&first).context("leader process")?;
        leader.start_kill()?;
        leader.wait().await?;
        let generation = touch_pool(&client, &ns, 1).await?;
        let standbys: Vec<String> = replicas.keys().cloned().collect();
        let names: Vec<&str> = standbys.iter().map(String::as_str).collect();
        let second = wait_holder(&client, &names, Duration::from_secs(30)).await?;
        let lease_taken = killed.elapsed();
        reconciled(&client, &ns, generation, Duration::from_secs(30)).await?;
        let takeover = killed.elapsed();
        println!("leader SIGKILLed: Lease taken after {lease_taken:?}, change made meanwhile reconciled after {takeover:?}");
        ensure!(takeover <= Duration::from_secs(15), "takeover took {takeover:?}");
        ensure!(leaders_among(&mut replicas)? == [second.clone()], "leaders after the kill: {:?}", leaders_among(&mut replicas)?);

        // SIGTERM, twice, with a new replica each time (a rolling update):
        // the leader hands the Lease over and exactly one of the two
        // standbys takes it at once.
        for (round, newcomer) in ["leader-d", "leader-e"].into_iter().enumerate() {
            replicas.insert(newcomer.to_owned(), replica(newcomer).await?);
            let current = holder(&client).await.map_err(anyhow::Error::msg)?;
            let mut leader = replicas.remove(&current).context("the leader's process")?;
            let terminated = Instant::now();
            sigterm(&leader).await?;
            let generation = touch_pool(&client, &ns, 2 + round as u32).await?;
            let standbys: Vec<String> = replicas.keys().cloned().collect();
            let names: Vec<&str> = standbys.iter().map(String::as_str).collect();
            let next = wait_holder(&client, &names, Duration::from_secs(30)).await?;
            let lease_taken = terminated.elapsed();
            reconciled(&client, &ns, generation, Duration::from_secs(30)).await?;
            let handover = terminated.elapsed();
            let status = exit_of(&mut leader, Duration::from_secs(10)).await?;
            println!("leader SIGTERMed: Lease taken after {lease_taken:?}, change reconciled after {handover:?}");
            ensure!(status.success(), "the SIGTERMed leader exited with {status}:\n{}", log_of(&current));
            ensure!(log_of(&current).contains("handed the leader Lease over"), "{}", log_of(&current));
            ensure!(handover <= Duration::from_secs(4), "hand-over took {handover:?}");
            // Give a second taker time to show itself.
            tokio::time::sleep(Duration::from_secs(2)).await;
            ensure!(leaders_among(&mut replicas)? == [next.clone()], "leaders after SIGTERM: {:?}", leaders_among(&mut replicas)?);
        }
        // Each process writes under its own field manager: the ones whose
        // fields were all taken over are dropped, so the Lease does not grow
        // with every restart (five processes have held it or tried).
        let lease = Api::<Lease>::namespaced(client.clone(), NS).get(LEASE).await?;
        let managers = lease.metadata.managed_fields.unwrap_or_default();
        let names: Vec<_> = managers.iter().filter_map(|m| m.manager.clone()).collect();
        println!("Lease field managers after five processes: {names:?}");
        ensure!(managers.len() <= 4, "the Lease keeps {} field managers: {names:?}", managers.len());
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "runs its own operator processes: e2e/test.sh runs it once the shared operator is stopped"]
async fn a_leader_steps_down_when_its_lease_is_taken_or_cannot_be_renewed() {
    let client = cellule_e2e::admin_client().await;
    let leases = Api::<Lease>::namespaced(client.clone(), NS);

    // Taken: someone else's name in the Lease. The leader stops at once and
    // exits non-zero (its pod restarts as a standby).
    let mut leader = replica("leader-x").await.unwrap();
    wait_holder(&client, &["leader-x"], Duration::from_secs(30))
        .await
        .unwrap();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let taken = Instant::now();
    leases
        .patch(
            LEASE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 3}})),
        )
        .await
        .unwrap();
    let status = exit_of(&mut leader, Duration::from_secs(10)).await.unwrap();
    let stepped_down = taken.elapsed();
    println!("Lease taken by another: the leader exited after {stepped_down:?}");
    assert!(!status.success(), "{status}");
    assert!(
        log_of("leader-x").contains("stopped leading"),
        "{}",
        log_of("leader-x")
    );
    assert!(stepped_down <= Duration::from_secs(2), "{stepped_down:?}");

    // Not renewed: the operator's Lease writes refused. The leader must stop
    // before its Lease expires, so that it never leads beside a standby.
    let mut leader = replica("leader-y").await.unwrap();
    wait_holder(&client, &["leader-y"], Duration::from_secs(30))
        .await
        .unwrap();
    let lift = cellule_e2e::deny_writes(
        &client,
        NS,
        "lease",
        json!({"apiGroups": ["coordination.k8s.io"], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": ["leases"]}),
        "request.userInfo.username != 'system:serviceaccount:cellule-system:cellule-operator'",
        "lease renewals refused by the e2e test",
    )
    .await
    .unwrap();
    let status = exit_of(&mut leader, Duration::from_secs(30)).await;
    lift().await;
    let status = status.unwrap();
    let lease = leases.get(LEASE).await.unwrap().spec.unwrap();
    let expiry = lease.renew_time.unwrap().0
        + jiff::SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.unwrap()));
    let margin = expiry.duration_since(jiff::Timestamp::now());
    println!("Lease renewals refused: the leader exited {margin:?} before its Lease expired");
    assert!(!status.success(), "{status}");
    assert!(
        log_of("leader-y").contains("could not be renewed"),
        "{}",
        log_of("leader-y")
    );
    assert!(
        margin.is_positive(),
        "the leader exited after its Lease expired ({margin:?})"
    );
}
