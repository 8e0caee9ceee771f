//! Assembles the controllers: the shared caches (one watch per kind,
//! filtered by label where the operator owns the objects), and each kind's
//! controller, which declares its own watches (`pool::controller`,
//! `npu_server::controller`, `worker_grant::controller`).

use std::{collections::HashMap, fmt::Debug, future::Future, hash::Hash, sync::Arc};

use futures::{FutureExt, Stream, StreamExt, future::BoxFuture, stream::BoxStream};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{
            ConfigMap, Node, NodeStatus, Pod, PodSpec, PodStatus, Secret, Service, ServiceAccount,
        },
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::{
    api::{NpuServer, PeerTrust, Pool, WorkerGrant},
    npu_server, peer_trust, pool,
    reconcile::{
        Context,
        context::{OwnedStores, Stores},
        labels,
    },
    tokens::revocations::RevocationList,
    worker_grant,
};

/// Events one cache buffers for each subscriber that has not read them yet.
const BUFFER: usize = 256;

/// What the operator watches, and how hard it works.
#[derive(Clone)]
pub struct Options {
    /// Watch only these namespaces (empty: the whole cluster).
    pub namespaces: Vec<String>,
    /// Reconciles of one kind running at once (0: unbounded).
    pub concurrency: u16,
    /// What images are verified with (shared by every scope: one cache).
    pub images: Arc<dyn crate::images::Verify>,
}

impl Options {
    /// The configuration every kind's `Controller` runs with.
    pub fn controller_config(&self) -> controller::Config {
        controller::Config::default().concurrency(self.concurrency)
    }
}

/// One watch of `K`, cached once and shared by every controller that needs
/// it. Each consumer gets its own subscription from [`Shared::subscribe`]:
/// every object the watch applied or deleted, after the cache has it.
///
/// Not kube-runtime's `ReflectHandle`: when the object it was told about
/// is gone from the cache by the time it is polled (deleted meanwhile), it
/// returns `Pending` without a waker, and a controller's trigger streams
/// (a `FuturesUnordered`) never poll it again: that controller stops
/// hearing its own objects for good. Measured in e2e: an NpuServer's spec
/// change never reconciled after a test namespace was deleted.
pub struct Shared<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    store: Store<K>,
    /// Every applied or deleted object, to every subscription.
    changes: tokio::sync::broadcast::Sender<Arc<K>>,
    /// The watch, not started until [`Shared::run`].
    events: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    fn new(client: &Client, namespace: Option<&str>, config: watcher::Config) -> Self {
        Self::watching(api(client, namespace), config, strip)
    }
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// The cache of what `api` lists and watches under `config`, each
    /// object passed through `modify` before it is cached.
    fn watching(api: Api<K>, config: watcher::Config, modify: fn(&mut K)) -> Self {
        let (store, writer) = reflector::store();
        Self {
            writer,
            store,
            changes: tokio::sync::broadcast::channel(BUFFER).0,
            events: watcher(api, config).modify(modify).boxed(),
        }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A controller of this kind, driven by a subscription of its own.
    pub fn controller(&self, config: controller::Config) -> Controller<K> {
        Controller::for_shared_stream(self.subscribe(), self.store()).with_config(config)
    }

    /// A new subscription to the cache's changes, deletions included, for
    /// exactly one consumer. A consumer that falls more than [`BUFFER`]
    /// changes behind gets every cached object instead of what it missed
    /// (a reconcile too many, never one too few).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        use tokio::sync::broadcast::error::RecvError;
        let (rx, store) = (self.changes.subscribe(), self.store());
        futures::stream::unfold((rx, store), |(mut rx, store)| async move {
            match rx.recv().await {
                Ok(object) => Some((vec![object], (rx, store))),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, kind = %K::kind(&()), "a slow consumer missed changes: it gets every cached object");
                    let all = store.state();
                    Some((all, (rx, store)))
                }
                Err(RecvError::Closed) => None,
            }
        })
        .flat_map(futures::stream::iter)
    }

    /// Drives the watch into the store, then to the subscriptions.
    fn run(self) -> BoxFuture<'static, ()> {
        let events = self.events.default_backoff();
        let changes = self.changes;
        reflector::reflector(self.writer, events)
            .for_each(move |event| {
                if let Ok(
                    watcher::Event::Apply(object)
                    | watcher::Event::InitApply(object)
                    | watcher::Event::Delete(object),
                ) = event
                {
                    // No subscriber is not an error.
                    let _ = changes.send(Arc::new(object));
                }
                futures::future::ready(())
            })
            .boxed()
    }

    fn synced(&self) -> BoxFuture<'static, bool> {
        let store = self.store.clone();
        async move { store.wait_until_ready().await.is_ok() }.boxed()
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops what the operator never reads before it is cached: managed
/// fields, and the `last-applied-configuration` annotation, which holds a
/// whole copy of an object applied with client-side `kubectl apply` (for a
/// Secret: its data).
fn strip<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A Node as routing reads it: its conditions. The image list, volumes
/// and the rest of its status are dropped before caching.
fn strip_node(node: &mut Node) {
    strip(node);
    if let Some(status) = node.status.as_mut() {
        *status = NodeStatus {
            conditions: status.conditions.take(),
            ..Default::default()
        };
    }
}

