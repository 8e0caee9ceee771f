//! Pool: the pool orchestrator's Deployment, Service, ServiceAccount,
//! rendered config, PodDisruptionBudget, in-cluster CPU workers and the
//! NetworkPolicies that block egress.

pub mod build;
pub mod config;
pub mod netpol;
pub mod routing;
pub mod validate;

#[cfg(test)]
mod tests;

use std::{future::Future, sync::Arc};

use futures::{StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::{Pod, Secret};

use jiff::Timestamp;
use kube::{
    ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        controller::{self, Action},
        reflector::{ObjectRef, Store},
    },
};

use crate::{
    api::{NpuServer, PeerTrust, Pool},
    conditions::{self, Summary},
    controller::{Caches, created, drive, owners_on_node, readiness_changes},
    images, peer_trust,
    reconcile::{self, Context, Result, apply::OwnerSync, context::secret_exists, status},
    tokens::{
        self,
        revocations::{self, RevocationStore},
    },
};

/// The Pool controller: a Pool is reconciled when it changes, when an
/// object it made changes, when a Secret it references appears or goes,
/// and when one of its NpuServers changes (its health drives routing).
pub fn controller(
    caches: &Caches,
    ctx: Arc<Context>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let pools = caches.pools.store();
    let pools_for_npus = pools.clone();
    let pools_for_api = pools.clone();
    let pools_for_peers = pools.clone();
    let pods = caches.pods.store();
    let controller = caches
        .pools
        .controller(config)
        .owns_shared_stream(caches.deployments.subscribe())
        .owns_shared_stream(caches.services.subscribe())
        // Not the peer reports, which the pool writes as often as it
        // likes: they are the PeerTrusts' to read.
        .owns_shared_stream(caches.config_maps.subscribe().filter(|map| {
            futures::future::ready(!map.name_any().ends_with(crate::names::PEER_REPORTS))
        }))
        .owns_shared_stream(caches.service_accounts.subscribe())
        .owns_shared_stream(caches.pod_disruption_budgets.subscribe())
        .owns_shared_stream(caches.network_policies.subscribe())
        .owns_shared_stream(caches.roles.subscribe())
        .owns_shared_stream(caches.role_bindings.subscribe())
        .owns_shared_stream(caches.secrets.subscribe())
        // A new revocation list: the pool learns when it expires. Not at
        // every revocation (an append to a list).
        .owns_shared_stream(created(caches.revocation_lists.subscribe()))
        .watches_shared_stream(caches.secret_metadata.subscribe(), move |secret| {
            pools_referencing_secret(&pools, &secret)
        })
        // The API server moving: every pool's live channel follows.
        .watches_shared_stream(caches.api_server.subscribe(), move |_| {
            pools_for_api
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        // A peer judged again: the config and egress follow its level.
        .watches_shared_stream(peer_changes(caches), move |peer| {
            let pool = ObjectRef::new(&peer.spec.pool_ref.name)
                .within(&peer.namespace().unwrap_or_default());
            pools_for_peers.get(&pool).map(|_| pool)
        })
        .watches_shared_stream(caches.npu_servers.subscribe(), move |npu| {
            let pool = ObjectRef::new(&npu.spec.pool_ref.name)
                .within(&npu.namespace().unwrap_or_default());
            pools_for_npus.get(&pool).map(|_| pool)
        })
        // Routing: a pod of an NPU server or a CPU worker, or the
        // readiness of a node, changed.
        .owns_shared_stream(caches.endpoint_slices.subscribe())
        .watches_shared_stream(caches.pods.subscribe(), |pod| pool_of_pod(&pod))
        .watches_shared_stream(
            readiness_changes(caches.nodes.subscribe(), caches.nodes.store()),
            move |node| owners_on_node(&pods, &node, pool_of_pod),
        );
    drive(controller, shutdown, reconcile, ctx)
}

/// The PeerTrusts whose part in what a Pool renders changed.
fn peer_changes(caches: &Caches) -> impl futures::Stream<Item = Arc<PeerTrust>> + Send + 'static {
    crate::controller::changes_of(
        caches.peer_trusts.subscribe(),
        caches.peer_trusts.store(),
        |p: &PeerTrust| {
            let status = p.status.as_ref();
            (
                p.metadata.generation,
                p.metadata.deletion_timestamp.is_some(),
                status.and_then(|s| s.common.observed_generation),
                status.and_then(|s| s.effective_trust_level),
                status.and_then(|s| s.level3_until.clone()),
            )
        },
    )
}

/// The Pool whose routing a pod of `pool`'s workloads counts in.
fn pool_of_pod(pod: &Pod) -> Option<ObjectRef<Pool>> {
    let pool = pod.labels().get(crate::reconcile::labels::POOL)?;
    Some(ObjectRef::new(pool).within(&pod.namespace()?))
}

/// The images a Pool runs: its own, then each in-cluster CPU worker set's.
fn images_of(pool: &Pool) -> Vec<images::Named<'_>> {
    let own = images::Named {
        name: images::POOL.into(),
        field: "spec.image".into(),
        image: &pool.spec.image,
    };
    let workers = pool
        .spec
        .cpu_workers
        .iter()
        .enumerate()
        .map(|(i, set)| images::Named {
            name: images::cpu_workers(&set.name),
            field: format!("spec.cpuWorkers[{i}].image"),
            image: &set.image,
        });
    std::iter::once(own).chain(workers).collect()
}

