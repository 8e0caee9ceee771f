//! `Pool`: one site's pool orchestrator and everything around it.

use k8s_openapi::{api::core::v1::ResourceRequirements, apimachinery::pkg::apis::meta::v1::Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::common::{
    CommonStatus, Duration, ImageStatus, KeyRef, LocalObjectRef, NetworkEndpoint, SignedImage,
    cidr_check, cidr_rule, derived_name_rule, duration_rule,
};
use crate::names;

/// A Cellule pool: the orchestrator that routes employees' prompts to
/// workers on the private network, with its database, TLS, model tiers,
/// verification, privacy and federation settings.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "Pool",
    namespaced,
    doc = "A Cellule pool: the orchestrator of one site, with its database, TLS, model tiers, verification, privacy and federation settings.",
    status = "PoolStatus",
    shortname = "cpool",
    category = "cellule",
    validation = derived_name_rule("Pool", names::POOL_NAME_MAX),
    validation = tier_service_rule(),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Routing",
        type_ = "string",
        json_path = ".status.routing",
        description = "How each tier is served"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.image.shortDigest",
        description = "Verified image digest"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tiers.all(t, !has(t.fallbackTier) || t.fallbackTier != t.name)").message("a tier's fallbackTier must name another tier, not itself").field_path(".tiers"))]
#[x_kube(validation = Rule::new("self.tiers.all(t, !has(t.fallbackTier) || self.tiers.exists(f, f.name == t.fallbackTier && f.backend == 'Cpu'))").message("a tier's fallbackTier must name a tier of this pool served by CPU workers (backend: Cpu)").field_path(".tiers"))]
#[x_kube(validation = Rule::new("!has(self.cpuWorkers) || self.cpuWorkers.all(w, self.tiers.exists(t, t.name == w.tier && t.backend == 'Cpu'))").message("each cpuWorkers[].tier must name a tier of this pool with backend: Cpu").field_path(".cpuWorkers"))]
pub struct PoolSpec {
    /// The pool orchestrator image and its signature policy.
    pub image: SignedImage,
    /// Number of orchestrator replicas. More than one adds a PodDisruptionBudget.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    /// The PostgreSQL database.
    pub database: DatabaseSpec,
    /// Secret of type kubernetes.io/tls with the pool's serving certificate
    /// (`tls.crt`, `tls.key`). Workers and peers connect over TLS only.
    pub tls: LocalObjectRef,
    /// Model tiers the pool serves, by name (e.g. `light` = 7B on CPU,
    /// `heavy` = 30B on an NPU server).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tiers: Vec<ModelTier>,
    /// Worker deployments run inside the cluster, each serving a CPU tier
    /// (laptops join through WorkerGrants instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub cpu_workers: Vec<CpuWorkerSet>,
    /// How answers are checked against cheating workers.
    #[serde(default)]
    pub verification: VerificationSpec,
    /// What leaves the pool towards workers and peers.
    #[serde(default)]
    pub privacy: PrivacySpec,
    /// Request rate limits.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Federation with the pools of other sites (see PeerTrust).
    #[serde(default)]
    pub federation: FederationSpec,
    /// Laptops and other workers that connect to the pool.
    #[serde(default)]
    pub workers: WorkerNetworkSpec,
    /// Lifetime and approval of worker tokens (see WorkerGrant).
    #[serde(default)]
    pub tokens: TokenPolicy,
    /// When a tier served by an NPU server moves to its CPU fallback and back.
    #[serde(default)]
    pub failover: FailoverSpec,
    /// Where the cluster DNS is: the only name resolution the pool's pods
    /// (and its CPU workers and NPU servers) may reach. Defaults to the
    /// `k8s-app: kube-dns` pods of `kube-system` on port 53.
    #[serde(default)]
    pub dns: DnsSpec,
    /// Extra destinations the pool may reach, beyond DNS, its database, its
    /// own NPU servers and workers, and trusted peers. Everything else is
    /// denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub extra_egress: Vec<EgressRule>,
}

/// Each tier gets a Service `<pool>--<tier>` (see `names::tier`): it must
/// be a DNS label and differ from every CPU worker set's `<pool>--<set>`.
fn tier_service_rule() -> kube::core::Rule {
    let max = names::DNS_LABEL_MAX - 2;
    kube::core::Rule::new(format!(
        "self.spec.tiers.all(t, size(self.metadata.name) + size(t.name) <= {max} && (!has(self.spec.cpuWorkers) || !self.spec.cpuWorkers.exists(w, w.name == t.name)))"
    ))
    .message(kube::core::Message::Message(format!(
        "spec.tiers[].name: each tier gets a Service named <pool>--<tier>, so the Pool name and a tier name together must be at most {max} characters, and no cpuWorkers[].name may equal a tier name"
    )))
}

/// The pool's PostgreSQL database. The operator passes the DSN to the pool
/// and never reads the database itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Secret key holding the connection string (DSN).
    pub dsn_secret_ref: KeyRef,
    /// Where the database is reachable: the only database egress allowed.
    pub endpoint: NetworkEndpoint,
}

