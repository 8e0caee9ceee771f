//! Helpers for the NPU → CPU routing fail-over (issue 13), shared by
//! `tests/failover.rs`, `tests/restart.rs` and the benchmark.
//!
//! The site: Pool `paris` with tier `light` (Cpu, served by the in-cluster
//! worker set `light-workers`) and tier `heavy` (Npu, NpuServer `qwen`,
//! `fallbackTier: light`). The NpuServer is named unlike its tier so that
//! a message naming one is not taken for naming the other. Its pods are
//! pinned to one NPU node (`kubernetes.io/hostname`), so a test that turns
//! a node NotReady touches only its own pods.
//!
//! What the operator shows is read as a client does: the Pool's status,
//! the Events, the tier's EndpointSlice, the routing ConfigMap (with the
//! pool's own ServiceAccount credentials) and `cellule-verifier`'s
//! `GET /routing`. [`Timeline`] records what a watch sees, with the instant
//! each change arrived, so that tests can say when something happened and
//! that something else never did.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Node, Pod},
    discovery::v1::EndpointSlice,
    events::v1::Event,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};

use crate::{
    Env, NODE_READY_ANNOTATION, POD_READY_ANNOTATION, apply_signing_key, cellule_api, eventually,
    sample_documents, wait_condition,
};

pub const POOL: &str = "paris";
/// The NPU tier.
pub const TIER: &str = "heavy";
/// Its fallback (a Cpu tier).
pub const FALLBACK: &str = "light";
/// The NPU tier's NpuServer.
pub const NPU: &str = "qwen";
/// The in-cluster CPU worker set of the fallback tier.
pub const WORKERS: &str = "light-workers";
/// The pool's ServiceAccount.
pub const POOL_SA: &str = "paris-pool";
/// The routing ConfigMap and its key.
pub const ROUTING_CM: &str = "paris-routing";
pub const ROUTING_KEY: &str = "routing.yaml";

const WAIT: Duration = Duration::from_secs(90);

/// The tier's Service (and the prefix of its EndpointSlice).
pub fn service(tier: &str) -> String {
    format!("{POOL}--{tier}")
}

/// What a test sets up.
#[derive(Clone, Debug)]
pub struct Site {
    pub fail_over_after: String,
    pub fail_back_after: String,
    pub replicas: i32,
    pub hot_spares: i32,
    pub min_healthy: i32,
    /// The node the NpuServer's pods are pinned to.
    pub node: String,
    /// In-cluster workers of the fallback tier.
    pub cpu_workers: i32,
}

impl Site {
    /// One NPU pod (one needed) on `npu-1`, two CPU workers.
    pub fn new(fail_over_after: &str, fail_back_after: &str) -> Self {
        Self {
            fail_over_after: fail_over_after.into(),
            fail_back_after: fail_back_after.into(),
            replicas: 1,
            hot_spares: 0,
            min_healthy: 1,
            node: "npu-1".into(),
            cpu_workers: 2,
        }
    }

    pub fn npu(mut self, replicas: i32, hot_spares: i32, min_healthy: i32) -> Self {
        (self.replicas, self.hot_spares, self.min_healthy) = (replicas, hot_spares, min_healthy);
        self
    }

    pub fn on(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    /// Every NPU pod, counting the hot spares.
    pub fn npu_pods(&self) -> usize {
        usize::try_from(self.replicas + self.hot_spares).unwrap_or_default()
    }
}

fn sample(kind: &str) -> Value {
    sample_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("a sample {kind}"))
}

/// The sample Pool, with the site's timings, `heavy` on NpuServer `qwen`
/// and small CPU workers.
pub fn pool_document(site: &Site) -> Value {
    let mut pool = sample("Pool");
    pool["spec"]["failover"] =
        json!({"failOverAfter": site.fail_over_after, "failBackAfter": site.fail_back_after});
    for tier in pool["spec"]["tiers"].as_array_mut().expect("tiers") {
        if tier["name"] == TIER {
            tier["npuServerRef"] = json!({"name": NPU});
        }
    }
    let workers = &mut pool["spec"]["cpuWorkers"][0];
    assert_eq!(workers["name"], WORKERS, "the sample's worker set");
    assert_eq!(workers["tier"], FALLBACK, "the sample's worker set's tier");
    workers["replicas"] = json!(site.cpu_workers);
    workers["resources"] =
        json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}});
    pool
}

