//! Soak: the operator's watch caches stay live after many events.
//!
//! kube-runtime's shared reflector stores (`store_shared(256)`) hold each
//! event until every subscriber has read it: one subscriber that is kept
//! but never polled freezes its cache after 256 events, and the operator
//! then works from a stale copy (a deleted object is never recreated, an
//! object that appeared is never seen). Unit tests and short e2e tests
//! stay under 256 events per kind; this one drives thousands of changes
//! through every kind the operator watches, then checks that each cache
//! still follows the API server.
//!
//! In its own namespace, with the sample site Ready, it makes
//! `CHANGES_PER_KIND` changes (env `CELLULE_SOAK_CHANGES` for a longer run)
//! to one operator-owned object of each kind (Deployment, Service,
//! ConfigMap, ServiceAccount, PodDisruptionBudget, NetworkPolicy, Secret:
//! a merge patch of an annotation the operator does not manage, so it has
//! nothing to rewrite), and a quarter of that to the readiness of the
//! site's pods (KWOK annotation) and to each of the Pool, NpuServer and
//! WorkerGrant: one writer per object, all at once. Then, each within
//! `LIVE`:
//! - a new Pool reports its missing DSN Secret, becomes Ready once the
//!   Secret exists, and a new WorkerGrant on it gets a token;
//! - a Pool setting reaches the rendered config (`<pool>-config`);
//! - an owned object of each kind, deleted, is recreated (`paris-routing`
//!   for ConfigMaps).
//!
//! It also checks in the audit log that the soak made the operator write
//! none of the soaked objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    io::{Read as _, Seek as _},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use cellule_e2e::{
    Env, POD_READY_ANNOTATION, apply_sample_site, cellule_api, create_secret, eventually,
    in_namespace, wait_condition,
};
use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Changes made to each kind of operator-owned object;
/// `CELLULE_SOAK_CHANGES` overrides it. Well above the 256 events a shared
/// store buffers per subscriber.
pub const CHANGES_PER_KIND: usize = 2_000;
/// Pod readiness flips and changes to each custom resource get this
/// fraction of `CHANGES_PER_KIND` (500: still twice what a shared store
/// buffers). Each costs several times an owned object's change: a Pool
/// change wakes the Pool, NpuServer and WorkerGrant controllers, CEL rules
/// validate every custom resource write, and a pod flip makes KWOK and the
/// ReplicaSet, Deployment, EndpointSlice and disruption controllers write.
const OTHER_CHANGES_DIVISOR: usize = 4;
/// The sample site coming up.
const SETUP: Duration = Duration::from_secs(90);
/// How soon after the soak each cache must show a change.
const LIVE: Duration = Duration::from_secs(30);
const OWNED: &str = "app.kubernetes.io/managed-by=cellule-operator";
const COMPONENT: &str = "app.kubernetes.io/component";
/// The annotation the soak writes: nothing the operator manages.
const SOAK_ANNOTATION: &str = "e2e.cellule.ai/soak";

fn changes_per_kind() -> usize {
    match std::env::var("CELLULE_SOAK_CHANGES") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("CELLULE_SOAK_CHANGES={n:?} is not a number")),
        Err(_) => CHANGES_PER_KIND,
    }
}

/// Objects of one kind that the soak changes.
struct Soaked {
    kind: String,
    api: Api<DynamicObject>,
    resource: ApiResource,
    names: Vec<String>,
    /// Changes to make, shared between the objects.
    changes: usize,
    /// Pods: flip readiness (`false`, `true`, …) instead of a counter.
    readiness: bool,
}

impl Soaked {
    /// The `i`-th change of one of its objects, as a merge patch.
    fn patch(&self, i: usize) -> Value {
        if self.readiness {
            let ready = if i.is_multiple_of(2) { "false" } else { "true" };
            json!({"metadata": {"annotations": {POD_READY_ANNOTATION: ready}}})
        } else {
            json!({"metadata": {"annotations": {SOAK_ANNOTATION: i.to_string()}}})
        }
    }

    /// How many changes its `k`-th object gets: its share of `changes`
    /// (for a pod, an even number: it ends Ready).
    fn share(&self, k: usize) -> usize {
        let n = self.names.len();
        let share = self.changes / n + usize::from(k < self.changes % n);
        if self.readiness {
            share + share % 2
        } else {
            share
        }
    }
}

