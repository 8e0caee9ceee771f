//! `PeerTrust`: a pool of another site that this site's pool federates with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    ED25519_PUBLIC_KEY_PATTERN, ED25519_SIGNATURE_PATTERN,
    common::{CommonStatus, LocalObjectRef, cidr_rule},
};

/// Trust in the pool of another site: its pinned Ed25519 key, where it is,
/// and how far it is trusted. Level 3 needs a handshake signed by the
/// administrators of both sites.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "PeerTrust",
    namespaced,
    doc = "Trust in the pool of another site: its pinned Ed25519 key, endpoint and trust level.",
    status = "PeerTrustStatus",
    shortname = "peer",
    category = "cellule",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Requested", type_ = "integer", json_path = ".spec.trustLevel"),
    printcolumn(
        name = "Effective",
        type_ = "integer",
        json_path = ".status.effectiveTrustLevel"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.trustLevel < 3 || has(self.handshake)").message("trustLevel 3 requires a handshake signed by both sites' administrators").field_path(".handshake"))]
pub struct PeerTrustSpec {
    /// The local Pool that trusts this peer. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolRef is immutable: create a new PeerTrust for another pool"))]
    pub pool_ref: LocalObjectRef,
    /// The peer's site name, a DNS label like `lyon`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub site: String,
    /// Where the peer pool listens; the only egress to it that is allowed.
    pub endpoint: PeerEndpoint,
    /// The peer pool's Ed25519 public key (base64 of 32 bytes), pinned:
    /// federation messages signed by any other key are refused.
    #[schemars(length(min = 44, max = 44))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_PUBLIC_KEY_PATTERN}')")).message("publicKey must be the base64 of exactly 32 bytes (an Ed25519 public key)"))]
    pub public_key: String,
    /// Requested trust: 1 = exchange routing facts, 2 = also forward
    /// requests, 3 = also share reputation; 3 needs `handshake`.
    #[schemars(range(min = 1, max = 3))]
    pub trust_level: i32,
    /// Bilateral administrator handshake, required for level 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Handshake>,
}

/// The peer's network address. `cidr` is required when `host` is a DNS
/// name, because a NetworkPolicy can only allow egress to IP ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.host) || has(self.cidr)").message("give host, cidr, or both"))]
#[x_kube(validation = Rule::new("has(self.cidr) || !has(self.host) || isIP(self.host)").message("host is a DNS name: also give cidr, the IP range it resolves to, since egress is allowed only to IP ranges").field_path(".cidr"))]
pub struct PeerEndpoint {
    /// DNS name or IP address the pool dials (and checks in the peer's TLS
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = "^[a-zA-Z0-9]([-a-zA-Z0-9.:]*[a-zA-Z0-9])?$")
    )]
    pub host: Option<String>,
    /// IP range of the peer pool, like 10.30.0.0/24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = cidr_rule("cidr"))]
    pub cidr: Option<String>,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Both administrators' Ed25519 signatures over the same statement (see
/// `cellule-operator handshake statement`): the local site, the peer site,
/// the peer's public key, level 3, the validity window and the nonce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("timestamp(self.notAfter) > timestamp(self.notBefore)").message("notAfter must be later than notBefore").field_path(".notAfter"))]
#[x_kube(validation = Rule::new("timestamp(self.notAfter) - timestamp(self.notBefore) <= duration('9504h')").message("a handshake is valid for at most 396 days: sign a new one").field_path(".notAfter"))]
#[x_kube(validation = Rule::new("self.localSignature != self.peerSignature").message("the two signatures must come from two different administrators").field_path(".peerSignature"))]
pub struct Handshake {
    /// A single-use random value (at least 16 characters) that binds the
    /// signatures to this handshake.
    #[schemars(length(min = 16, max = 128), regex(pattern = "^[A-Za-z0-9_-]+$"))]
    pub nonce: String,
    /// Start of validity.
    pub not_before: Time,
    /// End of validity; after it, the peer falls back to level 2.
    pub not_after: Time,
    /// Signature of a local administrator (base64 of 64 bytes); its key must
    /// be in the Pool's `federation.adminPublicKeys`.
    #[schemars(length(min = 88, max = 88))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_SIGNATURE_PATTERN}')")).message("localSignature must be the base64 of exactly 64 bytes (an Ed25519 signature)"))]
    pub local_signature: String,
    /// The peer site administrator's public key (base64 of 32 bytes),
    /// obtained from them out of band.
    #[schemars(length(min = 44, max = 44))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_PUBLIC_KEY_PATTERN}')")).message("peerAdminPublicKey must be the base64 of exactly 32 bytes (an Ed25519 public key)"))]
    pub peer_admin_public_key: String,
    /// Signature of the peer site's administrator (base64 of 64 bytes).
    #[schemars(length(min = 88, max = 88))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_SIGNATURE_PATTERN}')")).message("peerSignature must be the base64 of exactly 64 bytes (an Ed25519 signature)"))]
    pub peer_signature: String,
}

/// Observed state of a PeerTrust.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTrustStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The level actually granted: lower than requested when the handshake
    /// is missing, expired or does not verify, or reputation is bad; 0 when
    /// the pool is Paranoid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_trust_level: Option<i32>,
}
