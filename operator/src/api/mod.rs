//! The `cellule.ai/v1alpha1` API: the four kinds and their shared types.

// `printcolumn(type_ = "string", …)` repeats across columns, which clippy
// reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod npu_server;
pub mod peer_trust;
pub mod pool;
pub mod worker_grant;

pub use common::{CommonStatus, GROUP};
pub use npu_server::{NpuServer, NpuServerSpec, NpuServerStatus};
pub use peer_trust::{PeerTrust, PeerTrustSpec, PeerTrustStatus};
pub use pool::{Pool, PoolSpec, PoolStatus};
pub use worker_grant::{WorkerGrant, WorkerGrantSpec, WorkerGrantStatus};

/// RE2 pattern of standard padded base64 of exactly 32 bytes: 43 characters,
/// the last one carrying 2 zero bits, then `=`.
pub const ED25519_PUBLIC_KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";
/// Same for 64 bytes: 86 characters, the last carrying 4 zero bits, then `==`.
pub const ED25519_SIGNATURE_PATTERN: &str = "^[A-Za-z0-9+/]{85}[AQgw]==$";

#[cfg(test)]
mod tests;

#[cfg(test)]
impl Pool {
    fn crd_for_tests()
    -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        <Self as kube::CustomResourceExt>::crd()
    }
}

/// Every CRD of the API, in the order they are written to `crds/`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Pool::crd(),
        NpuServer::crd(),
        WorkerGrant::crd(),
        PeerTrust::crd(),
        // Not a user's resource: the revocation store (tokens::revocations).
        cellule_verifier::revocations::RevocationList::crd(),
    ]
}
