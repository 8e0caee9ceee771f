//! Tier routing and the NPU → CPU fail-over.
//!
//! Each tier of a Pool has a Service (`<pool>--<tier>`, see
//! [`endpoints`]); an NPU tier is served by its NpuServer while enough of
//! its pods are ready, and by its CPU fallback tier otherwise, with hold
//! times against flapping (`spec.failover`).
//!
//! - [`health`] reads a backend's pods and their nodes (pure): which are
//!   ready, and since when the server has been healthy or not.
//! - [`decide`] is the decision, a pure function of the tier, its previous
//!   status, the NPU's health and `now`, giving the tier's status and when
//!   to look again. Nothing is kept in memory: the timers count from the
//!   pods' and nodes' `lastTransitionTime` and from the Pool's
//!   `status.tiers`, so a restarted operator decides the same at the same
//!   time.
//! - [`endpoints`] builds the tier Services and their EndpointSlices.
//!
//! Times are whole seconds since the epoch: what the API server keeps
//! (`metav1.Time`), so a decision made again from stored times is the same.

pub mod endpoints;
pub mod health;

#[cfg(test)]
mod tests;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::pool::{NpuHealthStatus, TierServing, TierStatus};

pub use health::Health;

/// Stable reasons of a tier's routing (`status.tiers[].reason`).
pub mod reason {
    pub const CPU_TIER: &str = "CpuTier";
    pub const NPU_HEALTHY: &str = "NpuHealthy";
    pub const FAIL_OVER_PENDING: &str = "FailOverPending";
    pub const NPU_UNAVAILABLE: &str = "NpuUnavailable";
    pub const FAIL_BACK_PENDING: &str = "FailBackPending";
    pub const NO_FALLBACK: &str = "NoFallback";
    pub const FALLBACK_UNAVAILABLE: &str = "FallbackUnavailable";
}

/// The hold times of `spec.failover`, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub fail_over_after: i64,
    pub fail_back_after: i64,
}

impl Timers {
    pub fn of(spec: &crate::api::pool::FailoverSpec) -> Self {
        // Whole seconds, rounded up: `500ms` holds a second, not nothing.
        let secs = |d: &crate::api::common::Duration| {
            let whole = d.0.as_secs() + u64::from(d.0.subsec_nanos() > 0);
            i64::try_from(whole).unwrap_or(i64::MAX)
        };
        Self {
            fail_over_after: secs(&spec.fail_over_after),
            fail_back_after: secs(&spec.fail_back_after),
        }
    }
}

/// What a tier's routing depends on.
#[derive(Clone, Debug)]
pub struct TierInput {
    pub name: String,
    pub model: String,
    /// The tier's Service name.
    pub service: String,
    /// An NPU tier's server.
    pub npu: Option<NpuInput>,
    /// An NPU tier's fallback tier.
    pub fallback: Option<Fallback>,
}

#[derive(Clone, Debug)]
pub struct NpuInput {
    /// The NpuServer's name.
    pub server: String,
    pub health: Health,
}

/// The CPU tier an NPU tier falls back to.
#[derive(Clone, Debug)]
pub struct Fallback {
    pub tier: String,
    pub model: String,
    /// Ready in-cluster workers; `None` when the tier has no in-cluster
    /// worker set (laptops connect to the pool, which the operator cannot
    /// see: the pool dispatches to them).
    pub ready: Option<usize>,
}

/// A change of routing worth an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The tier moved to its fallback tier.
    FailedOver,
    /// The tier is back on its NPU server.
    FailedBack,
    /// Nothing serves the tier any more.
    Unavailable,
}

/// A tier's routing now, and when it may change by itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: TierStatus,
    /// When a hold time ends (seconds), if one is running.
    pub wake: Option<i64>,
    pub transition: Option<Transition>,
}

