//! NpuServer: a Deployment on accelerator nodes, its Service and its
//! NetworkPolicy; its health (pods ready on ready nodes against
//! `minHealthyReplicas`, counted as the Pool's routing counts them).

use std::{collections::BTreeMap, future::Future, sync::Arc};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    ResourceExt,
    runtime::{
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
    },
};

use crate::{
    api::{NpuServer, Pool, pool::DnsSpec},
    conditions::{self, Desired, Summary},
    controller::{Caches, drive, owners_on_node, readiness_changes, spec_changes},
    images::{self, ResolvedImage},
    netpol::{dns_egress, ingress, policy, tcp},
    pool::netpol::from_pool_pods,
    reconcile::{self, Context, Result, apply::OwnerSync, status},
    workload::{self, Component, ContainerSpec},
};

/// Condition: enough replicas are ready to serve the tier.
pub const HEALTHY: &str = "Healthy";

fn component(npu: &NpuServer) -> Component {
    Component {
        name: crate::names::npu_server(&npu.name_any()),
        pool: npu.spec.pool_ref.name.clone(),
        role: "npu-server",
    }
}

/// Per-replica resources: the user's, with the accelerator in limits.
fn resources(npu: &NpuServer) -> ResourceRequirements {
    let mut resources = npu.spec.resources.clone().unwrap_or_default();
    let limits = resources.limits.get_or_insert_with(BTreeMap::new);
    limits.insert(
        npu.spec.accelerator.resource_name.clone(),
        Quantity(npu.spec.accelerator.count.to_string()),
    );
    resources
}

pub struct DesiredNpu {
    /// `None` without a verified image: the Deployment is left as it is.
    pub deployment: Option<k8s_openapi::api::apps::v1::Deployment>,
    pub service: k8s_openapi::api::core::v1::Service,
    pub network_policy: k8s_openapi::api::networking::v1::NetworkPolicy,
}

/// The objects an NpuServer wants (pure); `dns` is its pool's, `image`
/// its verified image, if any.
pub fn desired(npu: &NpuServer, dns: &DnsSpec, image: Option<&ResolvedImage>) -> DesiredNpu {
    let spec = &npu.spec;
    let component = component(npu);
    let deployment = image.map(|image| {
        let mut pod = workload::restricted_pod(
            ContainerSpec {
                image: image.clone(),
                args: vec![
                    format!("--model={}", spec.model),
                    format!("--port={}", spec.port),
                ],
                port: spec.port,
                resources: Some(resources(npu)),
                mounts: Vec::new(),
                pull_secrets: spec.image.pull_secrets.clone(),
            },
            None,
        );
        pod.node_selector = (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone());
        pod.tolerations = (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone());
        workload::deployment(
            npu,
            &component,
            spec.replicas.saturating_add(spec.hot_spares),
            pod,
            BTreeMap::new(),
        )
    });
    DesiredNpu {
        deployment,
        service: workload::service(npu, &component, spec.port),
        network_policy: policy(
            npu,
            &component.name,
            &component.pool,
            component.selector(),
            [ingress(
                vec![from_pool_pods(&component.pool)],
                vec![tcp(spec.port)],
            )],
            [dns_egress(dns)],
        ),
    }
}

/// The NpuServer of one of its pods.
fn npu_of_pod(pod: &Pod) -> Option<ObjectRef<NpuServer>> {
    let labels = pod.labels();
    if labels
        .get(crate::reconcile::labels::COMPONENT)
        .map(String::as_str)
        != Some("npu-server")
    {
        return None;
    }
    let npu = crate::names::npu_server_of(labels.get(crate::reconcile::labels::INSTANCE)?)?;
    Some(ObjectRef::new(npu).within(&pod.namespace()?))
}

