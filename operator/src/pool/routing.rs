//! How each tier is served right now (pure).
//!
//! An NPU tier is served by its NpuServer while that is healthy. The timed
//! fail-over to the CPU fallback tier (with its hold times against
//! flapping) is its own piece of work; until it lands, an unhealthy NPU
//! tier is reported `Unavailable` with the fallback it will use.

use crate::api::pool::{TierServing, TierStatus};

use super::validate::{NpuState, Tier};

pub fn tier_status(tiers: &[Tier]) -> Vec<TierStatus> {
    tiers
        .iter()
        .map(|tier| {
            let serving = match &tier.npu {
                None => TierServing::Cpu,
                Some(npu) if npu.state == NpuState::Healthy => TierServing::Npu,
                Some(_) => TierServing::Unavailable,
            };
            TierStatus {
                name: tier.spec.name.clone(),
                serving,
                via: None,
            }
        })
        .collect()
}

/// One line for `kubectl get`: `light=cpu heavy=npu`.
pub fn summary(tiers: &[TierStatus]) -> String {
    tiers
        .iter()
        .map(|t| {
            let serving = match t.serving {
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
