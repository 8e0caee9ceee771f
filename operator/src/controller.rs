//! Wires the controllers: shared watches of the objects the operator
//! makes (by label), metadata-only watches of Secrets, and one Controller
//! per kind.

use std::{fmt::Debug, future::Future, sync::Arc};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef, ReflectHandle, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::{
    api::{NpuServer, Pool, WorkerGrant},
    npu_server, pool,
    reconcile::{Context, context::OwnedStores, error_policy, labels},
    worker_grant,
};

/// A cache of `K` filtered by `config`, shared by several controllers: the
/// returned future drives the watch and must be polled.
fn shared<K>(
    client: &Client,
    config: watcher::Config,
) -> (
    Store<K>,
    ReflectHandle<K>,
    impl Future<Output = ()> + Send + use<K>,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store_shared(256);
    let subscriber = writer
        .subscribe()
        .expect("a shared store can be subscribed to");
    let driver = reflector::reflector(writer, watcher(Api::<K>::all(client.clone()), config))
        .default_backoff()
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
    (store, subscriber, driver)
}

/// Resolves to whether `store` got its first full list.
fn synced<K>(store: &Store<K>) -> futures::future::BoxFuture<'static, bool>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let store = store.clone();
    async move { store.wait_until_ready().await.is_ok() }.boxed()
}