/// A Pod as routing reads it: its metadata, node, Ready condition and
/// addresses. Containers (their environment included) are dropped before
/// caching.
fn strip_pod(pod: &mut Pod) {
    strip(pod);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        ..Default::default()
    });
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            conditions: status.conditions.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            ..Default::default()
        };
    }
}

/// Where the API server publishes its own addresses: the EndpointSlice of
/// the `kubernetes` Service.
pub const API_SERVER_NAMESPACE: &str = "default";
pub const API_SERVER_SLICE: &str = "kubernetes";

/// The pods routing reads: NPU servers' and CPU workers'.
const ROUTED_PODS: &str =
    "app.kubernetes.io/name=cellule,app.kubernetes.io/component in (npu-server,cpu-worker)";

/// Every cache of one scope (the cluster, or one namespace).
pub struct Caches {
    pub pools: Shared<Pool>,
    pub npu_servers: Shared<NpuServer>,
    pub grants: Shared<WorkerGrant>,
    pub peer_trusts: Shared<PeerTrust>,
    pub deployments: Shared<Deployment>,
    pub services: Shared<Service>,
    pub config_maps: Shared<ConfigMap>,
    pub service_accounts: Shared<ServiceAccount>,
    pub pod_disruption_budgets: Shared<PodDisruptionBudget>,
    pub network_policies: Shared<NetworkPolicy>,
    pub roles: Shared<Role>,
    pub role_bindings: Shared<RoleBinding>,
    pub revocation_lists: Shared<RevocationList>,
    /// The operator's own Secrets (signing keys, tokens), with their data.
    pub secrets: Shared<Secret>,
    /// Metadata of every Secret: to see a referenced Secret appear or go.
    /// Never the data of a Secret the operator did not make.
    pub secret_metadata: Shared<PartialObjectMeta<Secret>>,
    /// The API server's own EndpointSlice (`default/kubernetes`): where a
    /// pool's live channel goes.
    pub api_server: Shared<EndpointSlice>,
    /// The tier Services' EndpointSlices, which the operator writes.
    pub endpoint_slices: Shared<EndpointSlice>,
    /// The pods of NPU servers and CPU workers: what routing follows.
    pub pods: Shared<Pod>,
    /// Every node's conditions: a node that stops reporting takes its
    /// pods out of routing before they are marked NotReady.
    pub nodes: Shared<Node>,
}