/// What serves a tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TierBackend {
    /// CPU workers: laptops with a WorkerGrant and `cpuWorkers` of this pool.
    #[default]
    Cpu,
    /// An NpuServer of this pool (`npuServerRef`).
    Npu,
}

/// A model tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.backend == 'Npu') == has(self.npuServerRef)").message("npuServerRef is required when backend is Npu, and only then").field_path(".npuServerRef"))]
#[x_kube(validation = Rule::new("!has(self.fallbackTier) || self.backend == 'Npu'").message("fallbackTier is only for a tier with backend Npu (a CPU tier has nothing to fail over from)").field_path(".fallbackTier"))]
pub struct ModelTier {
    /// Tier name, a DNS label like `light` or `heavy`.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Model served on this tier, e.g. `mistral-7b-instruct-q4`.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// What serves the tier.
    pub backend: TierBackend,
    /// The NpuServer that serves the tier when `backend` is Npu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npu_server_ref: Option<LocalObjectRef>,
    /// A CPU tier that takes this tier's requests while its NPU server is
    /// unhealthy (degraded answers rather than none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub fallback_tier: Option<String>,
}

/// Worker pods run by the operator for a CPU tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuWorkerSet {
    /// Name of this set, a DNS label (at most 21 characters: its objects
    /// are named `<pool>--<set>`).
    #[schemars(
        length(min = 1, max = 21),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The CPU tier these workers serve (its `model` is loaded).
    #[schemars(length(min = 1, max = 32))]
    pub tier: String,
    /// Worker image and its signature policy.
    pub image: SignedImage,
    /// Number of worker pods.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory for each worker pod. (Up to 8 sets would exceed the
    /// CEL cost budget for checking quantities here: the operator checks
    /// them and reports `InvalidQuantity`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// How many workers answer a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VerificationMode {
    /// One worker answers; a share of answers is re-checked (`spotCheckPercent`).
    #[default]
    Sampled,
    /// `workersPerRequest` workers answer every request in parallel and must
    /// agree (also hides per-worker timing).
    Required,
}

/// Verification of workers' answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Required' || self.workersPerRequest >= 2").message("mode Required needs workersPerRequest of 2 or more").field_path(".workersPerRequest"))]
pub struct VerificationSpec {
    /// Percent of answers re-checked by another worker.
    #[serde(default = "defaults::spot_check_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub spot_check_percent: i32,
    /// Percent of failed checks above which a worker is treated as a cheater
    /// and suspended.
    #[serde(default = "defaults::cheat_threshold_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub cheat_threshold_percent: i32,
    /// Sampled or Required.
    #[serde(default)]
    pub mode: VerificationMode,
    /// Workers that answer each request in Required mode.
    #[serde(default = "defaults::workers_per_request")]
    #[schemars(range(min = 1, max = 5))]
    pub workers_per_request: i32,
    /// Deterministic decoding (fixed seed, temperature 0), so answers can be
    /// compared exactly.
    #[serde(default)]
    pub deterministic: bool,
}