/// Runs every controller until `shutdown` resolves; calls `on_ready` once
/// every cache has synced.
pub async fn run(
    client: Client,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
    on_ready: impl FnOnce(),
) {
    let owned = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let (deployments, deployment_events, drive_deployments) =
        shared::<Deployment>(&client, owned.clone());
    let (services, service_events, drive_services) = shared::<Service>(&client, owned.clone());
    let (config_maps, config_map_events, drive_config_maps) =
        shared::<ConfigMap>(&client, owned.clone());
    let (service_accounts, service_account_events, drive_service_accounts) =
        shared::<ServiceAccount>(&client, owned.clone());
    let (pdbs, pdb_events, drive_pdbs) = shared::<PodDisruptionBudget>(&client, owned.clone());
    let (netpols, netpol_events, drive_netpols) = shared::<NetworkPolicy>(&client, owned);
    let (pools, pool_events, drive_pools) = shared::<Pool>(&client, watcher::Config::default());
    let (npus, npu_events, drive_npus) = shared::<NpuServer>(&client, watcher::Config::default());

    // Secrets: metadata only (their content is never needed), to notice a
    // referenced Secret appearing or going away.
    let (secrets, secret_events, drive_secrets) =
        shared::<PartialObjectMeta<Secret>>(&client, watcher::Config::default());
    // The operator's own Secrets, with their data: signing keys, tokens.
    let (own_secrets, own_secret_events, drive_own_secrets) = shared::<Secret>(
        &client,
        watcher::Config::default().labels(labels::MANAGED_SELECTOR),
    );
    let (grants, grant_events, drive_grants) =
        shared::<WorkerGrant>(&client, watcher::Config::default());

    let synced = futures::future::join_all([
        synced(&deployments),
        synced(&services),
        synced(&config_maps),
        synced(&service_accounts),
        synced(&pdbs),
        synced(&netpols),
        synced(&pools),
        synced(&npus),
        synced(&secrets),
        synced(&own_secrets),
        synced(&grants),
    ])
    .map(|all| all.into_iter().all(|ok| ok));
    let ctx = Context::new(
        client.clone(),
        OwnedStores {
            deployments,
            services,
            config_maps,
            service_accounts,
            pod_disruption_budgets: pdbs,
            network_policies: netpols,
            secrets: own_secrets,
        },
        secrets,
        npus.clone(),
        pools.clone(),
    );

    let pools_for_secrets = pools.clone();
    let pools_for_npus = pools.clone();
    let pool_events_for_npus = pool_events.clone();
    let pool_events_for_grants = pool_events.clone();
    let config_map_events_for_grants = config_map_events.clone();
    let pool_controller = Controller::for_shared_stream(pool_events, pools.clone())
        .owns_shared_stream(deployment_events.clone())
        .owns_shared_stream(service_events.clone())
        .owns_shared_stream(config_map_events.clone())
        .owns_shared_stream(service_account_events)
        .owns_shared_stream(pdb_events)
        .owns_shared_stream(netpol_events.clone())
        .owns_shared_stream(own_secret_events.clone())
        .watches_shared_stream(secret_events, move |secret| {
            pools_referencing_secret(&pools_for_secrets, &secret)
        })
        .watches_shared_stream(npu_events.clone(), move |npu| {
            let pool = ObjectRef::new(&npu.spec.pool_ref.name)
                .within(&npu.namespace().unwrap_or_default());
            pools_for_npus.get(&pool).map(|_| pool)
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(pool::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let npus_for_pools = npus.clone();
    let npu_controller = Controller::for_shared_stream(npu_events, npus)
        .owns_shared_stream(deployment_events)
        .owns_shared_stream(service_events)
        .owns_shared_stream(netpol_events)
        .watches_shared_stream(pool_events_for_npus, move |pool: Arc<Pool>| {
            let ns = pool.namespace();
            npus_for_pools
                .state()
                .into_iter()
                .filter(|npu| npu.namespace() == ns && npu.spec.pool_ref.name == pool.name_any())
                .map(|npu| ObjectRef::from_obj(npu.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(npu_server::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let grants_for_pools = grants.clone();
    let grants_for_rings = grants.clone();
    let grants_for_lists = grants.clone();
    let grant_controller = Controller::for_shared_stream(grant_events, grants)
        .owns_shared_stream(own_secret_events.clone())
        // A pool's signing key ring appearing or rotating: its grants may
        // be waiting for it.
        .watches_shared_stream(own_secret_events, move |secret: Arc<Secret>| {
            let pool = secret
                .name_any()
                .strip_suffix("-signing-keys")
                .map(str::to_owned);
            grants_of(&grants_for_rings, secret.namespace(), pool)
        })
        .watches_shared_stream(config_map_events_for_grants, move |list: Arc<ConfigMap>| {
            let pool = list
                .name_any()
                .strip_suffix("-revocations")
                .map(str::to_owned);
            grants_of(&grants_for_lists, list.namespace(), pool)
        })
        // A pool's key ring or tiers changing concerns each of its grants.
        .watches_shared_stream(pool_events_for_grants, move |pool: Arc<Pool>| {
            grants_of(&grants_for_pools, pool.namespace(), Some(pool.name_any()))
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(worker_grant::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    // Reconciles read several caches: start only once all have synced,
    // or a reconcile could take a Pool that is merely not loaded yet for
    // a missing one.
    let caches = tokio::spawn(async move {
        tokio::join!(
            drive_deployments,
            drive_services,
            drive_config_maps,
            drive_service_accounts,
            drive_pdbs,
            drive_netpols,
            drive_pools,
            drive_npus,
            drive_secrets,
            drive_own_secrets,
            drive_grants,
        );
    });
    let synced = tokio::select! {
        synced = synced => synced,
        () = shutdown.clone() => false,
    };
    if !synced {
        caches.abort();
        return;
    }
    tracing::info!("caches synced, controllers running");
    on_ready();
    tokio::join!(pool_controller, npu_controller, grant_controller);
    caches.abort();
}

/// Pools in the Secret's namespace that reference it (database or TLS).
fn pools_referencing_secret(
    pools: &Store<Pool>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Pool>> {
    let (name, ns) = (secret.name_any(), secret.namespace());
    pools
        .state()
        .into_iter()
        .filter(|pool| pool.namespace() == ns)
        .filter(|pool| pool.spec.database.dsn_secret_ref.name == name || pool.spec.tls.name == name)
        .map(|pool| ObjectRef::from_obj(pool.as_ref()))
        .collect()
}

/// The WorkerGrants of `pool` in `namespace`.
fn grants_of(
    grants: &Store<WorkerGrant>,
    namespace: Option<String>,
    pool: Option<String>,
) -> Vec<ObjectRef<WorkerGrant>> {
    let Some(pool) = pool else { return Vec::new() };
    grants
        .state()
        .into_iter()
        .filter(|g| g.namespace() == namespace && g.spec.pool_ref.name == pool)
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}