/// Every image of `pool` as if verified (unit tests of the builders).
#[cfg(test)]
pub fn all_verified(pool: &Pool) -> images::Running {
    images::Running(
        images_of(pool)
            .into_iter()
            .map(|n| (n.name, images::test_image(&n.image.reference)))
            .collect(),
    )
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

pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action> {
    if reconcile::deleting(pool.as_ref()) {
        return Ok(Action::await_change());
    }
    let result = apply_pool(&pool, &ctx).await;
    reconcile::finish(&ctx, pool.as_ref(), result).await
}

/// The caches, as what a Pool in `namespace` references.
struct Cached<'a> {
    ctx: &'a Context,
    namespace: String,
    pool: &'a Pool,
}

impl validate::References for Cached<'_> {
    fn secret_exists(&self, name: &str) -> bool {
        secret_exists(self.ctx, &self.namespace, name)
    }
    fn npu_server(&self, name: &str) -> Option<Arc<NpuServer>> {
        self.ctx
            .npu_servers
            .get(&ObjectRef::new(name).within(&self.namespace))
    }
    fn api_server(&self) -> validate::ApiServer {
        api_server_endpoints(&self.ctx.api_server.state())
    }
    fn peers(&self) -> Vec<crate::peer_trust::Peer> {
        let trusts = self.ctx.peer_trusts.state();
        crate::peer_trust::peers(self.pool, trusts.iter().map(|p| p.as_ref()))
    }
}

/// The ready addresses and the ports of the API server's EndpointSlice.
pub fn api_server_endpoints(
    slices: &[Arc<k8s_openapi::api::discovery::v1::EndpointSlice>],
) -> validate::ApiServer {
    let mut found = validate::ApiServer::default();
    for slice in slices {
        let bits = match slice.address_type.as_str() {
            "IPv4" => 32,
            "IPv6" => 128,
            _ => continue,
        };
        found.cidrs.extend(
            slice
                .endpoints
                .iter()
                .flatten()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .flat_map(|e| &e.addresses)
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                .map(|a| format!("{a}/{bits}")),
        );
        found
            .ports
            .extend(slice.ports.iter().flatten().filter_map(|p| p.port));
    }
    found.cidrs.sort();
    found.cidrs.dedup();
    found.ports.sort_unstable();
    found.ports.dedup();
    found
}