impl Default for VerificationSpec {
    fn default() -> Self {
        Self {
            spot_check_percent: defaults::spot_check_percent(),
            cheat_threshold_percent: defaults::cheat_threshold_percent(),
            mode: VerificationMode::default(),
            workers_per_request: defaults::workers_per_request(),
            deterministic: false,
        }
    }
}

/// Privacy mode of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PrivacyMode {
    /// Requests may fan out to workers and peers; differential-privacy noise
    /// is added to what leaves.
    #[default]
    Balanced,
    /// Never fans out: no peer gets anything, no egress to peers at all.
    Paranoid,
}

/// Privacy settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivacySpec {
    /// Balanced or Paranoid.
    #[serde(default)]
    pub mode: PrivacyMode,
}

/// Rate limits, against extraction of embeddings by volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests per minute allowed to one signer (user or peer key).
    #[serde(default = "defaults::requests_per_minute")]
    #[schemars(range(min = 1, max = 100000))]
    pub requests_per_minute_per_signer: i32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            requests_per_minute_per_signer: defaults::requests_per_minute(),
        }
    }
}

/// Federation with other sites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationSpec {
    /// This site's name as peers know it, a DNS label like `paris`. Required
    /// for PeerTrust handshakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub site: Option<String>,
    /// Signed federation messages older than this are refused as replays
    /// (with the nonce, within the window).
    #[serde(default = "defaults::anti_replay_window")]
    #[x_kube(validation = duration_rule("1s", "10m", "antiReplayWindow"))]
    pub anti_replay_window: Duration,
    /// Ed25519 public keys (base64, 32 bytes) of this site's administrators,
    /// whose signature a level-3 PeerTrust handshake needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 44, max = 44)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(k, k.matches('{}'))", super::ED25519_PUBLIC_KEY_PATTERN)).message("each admin public key must be the base64 of exactly 32 bytes (an Ed25519 public key)"))]
    pub admin_public_keys: Vec<String>,
    /// Where peers reach this pool, as they write it in their PeerTrust:
    /// a level-3 handshake names it. Required for level-3 handshakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<super::peer_trust::PeerEndpoint>,
    /// Raise to replace the pool's federation key now (e.g. when its Secret
    /// may have leaked); the replaced key stays valid for `keyOverlap`.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub key_generation: i64,
    /// How long a replaced federation key still signs and is accepted in
    /// handshakes: the time peers have to pin the new one.
    #[serde(default = "defaults::federation_key_overlap")]
    #[x_kube(validation = duration_rule("0s", "2160h", "keyOverlap"))]
    pub key_overlap: Duration,
    /// When the pool's reports on a peer downgrade its trust.
    #[serde(default)]
    pub reputation: ReputationPolicy,
}

/// Past `mismatchPercent` mismatches over at least `minSamples` samples
/// (as the pool reports them), a peer's effective trust goes down a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReputationPolicy {
    /// Share of sampled answers that may disagree, in percent.
    #[serde(default = "defaults::mismatch_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub mismatch_percent: i32,
    /// Samples needed before a share counts.
    #[serde(default = "defaults::min_samples")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_samples: i64,
}

impl Default for ReputationPolicy {
    fn default() -> Self {
        Self {
            mismatch_percent: defaults::mismatch_percent(),
            min_samples: defaults::min_samples(),
        }
    }
}

impl Default for FederationSpec {
    fn default() -> Self {
        Self {
            site: None,
            anti_replay_window: defaults::anti_replay_window(),
            admin_public_keys: Vec::new(),
            endpoint: None,
            key_generation: 0,
            key_overlap: defaults::federation_key_overlap(),
            reputation: ReputationPolicy::default(),
        }
    }
}

/// Where workers connect from, and how often they check in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerNetworkSpec {
    /// IP ranges workers connect from; the only sources allowed in. Empty
    /// means no laptop can connect (in-cluster workers still can).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(c, {})", cidr_check("c"))).message("each allowedCidrs entry must be a CIDR like 10.50.0.0/16 (not 0.0.0.0/0 or ::/0, and no host bits such as 10.50.0.1/16)"))]
    pub allowed_cidrs: Vec<String>,
    /// WebSocket (TLS) port workers connect to.
    #[serde(default = "defaults::worker_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// How often a worker must check in; between 5m and 30m.
    #[serde(default = "defaults::heartbeat_interval")]
    #[x_kube(validation = duration_rule("5m", "30m", "heartbeatInterval"))]
    pub heartbeat_interval: Duration,
}