impl Caches {
    fn new(client: &Client, namespace: Option<&str>) -> Self {
        let owned = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
        let all = watcher::Config::default;
        Self {
            pools: Shared::new(client, namespace, all()),
            npu_servers: Shared::new(client, namespace, all()),
            grants: Shared::new(client, namespace, all()),
            peer_trusts: Shared::new(client, namespace, all()),
            deployments: Shared::new(client, namespace, owned()),
            services: Shared::new(client, namespace, owned()),
            config_maps: Shared::new(client, namespace, owned()),
            service_accounts: Shared::new(client, namespace, owned()),
            pod_disruption_budgets: Shared::new(client, namespace, owned()),
            network_policies: Shared::new(client, namespace, owned()),
            roles: Shared::new(client, namespace, owned()),
            role_bindings: Shared::new(client, namespace, owned()),
            revocation_lists: Shared::new(client, namespace, owned()),
            secrets: Shared::new(client, namespace, owned()),
            // An Api of PartialObjectMeta lists and watches metadata only
            // (the API server never sends the data).
            secret_metadata: Shared::new(client, namespace, all()),
            api_server: Shared::new(
                client,
                Some(API_SERVER_NAMESPACE),
                watcher::Config::default().fields(&format!("metadata.name={API_SERVER_SLICE}")),
            ),
            // Only the slices the operator writes: the EndpointSlice
            // controller copies a Service's labels (ours, owner included)
            // onto the slices it makes for it, which are not to be pruned.
            endpoint_slices: Shared::new(
                client,
                namespace,
                watcher::Config::default().labels(&format!(
                    "{},{}={}",
                    labels::MANAGED_SELECTOR,
                    crate::routing::endpoints::SLICE_MANAGER_LABEL,
                    crate::routing::endpoints::SLICE_MANAGER
                )),
            ),
            pods: Shared::watching(
                api(client, namespace),
                watcher::Config::default().labels(ROUTED_PODS),
                strip_pod,
            ),
            nodes: Shared::watching(Api::all(client.clone()), all(), strip_node),
        }
    }

    fn stores(&self) -> Stores {
        Stores {
            owned: OwnedStores {
                deployments: self.deployments.store(),
                services: self.services.store(),
                config_maps: self.config_maps.store(),
                service_accounts: self.service_accounts.store(),
                pod_disruption_budgets: self.pod_disruption_budgets.store(),
                network_policies: self.network_policies.store(),
                roles: self.roles.store(),
                role_bindings: self.role_bindings.store(),
                revocation_lists: self.revocation_lists.store(),
                secrets: self.secrets.store(),
                endpoint_slices: self.endpoint_slices.store(),
            },
            pods: self.pods.store(),
            nodes: self.nodes.store(),
            secret_metadata: self.secret_metadata.store(),
            api_server: self.api_server.store(),
            npu_servers: self.npu_servers.store(),
            pools: self.pools.store(),
            grants: self.grants.store(),
            peer_trusts: self.peer_trusts.store(),
        }
    }

    /// Resolves to whether every cache got its first full list.
    fn synced(&self) -> BoxFuture<'static, bool> {
        futures::future::join_all([
            self.pools.synced(),
            self.npu_servers.synced(),
            self.grants.synced(),
            self.peer_trusts.synced(),
            self.deployments.synced(),
            self.services.synced(),
            self.config_maps.synced(),
            self.service_accounts.synced(),
            self.pod_disruption_budgets.synced(),
            self.network_policies.synced(),
            self.roles.synced(),
            self.role_bindings.synced(),
            self.revocation_lists.synced(),
            self.secrets.synced(),
            self.secret_metadata.synced(),
            self.api_server.synced(),
            self.endpoint_slices.synced(),
            self.pods.synced(),
            self.nodes.synced(),
        ])
        .map(|all| all.into_iter().all(|ok| ok))
        .boxed()
    }

    /// Drives every watch; consumes the caches, so no subscription can be
    /// taken after the watches started.
    fn run(self) -> BoxFuture<'static, ()> {
        futures::future::join_all([
            self.pools.run(),
            self.npu_servers.run(),
            self.grants.run(),
            self.peer_trusts.run(),
            self.deployments.run(),
            self.services.run(),
            self.config_maps.run(),
            self.service_accounts.run(),
            self.pod_disruption_budgets.run(),
            self.network_policies.run(),
            self.roles.run(),
            self.role_bindings.run(),
            self.revocation_lists.run(),
            self.secrets.run(),
            self.secret_metadata.run(),
            self.api_server.run(),
            self.endpoint_slices.run(),
            self.pods.run(),
            self.nodes.run(),
        ])
        .map(|_| ())
        .boxed()
    }
}