async fn apply_pool(pool: &Pool, ctx: &Context) -> Result<Action> {
    let generation = pool.metadata.generation;
    let now = Timestamp::now();
    // A revocation record an earlier version left in the status is the
    // revocation store's to move (its own field manager): this reconcile
    // sees and writes the status without it.
    let pool = &Pool {
        status: pool.status.clone().map(|status| crate::api::PoolStatus {
            revoked_tokens: Default::default(),
            ..status
        }),
        ..pool.clone()
    };
    let current = pool.status.as_ref();
    let mut next = current.cloned().unwrap_or_default();
    next.common.observed_generation = generation;

    // Revocations first, whatever else is wrong with the pool: expired
    // lists go and older records move in even while the pool is stalled.
    let namespace = pool.namespace().unwrap_or_default();
    let next_revocation_expiry = revocations::store(ctx, &namespace, &pool.name_any())
        .sync(now.as_second())
        .await?;
    let refs = Cached {
        ctx,
        namespace,
        pool,
    };
    // Its federation identity too: peers' admins pin it before the pool
    // runs, and the pod mounts it.
    let (federation, next_identity_change) =
        match peer_trust::identity::sync(ctx, pool, now.as_second()).await {
            Ok(synced) => synced,
            Err(error) => {
                follow_peers(ctx, pool, &refs).await?;
                return status::stall_on(ctx, pool, next, error).await;
            }
        };
    next.federation = federation;

    let valid = match validate::validate(pool, &refs) {
        Ok(valid) => valid,
        Err(blocked) => {
            // Whatever is wrong with the pool, its keys rotate and a key
            // declared compromised leaves the JWKS at once.
            let next_key_change = sync_published_keys(ctx, pool, &mut next, now).await;
            follow_peers(ctx, pool, &refs).await?;
            // And routing follows the pods.
            let (recorded, next_switch) =
                route_blocked(ctx, pool, &refs, current, &mut next, now).await?;
            let written = recorded.as_ref().and_then(|p| p.status.clone());
            let (pool, current) = match &recorded {
                Some(recorded) => (recorded, written.as_ref()),
                None => (pool, current),
            };
            let reason = blocked.reason();
            status::stall(ctx, pool, current, next, reason, blocked.message()).await?;
            // The watch on Secrets brings the pool back when it appears;
            // the keys, the revocation list and routing have their own
            // times.
            let at = next_key_change?;
            let at = [next_revocation_expiry, next_identity_change, next_switch]
                .into_iter()
                .flatten()
                .fold(at, i64::min);
            return Ok(reconcile::requeue_at(at, Timestamp::now()));
        }
    };

    // Images, before anything is rendered from them.
    let named = images_of(pool);
    let checked = images::check(&ctx.client, ctx.images.as_ref(), &valid.namespace, &named).await?;
    let (running, image_statuses) = images::settle_all(
        &checked,
        current
            .into_iter()
            .flat_map(|s| s.image.iter().chain(&s.worker_images)),
    );

    // Routing, from the pods and nodes as the caches have them and from
    // the routing this status recorded (its timers count from there).
    let routing = decide_routing(ctx, routing::Scope::of(&valid), current, &mut next, now);
    let mut desired = build::desired(&valid, &routing, &running);
    // Token signing keys first: the JWKS published below comes from them.
    let (ring, next_key_change) = match tokens::sync_ring(ctx, pool, now.as_second()).await {
        Ok(ring) => ring,
        Err(error) => return status::stall_on(ctx, pool, next, error).await,
    };
    let component = build::pool_component(&valid.name);
    desired
        .config_maps
        .push(tokens::published(pool, &ring, component.selector())?);
    next.signing_keys = ring.status(
        tokens::ring::RingPolicy::of(pool).pre_publication,
        now.as_second(),
    );
    let uid = pool.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let ns = &valid.namespace;
    let owned = &ctx.owned;

    let routing_map = desired
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&crate::names::routing(&valid.name)));
    let recorded = record(ctx, pool, &next, &routing, routing_map).await?;
    let told = recorded.is_some();
    let pool = recorded.as_ref().unwrap_or(pool);
    let current = if told {
        Some(&next).cloned()
    } else {
        current.cloned()
    };
    let current = current.as_ref();

    // The ConfigMap an earlier version kept revocations in is the
    // revocation store's to move, then delete: never pruned unread.
    let mut sync =
        OwnerSync::new(&ctx.client, ns, uid).keep(crate::names::legacy_revocations(&valid.name));
    for name in std::mem::take(&mut desired.kept) {
        sync = sync.keep(name);
    }
    // NetworkPolicies first: the egress and ingress rules matter most.
    // Then routing: the tiers' endpoints and the routing the pool watches.
    sync.kind(&owned.network_policies, desired.network_policies)
        .await;
    sync.kind(&owned.services, desired.services).await;
    sync.kind(&owned.endpoint_slices, desired.endpoint_slices)
        .await;
    sync.kind(&owned.config_maps, desired.config_maps).await;
    sync.kind(&owned.service_accounts, desired.service_accounts)
        .await;
    sync.kind(&owned.deployments, desired.deployments).await;
    sync.kind(
        &owned.pod_disruption_budgets,
        desired.pod_disruption_budgets,
    )
    .await;
    sync.kind(&owned.roles, desired.roles).await;
    sync.kind(&owned.role_bindings, desired.role_bindings).await;
    let (mut changes, synced) = sync.finish();
    // Routing follows every pod's readiness: its switches are told by
    // their own Events, not one per endpoint update.
    let routing_name = crate::names::routing(&valid.name);
    changes.retain(|c| {
        c.verb != reconcile::apply::Verb::Updated
            || !(c.kind == "EndpointSlice" || c.kind == "ConfigMap" && c.name == routing_name)
    });
    reconcile::report_changes(ctx, pool, &changes).await;
    if let Err(error) = synced {
        return status::stall_on(ctx, pool, next, error).await;
    }

    // Status, from what the caches say now.
    let deployment = owned
        .deployments
        .get(&ObjectRef::new(&component.name).within(ns));
    let ready = deployment
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    next.ready_replicas = Some(ready);
    let (pool_image, worker_images): (Vec<_>, Vec<_>) = image_statuses
        .into_iter()
        .partition(|s| s.name.as_deref() == Some(images::POOL));
    next.image = pool_image.into_iter().next();
    next.worker_images = worker_images;
    let image_verified = images::condition(&checked);
    let want = pool.spec.replicas;
    let refused = images::refused(&image_verified);
    conditions::set(&mut next.common.conditions, image_verified, generation, now);
    let summary = if let Some(refused) = &refused {
        images::summary(refused)
    } else if rollout_complete(deployment.as_deref(), want) {
        Summary::Ready {
            reason: "Available",
            message: format!("{ready}/{want} pool replicas ready"),
        }
    } else {
        Summary::Progressing {
            reason: "DeploymentUnavailable",
            message: format!(
                "{ready}/{want} pool replicas ready; waiting for the rollout of {}",
                component.name
            ),
        }
    };
    conditions::set_summary(&mut next.common.conditions, summary, generation, now);
    if status::write(&ctx.client, pool, current, &next).await? && !told {
        tell_switches(ctx, pool, &routing).await;
    }
    if let Some(mut refused) = refused {
        // Backoff, and a Warning Event, from the error policy; a fail-over
        // hold still ends on time.
        if let reconcile::Error::ImageRefused { retry_by, .. } = &mut refused {
            *retry_by = routing.wake();
        }
        return Err(refused);
    }
    // Come back for the next key rotation or retirement, the next
    // revocation entry to prune, or the next tag resolution, whichever is
    // first.
    let wake = [
        Some(next_key_change),
        next_revocation_expiry,
        next_identity_change,
        images::next_refresh(&named, now.as_second()),
        routing.wake(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(next_key_change);
    Ok(reconcile::requeue_at(wake, Timestamp::now()))
}

/// `scope`'s routing now, from its pods and from the routing `current`
/// recorded (its timers count from there), set in `next`.
fn decide_routing(
    ctx: &Context,
    scope: routing::Scope<'_>,
    current: Option<&crate::api::PoolStatus>,
    next: &mut crate::api::PoolStatus,
    now: Timestamp,
) -> routing::Routing {
    let observed = routing::observe(ctx, scope);
    let previous = current.map_or(&[][..], |s| s.tiers.as_slice());
    let routing = routing::route(scope, &observed, previous, Timestamp::now().as_second());
    next.tiers = routing.tiers();
    next.routing = Some(crate::routing::summary(&next.tiers));
    conditions::set(
        &mut next.common.conditions,
        routing::degraded(&next.tiers),
        scope.pool.metadata.generation,
        now,
    );
    routing
}

/// Routing objects change only once the status records the decision, at
/// the resourceVersion it was made from: a reconcile working from a stale
/// copy (its own writes not yet in the cache) stops here with a conflict
/// instead of switching back without a hold. Written even when the status
/// looks unchanged: that is what a stale copy looks like. The switches are
/// told once recorded. Returns the Pool as written, if it was.
async fn record(
    ctx: &Context,
    pool: &Pool,
    next: &crate::api::PoolStatus,
    routing: &routing::Routing,
    routing_map: Option<&k8s_openapi::api::core::v1::ConfigMap>,
) -> Result<Option<Pool>> {
    let owned = &ctx.owned;
    let slices = routing
        .slices
        .iter()
        .map(|s| reconcile::apply::is_current(&owned.endpoint_slices, s));
    let maps = routing_map.map(|c| reconcile::apply::is_current(&owned.config_maps, c));
    let moves = slices
        .chain(maps)
        .collect::<Result<Vec<bool>>>()?
        .contains(&false);
    if !moves {
        return Ok(None);
    }
    let recorded = status::commit(&ctx.client, pool, None, next).await?;
    if recorded.is_some() {
        tell_switches(ctx, pool, routing).await;
    }
    Ok(recorded)
}

/// For a blocked pool whose names are valid: its routing still follows
/// the pods (the tier Services, their slices, the routing ConfigMap, its
/// status), pruning nothing. Returns the Pool as written, if it was, and
/// when a hold ends.
async fn route_blocked(
    ctx: &Context,
    pool: &Pool,
    refs: &Cached<'_>,
    current: Option<&crate::api::PoolStatus>,
    next: &mut crate::api::PoolStatus,
    now: Timestamp,
) -> Result<(Option<Pool>, Option<i64>)> {
    if !validate::routable(pool) {
        return Ok((None, None));
    }
    let name = pool.name_any();
    let tiers = validate::tiers(pool, refs);
    let scope = routing::Scope {
        pool,
        name: &name,
        namespace: &refs.namespace,
        tiers: &tiers,
    };
    let routing = decide_routing(ctx, scope, current, next, now);
    let map = build::routing_config_map(pool, &refs.namespace, &next.tiers);
    let recorded = record(ctx, pool, next, &routing, Some(&map)).await?;
    let uid = pool.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let owned = &ctx.owned;
    let mut sync = OwnerSync::new(&ctx.client, &refs.namespace, uid);
    sync.some(&owned.services, routing.services.clone()).await;
    sync.some(&owned.endpoint_slices, routing.slices.clone())
        .await;
    sync.some(&owned.config_maps, vec![map]).await;
    sync.finish().1?;
    Ok((recorded, routing.wake()))
}

/// For a blocked pool: its peers' egress and levels follow the PeerTrusts
/// (a peer no longer trusted loses them now, not once the pool is fixed).
async fn follow_peers(ctx: &Context, pool: &Pool, refs: &Cached<'_>) -> Result<()> {
    let peers = validate::References::peers(refs);
    let uid = pool.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let mut sync = OwnerSync::new(&ctx.client, &refs.namespace, uid);
    sync.some(
        &ctx.owned.network_policies,
        vec![netpol::peer_policy(pool, &peers)],
    )
    .await;
    sync.some(
        &ctx.owned.config_maps,
        vec![build::peers_config_map(pool, &peers)],
    )
    .await;
    sync.finish().1
}

/// The Events of the switches `routing` decided, once its status is written.
async fn tell_switches(ctx: &Context, pool: &Pool, routing: &routing::Routing) {
    for (type_, reason, note) in routing.decisions.iter().filter_map(routing::event) {
        crate::metrics::global()
            .tier_transitions
            .get_or_create(&crate::metrics::TransitionLabels {
                transition: reason.to_owned(),
            })
            .inc();
        ctx.event_once(pool, type_, reason, "Route", note).await;
    }
}

/// For a stalled pool: brings the key ring up to date and applies the
/// JWKS alone, pruning nothing. Returns when the ring next needs a look.
async fn sync_published_keys(
    ctx: &Context,
    pool: &Pool,
    next: &mut crate::api::PoolStatus,
    now: Timestamp,
) -> Result<i64> {
    let (ring, next_key_change) = tokens::sync_ring(ctx, pool, now.as_second()).await?;
    next.signing_keys = ring.status(
        tokens::ring::RingPolicy::of(pool).pre_publication,
        now.as_second(),
    );
    let namespace = pool.namespace().unwrap_or_default();
    let uid = pool.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let labels = build::pool_component(&pool.name_any()).selector();
    let mut sync = OwnerSync::new(&ctx.client, &namespace, uid);
    sync.some(
        &ctx.owned.config_maps,
        vec![tokens::published(pool, &ring, labels)?],
    )
    .await;
    let (changes, synced) = sync.finish();
    reconcile::report_changes(ctx, pool, &changes).await;
    synced?;
    Ok(next_key_change)
}

/// The Deployment has rolled out the current template to `want` ready pods.
pub fn rollout_complete(
    deployment: Option<&k8s_openapi::api::apps::v1::Deployment>,
    want: i32,
) -> bool {
    let Some(deployment) = deployment else {
        return false;
    };
    let Some(status) = &deployment.status else {
        return false;
    };
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.ready_replicas.unwrap_or(0) >= want
        && status.replicas.unwrap_or(0) == want
}