impl Default for WorkerNetworkSpec {
    fn default() -> Self {
        Self {
            allowed_cidrs: Vec::new(),
            port: defaults::worker_port(),
            heartbeat_interval: defaults::heartbeat_interval(),
        }
    }
}

/// Lifetime and approval of worker tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.defaultTtl) <= duration(self.maxTtl)").message("defaultTtl must not exceed maxTtl").field_path(".defaultTtl"))]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(self.defaultTtl)").message("renewBefore must be shorter than defaultTtl").field_path(".renewBefore"))]
pub struct TokenPolicy {
    /// Token lifetime when a WorkerGrant gives neither `ttl` nor `expiresAt`.
    #[serde(default = "defaults::default_ttl")]
    #[x_kube(validation = duration_rule("1h", "8760h", "defaultTtl"))]
    pub default_ttl: Duration,
    /// Longest lifetime any WorkerGrant of this pool may ask for.
    #[serde(default = "defaults::max_ttl")]
    #[x_kube(validation = duration_rule("1h", "8760h", "maxTtl"))]
    pub max_ttl: Duration,
    /// Renew a token this long before it expires. Default: a third of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = duration_rule("1m", "8760h", "renewBefore"))]
    pub renew_before: Option<Duration>,
    /// A WorkerGrant gets a token only once a second person set `approvedBy`.
    #[serde(default = "defaults::approval_required")]
    pub approval_required: bool,
    /// How often the pool's token signing key is replaced. Old public keys
    /// stay published until the last token they signed has expired.
    #[serde(default = "defaults::signing_key_rotation")]
    #[x_kube(validation = duration_rule("24h", "8760h", "signingKeyRotation"))]
    pub signing_key_rotation: Duration,
    /// Increase to rotate the signing key now, as a scheduled rotation
    /// does: the new key is published first and signs after
    /// `signingKeyPrePublication`; the old one stays published until the
    /// last token it signed has expired. For a key that leaked, use
    /// `compromisedKeys` instead.
    #[serde(default)]
    #[schemars(range(min = 0))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("signingKeyGeneration can only increase"))]
    pub signing_key_generation: i64,
    /// How long a new signing key is published in the JWKS before it signs,
    /// so that every verifier has read it (a ConfigMap volume refreshes
    /// within about two minutes). The pool's first key, and the key that
    /// replaces a compromised one, sign as soon as they are published:
    /// no other key could.
    #[serde(default = "defaults::signing_key_pre_publication")]
    #[x_kube(validation = duration_rule("0s", "24h", "signingKeyPrePublication"))]
    pub signing_key_pre_publication: Duration,
    /// Key ids (`kid`, as in a token's header and `status.signingKeys`) of
    /// signing keys to treat as leaked: each is removed from the JWKS and
    /// the key ring at once (every token it signed is refused from then
    /// on), a new key signs, and every grant holding a token it signed gets
    /// a new one. An entry can be removed once the key is gone: a removed
    /// key never comes back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = "^[A-Za-z0-9_-]{16}$")))]
    pub compromised_keys: Vec<String>,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            default_ttl: defaults::default_ttl(),
            max_ttl: defaults::max_ttl(),
            renew_before: None,
            approval_required: defaults::approval_required(),
            signing_key_rotation: defaults::signing_key_rotation(),
            signing_key_generation: 0,
            signing_key_pre_publication: defaults::signing_key_pre_publication(),
            compromised_keys: Vec::new(),
        }
    }
}

/// NPU → CPU fail-over timing. The hold times keep routing from flapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// How long an NPU server must stay unhealthy before its tier moves to
    /// the fallback tier.
    #[serde(default = "defaults::fail_over_after")]
    #[x_kube(validation = duration_rule("0s", "1h", "failOverAfter"))]
    pub fail_over_after: Duration,
    /// How long it must stay healthy again before the tier moves back.
    #[serde(default = "defaults::fail_back_after")]
    #[x_kube(validation = duration_rule("0s", "24h", "failBackAfter"))]
    pub fail_back_after: Duration,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            fail_over_after: defaults::fail_over_after(),
            fail_back_after: defaults::fail_back_after(),
        }
    }
}

