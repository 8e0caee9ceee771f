//! A Pool's routing: its tiers' pods gathered from the caches, then the
//! decision and the tier Services and EndpointSlices (pure, see
//! [`crate::routing`]).

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{ResourceExt as _, runtime::reflector::ObjectRef};

use crate::{
    api::pool::{TierServing, TierStatus},
    names,
    reconcile::{Context, labels},
    routing::{
        self, Decision, Fallback, NpuInput, TierInput, Timers,
        endpoints::{self, Backend},
        health::{self, Member},
    },
};

use super::{
    build::CPU_WORKER_PORT,
    validate::{Tier, ValidPool},
};

/// What routing reads of a Pool: there whenever its names are valid, also
/// while the rest of it is blocked (a Secret missing), so that routing
/// keeps following the pods.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub pool: &'a crate::api::Pool,
    pub name: &'a str,
    pub namespace: &'a str,
    pub tiers: &'a [Tier],
}

impl<'a> Scope<'a> {
    pub fn of(valid: &'a ValidPool) -> Self {
        Self {
            pool: &valid.pool,
            name: &valid.name,
            namespace: &valid.namespace,
            tiers: &valid.tiers,
        }
    }
}

/// The pods of a Pool's backends: each NpuServer's (by name) and each CPU
/// tier's in-cluster workers (by tier).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub npu: BTreeMap<String, Vec<Member>>,
    pub cpu: BTreeMap<String, Vec<Member>>,
}

/// The pods of Deployment `deployment` in `namespace`, as routing sees
/// them: only those its ReplicaSets made, their nodes read from the cache.
pub fn members(ctx: &Context, namespace: &str, deployment: &str) -> Vec<Member> {
    members_of(ctx, namespace, &[deployment])
        .remove(deployment)
        .unwrap_or_default()
}

/// The pods of each of `deployments` in `namespace` (see [`members`]), in
/// one pass over the cache.
fn members_of(
    ctx: &Context,
    namespace: &str,
    deployments: &[&str],
) -> BTreeMap<String, Vec<Member>> {
    let mut found: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let Some(deployment) = pod.labels().get(labels::INSTANCE) else {
            continue;
        };
        if !deployments.contains(&deployment.as_str()) || !health::made_by(&pod, deployment) {
            continue;
        }
        let member = health::member(&pod, |node| {
            ctx.nodes
                .get(&ObjectRef::new(node))
                .map(|n| health::node_ready(&n))
        });
        found.entry(deployment.clone()).or_default().push(member);
    }
    found
}

/// The pods of `valid`'s backends.
pub fn observe(ctx: &Context, valid: Scope<'_>) -> Observed {
    // An NpuServer of another pool (or none) serves nothing here.
    let servers: Vec<_> = valid
        .tiers
        .iter()
        .filter_map(|t| t.npu.as_ref())
        .filter(|npu| npu.required.is_some())
        .collect();
    let sets: Vec<(String, &str)> = valid
        .pool
        .spec
        .cpu_workers
        .iter()
        .map(|set| (names::cpu_workers(valid.name, &set.name), set.tier.as_str()))
        .collect();
    let deployments: Vec<&str> = servers
        .iter()
        .map(|npu| npu.deployment.as_str())
        .chain(sets.iter().map(|(deployment, _)| deployment.as_str()))
        .collect();
    let mut found = members_of(ctx, valid.namespace, &deployments);
    let mut observed = Observed::default();
    for npu in servers {
        let pods = found.remove(&npu.deployment).unwrap_or_default();
        observed.npu.insert(npu.name.clone(), pods);
    }
    for (deployment, tier) in sets {
        let pods = found.remove(&deployment).unwrap_or_default();
        observed
            .cpu
            .entry(tier.to_owned())
            .or_default()
            .extend(pods);
    }
    observed
}

/// What routing wants for a Pool now.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    pub decisions: Vec<Decision>,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

impl Routing {
    pub fn tiers(&self) -> Vec<TierStatus> {
        self.decisions.iter().map(|d| d.status.clone()).collect()
    }

    /// The earliest end of a running hold time.
    pub fn wake(&self) -> Option<i64> {
        self.decisions.iter().filter_map(|d| d.wake).min()
    }
}

