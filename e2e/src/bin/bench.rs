//! Benchmarks of worker tokens, printed as figures (run by e2e/bench.sh
//! against the local control plane and the operator):
//! - revocation latency, over 100 grants, from the update of a WorkerGrant
//!   on the API server to (a) its `jti` on the pool's revocation list (the
//!   store) and (b) the token refused by the reference verifier running
//!   with the pool's ServiceAccount credentials (end to end), same run;
//! - time to issue 1,000 grants until every one is Active, then to revoke
//!   them all at once until the verifier (as the pool) refuses every token,
//!   and the WorkerGrant reconciles that took;
//! - the revocation store filled with 1,000 / 10,000 / 100,000 entries
//!   through its own interface (the operator's code, against the real API
//!   server, without that many grants): objects, bytes per object, bytes
//!   rewritten and time per revocation, and how long a verifier starting
//!   then takes to read it all;
//! - the cost of signing and verifying one token (in process);
//! - NPU → CPU fail-over (`CELLULE_BENCH=failover`, see [`failover_figures`]):
//!   latency from an NPU pod's Ready turning False to the tier's
//!   EndpointSlice and to the routing the pool's credentials see, fail-back
//!   accuracy, and switches under flapping readiness.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use cellule_e2e::{admin_client, apply_sample_site, cellule_api, install_crds};
use cellule_operator::tokens::{self, Claims, PoolKey};
use cellule_operator::{
    api::Pool,
    images::{
        cache::Cached,
        registry::{Registry, RegistryConfig},
    },
    reconcile::{
        Context,
        context::{OwnedStores, Stores},
    },
    tokens::revocations::{self, RevocationList, RevocationStore, RevokedToken},
};
use cellule_verifier::live::Live;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn grant(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
        "metadata": {"name": name},
        "spec": {"poolRef": {"name": "paris"}, "workerId": name, "owner": "bench@example.com", "tiers": ["light"],
                 "ttl": "24h", "requestedBy": "alice", "approvedBy": "bob"}
    }))
    .unwrap()
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    apply_sample_site(client, name).await
}

