//! `PeerTrust`: a pool of another site that this site's pool federates with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
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
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Until",
        type_ = "string",
        json_path = ".status.level3Until",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.trustLevel < 3 || has(self.handshake)").message("trustLevel 3 requires a handshake signed by both sites' administrators").field_path(".handshake"))]
#[x_kube(validation = Rule::new("!has(self.handshake) || has(self.peerPool)").message("a handshake names the peer pool: give peerPool (its namespace and name)").field_path(".peerPool"))]
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
    /// The peer Pool on its own cluster, as the handshake names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pool: Option<PeerPoolRef>,
    /// Bilateral handshake, required for level 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Handshake>,
    /// Who last created or changed what is trusted (key, endpoint, site,
    /// peer pool, handshake): checked at admission in namespaces with
    /// four-eyes enforced, where only someone else may raise it to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub requested_by: Option<String>,
    /// Who approved level 3: someone other than `requestedBy`, where
    /// four-eyes is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: Option<String>,
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

/// A peer pool, by namespace and name on its own cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PeerPoolRef {
    /// The peer Pool's namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// The peer Pool's name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// The bilateral handshake of a level-3 PeerTrust: both sites' admins sign
/// the same statement (see `cellule-operator handshake statement`), which
/// names both sites, both pools, both pool keys, both endpoints, the level,
/// this window and this nonce; and the peer pool itself countersigns it.
/// Each site's operator publishes its countersignature in the status of
/// its own PeerTrust once its admin's signature verifies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("timestamp(self.notAfter) > timestamp(self.notBefore)").message("notAfter must be later than notBefore").field_path(".notAfter"))]
#[x_kube(validation = Rule::new("timestamp(self.notAfter) - timestamp(self.notBefore) <= duration('9504h')").message("a handshake is valid for at most 396 days: sign a new one").field_path(".notAfter"))]
#[x_kube(validation = Rule::new("!has(self.peerSignature) || !has(self.localSignature) || self.localSignature != self.peerSignature").message("the two signatures must come from two different administrators").field_path(".peerSignature"))]
pub struct Handshake {
    /// A single-use random value (at least 16 characters): one nonce, one
    /// statement, ever, for this pool.
    #[schemars(length(min = 16, max = 128), regex(pattern = "^[A-Za-z0-9_-]+$"))]
    pub nonce: String,
    /// Start of validity.
    pub not_before: Time,
    /// End of validity: the peer drops to level 2 at this instant.
    pub not_after: Time,
    /// Signature of this site's administrator (base64 of 64 bytes); its key
    /// must be in the Pool's `federation.adminPublicKeys`. Absent until they
    /// sign the statement printed from this very object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 88, max = 88))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_SIGNATURE_PATTERN}')")).message("localSignature must be the base64 of exactly 64 bytes (an Ed25519 signature)"))]
    pub local_signature: Option<String>,
    /// Signature of the peer site's administrator (base64 of 64 bytes),
    /// made with the admin key the peer pool's countersignature names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 88, max = 88))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_SIGNATURE_PATTERN}')")).message("peerSignature must be the base64 of exactly 64 bytes (an Ed25519 signature)"))]
    pub peer_signature: Option<String>,
    /// The peer pool's countersignature, copied from the status of the
    /// peer site's matching PeerTrust (`status.countersignature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_countersignature: Option<Countersignature>,
}

/// A pool's countersignature of a handshake: made by its operator with the
/// pool's federation key once an admin key of that pool's site signed the
/// statement. It names that admin key, so a signature by any other key
/// cannot pass for the site's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Countersignature {
    /// The federation key of the pool that countersigned (base64, 32 bytes).
    #[schemars(length(min = 44, max = 44))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_PUBLIC_KEY_PATTERN}')")).message("poolPublicKey must be the base64 of exactly 32 bytes (an Ed25519 public key)"))]
    pub pool_public_key: String,
    /// The admin key of that site whose signature of the statement the
    /// pool verified (base64, 32 bytes).
    #[schemars(length(min = 44, max = 44))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_PUBLIC_KEY_PATTERN}')")).message("adminPublicKey must be the base64 of exactly 32 bytes (an Ed25519 public key)"))]
    pub admin_public_key: String,
    /// The pool key's signature (base64, 64 bytes).
    #[schemars(length(min = 88, max = 88))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ED25519_SIGNATURE_PATTERN}')")).message("signature must be the base64 of exactly 64 bytes (an Ed25519 signature)"))]
    pub signature: String,
}

/// Observed state of a PeerTrust.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTrustStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The level actually granted: lower than requested when the handshake
    /// is missing, refused or expired, or after a reputation downgrade; 0
    /// when the pool is Paranoid or the peer's key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_trust_level: Option<i32>,
    /// `sha256:` and the hex SHA-256 of the pinned key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_key_fingerprint: Option<String>,
    /// When level 3 ends (the verified handshake's `notAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level3_until: Option<Time>,
    /// This pool's countersignature of the handshake, once this site's
    /// admin signature verifies: what the peer site's admin copies into
    /// their PeerTrust's `handshake.peerCountersignature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countersignature: Option<Countersignature>,
    /// What the pool reported on this peer, and any downgrade it caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<ReputationStatus>,
}

/// The pool's reports on a peer (see docs/federation.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReputationStatus {
    /// Answers of this peer the pool found to disagree, since it started
    /// counting.
    pub mismatches: i64,
    /// Answers of this peer the pool checked, since it started counting.
    pub samples: i64,
    /// `mismatches` at the last reset: a share is taken of what came since.
    #[serde(default)]
    pub baseline_mismatches: i64,
    /// `samples` at the last reset.
    #[serde(default)]
    pub baseline_samples: i64,
    /// The `cellule.ai/reputation-reset` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    /// The downgrade, until an admin resets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<Downgrade>,
}

/// A reputation downgrade and its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Downgrade {
    /// When it happened.
    pub at: Time,
    /// Mismatches since the baseline then.
    pub mismatches: i64,
    /// Samples since the baseline then.
    pub samples: i64,
}
