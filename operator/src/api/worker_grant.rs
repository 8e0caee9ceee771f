//! `WorkerGrant`: the admission of one worker (a laptop) into a pool.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, Duration, LocalObjectRef, duration_rule};

/// Lets one worker (a laptop or other machine the company does not control)
/// join a pool: the operator issues it a signed, expiring token once the
/// grant is approved, and revokes it at once when asked.
///
/// One live token per grant: it is renewed when the pool's
/// `tokens.renewBefore` is left, only if the new token outlives it (the
/// renewed one stays valid for a 5-minute grace), and re-issued at once,
/// the old one revoked, when `rotation` is raised, the tiers change, the
/// grant is narrowed, the pool's `maxTtl` drops below its lifetime, or the
/// key that signed it is withdrawn (`tokens.compromisedKeys` of the pool).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "WorkerGrant",
    namespaced,
    doc = "Lets one worker (a laptop) join a pool with a signed, expiring, revocable token.",
    status = "WorkerGrantStatus",
    shortname = "wg",
    category = "cellule",
    validation = Rule::new(format!("size(self.metadata.name) <= {}", crate::names::GRANT_NAME_MAX)).message(kube::core::Message::Message(format!("metadata.name: a WorkerGrant name must be at most {} characters (its token Secret is named <grant>-token)", crate::names::GRANT_NAME_MAX))),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef.name"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.token.expiresAt"
    ),
    printcolumn(
        name = "Approved-By",
        type_ = "string",
        json_path = ".spec.approvedBy",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ttl) != has(self.expiresAt)").message("give exactly one of ttl (e.g. 720h) and expiresAt (an RFC 3339 time)"))]
#[x_kube(validation = Rule::new("!has(self.approvedBy) || self.approvedBy != self.requestedBy").message("approvedBy must be a different person than requestedBy (four-eyes)").field_path(".approvedBy"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvedBy) || !has(self.approvedBy) || self.approvedBy == oldSelf.approvedBy").message("approvedBy cannot be changed once set: remove it (the token is revoked) and have a second person approve again").field_path(".approvedBy"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvedBy) || !has(self.approvedBy) || self.owner == oldSelf.owner").message("owner cannot change while the grant is approved: remove approvedBy in the same change and have a second person approve again").field_path(".owner"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvedBy) || !has(self.approvedBy) || (self.tiers.all(t, t in oldSelf.tiers) && (has(oldSelf.expiresAt) ? (has(self.expiresAt) && timestamp(self.expiresAt) <= timestamp(oldSelf.expiresAt)) : (has(self.ttl) && duration(self.ttl) <= duration(oldSelf.ttl))))").message("an approved grant can only be narrowed (fewer tiers, an earlier expiresAt, a shorter ttl; not from ttl to expiresAt or back): to widen it, remove approvedBy in the same change and have a second person approve again").field_path(".approvedBy"))]
pub struct WorkerGrantSpec {
    /// The Pool this worker joins. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolRef is immutable: create a new WorkerGrant for another pool"))]
    pub pool_ref: LocalObjectRef,
    /// Stable identity of the worker, the token's subject (e.g. the
    /// laptop's asset tag).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("workerId is immutable: create a new WorkerGrant"))]
    pub worker_id: String,
    /// Person responsible for the worker (e.g. an e-mail address).
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,
    /// Tiers of the pool this worker may serve.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 32)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tiers: Vec<String>,
    /// Token lifetime from issue, between 1h and 8760h; the pool's
    /// `tokens.maxTtl` also applies. Exactly one of `ttl` and `expiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = duration_rule("1h", "8760h", "ttl"))]
    pub ttl: Option<Duration>,
    /// Absolute end of the grant (e.g. a contractor's last day). No token
    /// is valid past it, renewed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// User who asked for the grant. Checked at admission against the user
    /// who creates it; cannot be changed.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("requestedBy is immutable"))]
    pub requested_by: String,
    /// User who approved the grant: set by a second person, checked at
    /// admission against the user who sets it. While it is set, the grant
    /// can only be narrowed; removing it withdraws the approval (the token
    /// is revoked) until a second person sets it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: Option<String>,
    /// Temporarily refuse the worker: its token is revoked; setting it back
    /// to false issues a fresh token.
    #[serde(default)]
    pub suspended: bool,
    /// Permanently refuse the worker (e.g. a stolen laptop): its token is
    /// revoked at once. Cannot be set back to false.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("revoked cannot be set back to false: create a new WorkerGrant"))]
    pub revoked: bool,
    /// Increase to issue a new token now and revoke the current one.
    #[serde(default)]
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("rotation can only increase"))]
    pub rotation: i64,
}

/// Where the grant stands, for `kubectl get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkerGrantPhase {
    /// Waiting for `approvedBy`.
    PendingApproval,
    /// A valid token is issued.
    Active,
    /// Suspended: no valid token until `suspended` is false again.
    Suspended,
    /// Revoked for good.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Cannot be issued as written (see the conditions).
    Invalid,
}

/// The current token, described without its content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// Secret holding the token (key `token`).
    pub secret_name: String,
    /// The token's unique id (JWT `jti`).
    pub jti: String,
    /// Id of the pool key that signed it (JWT header `kid`).
    pub key_id: String,
    /// SHA-256 of the token (hex), to match audit logs; never the token.
    pub sha256: String,
    /// When it was issued.
    pub issued_at: Time,
    /// When it expires (JWT `exp`).
    pub expires_at: Time,
    /// The tiers it allows (JWT `tiers`); a change of `spec.tiers`
    /// re-issues the token. Absent on tokens issued before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<String>>,
}

/// Audit trail of the grant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// Who asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Who approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When the operator first saw it approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Time>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
}

/// A renewed token on its way out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringToken {
    /// Its `jti`.
    pub jti: String,
    /// Its own expiry.
    pub expires_at: Time,
    /// When it goes on the revocation list.
    pub revoke_at: Time,
    /// The signing key that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Observed state of a WorkerGrant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGrantStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Where the grant stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkerGrantPhase>,
    /// The current token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,
    /// Who did what, and when.
    #[serde(default)]
    pub audit: AuditStatus,
    /// The `spec.rotation` the current token answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotation: Option<i64>,
    /// The token a renewal replaced: still accepted until `revokeAt`, a
    /// short grace for the worker to pick up the new one, then revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_token: Option<RetiringToken>,
}
