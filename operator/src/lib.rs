//! The Cellule operator: reconciles `cellule.ai` custom resources into the
//! workloads, policies and secrets of a Cellule PRO inference platform.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod api;
pub mod conditions;
pub mod health;
pub mod peer_trust;
pub mod telemetry;