/// The NpuServer controller: reconciled when it or an object it made
/// changes, when one of its pods or their nodes' readiness changes, and
/// when its Pool's spec changes (its DNS, its existence).
pub fn controller(
    caches: &Caches,
    ctx: Arc<Context>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let npus = caches.npu_servers.store();
    let npus_of_pool = npus.clone();
    let pods = caches.pods.store();
    let controller = caches
        .npu_servers
        .controller(config)
        .owns_shared_stream(caches.deployments.subscribe())
        .owns_shared_stream(caches.services.subscribe())
        .owns_shared_stream(caches.network_policies.subscribe())
        .watches_shared_stream(caches.pods.subscribe(), |pod| npu_of_pod(&pod))
        .watches_shared_stream(
            readiness_changes(caches.nodes.subscribe(), caches.nodes.store()),
            move |node| owners_on_node(&pods, &node, npu_of_pod),
        )
        .watches_shared_stream(
            spec_changes(caches.pools.subscribe()),
            move |pool: Arc<Pool>| {
                let ns = pool.namespace();
                npus_of_pool
                    .state()
                    .into_iter()
                    .filter(|npu| {
                        npu.namespace() == ns && npu.spec.pool_ref.name == pool.name_any()
                    })
                    .map(|npu| ObjectRef::from_obj(npu.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    drive(controller, shutdown, reconcile, ctx)
}

pub async fn reconcile(npu: Arc<NpuServer>, ctx: Arc<Context>) -> Result<Action> {
    if reconcile::deleting(npu.as_ref()) {
        return Ok(Action::await_change());
    }
    let result = apply_npu(&npu, &ctx).await;
    reconcile::finish(&ctx, npu.as_ref(), result).await
}

async fn apply_npu(npu: &NpuServer, ctx: &Context) -> Result<Action> {
    let generation = npu.metadata.generation;
    let now = Timestamp::now();
    let ns = npu.namespace().unwrap_or_default();
    let mut next = npu.status.clone().unwrap_or_default();
    next.common.observed_generation = generation;
    let pool_name = &npu.spec.pool_ref.name;
    let Some(pool) = ctx.pools.get(&ObjectRef::new(pool_name).within(&ns)) else {
        let message = format!(
            "Pool {pool_name:?} does not exist in this namespace; the server starts once it does"
        );
        conditions::set(
            &mut next.common.conditions,
            Desired::new(HEALTHY, false, "PoolNotFound", message.clone()),
            generation,
            now,
        );
        status::stall(ctx, npu, npu.status.as_ref(), next, "PoolNotFound", message).await?;
        return Ok(Action::await_change());
    };

    // The image, before anything is rendered from it.
    let named = [images::Named {
        name: images::NPU_SERVER.into(),
        field: "spec.image".into(),
        image: &npu.spec.image,
    }];
    let checked = images::check(&ctx.client, ctx.images.as_ref(), &ns, &named).await?;
    let (running, statuses) =
        images::settle_all(&checked, npu.status.as_ref().and_then(|s| s.image.as_ref()));

    let desired = desired(npu, &pool.spec.dns, running.0.get(images::NPU_SERVER));
    let uid = npu.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let owned = &ctx.owned;
    let name = crate::names::npu_server(&npu.name_any());
    let mut sync = OwnerSync::new(&ctx.client, &ns, uid);
    if desired.deployment.is_none() {
        sync = sync.keep(name.clone());
    }
    sync.kind(&owned.network_policies, vec![desired.network_policy])
        .await;
    sync.kind(&owned.services, vec![desired.service]).await;
    sync.kind(&owned.deployments, desired.deployment.into_iter().collect())
        .await;
    let (changes, synced) = sync.finish();
    reconcile::report_changes(ctx, npu, &changes).await;
    if let Err(error) = synced {
        return status::stall_on(ctx, npu, next, error).await;
    }
    // What runs now that the Deployment is applied.
    next.image = statuses.into_iter().next();

    let deployment = owned.deployments.get(&ObjectRef::new(&name).within(&ns));
    // Pods ready on ready nodes: a node that stopped reporting still has
    // its pods Ready in the Deployment's count for a while.
    let members = crate::pool::routing::members(ctx, &ns, &name);
    let ready = i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX);
    let want = npu.spec.replicas.saturating_add(npu.spec.hot_spares);
    next.ready_replicas = Some(ready);
    next.desired_replicas = Some(want);
    next.ready = Some(format!("{ready}/{want}"));
    let min = npu.spec.min_healthy_replicas;
    let healthy = if ready >= min {
        Desired::new(
            HEALTHY,
            true,
            "EnoughReplicasReady",
            format!("{ready} ready, {min} needed"),
        )
    } else {
        Desired::new(
            HEALTHY,
            false,
            "TooFewReplicasReady",
            format!(
                "{ready} ready, {min} needed: its tier fails over after the Pool's failOverAfter"
            ),
        )
    };
    let became_unhealthy = !healthy.status
        && conditions::get(&next.common.conditions, HEALTHY).is_some_and(|c| c.status == "True");
    conditions::set(&mut next.common.conditions, healthy, generation, now);
    let image_verified = images::condition(&checked);
    let refused = images::refused(&image_verified);
    conditions::set(&mut next.common.conditions, image_verified, generation, now);
    let summary = if let Some(refused) = &refused {
        images::summary(refused)
    } else if crate::pool::rollout_complete(deployment.as_deref(), want) {
        Summary::Ready {
            reason: "Available",
            message: format!("{ready}/{want} replicas ready"),
        }
    } else {
        Summary::Progressing {
            reason: "DeploymentUnavailable",
            message: format!("{ready}/{want} replicas ready"),
        }
    };
    conditions::set_summary(&mut next.common.conditions, summary, generation, now);
    if status::write(&ctx.client, npu, npu.status.as_ref(), &next).await? && became_unhealthy {
        ctx.event(
            npu,
            EventType::Warning,
            "Unhealthy",
            "Observe",
            format!("{ready} ready replicas, {min} needed"),
        )
        .await;
    }
    if let Some(refused) = refused {
        // Backoff, and a Warning Event, from the error policy.
        return Err(refused);
    }
    Ok(images::next_refresh(&named, now.as_second())
        .map_or_else(Action::await_change, |at| reconcile::requeue_at(at, now)))
}