/// The cluster DNS, as the NetworkPolicies allow it: pods chosen by
/// labels (the usual CoreDNS/kube-dns), and IP ranges for a node-local
/// cache (NodeLocal DNSCache listens on a link-local address such as
/// 169.254.20.10, which no pod selector matches). Each port is allowed for
/// UDP and TCP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.podLabels) && size(self.podLabels) > 0) || (has(self.namespaceLabels) && size(self.namespaceLabels) > 0) || (has(self.cidrs) && size(self.cidrs) > 0)").message("give podLabels, namespaceLabels or cidrs: with none of them DNS would be allowed to every pod of the cluster").field_path(".podLabels"))]
#[x_kube(validation = Rule::new("!has(self.podLabels) || size(self.podLabels) == 0 || (has(self.namespaceLabels) && size(self.namespaceLabels) > 0)").message("podLabels need namespaceLabels: without them any namespace's pod with those labels would receive the pool's DNS traffic").field_path(".namespaceLabels"))]
pub struct DnsSpec {
    /// Labels of the namespace the DNS pods run in (empty: every namespace).
    #[serde(default = "defaults::dns_namespace_labels")]
    #[schemars(length(max = 8))]
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the DNS pods (empty: no pod selector, use `cidrs`).
    #[serde(default = "defaults::dns_pod_labels")]
    #[schemars(length(max = 8))]
    pub pod_labels: BTreeMap<String, String>,
    /// IP ranges that serve DNS, e.g. `169.254.20.10/32` for NodeLocal DNSCache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(c, {})", cidr_check("c"))).message("each dns.cidrs entry must be a CIDR like 169.254.20.10/32 (not 0.0.0.0/0 or ::/0, and no host bits)"))]
    pub cidrs: Vec<String>,
    /// DNS ports (each for UDP and TCP), e.g. 53 or 5353.
    #[serde(default = "defaults::dns_ports")]
    #[schemars(length(min = 1, max = 4), inner(range(min = 1, max = 65535)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub ports: Vec<i32>,
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            namespace_labels: defaults::dns_namespace_labels(),
            pod_labels: defaults::dns_pod_labels(),
            cidrs: Vec::new(),
            ports: defaults::dns_ports(),
        }
    }
}

/// One extra destination the pool may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Name of the rule, a DNS label (e.g. `siem`).
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Destination IP range.
    #[schemars(length(max = 64))]
    #[x_kube(validation = cidr_rule("cidr"))]
    pub cidr: String,
    /// Destination TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// How a tier is being served right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TierServing {
    /// By its NPU server. (The default: a status written by an earlier
    /// version has no `servedBy`, its `serving` being pruned on read.)
    #[default]
    Npu,
    /// By CPU workers (a CPU tier).
    Cpu,
    /// By its CPU fallback tier, because its NPU server is unhealthy.
    CpuFailover,
    /// By nothing: the NPU server is unhealthy and there is no fallback.
    Unavailable,
}

/// Routing state of one tier: what on-call reads during an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    /// Tier name.
    pub name: String,
    /// What serves it now.
    #[serde(default)]
    pub served_by: TierServing,
    /// The tier whose workers take its requests, during fail-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The model that answers its requests now (the fallback tier's during
    /// fail-over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Since when `servedBy` has had its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why, in one word: `CpuTier`, `NpuHealthy`, `FailOverPending`,
    /// `NpuUnavailable`, `FailBackPending`, `NoFallback` or
    /// `FallbackUnavailable`.
    #[serde(default)]
    pub reason: String,
    /// The tier's Service: the address the pool sends its requests to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The NPU server of an NPU tier, as its pods show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npu: Option<NpuHealthStatus>,
}