/// The sample NpuServer renamed `qwen`, sized and pinned as `site` says.
pub fn npu_document(site: &Site) -> Value {
    let mut npu = sample("NpuServer");
    npu["metadata"] = json!({"name": NPU});
    let spec = &mut npu["spec"];
    spec["replicas"] = json!(site.replicas);
    spec["hotSpares"] = json!(site.hot_spares);
    spec["minHealthyReplicas"] = json!(site.min_healthy);
    spec["nodeSelector"] =
        json!({"cellule.ai/accelerator": "npu", "kubernetes.io/hostname": site.node});
    spec["resources"] =
        json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}});
    npu
}

/// The model a tier of the sample Pool names.
pub fn model_of(tier: &str) -> String {
    sample("Pool")["spec"]["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == tier)
        .and_then(|t| t["model"].as_str())
        .unwrap_or_else(|| panic!("sample tier {tier}"))
        .to_owned()
}

/// Server-side applies `object` (a `cellule.ai` kind).
pub async fn apply(client: &Client, ns: &str, object: &Value) -> anyhow::Result<()> {
    crate::images::apply(client, ns, object).await.map(drop)
}

/// The CRDs, the Secrets and signing key the Pool needs, the Pool and the
/// NpuServer (no WorkerGrant or PeerTrust: nothing here needs them).
pub async fn apply_site(client: &Client, ns: &str, site: &Site) -> anyhow::Result<()> {
    crate::site_secrets(client, ns).await?;
    apply_signing_key(client, ns).await?;
    apply(client, ns, &pool_document(site)).await?;
    apply(client, ns, &npu_document(site)).await
}

/// [`apply_site`], then waits until the Pool and the NpuServer are Ready,
/// every NPU pod is Ready and `heavy` is served by them (status and
/// EndpointSlice).
pub async fn site_ready(client: &Client, ns: &str, site: &Site) -> anyhow::Result<()> {
    apply_site(client, ns, site).await?;
    wait_condition(client, ns, "Pool", POOL, "Ready", "True", WAIT).await?;
    wait_condition(client, ns, "NpuServer", NPU, "Ready", "True", WAIT).await?;
    let want = site.npu_pods();
    eventually("every NPU pod Ready", WAIT, || async {
        let ips = ready_ips(client, ns, &npu_selector())
            .await
            .map_err(|e| e.to_string())?;
        (ips.len() == want).then_some(()).ok_or(format!("{ips:?}"))
    })
    .await?;
    let npu = ready_ips(client, ns, &npu_selector()).await?;
    wait_tier(
        client,
        ns,
        "heavy served by its NPU server",
        WAIT,
        |t, _| t["servedBy"] == "Npu",
    )
    .await?;
    wait_route(client, ns, TIER, "npu", &npu, WAIT).await?;
    // The Events of the start (a new Pool may pass through its fallback
    // while its pods come up) are recorded just after the status: let
    // them land before a test counts from here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Label selector of the NpuServer's pods.
pub fn npu_selector() -> String {
    format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=npu-server",
        cellule_operator::names::npu_server(NPU)
    )
}

/// Label selector of the fallback tier's in-cluster workers.
pub fn worker_selector() -> String {
    format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=cpu-worker",
        cellule_operator::names::cpu_workers(POOL, WORKERS)
    )
}

/// The pods matching `selector`, by name.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> anyhow::Result<Vec<Pod>> {
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await?
        .items;
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Ready, with an IP, and not terminating.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod_ip(pod).is_some()
        && ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When the pod's Ready condition last changed (1 s resolution).
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    ready_condition(pod)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// The container port of the pod's first container.
pub fn pod_port(pod: &Pod) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .ports
        .as_ref()?
        .first()
        .map(|p| p.container_port)
}

/// IPs of the ready pods matching `selector`.
pub async fn ready_ips(
    client: &Client,
    ns: &str,
    selector: &str,
) -> anyhow::Result<BTreeSet<String>> {
    Ok(pods(client, ns, selector)
        .await?
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(pod_ip)
        .collect())
}

/// Turns `pod` Ready (`true`) or NotReady through its KWOK annotation.
pub async fn set_pod_ready(
    client: &Client,
    ns: &str,
    pod: &str,
    ready: bool,
) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"annotations": {POD_READY_ANNOTATION: ready.to_string()}}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating pod {pod}"))?;
    Ok(())
}