/// An owned object of one kind, as a dynamic handle.
#[derive(Clone)]
struct Owned {
    kind: String,
    api: Api<DynamicObject>,
    resource: ApiResource,
    name: String,
}

/// The operator's objects of kind `K` in `ns` (by the managed-by label),
/// sorted by name.
async fn owned<K>(client: &Client, ns: &str) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let mut items = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(OWNED))
        .await?
        .items;
    items.sort_by_key(|o| o.name_any());
    Ok(items)
}

/// One owned object of kind `K`: the first that `prefer` picks, else the
/// first by name.
async fn pick<K>(client: &Client, ns: &str, prefer: impl Fn(&K) -> bool) -> anyhow::Result<Owned>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let kind = K::kind(&()).into_owned();
    let items = owned::<K>(client, ns).await?;
    let chosen = items
        .iter()
        .find(|o| prefer(o))
        .or(items.first())
        .with_context(|| format!("the operator made no {kind} in {ns}"))?;
    Ok(dynamic::<K>(client, ns, &chosen.name_any()))
}

fn cellule_resource(kind: &str) -> ApiResource {
    use cellule_operator::api::{NpuServer, Pool, WorkerGrant};
    match kind {
        "Pool" => ApiResource::erase::<Pool>(&()),
        "NpuServer" => ApiResource::erase::<NpuServer>(&()),
        "WorkerGrant" => ApiResource::erase::<WorkerGrant>(&()),
        other => panic!("not a soaked cellule.ai kind: {other}"),
    }
}

fn dynamic<K: Resource<DynamicType = ()>>(client: &Client, ns: &str, name: &str) -> Owned {
    let resource = ApiResource::erase::<K>(&());
    Owned {
        kind: K::kind(&()).into_owned(),
        api: Api::namespaced_with(client.clone(), ns, &resource),
        resource,
        name: name.to_owned(),
    }
}

/// A CPU worker's object: no condition of the Pool or the NpuServer
/// depends on it (an annotation on a Deployment bumps its generation).
fn cpu_worker<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(COMPONENT))
        .is_some_and(|c| c == "cpu-worker")
}

fn owned_by<K: Resource>(kind: &'static str) -> impl Fn(&K) -> bool {
    move |object| {
        object
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == kind)
    }
}

fn soaked(owned: &Owned, changes: usize) -> Soaked {
    Soaked {
        kind: owned.kind.clone(),
        api: owned.api.clone(),
        resource: owned.resource.clone(),
        names: vec![owned.name.clone()],
        changes,
        readiness: false,
    }
}

/// Makes the changes of every soaked kind, with one writer per
/// object and every object at once (parallel writes to one object would
/// only conflict and be retried by the API server); returns the writes
/// made per kind.
async fn soak(targets: &[Soaked]) -> anyhow::Result<BTreeMap<String, usize>> {
    let writers: Vec<(&Soaked, &str, usize)> = targets
        .iter()
        .flat_map(|t| {
            t.names
                .iter()
                .enumerate()
                .map(move |(k, name)| (t, name.as_str(), t.share(k)))
        })
        .collect();
    let total: usize = writers.iter().map(|(_, _, count)| count).sum();
    println!("soak: {total} writes by {} writers at once", writers.len());
    let (done, step, started) = (AtomicUsize::new(0), (total / 10).max(1), Instant::now());
    let written = futures::future::try_join_all(writers.iter().map(|&(target, name, count)| {
        let done = &done;
        async move {
            for i in 0..count {
                target
                    .api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&target.patch(i)),
                    )
                    .await
                    .with_context(|| format!("change {i} of {} {name}", target.kind))?;
                let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                if done.is_multiple_of(step) {
                    println!("soak: {done}/{total} writes in {:.1?}", started.elapsed());
                }
            }
            anyhow::Ok((target.kind.clone(), count))
        }
    }))
    .await?;
    let mut counts = BTreeMap::new();
    for (kind, count) in written {
        *counts.entry(kind).or_default() += count;
    }
    Ok(counts)
}