async fn create_and_wait_active(
    client: &Client,
    ns: &str,
    names: &[String],
) -> anyhow::Result<Duration> {
    let api = cellule_api(client, ns, "WorkerGrant");
    let started = Instant::now();
    futures::stream::iter(names.iter().cloned())
        .map(|n| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &grant(&n)).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let active = list
            .items
            .iter()
            .filter(|g| {
                names.iter().any(|n| Some(n) == g.metadata.name.as_ref())
                    && g.data["status"]["phase"] == "Active"
            })
            .count();
        if active == names.len() {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {active}/{} Active after 10 min",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reference verifier of the sample pool in `ns`, running with the
/// pool's ServiceAccount credentials, once its data is current.
async fn verifier_as_pool(client: &Client, ns: &str) -> anyhow::Result<Live> {
    let kubeconfig = cellule_e2e::service_account_kubeconfig(client, ns, "paris-pool").await?;
    let live = Live::start(
        cellule_e2e::client_from(&kubeconfig).await?,
        ns,
        "paris",
        Duration::from_secs(10),
    );
    let ready = Instant::now() + Duration::from_secs(30);
    while let Some(why) = live.unavailable() {
        anyhow::ensure!(Instant::now() < ready, "verifier not ready: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(live)
}

/// Store and end-to-end latencies of `count` revocations, each sorted.
async fn revocation_latency(
    client: &Client,
    ns: &str,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let names: Vec<String> = (0..count).map(|i| format!("revoke-{i}")).collect();
    create_and_wait_active(client, ns, &names).await?;
    let grants = cellule_api(client, ns, "WorkerGrant");
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut jtis = HashMap::new();
    let mut tokens = HashMap::new();
    for name in &names {
        let g = grants.get(name).await?;
        jtis.insert(
            name.clone(),
            g.data["status"]["token"]["jti"]
                .as_str()
                .context("jti")?
                .to_owned(),
        );
        let secret = secrets.get(&format!("{name}-token")).await?;
        tokens.insert(
            name.clone(),
            String::from_utf8(secret.data.context("token data")?["token"].0.clone())?,
        );
    }
    let live = verifier_as_pool(client, ns).await?;
    // Watch the revocation lists; note when each jti first appears.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let lists: Api<RevocationList> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels("cellule.ai/pool=paris");
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = watcher(lists, config).applied_objects().boxed();
            while let Some(Ok(list)) = stream.next().await {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                for entry in list.spec.entries {
                    seen.entry(entry.jti).or_insert(now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut store, mut end_to_end) = (vec![], vec![]);
    for name in &names {
        let token = &tokens[name];
        anyhow::ensure!(
            live.verify(token, jiff::Timestamp::now().as_second())
                .is_ok(),
            "{name}'s token refused before its revocation"
        );
        let started = Instant::now();
        grants
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true}})),
            )
            .await?;
        let jti = &jtis[name];
        let deadline = started + Duration::from_secs(10);
        loop {
            let refused = matches!(
                live.verify(token, jiff::Timestamp::now().as_second()),
                Err(tokens::VerifyError::Revoked { .. })
            );
            if refused {
                end_to_end.push(started.elapsed());
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{jti} still accepted after 10s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The bench's own watch of the list may deliver after the verifier's.
        let listed = loop {
            if let Some(at) = seen.lock().unwrap().get(jti) {
                break *at;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{jti} refused but never seen on the list"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        store.push(listed.saturating_duration_since(started));
    }
    recorder.abort();
    store.sort();
    end_to_end.sort();
    Ok((store, end_to_end))
}

/// Revokes every grant of `names` at once (16 updates in flight) and
/// returns how long until the verifier, running as the pool, refuses every
/// one of their tokens.
async fn mass_revocation(client: &Client, ns: &str, names: &[String]) -> anyhow::Result<Duration> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut tokens = Vec::new();
    for name in names {
        let secret = secrets.get(&format!("{name}-token")).await?;
        tokens.push(String::from_utf8(
            secret.data.context("token data")?["token"].0.clone(),
        )?);
    }
    let live = verifier_as_pool(client, ns).await?;
    let grants = cellule_api(client, ns, "WorkerGrant");
    let started = Instant::now();
    let patches = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let grants = grants.clone();
            async move {
                grants
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"revoked": true}})),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>();
    let watch = async {
        // A revoked token stays refused: only the ones still accepted are
        // asked again (the bench must not eat the CPU it measures).
        let mut accepted = tokens;
        loop {
            let now = jiff::Timestamp::now().as_second();
            accepted.retain(|t| live.verify(t, now).is_ok());
            if accepted.is_empty() {
                return anyhow::Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{} tokens still accepted after 10 min",
                accepted.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (patched, took) = tokio::join!(patches, watch);
    patched?;
    took
}

fn empty<K>() -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    reflector::store().0
}

/// The operator's own revocation store for the sample pool in `ns`: a
/// context whose caches hold that Pool and, kept current by a watch, the
/// namespace's revocation lists (what the operator's caches hold).
async fn store_context(client: &Client, ns: &str) -> anyhow::Result<Arc<Context>> {
    let pool = Api::<Pool>::namespaced(client.clone(), ns)
        .get("paris")
        .await?;
    let (pools, mut pool_writer) = reflector::store();
    pool_writer.apply_watcher_event(&watcher::Event::Apply(pool));
    let (lists, writer) = reflector::store();
    let api = Api::<RevocationList>::namespaced(client.clone(), ns);
    tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .for_each(|_| futures::future::ready(())),
    );
    lists.wait_until_ready().await?;
    let owned = OwnedStores {
        deployments: empty(),
        services: empty(),
        config_maps: empty(),
        service_accounts: empty(),
        pod_disruption_budgets: empty(),
        network_policies: empty(),
        roles: empty(),
        role_bindings: empty(),
        revocation_lists: lists,
        secrets: empty(),
        endpoint_slices: empty(),
    };
    Ok(Context::new(
        client.clone(),
        Stores {
            owned,
            secret_metadata: empty(),
            api_server: empty(),
            npu_servers: empty(),
            pools,
            grants: empty(),
            peer_trusts: empty(),
            pods: empty(),
            nodes: empty(),
        },
        // The revocation store reads no image.
        Arc::new(Cached::new(
            verifier_registry()?,
            Duration::from_secs(60),
            16,
        )),
    ))
}

/// Revoked tokens with expiries spread evenly over the next `span` seconds.
fn spread(count: usize, span: i64, now: i64) -> Vec<RevokedToken> {
    (0..count)
        .map(|i| RevokedToken {
            jti: tokens::new_jti(),
            exp: now + 60 + (i as i64 * span) / count.max(1) as i64,
        })
        .collect()
}

/// Fills the store of `ns` up to `fill` entries, then measures `samples`
/// single revocations; prints the figures.
async fn store_cost(
    client: &Client,
    ns: &str,
    ctx: &Context,
    filled: &mut usize,
    fill: usize,
    samples: usize,
) -> anyhow::Result<()> {
    let pool = Api::<Pool>::namespaced(client.clone(), ns)
        .get("paris")
        .await?;
    let max_ttl = pool.spec.tokens.max_ttl.0.as_secs() as i64;
    let now = jiff::Timestamp::now().as_second();
    let store = revocations::store(ctx, ns, "paris");
    let started = Instant::now();
    for batch in spread(fill - *filled, max_ttl - 120, now).chunks(1000) {
        store.revoke_all(batch).await?;
        // The next batch is placed from a cache that has this one.
        let last = &batch[batch.len() - 1].jti;
        while !ctx
            .owned
            .revocation_lists
            .state()
            .iter()
            .any(|l| l.spec.entries.iter().any(|e| &e.jti == last))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let fill_took = started.elapsed();
    *filled = fill;
    let (mut times, mut rewritten) = (vec![], vec![]);
    for token in spread(samples, max_ttl - 120, now) {
        let started = Instant::now();
        store.revoke(&token.jti, token.exp).await?;
        times.push(started.elapsed());
        // The object that took it, as written (what etcd stores whole).
        let holder = loop {
            let holder = ctx
                .owned
                .revocation_lists
                .state()
                .into_iter()
                .find(|l| l.spec.entries.iter().any(|e| e.jti == token.jti));
            if let Some(holder) = holder {
                break holder;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        rewritten.push(serde_json::to_vec(holder.as_ref())?.len());
    }
    *filled += samples;
    times.sort();
    let lists = Api::<RevocationList>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let sizes: Vec<usize> = lists
        .items
        .iter()
        .map(|l| serde_json::to_vec(l).map(|v| v.len()))
        .collect::<Result<_, _>>()?;
    let total: usize = sizes.iter().sum();
    let entries: usize = lists.items.iter().map(|l| l.spec.entries.len()).sum();
    println!(
        "  {fill} entries ({entries} listed, filled in {fill_took:?}): {} objects, {} KB in all, largest {} KB, mean {} KB",
        sizes.len(),
        total / 1024,
        sizes.iter().max().copied().unwrap_or_default() / 1024,
        total / sizes.len().max(1) / 1024
    );
    println!(
        "    per revocation, over {samples}: one object rewritten, {} KB mean, {} KB max; time {}",
        rewritten.iter().sum::<usize>() / rewritten.len().max(1) / 1024,
        rewritten.iter().max().copied().unwrap_or_default() / 1024,
        summary(&times)
    );
    let started = Instant::now();
    let live = verifier_as_pool(client, ns).await?;
    println!(
        "    a verifier starting as the pool reads them all and is ready in {:?}",
        started.elapsed()
    );
    drop(live);
    Ok(())
}

/// WorkerGrant reconciles so far, from the operator's log (its debug line
/// per reconcile, target `cellule_operator::reconciles`).
fn grant_reconciles() -> Option<usize> {
    let log = std::env::var("CELLULE_E2E_OPERATOR_LOG").ok()?;
    let text = std::fs::read_to_string(log).ok()?;
    Some(
        text.lines()
            .filter(|l| l.contains("reconciled") && l.contains("WorkerGrant"))
            .count(),
    )
}

fn summary(latencies: &[Duration]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    format!(
        "p50 {:?}, p95 {:?}, p99 {:?}, max {:?}",
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.95),
        percentile(&sorted, 0.99),
        sorted.last().unwrap()
    )
}

fn sign_verify_cost(rounds: u32) -> (Duration, Duration) {
    let key = PoolKey::generate();
    let jwks = jsonwebtoken::jwk::JwkSet {
        keys: vec![key.jwk()],
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: "bench/paris".into(),
        sub: "pc-1".into(),
        aud: "bench/paris".into(),
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: tokens::new_jti(),
        tiers: vec!["light".into()],
    };
    let started = Instant::now();
    let mut token = String::new();
    for _ in 0..rounds {
        token = tokens::jwt::sign(&key, &claims);
    }
    let sign = started.elapsed() / rounds;
    let revoked = BTreeMap::new();
    let policy = tokens::VerifierPolicy {
        audience: "bench/paris".into(),
        max_ttl_seconds: 2160 * 3600,
        leeway_seconds: tokens::LEEWAY_SECS as i64,
    };
    let started = Instant::now();
    for _ in 0..rounds {
        tokens::verify(&token, &jwks, &revoked, &policy, now).expect("verifies");
    }
    (sign, started.elapsed() / rounds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // CELLULE_BENCH=images (or tokens, or failover) runs one part; default all.
    let only = std::env::var("CELLULE_BENCH").unwrap_or_default();
    if only.is_empty() || only == "images" {
        image_figures().await?;
    }
    if only.is_empty() || only == "tokens" {
        token_figures().await?;
    }
    if only.is_empty() || only == "failover" {
        failover_figures().await?;
    }
    Ok(())
}

/// Registry requests so far, from the e2e registry's own request log.
fn registry_requests() -> usize {
    let log = format!("{}/registry.log", cellule_e2e::Env::var("CELLULE_E2E_LOGS"));
    std::fs::read_to_string(log)
        .map(|text| {
            text.lines()
                .filter(|l| l.contains(" GET /v2") || l.contains(" HEAD /v2"))
                .count()
        })
        .unwrap_or(0)
}

/// The registry as the operator reaches it in e2e.
fn verifier_registry() -> anyhow::Result<Registry> {
    Ok(Registry::new(RegistryConfig {
        insecure: std::env::var("CELLULE_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect(),
        allowed: Vec::new(),
        ca_bundle: None,
        timeout: Duration::from_secs(10),
    })?)
}

/// A verifier as the operator builds it, against the e2e registry.
fn verifier() -> Cached<Registry> {
    Cached::new(
        verifier_registry().expect("the registry settings"),
        Duration::from_secs(3600),
        4096,
    )
}

async fn image_figures() -> anyhow::Result<()> {
    use cellule_e2e::images::{apply, npu_server, push, scratch, sign, wait_deployment_image};
    use cellule_operator::images::{Auth, ImageName, PublicKey, Verify};
    let registry = cellule_e2e::Env::registry();
    let pem = std::fs::read_to_string(cellule_e2e::Env::var("CELLULE_E2E_COSIGN_PUB"))?;
    let request = cellule_operator::images::Request {
        image: ImageName::parse(&format!("{registry}/cellule/pool:1.4.2"))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        keys: vec![PublicKey {
            source: "bench".into(),
            pem,
        }],
        auth: Auth::Anonymous,
        refresh: Duration::from_secs(300),
    };
    println!("image verification against the local registry (crane, plain HTTP, loopback):");
    let rounds = 30;
    let mut cold = Vec::new();
    let before = registry_requests();
    for _ in 0..rounds {
        let fresh = verifier();
        let started = Instant::now();
        fresh
            .verify(&request)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(started.elapsed());
    }
    println!(
        "  cold (resolve the tag, read image and signature, verify; a new cache each time), {rounds} rounds: {}; {} registry requests each",
        summary(&cold),
        (registry_requests() - before) / rounds
    );
    let warm = verifier();
    warm.verify(&request)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cached = Vec::new();
    for _ in 0..10_000 {
        let started = Instant::now();
        warm.verify(&request)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cached.push(started.elapsed());
    }
    println!("  cached decision, 10,000 calls: {}", summary_us(&cached));
    let many = verifier();
    let before = registry_requests();
    let started = Instant::now();
    let all = futures::future::join_all((0..500).map(|_| many.verify(&request))).await;
    let took = started.elapsed();
    ensure_all_ok(&all)?;
    println!(
        "  500 Pools on one image at once (500 concurrent verifications, one cache as in the operator): {took:?}, {} registry requests, {} resolution and {} verification",
        registry_requests() - before,
        many.counts
            .resolves
            .load(std::sync::atomic::Ordering::Relaxed),
        many.counts
            .checks
            .load(std::sync::atomic::Ordering::Relaxed),
    );

    // End to end, through the operator: a new signed image in an
    // NpuServer until its Deployment runs the pinned digest.
    let client = admin_client().await;
    let ns = format!("bench-images-{}", std::process::id());
    namespace(&client, &ns).await?;
    let dir = scratch(&ns);
    let key = std::path::PathBuf::from(cellule_e2e::Env::var("CELLULE_E2E_COSIGN_KEY"));
    let mut end_to_end = Vec::new();
    for i in 0..10 {
        let repository = format!("{registry}/{ns}/npu-{i}");
        let digest = push(&dir, &format!("{repository}:1"), &format!("image {i}")).await?;
        sign(&key, &format!("{repository}@{digest}")).await?;
        let name = format!("bench-{i}");
        let started = Instant::now();
        apply(
            &client,
            &ns,
            &npu_server(
                &name,
                &format!("{repository}:1"),
                &["cellule-signing"],
                "5m",
            ),
        )
        .await?;
        wait_deployment_image(
            &client,
            &ns,
            &cellule_operator::names::npu_server(&name),
            &format!("{repository}@{digest}"),
        )
        .await?;
        end_to_end.push(started.elapsed());
    }
    println!(
        "  end to end, an NpuServer on a new signed image applied until its Deployment runs the verified digest (10 images, polled every 200 ms): {}",
        summary(&end_to_end)
    );

    // Many objects on one image, through the operator: registry requests
    // while they all come up.
    let shared = format!("{registry}/{ns}/shared");
    let digest = push(&dir, &format!("{shared}:1"), "shared").await?;
    sign(&key, &format!("{shared}@{digest}")).await?;
    let count = 100;
    let before = registry_requests();
    let started = Instant::now();
    for i in 0..count {
        let mut npu = npu_server(
            &format!("many-{i}"),
            &format!("{shared}:1"),
            &["cellule-signing"],
            "5m",
        );
        npu["spec"]["replicas"] = json!(1);
        npu["spec"]["hotSpares"] = json!(0);
        apply(&client, &ns, &npu).await?;
    }
    let pinned = format!("{shared}@{digest}");
    for i in 0..count {
        wait_deployment_image(
            &client,
            &ns,
            &cellule_operator::names::npu_server(&format!("many-{i}")),
            &pinned,
        )
        .await?;
    }
    println!(
        "  {count} NpuServers on one new image through the operator: all Deployments pinned {:?} after the first apply, {} registry requests in all",
        started.elapsed(),
        registry_requests() - before
    );
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::background())
        .await?;
    Ok(())
}

fn ensure_all_ok(all: &[cellule_operator::images::Decision]) -> anyhow::Result<()> {
    match all.iter().find_map(|d| d.as_ref().err()) {
        Some(refusal) => anyhow::bail!("{refusal}"),
        None => Ok(()),
    }
}

fn summary_us(latencies: &[Duration]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    format!(
        "p50 {:.1} µs, p99 {:.1} µs",
        percentile(&sorted, 0.50).as_secs_f64() * 1e6,
        percentile(&sorted, 0.99).as_secs_f64() * 1e6
    )
}

async fn token_figures() -> anyhow::Result<()> {
    let (sign, verify) = sign_verify_cost(2000);
    println!(
        "token sign: {:?} per token, verify: {:?} per token (2000 rounds, one core)",
        sign, verify
    );

    let client = admin_client().await;
    install_crds(&client).await;
    let suffix = std::process::id();

    let ns = format!("bench-revoke-{suffix}");
    namespace(&client, &ns).await?;
    let (store, end_to_end) = revocation_latency(&client, &ns, 100).await?;
    println!(
        "revocation over {} revocations, from the grant's update on the API server:",
        store.len()
    );
    println!(
        "  to the token refused by the verifier running as the pool: {}",
        summary(&end_to_end)
    );
    println!(
        "  to its jti on the revocation list (store only): {}",
        summary(&store)
    );

    let ns_many = format!("bench-issue-{suffix}");
    namespace(&client, &ns_many).await?;
    let names: Vec<String> = (0..1000).map(|i| format!("laptop-{i}")).collect();
    let took = create_and_wait_active(&client, &ns_many, &names).await?;
    println!("1000 grants created and Active in {took:?}");
    let before = grant_reconciles();
    let took = mass_revocation(&client, &ns_many, &names).await?;
    println!(
        "1000 grants revoked at once: all refused by the verifier running as the pool {took:?} after the first update was sent"
    );
    // The reconciles that follow the revocations (token Secret deleted,
    // status written) land within a few seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    match before.zip(grant_reconciles()) {
        Some((before, after)) => println!(
            "  WorkerGrant reconciles from the first update to 5 s after the last refusal: {}",
            after - before
        ),
        None => println!("  WorkerGrant reconciles: no operator log to count them in"),
    }

    let ns_store = format!("bench-store-{suffix}");
    namespace(&client, &ns_store).await?;
    let ctx = store_context(&client, &ns_store).await?;
    println!("revocation store of one pool (its maxTtl spread over the entries' expiries):");
    let mut filled = 0;
    for fill in [1_000, 10_000, 100_000] {
        store_cost(&client, &ns_store, &ctx, &mut filled, fill, 50).await?;
    }

    for ns in [ns, ns_many, ns_store] {
        Api::<Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::background())
            .await?;
    }
    Ok(())
}

/// `p` of `sorted` milliseconds (nearest rank, as [`percentile`]).
fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary_ms(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (min {:.1} ms)",
        percentile_ms(&sorted, 0.50),
        percentile_ms(&sorted, 0.95),
        percentile_ms(&sorted, 0.99),
        sorted[sorted.len() - 1],
        sorted[0]
    )
}

/// `b - a` in milliseconds, negative if `b` came first.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64() * 1e3
    } else {
        -((a - b).as_secs_f64() * 1e3)
    }
}