/// Waits until `pod`'s Ready condition is `ready`; returns the pod.
pub async fn wait_pod_ready(
    client: &Client,
    ns: &str,
    pod: &str,
    ready: bool,
) -> anyhow::Result<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually(
        &format!("pod {pod} Ready={ready}"),
        Duration::from_secs(30),
        || async {
            let p = pods.get(pod).await.map_err(|e| e.to_string())?;
            let status = ready_condition(&p).map(|c| c.status.clone());
            (status.as_deref() == Some(if ready { "True" } else { "False" }))
                .then_some(p)
                .ok_or(format!("{status:?}"))
        },
    )
    .await
}

/// [`set_pod_ready`] and [`wait_pod_ready`]: returns when the Ready
/// condition changed (its `lastTransitionTime`).
pub async fn toggle_pod(
    client: &Client,
    ns: &str,
    pod: &str,
    ready: bool,
) -> anyhow::Result<jiff::Timestamp> {
    set_pod_ready(client, ns, pod, ready).await?;
    let pod = wait_pod_ready(client, ns, pod, ready).await?;
    ready_since(&pod).context("a Ready lastTransitionTime")
}

/// Turns a fake node Ready or NotReady through its KWOK annotation
/// (Ready: the annotation removed).
pub async fn set_node_ready(client: &Client, node: &str, ready: bool) -> anyhow::Result<()> {
    let value = if ready { Value::Null } else { json!("false") };
    let patch = json!({"metadata": {"annotations": {NODE_READY_ANNOTATION: value}}});
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating node {node}"))?;
    Ok(())
}

fn node_ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Waits until `node` is Ready (or not); returns when its Ready condition
/// last changed.
pub async fn wait_node_ready(
    client: &Client,
    node: &str,
    ready: bool,
) -> anyhow::Result<jiff::Timestamp> {
    let nodes = Api::<Node>::all(client.clone());
    eventually(
        &format!("node {node} Ready={ready}"),
        Duration::from_secs(30),
        || async {
            let n = nodes.get(node).await.map_err(|e| e.to_string())?;
            let c = node_ready_condition(&n).ok_or("no Ready condition")?;
            let wanted = if ready { "True" } else { "False" };
            match &c.last_transition_time {
                Some(t) if c.status == wanted => Ok(t.0),
                _ => Err(format!("{} since {:?}", c.status, c.last_transition_time)),
            }
        },
    )
    .await
}

/// A node a test switched NotReady: put back when [`NodeDown::restore`]
/// is called, or, if the test fails first, when dropped (synchronously,
/// with kubectl).
pub struct NodeDown {
    node: String,
    restored: bool,
}

impl NodeDown {
    pub async fn start(client: &Client, node: &str) -> anyhow::Result<Self> {
        let down = Self {
            node: node.into(),
            restored: false,
        };
        set_node_ready(client, node, false).await?;
        Ok(down)
    }

    /// The node Ready again and its `not-ready` taints lifted (so that the
    /// tests after this one find it as it was); returns when its Ready
    /// condition changed.
    pub async fn restore(mut self, client: &Client) -> anyhow::Result<jiff::Timestamp> {
        set_node_ready(client, &self.node, true).await?;
        self.restored = true;
        let since = wait_node_ready(client, &self.node, true).await?;
        let nodes = Api::<Node>::all(client.clone());
        eventually(
            &format!("node {} untainted", self.node),
            Duration::from_secs(60),
            || async {
                let n = nodes.get(&self.node).await.map_err(|e| e.to_string())?;
                let taints: Vec<String> = n
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.key)
                    .filter(|k| k.starts_with("node.kubernetes.io/"))
                    .collect();
                taints.is_empty().then_some(()).ok_or(format!("{taints:?}"))
            },
        )
        .await?;
        Ok(since)
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::process::Command::new(Env::bin("kubectl"))
                .args([
                    "--kubeconfig",
                    &Env::var("CELLULE_E2E_KUBECONFIG"),
                    "annotate",
                    "node",
                    &self.node,
                    &format!("{NODE_READY_ANNOTATION}-"),
                ])
                .stdin(std::process::Stdio::null())
                .status();
        }
    }
}

/// The Pool.
pub async fn pool(client: &Client, ns: &str) -> anyhow::Result<DynamicObject> {
    Ok(cellule_api(client, ns, "Pool").get(POOL).await?)
}