/// Runs `controller` with `reconcile` and the shared error policy until
/// `shutdown`.
pub fn drive<K, Fut>(
    controller: Controller<K>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    ctx: Arc<Context>,
) -> BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: futures::TryFuture<Ok = controller::Action, Error = crate::reconcile::Error>
        + Send
        + 'static,
{
    let reconcile = measured::<K, _>(reconcile);
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, crate::reconcile::error_policy, ctx)
        // One line per reconcile, off by default: what the benchmarks
        // count until there are metrics.
        .for_each(|_| {
            tracing::debug!(target: "cellule_operator::reconciles", kind = %K::kind(&()), "reconciled");
            futures::future::ready(())
        })
        .boxed()
}

/// Counts one running reconcile while it lives: a reconcile dropped
/// unfinished (shutdown) is counted out too.
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Running {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `reconcile`, counted and timed in `crate::metrics`.
fn measured<K, Fut>(
    mut reconcile: impl FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
) -> impl FnMut(
    Arc<K>,
    Arc<Context>,
) -> BoxFuture<'static, Result<controller::Action, crate::reconcile::Error>>
+ Send
+ 'static
where
    K: Resource<DynamicType = ()> + 'static,
    Fut: futures::TryFuture<Ok = controller::Action, Error = crate::reconcile::Error>
        + Send
        + 'static,
{
    use futures::TryFutureExt;
    let kind = K::kind(&()).into_owned();
    move |object, ctx| {
        let run = TryFutureExt::into_future(reconcile(object, ctx));
        let kind = kind.clone();
        async move {
            let metrics = crate::metrics::global();
            let labels = crate::metrics::Metrics::kind(&kind);
            let running = Running::new(metrics.reconciles_running.get_or_create(&labels).clone());
            let started = std::time::Instant::now();
            let result = run.await;
            drop(running);
            metrics
                .reconcile_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "success",
                Err(error) => {
                    metrics
                        .reconcile_errors
                        .get_or_create(&crate::metrics::ErrorLabels {
                            kind: kind.clone(),
                            reason: error.reason().to_owned(),
                        })
                        .inc();
                    "error"
                }
            };
            metrics
                .reconciles
                .get_or_create(&crate::metrics::ResultLabels {
                    kind,
                    result: outcome.to_owned(),
                })
                .inc();
            result
        }
        .boxed()
    }
}

/// Only the objects whose `metadata.generation` moved (or that are new):
/// a status write (ready counts, conditions) does not wake the dependants
/// of an object, only a change of its spec does.
pub fn spec_changes<K>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    stream.filter(move |object| {
        let uid = object.uid().unwrap_or_default();
        let generation = object.meta().generation;
        let changed = seen.insert(uid, generation) != Some(generation);
        futures::future::ready(changed)
    })
}

/// Only the objects for which `key` changed, that are new, or that were
/// deleted (gone from `store`): what wakes a dependant that reads only
/// that part of them.
pub fn changes_of<K, T>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    T: PartialEq + Send + 'static,
{
    let mut seen: HashMap<String, T> = HashMap::new();
    stream.filter(move |object| {
        let uid = object.uid().unwrap_or_default();
        let changed = if store
            .get(&reflector::ObjectRef::from_obj(object.as_ref()))
            .is_none()
        {
            seen.remove(&uid);
            true
        } else {
            let now = key(object);
            let changed = seen.get(&uid) != Some(&now);
            seen.insert(uid, now);
            changed
        };
        futures::future::ready(changed)
    })
}

/// Only the nodes whose readiness changed, that are new, or that were
/// deleted (gone from `store`): a node's heartbeat, every few seconds,
/// wakes nothing.
pub fn readiness_changes(
    nodes: impl Stream<Item = Arc<Node>> + Send + 'static,
    store: Store<Node>,
) -> impl Stream<Item = Arc<Node>> + Send + 'static {
    changes_of(nodes, store, crate::routing::health::node_ready)
}