/// NPU → CPU fail-over of tier `heavy` (one NPU pod needed, pinned to
/// `npu-1`; two CPU workers in its fallback tier), through the operator.
/// Three watches record the instant each change arrives in this process:
/// the NPU pods (admin), the tier's EndpointSlice (admin), and the routing
/// ConfigMap with the pool's ServiceAccount credentials (what the pool's
/// live channel is fed by).
/// - fail-over latency, `failOverAfter: 0s`, over 25 trials: from the
///   moment the watch sees the pod's `Ready` turn False (t0) to (a) the
///   slice's backend turning `cpu` (t1) and (b) the ConfigMap's tier
///   turning `CpuFailover` as the pool's credentials see it (t2). Between
///   trials the pod is made Ready and the tier fails back (`failBackAfter:
///   0s`); both watches are back on the NPU pod before the next trial;
/// - fail-back accuracy, `failBackAfter: 5s`: from the watch seeing the pod
///   Ready again (and from its `lastTransitionTime`, 1 s resolution) to the
///   slice back on `npu`;
/// - switches under flapping: readiness toggled every 2 s for 60 s
///   (`failOverAfter: 0s`, `failBackAfter: 5s`), then Ready: FailedOver and
///   FailedBack Events and the slice's backend changes.
async fn failover_figures() -> anyhow::Result<()> {
    use cellule_e2e::failover::{self as fo, Site, TIER};
    let client = admin_client().await;
    install_crds(&client).await;
    let ns = format!("bench-failover-{}", std::process::id());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    fo::site_ready(&client, &ns, &Site::new("0s", "0s")).await?;
    let as_pool = cellule_e2e::client_from(
        &cellule_e2e::service_account_kubeconfig(&client, &ns, fo::POOL_SA).await?,
    )
    .await?;
    let readiness = fo::watch_readiness(&client, &ns, &fo::npu_selector());
    let slices = fo::watch_route(&client, &ns, TIER);
    let routing = fo::watch_routing_config(&as_pool, &ns, TIER);
    readiness.current().await?;
    slices.current().await?;
    routing.current().await?;
    let pod = fo::pods(&client, &ns, &fo::npu_selector())
        .await?
        .first()
        .and_then(|p| p.metadata.name.clone())
        .context("an NPU pod")?;
    let wait = Duration::from_secs(20);
    let on_npu = async || -> anyhow::Result<()> {
        slices
            .until("slice on npu", wait, |r| r.backend == "npu")
            .await?;
        routing
            .until("routing on Npu", wait, |t| t["servedBy"] == "Npu")
            .await?;
        Ok(())
    };

    let trials = 25;
    let (mut to_slice, mut to_pool) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        on_npu().await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (r, s, c) = (readiness.len(), slices.len(), routing.len());
        fo::set_pod_ready(&client, &ns, &pod, false).await?;
        let t0 = readiness
            .first_from(r, "the pod's Ready False", wait, |m| {
                m.get(&pod) == Some(&false)
            })
            .await?
            .at;
        let t1 = slices
            .first_from(s, "the slice on cpu", wait, |r| r.backend == "cpu")
            .await?
            .at;
        let t2 = routing
            .first_from(c, "the routing on CpuFailover", wait, |t| {
                t["servedBy"] == "CpuFailover"
            })
            .await?
            .at;
        to_slice.push(ms_between(t0, t1));
        to_pool.push(ms_between(t0, t2));
        fo::set_pod_ready(&client, &ns, &pod, true).await?;
    }
    on_npu().await?;
    let p99 = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        percentile_ms(&s, 0.99)
    };
    println!(
        "NPU → CPU fail-over, failOverAfter 0s, {trials} trials, from a watch seeing the last required NPU pod's Ready turn False:"
    );
    println!(
        "  (a) to a watch seeing the tier's EndpointSlice on the CPU workers: {} — target p99 ≤ 300 ms: {}",
        summary_ms(&to_slice),
        if p99(&to_slice) <= 300.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  (b) to a watch with the pool's credentials seeing the routing ConfigMap on CpuFailover: {} — target p99 ≤ 300 ms: {}",
        summary_ms(&to_pool),
        if p99(&to_pool) <= 300.0 {
            "met"
        } else {
            "MISSED"
        }
    );

    // Fail-back accuracy.
    let hold = 5.0;
    cellule_e2e::merge_patch(
        &client,
        &ns,
        "Pool",
        fo::POOL,
        json!({"spec": {"failover": {"failBackAfter": "5s"}}}),
    )
    .await?;
    println!("fail-back accuracy, failBackAfter {hold}s:");
    let long = Duration::from_secs(30);
    for trial in 1..=3 {
        on_npu().await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let s = slices.len();
        fo::set_pod_ready(&client, &ns, &pod, false).await?;
        slices
            .first_from(s, "the slice on cpu", wait, |r| r.backend == "cpu")
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (r, s) = (readiness.len(), slices.len());
        fo::set_pod_ready(&client, &ns, &pod, true).await?;
        let seen_ready = readiness
            .first_from(r, "the pod's Ready True", wait, |m| {
                m.get(&pod) == Some(&true)
            })
            .await?;
        let back = slices
            .first_from(s, "the slice back on npu", long, |r| r.backend == "npu")
            .await?;
        let transition = fo::wait_pod_ready(&client, &ns, &pod, true).await?;
        let transition = fo::ready_since(&transition).context("Ready since")?;
        let actual = back.at.duration_since(seen_ready.at).as_secs_f64();
        println!(
            "  trial {trial}: back on NPU {actual:.3} s after the watch saw the pod Ready ({:+.0} ms vs {hold} s); {:.3} s after its Ready lastTransitionTime (1 s resolution)",
            (actual - hold) * 1e3,
            fo::seconds_between(back.wall, transition)
        );
    }

    // Flapping.
    on_npu().await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (over, back) = (
        fo::count_events(&client, &ns, "FailedOver").await?,
        fo::count_events(&client, &ns, "FailedBack").await?,
    );
    let s = slices.len();
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(60) {
        let tick = Instant::now();
        fo::set_pod_ready(&client, &ns, &pod, ready).await?;
        ready = !ready;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(tick.elapsed())).await;
    }
    fo::set_pod_ready(&client, &ns, &pod, true).await?;
    let during = fo::backends(&slices.all()[s.saturating_sub(1)..]);
    on_npu().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = fo::backends(&slices.all()[s.saturating_sub(1)..]);
    println!(
        "flapping, readiness toggled every 2 s for 60 s (failOverAfter 0s, failBackAfter 5s), then Ready: {} FailedOver and {} FailedBack Events; slice backends during the flapping {during:?}, until settled {after:?}",
        fo::count_events(&client, &ns, "FailedOver").await? - over,
        fo::count_events(&client, &ns, "FailedBack").await? - back,
    );
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::background())
        .await?;
    Ok(())
}