/// `status.tiers[]` entry of `tier` (null if absent).
pub fn tier_of(pool: &DynamicObject, tier: &str) -> Value {
    pool.data["status"]["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == tier)
        .cloned()
        .unwrap_or_default()
}

/// The Pool's condition `type_` (null if absent).
pub fn condition_of(pool: &DynamicObject, type_: &str) -> Value {
    pool.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_default()
}

/// Waits until `check(heavy's status entry, the Pool's status)` holds;
/// returns the Pool.
pub async fn wait_tier(
    client: &Client,
    ns: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value, &Value) -> bool,
) -> anyhow::Result<DynamicObject> {
    eventually(what, timeout, || async {
        let pool = pool(client, ns).await.map_err(|e| e.to_string())?;
        let tier = tier_of(&pool, TIER);
        if check(&tier, &pool.data["status"]) {
            Ok(pool)
        } else {
            Err(format!(
                "heavy: {tier}; routing {}; Degraded {}",
                pool.data["status"]["routing"],
                condition_of(&pool, "Degraded")
            ))
        }
    })
    .await
}

/// An RFC 3339 time of a status.
pub fn time(value: &Value) -> Option<jiff::Timestamp> {
    value.as_str()?.parse().ok()
}

/// What a tier's EndpointSlices say: how many there are, the
/// `cellule.ai/backend` label of `<service>-ipv4`, the addresses of the
/// endpoints that are ready (a missing `ready` counts as ready, as the API
/// says) and the ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub slices: usize,
    pub backend: String,
    pub ips: BTreeSet<String>,
    pub ports: Vec<(String, i32, String)>,
}

impl Route {
    pub fn of<'a>(service: &str, slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        let mut route = Route::default();
        for slice in slices {
            route.slices += 1;
            if slice.metadata.name.as_deref() == Some(&format!("{service}-ipv4")) {
                route.backend = slice
                    .labels()
                    .get("cellule.ai/backend")
                    .cloned()
                    .unwrap_or_default();
                route.ports = slice
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        (
                            p.name.clone().unwrap_or_default(),
                            p.port.unwrap_or_default(),
                            p.protocol.clone().unwrap_or_default(),
                        )
                    })
                    .collect();
            }
            for endpoint in slice.endpoints.iter().flatten() {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if ready {
                    route.ips.extend(endpoint.addresses.iter().cloned());
                }
            }
        }
        route
    }

    /// Backend `backend` with exactly the addresses `ips`.
    pub fn is(&self, backend: &str, ips: &BTreeSet<String>) -> bool {
        self.backend == backend && &self.ips == ips
    }
}

/// Selector of a tier's EndpointSlices.
pub fn slice_selector(tier: &str) -> String {
    format!("kubernetes.io/service-name={}", service(tier))
}

pub async fn route(client: &Client, ns: &str, tier: &str) -> anyhow::Result<Route> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&slice_selector(tier)))
        .await?;
    Ok(Route::of(&service(tier), &slices.items))
}

/// Waits until `tier`'s slice is backend `backend` with exactly `ips`.
pub async fn wait_route(
    client: &Client,
    ns: &str,
    tier: &str,
    backend: &str,
    ips: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<Route> {
    eventually(
        &format!("{tier}'s slice on {backend} {ips:?}"),
        timeout,
        || async {
            let r = route(client, ns, tier).await.map_err(|e| e.to_string())?;
            r.is(backend, ips)
                .then_some(r.clone())
                .ok_or(format!("{r:?}"))
        },
    )
    .await
}

/// Occurrences of Events with `reason` about the Pool (a repeated Event
/// is one object with a `series.count`).
pub async fn pool_events(client: &Client, ns: &str, reason: &str) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pool") && r.name.as_deref() == Some(POOL)
            })
        })
        .collect())
}