/// The objects of `K` that have pods on `node`, found with `owner_of`.
pub fn owners_on_node<K>(
    pods: &Store<Pod>,
    node: &Node,
    owner_of: impl Fn(&Pod) -> Option<reflector::ObjectRef<K>>,
) -> Vec<reflector::ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let name = node.name_any();
    let mut owners: Vec<_> = pods
        .state()
        .iter()
        .filter(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
        .filter_map(|pod| owner_of(pod))
        .collect();
    owners.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    owners.dedup();
    owners
}

/// Only objects just created (`metadata.generation` 1): what wakes an
/// owner that must learn of a new object but not of its every update.
pub fn created<K>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource + Send + Sync + 'static,
{
    stream.filter(|object| futures::future::ready(object.meta().generation == Some(1)))
}

/// Runs every controller until `shutdown` resolves; calls `on_ready` once
/// every cache has synced.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
    on_ready: impl FnOnce(),
) {
    // One set of caches and controllers per namespace when the scope is a
    // list: a watch covers one namespace or all of them.
    let scopes: Vec<Option<&str>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options
            .namespaces
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let mut synced = Vec::new();
    let mut watches = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let caches = Caches::new(&client, scope);
        let ctx = Context::new(client.clone(), caches.stores(), options.images.clone());
        let config = options.controller_config();
        controllers.push(pool::controller(
            &caches,
            ctx.clone(),
            config.clone(),
            shutdown.clone(),
        ));
        controllers.push(npu_server::controller(
            &caches,
            ctx.clone(),
            config.clone(),
            shutdown.clone(),
        ));
        controllers.push(worker_grant::controller(
            &caches,
            ctx.clone(),
            config.clone(),
            shutdown.clone(),
        ));
        controllers.push(peer_trust::controller(
            &caches,
            ctx,
            config,
            shutdown.clone(),
        ));
        crate::metrics::global().watch(&caches.stores());
        synced.push(caches.synced());
        watches.push(caches.run());
    }

    let watches = tokio::spawn(futures::future::join_all(watches));
    // Reconciles read several caches: start only once all have synced,
    // or a reconcile could take a Pool that is merely not loaded yet for
    // a missing one.
    let synced = futures::future::join_all(synced).map(|all| all.into_iter().all(|ok| ok));
    let synced = tokio::select! {
        synced = synced => synced,
        () = shutdown.clone() => false,
    };
    if !synced {
        watches.abort();
        return;
    }
    tracing::info!("caches synced, controllers running");
    on_ready();
    futures::future::join_all(controllers).await;
    watches.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm
    }

    /// An object deleted before a subscriber reads its change must not
    /// stall the subscription (kube-runtime's `ReflectHandle` did).
    #[tokio::test]
    async fn a_subscription_goes_on_past_an_object_deleted_meanwhile() {
        let (store, writer) = reflector::store();
        let events = futures::stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(config_map("a"))),
            Ok(watcher::Event::Delete(config_map("a"))),
            Ok(watcher::Event::Apply(config_map("b"))),
        ])
        .boxed();
        let shared = Shared {
            writer,
            store,
            changes: tokio::sync::broadcast::channel(BUFFER).0,
            events,
        };
        let subscription = shared.subscribe();
        shared.run().await;
        let names: Vec<String> = subscription.take(3).map(|cm| cm.name_any()).collect().await;
        assert_eq!(names, ["a", "a", "b"]);
    }

    /// A subscriber that fell behind gets every cached object instead.
    #[tokio::test]
    async fn a_lagging_subscription_gets_the_whole_cache() {
        let (store, writer) = reflector::store();
        let applies =
            (0..BUFFER + 10).map(|i| Ok(watcher::Event::Apply(config_map(&format!("o{i}")))));
        let events = futures::stream::iter(
            [Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)]
                .into_iter()
                .chain(applies),
        )
        .boxed();
        let shared = Shared {
            writer,
            store,
            changes: tokio::sync::broadcast::channel(BUFFER).0,
            events,
        };
        let subscription = shared.subscribe();
        shared.run().await;
        let seen: std::collections::BTreeSet<String> = subscription
            .take(BUFFER + 10)
            .map(|cm| cm.name_any())
            .collect()
            .await;
        assert_eq!(
            seen.len(),
            BUFFER + 10,
            "every object, once the cache is replayed"
        );
    }
}