/// The routing of `tier` at `now` (seconds), given its `previous` status.
pub fn decide(
    tier: &TierInput,
    previous: Option<&TierStatus>,
    timers: Timers,
    now: i64,
) -> Decision {
    let previous = previous.filter(|p| p.name == tier.name);
    let since_of = |served_by: TierServing| {
        previous
            .filter(|p| p.served_by == served_by)
            .and_then(|p| p.since.as_ref())
            .map_or(now, |t| t.0.as_second())
    };
    let status = |served_by: TierServing, reason: &str, via: Option<&Fallback>, npu| {
        let model = match (served_by, via) {
            (TierServing::CpuFailover, Some(fallback)) => Some(fallback.model.clone()),
            (TierServing::Unavailable, _) => None,
            _ => Some(tier.model.clone()),
        };
        TierStatus {
            name: tier.name.clone(),
            served_by,
            via: via.map(|f| f.tier.clone()),
            model,
            since: time(since_of(served_by)),
            reason: reason.into(),
            service: Some(tier.service.clone()),
            npu,
        }
    };
    let Some(npu) = &tier.npu else {
        return Decision {
            status: status(TierServing::Cpu, reason::CPU_TIER, None, None),
            wake: None,
            transition: None,
        };
    };

    // Since when the server has been healthy (or not): from the crossing
    // its pods show, or, when they show none (no pod at all, or pods that
    // changed without the count crossing the minimum), from what was
    // recorded, or as old as the oldest transition they show.
    let health = &npu.health;
    let healthy = health.healthy();
    let recorded = previous
        .and_then(|p| p.npu.as_ref())
        .filter(|n| n.healthy == healthy)
        .and_then(|n| n.since.as_ref())
        .map(|t| t.0.as_second());
    // A clock ahead of ours must not hold routing in the future.
    let observed_since = health
        .since
        .or(recorded)
        .or(health.earliest)
        .unwrap_or(now)
        .min(now);
    let observation = NpuHealthStatus {
        server: npu.server.clone(),
        ready: i32::try_from(health.ready).unwrap_or(i32::MAX),
        required: i32::try_from(health.required).unwrap_or(i32::MAX),
        healthy,
        since: time(observed_since),
    };

    // A new tier, or one that was a CPU tier before the spec changed,
    // starts on its NPU server.
    let before = match previous.map(|p| p.served_by) {
        None | Some(TierServing::Cpu) => TierServing::Npu,
        Some(served_by) => served_by,
    };
    let was_on_npu = before == TierServing::Npu;
    let (on_npu, wake) = match (was_on_npu, healthy) {
        (true, true) | (false, false) => (was_on_npu, None),
        (true, false) => {
            let at = observed_since.saturating_add(timers.fail_over_after);
            if now >= at {
                (false, None)
            } else {
                (true, Some(at))
            }
        }
        (false, true) => {
            // The hold keeps routing from flapping between two backends
            // that serve: with nothing else serving, back at once.
            let fallback_serves = tier.fallback.as_ref().is_some_and(|f| f.ready != Some(0));
            let at = observed_since.saturating_add(timers.fail_back_after);
            if now >= at || !fallback_serves {
                (true, None)
            } else {
                (false, Some(at))
            }
        }
    };
    let status = if on_npu {
        let reason = if healthy {
            reason::NPU_HEALTHY
        } else {
            reason::FAIL_OVER_PENDING
        };
        status(TierServing::Npu, reason, None, Some(observation))
    } else {
        match &tier.fallback {
            None => status(
                TierServing::Unavailable,
                reason::NO_FALLBACK,
                None,
                Some(observation),
            ),
            Some(fallback) if fallback.ready == Some(0) => status(
                TierServing::Unavailable,
                reason::FALLBACK_UNAVAILABLE,
                None,
                Some(observation),
            ),
            Some(fallback) => {
                let reason = if healthy {
                    reason::FAIL_BACK_PENDING
                } else {
                    reason::NPU_UNAVAILABLE
                };
                status(
                    TierServing::CpuFailover,
                    reason,
                    Some(fallback),
                    Some(observation),
                )
            }
        }
    };
    let transition = (before != status.served_by)
        .then_some(match status.served_by {
            TierServing::Npu => Some(Transition::FailedBack),
            TierServing::CpuFailover => Some(Transition::FailedOver),
            TierServing::Unavailable => Some(Transition::Unavailable),
            TierServing::Cpu => None,
        })
        .flatten();
    Decision {
        status,
        wake,
        transition,
    }
}

fn time(secs: i64) -> Option<Time> {
    jiff::Timestamp::from_second(secs).ok().map(Time)
}

/// One line for `kubectl get`: `light=cpu heavy=cpu(failover)`.
pub fn summary(tiers: &[TierStatus]) -> String {
    tiers
        .iter()
        .map(|t| {
            let serving = match t.served_by {
                TierServing::Npu => "npu",
                TierServing::Cpu => "cpu",
                TierServing::CpuFailover => "cpu(failover)",
                TierServing::Unavailable => "unavailable",
            };
            format!("{}={serving}", t.name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}