pub fn occurrences(events: &[Event]) -> i32 {
    events
        .iter()
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// How many times the Pool got an Event with `reason`.
pub async fn count_events(client: &Client, ns: &str, reason: &str) -> anyhow::Result<i32> {
    Ok(occurrences(&pool_events(client, ns, reason).await?))
}

/// One change a watch delivered: when it arrived and the value then.
#[derive(Clone, Debug)]
pub struct Seen<T> {
    pub at: Instant,
    pub wall: jiff::Timestamp,
    pub value: T,
}

/// What a watch of some objects saw, as a list of distinct successive
/// values of `view(objects)`, each with the instant it arrived. The watch
/// stops when this is dropped.
pub struct Timeline<T> {
    seen: Arc<Mutex<Vec<Seen<T>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + PartialEq + std::fmt::Debug + Send + 'static> Timeline<T> {
    pub fn watch<K>(
        api: Api<K>,
        config: watcher::Config,
        view: impl Fn(&BTreeMap<String, K>) -> T + Send + 'static,
    ) -> Self
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let seen: Arc<Mutex<Vec<Seen<T>>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let (mut objects, mut init) = (BTreeMap::new(), BTreeMap::new());
                let mut stream = watcher(api, config).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    let Ok(event) = event else { continue };
                    match event {
                        watcher::Event::Init => {
                            init.clear();
                            continue;
                        }
                        watcher::Event::InitApply(o) => {
                            init.insert(o.name_any(), o);
                            continue;
                        }
                        watcher::Event::InitDone => objects = std::mem::take(&mut init),
                        watcher::Event::Apply(o) => {
                            objects.insert(o.name_any(), o);
                        }
                        watcher::Event::Delete(o) => {
                            objects.remove(&o.name_any());
                        }
                    }
                    let (at, wall) = (Instant::now(), jiff::Timestamp::now());
                    let value = view(&objects);
                    let mut seen = seen.lock().expect("timeline lock");
                    if seen.last().map(|s| &s.value) != Some(&value) {
                        seen.push(Seen { at, wall, value });
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// Every change so far.
    pub fn all(&self) -> Vec<Seen<T>> {
        self.seen.lock().expect("timeline lock").clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().expect("timeline lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value now, once the watch has listed.
    pub async fn current(&self) -> anyhow::Result<T> {
        eventually(
            "the watch's first list",
            Duration::from_secs(30),
            || async {
                self.all()
                    .last()
                    .map(|s| s.value.clone())
                    .ok_or("nothing yet".to_owned())
            },
        )
        .await
    }

    /// The first change at index `from` or later whose value satisfies
    /// `check`, waiting up to `timeout` for it.
    pub async fn first_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        check: impl Fn(&T) -> bool,
    ) -> anyhow::Result<Seen<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.all().into_iter().skip(from).find(|s| check(&s.value)) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: not seen within {timeout:?}; seen since: {:?}",
                    self.all()
                        .into_iter()
                        .skip(from)
                        .map(|s| s.value)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The latest value, once it satisfies `check`.
    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&T) -> bool,
    ) -> anyhow::Result<Seen<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(last) = self.all().pop().filter(|s| check(&s.value)) {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: not reached within {timeout:?}; now {:?}",
                    self.all().pop().map(|s| s.value)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl<T> Drop for Timeline<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the tier's EndpointSlices look like, change after change.
pub fn watch_route(client: &Client, ns: &str, tier: &str) -> Timeline<Route> {
    let service = service(tier);
    Timeline::watch(
        Api::<EndpointSlice>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&slice_selector(tier)),
        move |slices| Route::of(&service, slices.values()),
    )
}

/// Each pod matching `selector`, Ready or not (terminating pods count as
/// not Ready).
pub fn watch_readiness(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Timeline<BTreeMap<String, bool>> {
    Timeline::watch(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(selector),
        |pods| pods.iter().map(|(n, p)| (n.clone(), is_ready(p))).collect(),
    )
}

/// `tier` as the routing ConfigMap says it (null if absent), as `client`
/// (the pool's credentials) watches it.
pub fn watch_routing_config(client: &Client, ns: &str, tier: &str) -> Timeline<Value> {
    let tier = tier.to_owned();
    Timeline::watch(
        Api::<ConfigMap>::namespaced(client.clone(), ns),
        watcher::Config::default().fields(&format!("metadata.name={ROUTING_CM}")),
        move |maps| {
            maps.get(ROUTING_CM)
                .map(|cm| routing_config_tier(cm, &tier))
                .unwrap_or_default()
        },
    )
}

/// `tiers.<tier>` of a routing ConfigMap's `routing.yaml` (null if absent
/// or unreadable).
pub fn routing_config_tier(cm: &ConfigMap, tier: &str) -> Value {
    cm.data
        .as_ref()
        .and_then(|d| d.get(ROUTING_KEY))
        .and_then(|text| serde_yaml::from_str::<Value>(text).ok())
        .map(|v| v["tiers"][tier].clone())
        .unwrap_or_default()
}

/// `cellule-verifier` for the Pool, running with the pool's
/// ServiceAccount credentials (as in `tests/live.rs`), ready when this
/// returns; and its address.
pub async fn start_verifier(
    client: &Client,
    ns: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let kubeconfig = crate::service_account_kubeconfig(client, ns, POOL_SA).await?;
    crate::start_verifier(&kubeconfig, ns, POOL).await
}

/// The body of an HTTP/1.1 response, chunked or not.
fn body_of(response: &str) -> Result<String, String> {
    let (head, body) = response.split_once("\r\n\r\n").ok_or(response.to_owned())?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).ok_or("short chunk")?);
        rest = after.get(size + 2..).ok_or("short chunk")?;
    }
}

