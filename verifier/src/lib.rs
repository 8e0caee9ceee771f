//! Worker-token verification for Cellule PRO pools, as the pool software
//! must do it (docs/pool-contract.md): [`jwt`] holds the rules (and the
//! signing the operator uses), [`live`] keeps a pool's JWKS, verifier
//! policy and revocation lists current from the API server, failing closed
//! when they are missing, unreadable or stale; [`routing`] keeps its
//! tiers' routing current (the NPU → CPU fail-over). The `cellule-verifier`
//! binary serves it on localhost for a pool that is not written in Rust.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod jwt;
pub mod live;
pub mod revocations;
pub mod routing;