/// An NPU tier's server, as its pods show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NpuHealthStatus {
    /// The NpuServer.
    pub server: String,
    /// Its pods that are Ready, on a Ready node, and not terminating.
    pub ready: i32,
    /// Ready pods it needs to count as healthy (`minHealthyReplicas`).
    pub required: i32,
    /// Whether `ready` reaches `required`.
    pub healthy: bool,
    /// Since when `healthy` has had its value, as the pods' and nodes'
    /// Ready conditions show it (the fail-over and fail-back timers count
    /// from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Observed state of a Pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The verified image the orchestrator runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageStatus>,
    /// The verified images the in-cluster CPU worker sets run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_images: Vec<ImageStatus>,
    /// Routing of each tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierStatus>,
    /// Routing of all tiers in one line, e.g. `heavy=npu light=cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    /// Orchestrator replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Deprecated, always empty: where an earlier version recorded revoked
    /// tokens (`jti` → `exp`). The operator moves any entry into the
    /// pool's RevocationLists, then removes the field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked_tokens: BTreeMap<String, i64>,
    /// The token signing keys the pool publishes, oldest first: what the
    /// incident runbook names in `spec.tokens.compromisedKeys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKeyStatus>,
    /// The pool's federation identity, for the admins of peer sites to pin
    /// in their PeerTrusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationStatus>,
}

/// The pool's federation keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationStatus {
    /// The current key (base64 of 32 bytes): what peers pin.
    pub public_key: String,
    /// `sha256:` and the hex SHA-256 of the key's 32 bytes.
    pub fingerprint: String,
    /// Replaced keys that still sign until `validUntil`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousFederationKey>,
}

/// A replaced federation key, valid for the overlap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousFederationKey {
    /// The key (base64 of 32 bytes).
    pub public_key: String,
    /// `sha256:` and the hex SHA-256 of its 32 bytes.
    pub fingerprint: String,
    /// When it stops signing and is no longer accepted in handshakes.
    pub valid_until: Time,
}

/// One published signing key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    /// Its key id, as in the `kid` header of the tokens it signs.
    pub kid: String,
    /// `Pending` (published, not signing yet), `Signing`, or `Retired`
    /// (published until the last token it signed has expired; its private
    /// half is deleted).
    pub state: SigningKeyState,
    /// When the JWKS first published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<Time>,
    /// The latest expiry of a token it signed, as far as the grants show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_token_expiry: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SigningKeyState {
    Pending,
    Signing,
    Retired,
}

/// Defaults, shared by serde (so the API server defaults them too) and code.
pub mod defaults {
    use std::collections::BTreeMap;

    use super::Duration;

    pub fn dns_namespace_labels() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "kube-system".to_owned(),
        )])
    }
    pub fn dns_pod_labels() -> BTreeMap<String, String> {
        BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])
    }
    pub fn dns_ports() -> Vec<i32> {
        vec![53]
    }

    const fn duration(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    pub fn replicas() -> i32 {
        1
    }
    pub fn spot_check_percent() -> i32 {
        3
    }
    pub fn cheat_threshold_percent() -> i32 {
        30
    }
    pub fn workers_per_request() -> i32 {
        2
    }
    pub fn requests_per_minute() -> i32 {
        60
    }
    pub fn anti_replay_window() -> Duration {
        duration(60)
    }
    pub fn federation_key_overlap() -> Duration {
        duration(7 * 24 * 3600)
    }
    pub fn mismatch_percent() -> i32 {
        20
    }
    pub fn min_samples() -> i64 {
        50
    }
    pub fn worker_port() -> i32 {
        8443
    }
    pub fn heartbeat_interval() -> Duration {
        duration(5 * 60)
    }
    pub fn default_ttl() -> Duration {
        duration(720 * 3600)
    }
    pub fn max_ttl() -> Duration {
        duration(2160 * 3600)
    }
    pub fn approval_required() -> bool {
        true
    }
    pub fn signing_key_rotation() -> Duration {
        duration(2160 * 3600)
    }
    pub fn signing_key_pre_publication() -> Duration {
        duration(5 * 60)
    }
    pub fn fail_over_after() -> Duration {
        duration(30)
    }
    pub fn fail_back_after() -> Duration {
        duration(5 * 60)
    }
}