/// `GET /routing` of the verifier: the JSON when 200, else why not.
pub async fn verifier_routing(addr: &str) -> Result<Value, String> {
    let response = crate::http_get(addr, "/routing").await?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    serde_json::from_str(&body_of(&response)?).map_err(|e| format!("{e}: {response}"))
}

/// Waits until the verifier's routing for `tier` satisfies `check`;
/// returns the whole answer.
pub async fn wait_verifier_routing(
    addr: &str,
    tier: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(what, Duration::from_secs(30), || async {
        let routing = verifier_routing(addr).await?;
        if check(&routing["tiers"][tier]) {
            Ok(routing)
        } else {
            Err(routing.to_string())
        }
    })
    .await
}

/// Changes of the slice's backend label in `seen` (from the first value):
/// e.g. `["npu", "cpu", "npu"]`.
pub fn backends(seen: &[Seen<Route>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seen {
        if out.last() != Some(&s.value.backend) {
            out.push(s.value.backend.clone());
        }
    }
    out
}

/// `a - b` in seconds (fractional).
pub fn seconds_between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    (a.as_nanosecond() - b.as_nanosecond()) as f64 / 1e9
}

/// Fails unless `at` is within `[earliest, latest]` (seconds after `from`).
pub fn ensure_between(
    what: &str,
    at: jiff::Timestamp,
    from: jiff::Timestamp,
    earliest: f64,
    latest: f64,
) -> anyhow::Result<()> {
    // The suite runs four tests at once on two cores: lateness here is
    // load (the benchmark measures it alone); earliness never is.
    let latest = latest + LOAD_SLACK;
    let after = seconds_between(at, from);
    ensure!(
        (earliest..=latest).contains(&after),
        "{what} {after:.3} s after {from}; expected between {earliest} and {latest} s"
    );
    Ok(())
}

/// Seconds a switch may come late under the suite's load.
pub const LOAD_SLACK: f64 = 2.0;

/// Replaces the Pool's `spec.tiers` (a merge patch replaces a list whole).
pub async fn merge_pool_tiers(client: &Client, ns: &str, tiers: Value) -> anyhow::Result<()> {
    crate::merge_patch(client, ns, "Pool", POOL, json!({"spec": {"tiers": tiers}})).await
}

/// How many FailedOver and FailedBack Events the Pool got so far.
pub async fn switches(client: &Client, ns: &str) -> anyhow::Result<(i32, i32)> {
    Ok((
        count_events(client, ns, "FailedOver").await?,
        count_events(client, ns, "FailedBack").await?,
    ))
}

/// Waits until the Pool got `want` (FailedOver, FailedBack) Events, then
/// checks for a second that no more come.
pub async fn ensure_switches(client: &Client, ns: &str, want: (i32, i32)) -> anyhow::Result<()> {
    eventually(
        "the Events of the switches",
        Duration::from_secs(30),
        || async {
            let got = switches(client, ns).await.map_err(|e| e.to_string())?;
            (got.0 >= want.0 && got.1 >= want.1)
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = switches(client, ns).await?;
    ensure!(
        got == want,
        "(FailedOver, FailedBack) Events: {got:?}, expected {want:?}; FailedOver: {:?}; FailedBack: {:?}",
        notes(&pool_events(client, ns, "FailedOver").await?),
        notes(&pool_events(client, ns, "FailedBack").await?)
    );
    Ok(())
}

fn notes(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} x{}: {}",
                e.event_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                e.series.as_ref().map_or(1, |s| s.count),
                e.note.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// The Event with `reason` about the Pool that was observed last (a
/// repeated Event counts from its series' last observation), once one
/// was observed at or after `after`.
pub async fn latest_event(
    client: &Client,
    ns: &str,
    reason: &str,
    after: jiff::Timestamp,
) -> anyhow::Result<Event> {
    let observed = |e: &Event| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .unwrap_or_default()
    };
    eventually(
        &format!("a {reason} Event after {after}"),
        Duration::from_secs(30),
        || async {
            let events = pool_events(client, ns, reason)
                .await
                .map_err(|e| e.to_string())?;
            events
                .iter()
                .max_by_key(|e| observed(e))
                .filter(|e| observed(e) >= after)
                .cloned()
                .ok_or(format!("{:?}", notes(&events)))
        },
    )
    .await
}
