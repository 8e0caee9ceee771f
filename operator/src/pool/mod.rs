//! Pool: the pool orchestrator's Deployment, Service, ServiceAccount,
//! rendered config, PodDisruptionBudget, in-cluster CPU workers and the
//! NetworkPolicies that block egress.

pub mod build;
pub mod config;
pub mod netpol;
pub mod routing;
pub mod signing;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};

use crate::{
    api::{
        Pool,
        pool::{ImageStatus, TierServing},
    },
    conditions::{self, Desired, Summary},
    reconcile::{self, Context, Result, apply::OwnerSync, status},
};

pub const DEGRADED: &str = "Degraded";

pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action> {
    let result = apply_pool(&pool, &ctx).await;
    reconcile::finish(&ctx, pool.as_ref(), result).await
}

async fn apply_pool(pool: &Pool, ctx: &Context) -> Result<Action> {
    let generation = pool.metadata.generation;
    let now = Timestamp::now();
    let mut next = pool.status.clone().unwrap_or_default();
    next.common.observed_generation = generation;

    let valid = match validate::validate(pool, ctx) {
        Ok(valid) => valid,
        Err(blocked) => {
            let summary = Summary::Stalled {
                reason: blocked.reason(),
                message: blocked.message(),
            };
            conditions::set_summary(&mut next.common.conditions, summary, generation, now);
            if status::write(&ctx.client, pool, pool.status.as_ref(), &next).await? {
                ctx.event(
                    pool,
                    EventType::Warning,
                    blocked.reason(),
                    "Validate",
                    blocked.message(),
                )
                .await;
            }
            // The watch on Secrets brings the pool back when it appears.
            return Ok(Action::await_change());
        }
    };

    let tiers = routing::tier_status(&valid.tiers);
    let mut desired = build::desired(&valid, &tiers);
    // Token signing keys first: the JWKS published below comes from them.
    let (ring, next_key_change) = signing::sync_ring(ctx, pool, now.as_second()).await?;
    let component = build::pool_component(&valid);
    desired
        .config_maps
        .extend(signing::config_maps(pool, &ring, component.selector()));
    let uid = pool.uid().ok_or(reconcile::Error::MissingMetadata("uid"))?;
    let ns = &valid.namespace;
    let owned = &ctx.owned;
    let mut sync = OwnerSync::new(&ctx.client, ns, uid);
    sync.kind(&owned.service_accounts, desired.service_accounts)
        .await?;
    sync.kind(&owned.config_maps, desired.config_maps).await?;
    sync.kind(&owned.network_policies, desired.network_policies)
        .await?;
    sync.kind(&owned.services, desired.services).await?;
    sync.kind(&owned.deployments, desired.deployments).await?;
    sync.kind(
        &owned.pod_disruption_budgets,
        desired.pod_disruption_budgets,
    )
    .await?;
    reconcile::report_changes(ctx, pool, &sync.changes).await;

    let next_revocation_expiry = signing::prune_revocations(ctx, pool, now.as_second()).await?;

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
    next.routing = Some(routing::summary(&tiers));
    next.image = valid.image.digest.as_ref().map(|digest| ImageStatus {
        reference: valid.image.reference.clone(),
        short_digest: digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect(),
        digest: digest.clone(),
    });
    let degraded: Vec<String> = tiers
        .iter()
        .zip(&valid.tiers)
        .filter(|(status, _)| status.serving == TierServing::Unavailable)
        .map(|(status, tier)| {
            let npu = tier
                .npu
                .as_ref()
                .expect("only NPU tiers can be unavailable");
            format!(
                "tier {} has no healthy NpuServer {:?} ({:?})",
                status.name, npu.name, npu.state
            )
        })
        .collect();
    next.tiers = tiers;
    let degraded_condition = if degraded.is_empty() {
        Desired::new(DEGRADED, false, "AllTiersServed", "every tier is served")
    } else {
        Desired::new(DEGRADED, true, "TierUnavailable", degraded.join("; "))
    };
    conditions::set(
        &mut next.common.conditions,
        degraded_condition,
        generation,
        now,
    );
    let want = pool.spec.replicas;
    let summary = if rollout_complete(deployment.as_deref(), want) {
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
    status::write(&ctx.client, pool, pool.status.as_ref(), &next).await?;
    // Come back for the next key rotation or retirement, or the next
    // revocation entry to prune, whichever is first.
    let wake = next_revocation_expiry.map_or(next_key_change, |e| e.min(next_key_change));
    Ok(Action::requeue(std::time::Duration::from_secs(
        (wake - now.as_second()).max(1) as u64,
    )))
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