/// Every tier's routing at `now` (seconds), from `previous` (the Pool's
/// `status.tiers`) and the pods.
pub fn route(valid: Scope<'_>, observed: &Observed, previous: &[TierStatus], now: i64) -> Routing {
    let timers = Timers::of(&valid.pool.spec.failover);
    let none: &[Member] = &[];
    let cpu = |tier: &str| observed.cpu.get(tier).map_or(none, Vec::as_slice);
    let has_workers = |tier: &str| valid.pool.spec.cpu_workers.iter().any(|w| w.tier == tier);
    let mut routing = Routing::default();
    for tier in valid.tiers {
        let spec = &tier.spec;
        let service = names::tier(valid.name, &spec.name);
        let fallback = spec.fallback_tier.as_ref().and_then(|name| {
            let fallback = valid.tiers.iter().find(|t| &t.spec.name == name)?;
            Some(Fallback {
                tier: name.clone(),
                model: fallback.spec.model.clone(),
                ready: has_workers(name).then(|| cpu(name).iter().filter(|m| m.ready).count()),
            })
        });
        let npu_members = tier
            .npu
            .as_ref()
            .map(|npu| observed.npu.get(&npu.name).map_or(none, Vec::as_slice));
        let input = TierInput {
            name: spec.name.clone(),
            model: spec.model.clone(),
            service: service.clone(),
            npu: tier.npu.as_ref().map(|npu| NpuInput {
                server: npu.name.clone(),
                health: health::health(
                    npu_members.unwrap_or(none),
                    npu.required.map_or(1, |r| usize::try_from(r).unwrap_or(1)),
                ),
            }),
            fallback,
        };
        let decision = routing::decide(
            &input,
            previous.iter().find(|p| p.name == spec.name),
            timers,
            now,
        );
        let npu_backend = tier.npu.as_ref().map(|npu| Backend {
            kind: "npu",
            port: npu.port,
            members: npu_members.unwrap_or(none),
        });
        let cpu_backend = |tier: &str| Backend {
            kind: "cpu",
            port: CPU_WORKER_PORT,
            members: cpu(tier),
        };
        let fallback_backend = spec.fallback_tier.as_deref().map(cpu_backend);
        let backend = match decision.status.served_by {
            TierServing::Cpu => Some(cpu_backend(&spec.name)),
            TierServing::Npu => endpoints::choose(npu_backend, fallback_backend),
            TierServing::CpuFailover | TierServing::Unavailable => {
                endpoints::choose(fallback_backend, npu_backend)
            }
        };
        routing
            .services
            .push(endpoints::service(valid.pool, valid.name, &service));
        routing
            .slices
            .extend(endpoints::slices(valid.pool, valid.name, &service, backend));
        routing.decisions.push(decision);
    }
    routing
}

/// Condition type: some tier is not served by its own backend.
pub const DEGRADED: &str = "Degraded";

fn at(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    time.map_or_else(|| "an unknown time".into(), |t| t.0.to_string())
}

/// How a tier's NPU server stands, in words.
fn npu_words(status: &TierStatus) -> String {
    status.npu.as_ref().map_or_else(String::new, |npu| {
        format!(
            "NpuServer {} has {} ready pods ({} needed) since {}",
            npu.server,
            npu.ready,
            npu.required,
            at(npu.since.as_ref())
        )
    })
}

/// What on-call reads about one tier that is not on its own backend, or
/// about to move.
pub fn describe(status: &TierStatus) -> Option<String> {
    let name = &status.name;
    let npu = npu_words(status);
    let since = at(status.since.as_ref());
    Some(match (status.served_by, status.reason.as_str()) {
        (TierServing::CpuFailover, routing::reason::FAIL_BACK_PENDING) => format!(
            "tier {name} is served by tier {} ({}) since {since}, degraded; it fails back once its server stays healthy for failBackAfter: {npu}",
            status.via.as_deref().unwrap_or_default(),
            status.model.as_deref().unwrap_or_default(),
        ),
        (TierServing::CpuFailover, _) => format!(
            "tier {name} is served by tier {} ({}) since {since}, degraded: {npu}",
            status.via.as_deref().unwrap_or_default(),
            status.model.as_deref().unwrap_or_default(),
        ),
        (TierServing::Unavailable, routing::reason::NO_FALLBACK) => {
            format!(
                "tier {name} is served by nothing since {since} (it has no fallbackTier): {npu}"
            )
        }
        (TierServing::Unavailable, _) => format!(
            "tier {name} is served by nothing since {since} (its fallback tier has no ready worker): {npu}"
        ),
        (TierServing::Npu, routing::reason::FAIL_OVER_PENDING) => {
            format!("tier {name} fails over unless its server recovers: {npu}")
        }
        _ => return None,
    })
}

/// The `Degraded` condition of a Pool with these tiers.
pub fn degraded(tiers: &[TierStatus]) -> crate::conditions::Desired {
    use crate::conditions::Desired;
    let described: Vec<String> = tiers.iter().filter_map(describe).collect();
    let message = crate::reconcile::bounded(&described.join("; "));
    let served = |s: TierServing| tiers.iter().any(|t| t.served_by == s);
    if served(TierServing::Unavailable) {
        Desired::new(DEGRADED, true, "TierUnavailable", message)
    } else if served(TierServing::CpuFailover) {
        Desired::new(DEGRADED, true, routing::reason::NPU_UNAVAILABLE, message)
    } else if described.is_empty() {
        Desired::new(
            DEGRADED,
            false,
            "AllTiersServed",
            "every tier is served by its own backend",
        )
    } else {
        Desired::new(DEGRADED, false, "AllTiersServed", message)
    }
}

/// The Event a decision's transition deserves: type, reason and note.
pub fn event(
    decision: &Decision,
) -> Option<(kube::runtime::events::EventType, &'static str, String)> {
    use kube::runtime::events::EventType;
    let status = &decision.status;
    match decision.transition? {
        routing::Transition::FailedBack => Some((
            EventType::Normal,
            "FailedBack",
            format!(
                "tier {} is back on its NPU server ({}): {}",
                status.name,
                status.model.as_deref().unwrap_or_default(),
                npu_words(status)
            ),
        )),
        routing::Transition::FailedOver => Some((
            EventType::Warning,
            "FailedOver",
            describe(status).unwrap_or_default(),
        )),
        routing::Transition::Unavailable => Some((
            EventType::Warning,
            "TierUnavailable",
            describe(status).unwrap_or_default(),
        )),
    }
}