/// The Pool `paris` of config/samples/ renamed `name`, with its DSN in
/// Secret `dsn_secret`, keeping only the tiers served by CPU workers (the
/// sample NpuServer belongs to `paris`).
fn another_pool(name: &str, dsn_secret: &str) -> anyhow::Result<DynamicObject> {
    let (_, mut pool) = cellule_e2e::sample_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Pool" && d["metadata"]["name"] == "paris")
        .context("no sample Pool paris")?;
    pool["metadata"] = json!({"name": name});
    let spec = &mut pool["spec"];
    spec["database"]["dsnSecretRef"]["name"] = json!(dsn_secret);
    let tiers: Vec<Value> = spec["tiers"]
        .as_array()
        .context("sample tiers")?
        .iter()
        .filter(|t| t["backend"] == "Cpu")
        .cloned()
        .collect();
    spec["tiers"] = json!(tiers);
    if spec["federation"].is_object() {
        spec["federation"]["site"] = json!(name);
    }
    Ok(serde_json::from_value(pool)?)
}

/// The approved grant `laptop-alice` of config/samples/, renamed `name`,
/// for the Pool `pool`.
fn another_grant(name: &str, pool: &str) -> anyhow::Result<DynamicObject> {
    let (_, mut grant) = cellule_e2e::sample_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "WorkerGrant" && d["metadata"]["name"] == "laptop-alice")
        .context("no sample WorkerGrant laptop-alice")?;
    grant["metadata"] = json!({"name": name});
    grant["spec"]["poolRef"]["name"] = json!(pool);
    grant["spec"]["workerId"] = json!("pc-soak-1");
    ensure!(
        grant["spec"]["approvedBy"].is_string()
            && grant["spec"]["approvedBy"] != grant["spec"]["requestedBy"],
        "the sample grant is approved by a second person"
    );
    Ok(serde_json::from_value(grant)?)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A new Pool is seen (it reports its missing DSN Secret), the Secret is
/// seen (the Pool becomes Ready: Deployments too), then a new WorkerGrant
/// on it is issued a token (the Pool's key ring and revocation list).
async fn new_pool_and_grant(client: Client, ns: String) -> anyhow::Result<String> {
    let (pool, dsn) = ("soak2", "soak2-db");
    let started = Instant::now();
    cellule_api(&client, &ns, "Pool")
        .create(&PostParams::default(), &another_pool(pool, dsn)?)
        .await?;
    wait_condition(&client, &ns, "Pool", pool, "Stalled", "True", LIVE).await?;
    let stalled = started.elapsed();
    let started = Instant::now();
    create_secret(
        &client,
        &ns,
        dsn,
        &[("dsn", "postgres://cellule@db:5432/soak2")],
    )
    .await?;
    wait_condition(&client, &ns, "Pool", pool, "Ready", "True", LIVE).await?;
    let ready = started.elapsed();
    println!(
        "new Pool {pool}: Stalled in {}, Ready {} after its DSN Secret",
        secs(stalled),
        secs(ready)
    );

    let grant = "soak-grant";
    let started = Instant::now();
    let grants = cellule_api(&client, &ns, "WorkerGrant");
    grants
        .create(&PostParams::default(), &another_grant(grant, pool)?)
        .await?;
    eventually(&format!("WorkerGrant {grant} Active"), LIVE, || async {
        let g = grants.get(grant).await.map_err(|e| e.to_string())?;
        let ready = g.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .is_some_and(|c| c["status"] == "True");
        if g.data["status"]["phase"] == "Active" && ready {
            Ok(())
        } else {
            Err(g.data["status"].to_string())
        }
    })
    .await?;
    let active = started.elapsed();
    println!(
        "new WorkerGrant {grant}: Active and Ready in {}",
        secs(active)
    );
    Ok(format!(
        "Pool {pool} Stalled in {}, Ready in {} after its Secret; WorkerGrant {grant} Active in {}",
        secs(stalled),
        secs(ready),
        secs(active)
    ))
}

/// A Pool setting reaches the rendered config.
async fn config_follows(client: Client, ns: String) -> anyhow::Result<String> {
    let pools = cellule_api(&client, &ns, "Pool");
    let now = pools.get("paris").await?.data["spec"]["rateLimit"]["requestsPerMinutePerSigner"]
        .as_i64()
        .context("paris has a rate limit")?;
    let want = now + 7;
    let started = Instant::now();
    pools
        .patch(
            "paris",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rateLimit": {"requestsPerMinutePerSigner": want}}})),
        )
        .await?;
    let needle = format!("requestsPerMinutePerSigner: {want}");
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    eventually(&format!("paris-config with {needle}"), LIVE, || async {
        let cm = config_maps
            .get("paris-config")
            .await
            .map_err(|e| e.to_string())?;
        let data = cm.data.unwrap_or_default();
        if data.values().any(|text| text.contains(&needle)) {
            Ok(())
        } else {
            Err(format!("{data:?}"))
        }
    })
    .await?;
    Ok(format!("{needle} rendered in {}", secs(started.elapsed())))
}

