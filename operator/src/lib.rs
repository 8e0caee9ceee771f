//! The Cellule operator: reconciles `cellule.ai` custom resources into the
//! workloads, policies and secrets of a Cellule PRO inference platform.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod api;
pub mod conditions;
pub mod controller;
pub mod health;
pub mod images;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod netpol;
pub mod npu_server;
pub mod peer_trust;
pub mod pool;
pub mod reconcile;
pub mod routing;
pub mod telemetry;
pub mod tokens;
pub mod worker_grant;
pub mod workload;

#[cfg(test)]
mod proptests;