/// An owned object, deleted, comes back (a new object: another uid).
async fn recreated(target: Owned) -> anyhow::Result<String> {
    let what = format!("{} {}", target.kind, target.name);
    let before = target.api.get(&target.name).await?.metadata.uid;
    let started = Instant::now();
    target
        .api
        .delete(&target.name, &DeleteParams::background())
        .await?;
    eventually(&format!("{what} recreated"), LIVE, || async {
        match target
            .api
            .get_opt(&target.name)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(o) if o.metadata.uid != before && o.metadata.deletion_timestamp.is_none() => {
                Ok(())
            }
            Some(_) => Err("the deleted object is still there".into()),
            None => Err("absent".into()),
        }
    })
    .await?;
    Ok(format!("recreated in {}", secs(started.elapsed())))
}

/// Writes (create, update, patch, delete; not to a subresource) the
/// operator made in `ns` to the objects `soaked`, from the audit log past
/// `offset` and received before `until`; and all its writes in `ns` there.
fn operator_writes_to(
    ns: &str,
    soaked: &BTreeSet<(String, String)>,
    offset: u64,
    until: jiff::Timestamp,
) -> anyhow::Result<(usize, Vec<String>)> {
    let operator = Env::var("CELLULE_E2E_OPERATOR_USER");
    let mut file = std::fs::File::open(audit_log())?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let (mut all, mut on_soaked) = (0, vec![]);
    for line in text.lines() {
        // Cheap filters first: the log holds every write of the soak.
        if !line.contains(&operator) || !line.contains(ns) {
            continue;
        }
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let o = &e["objectRef"];
        let received: Option<jiff::Timestamp> = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok());
        if e["stage"] != "ResponseComplete"
            || e["user"]["username"] != operator.as_str()
            || o["namespace"] != ns
            || !matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
            || received.is_none_or(|t| t >= until)
        {
            continue;
        }
        all += 1;
        let key = (
            o["resource"].as_str().unwrap_or_default().to_owned(),
            o["name"].as_str().unwrap_or_default().to_owned(),
        );
        if o["subresource"].as_str().unwrap_or_default().is_empty() && soaked.contains(&key) {
            on_soaked.push(format!("{} {}/{}", e["verb"], key.0, key.1));
        }
    }
    Ok((all, on_soaked))
}

fn audit_log() -> PathBuf {
    PathBuf::from(Env::var("CELLULE_E2E_LOGS")).join("audit.log")
}

#[tokio::test]
async fn every_cache_stays_live_after_thousands_of_events() {
    in_namespace("soak", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", SETUP).await?;
        wait_condition(&client, &ns, "NpuServer", "heavy", "Ready", "True", SETUP).await?;

        // What to soak: one owned object per kind, picked by label.
        let owned_objects = [
            pick::<Deployment>(&client, &ns, cpu_worker).await?,
            pick::<Service>(&client, &ns, cpu_worker).await?,
            pick::<ConfigMap>(&client, &ns, |_| false).await?,
            pick::<ServiceAccount>(&client, &ns, |_| false).await?,
            pick::<PodDisruptionBudget>(&client, &ns, |_| false).await?,
            pick::<NetworkPolicy>(&client, &ns, cpu_worker).await?,
            // The Pool's signing key ring: watched by the Pool and the
            // WorkerGrant controllers, and by the Secret metadata watch.
            pick::<Secret>(&client, &ns, owned_by("Pool")).await?,
        ];
        let per_kind = changes_per_kind();
        let others = per_kind / OTHER_CHANGES_DIVISOR;
        let mut targets: Vec<Soaked> = owned_objects
            .iter()
            .map(|o| soaked(o, per_kind))
            .collect();
        let mut pods: Vec<String> = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        pods.sort();
        ensure!(!pods.is_empty(), "the sample site has no pods");
        let pod_resource = ApiResource::erase::<Pod>(&());
        let pod_api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &pod_resource);
        targets.push(Soaked {
            kind: "Pod (readiness)".into(),
            api: pod_api,
            resource: pod_resource,
            names: pods,
            changes: others,
            readiness: true,
        });
        for (kind, name) in [
            ("Pool", "paris"),
            ("NpuServer", "heavy"),
            ("WorkerGrant", "laptop-alice"),
        ] {
            targets.push(Soaked {
                kind: kind.into(),
                api: cellule_api(&client, &ns, kind),
                resource: cellule_resource(kind),
                names: vec![name.into()],
                changes: others,
                readiness: false,
            });
        }
        for t in &targets {
            println!("soaking {} ({} changes): {}", t.kind, t.changes, t.names.join(", "));
        }

        let audit_offset = std::fs::metadata(audit_log())?.len();
        let started = Instant::now();
        let counts = soak(&targets).await?;
        let elapsed = started.elapsed();
        let writes: usize = counts.values().sum();
        println!(
            "soak: {writes} writes in {} ({:.0}/s), {per_kind} per kind of owned object:",
            secs(elapsed),
            writes as f64 / elapsed.as_secs_f64()
        );
        for (kind, n) in &counts {
            println!("  {kind}: {n}");
        }
        for t in &targets {
            ensure!(
                counts.get(&t.kind).copied().unwrap_or(0) >= t.changes,
                "{} got fewer than {} changes",
                t.kind,
                t.changes
            );
        }

        // Every cache still follows the API server: each of these needs
        // the operator to see a change made now. All at once, so a frozen
        // cache costs LIVE once, and every finding is reported.
        let probes_started = jiff::Timestamp::now();
        // The deleted objects: the soaked ones, but the ConfigMap the
        // routing one and the Secret a WorkerGrant's token (deleting the
        // key ring would invalidate every token).
        let mut deleted: Vec<Owned> = owned_objects
            .iter()
            .filter(|o| o.kind != "ConfigMap" && o.kind != "Secret")
            .cloned()
            .collect();
        deleted.push(dynamic::<ConfigMap>(&client, &ns, "paris-routing"));
        let tokens: Vec<Secret> = owned::<Secret>(&client, &ns).await?;
        let token = tokens
            .iter()
            .find(|s| owned_by::<Secret>("WorkerGrant")(s))
            .context("no Secret owned by a WorkerGrant (a token)")?;
        deleted.push(dynamic::<Secret>(&client, &ns, &token.name_any()));
        let mut probes: Vec<(String, BoxFuture<'static, anyhow::Result<String>>)> = vec![
            (
                "new Pool and WorkerGrant".into(),
                new_pool_and_grant(client.clone(), ns.clone()).boxed(),
            ),
            (
                "Pool setting rendered into paris-config".into(),
                config_follows(client.clone(), ns.clone()).boxed(),
            ),
        ];
        for target in deleted {
            probes.push((
                format!("deleted {} {}", target.kind, target.name),
                recreated(target).boxed(),
            ));
        }
        let (names, futures): (Vec<_>, Vec<_>) = probes.into_iter().unzip();
        let outcomes = futures::future::join_all(futures).await;

        let soaked_keys: BTreeSet<(String, String)> = targets
            .iter()
            .filter(|t| !t.readiness)
            .map(|t| (t.resource.plural.clone(), t.names[0].clone()))
            .collect();
        let (operator_writes, rewrites) =
            operator_writes_to(&ns, &soaked_keys, audit_offset, probes_started)?;
        println!(
            "operator writes in {ns} during the soak: {operator_writes} (to the soaked objects: {})",
            rewrites.len()
        );

        let mut failed = vec![];
        for (name, outcome) in names.iter().zip(outcomes) {
            match outcome {
                Ok(what) => println!("ok    {name}: {what}"),
                Err(e) => {
                    println!("FAIL  {name}: {e:#}");
                    failed.push(format!("{name}: {e:#}"));
                }
            }
        }
        if !rewrites.is_empty() {
            failed.push(format!(
                "the soak made the operator rewrite what it soaked: {}",
                rewrites.join(", ")
            ));
        }
        if !failed.is_empty() {
            bail!(
                "after {writes} writes ({per_kind} per kind of owned object) in {}:\n{}",
                secs(elapsed),
                failed.join("\n")
            );
        }
        Ok(())
    })
    .await;
}
