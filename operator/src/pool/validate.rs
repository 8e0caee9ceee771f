//! Dereference and validate a Pool: look up what it points to and turn it
//! into a [`ValidPool`], or say what is missing.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::ResourceExt;

use crate::{
    api::{
        NpuServer, Pool, PoolSpec,
        pool::{ModelTier, TierBackend, VerificationMode},
    },
    names, netpol,
    reconcile::{self, quantity},
};

/// Why the pool cannot be rendered until something changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    SecretMissing {
        reason: &'static str,
        what: &'static str,
        name: String,
    },
    /// A spec that admission should have refused (an object stored before
    /// a validation rule existed keeps its old value under CEL ratcheting).
    Invalid {
        reason: &'static str,
        message: String,
    },
}

impl Blocked {
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::SecretMissing { reason, .. } | Blocked::Invalid { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Blocked::SecretMissing { what, name, .. } => {
                format!(
                    "{what} Secret {name:?} does not exist in this namespace; the pool starts once it is created"
                )
            }
            Blocked::Invalid { message, .. } => message.clone(),
        }
    }
}

/// What the Pool points to, as the caches see it now.
pub trait References {
    fn secret_exists(&self, name: &str) -> bool;
    fn npu_server(&self, name: &str) -> Option<Arc<NpuServer>>;
    /// Where the API server listens (none known: no live channel).
    fn api_server(&self) -> ApiServer {
        ApiServer::default()
    }
    /// The peers the pool federates with (see `peer_trust::peers`).
    fn peers(&self) -> Vec<crate::peer_trust::Peer> {
        Vec::new()
    }
}

/// The API server's addresses (as CIDRs of one address) and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiServer {
    pub cidrs: Vec<String>,
    pub ports: Vec<i32>,
}

/// The NpuServer behind an NPU tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpuBackend {
    pub name: String,
    /// Its Deployment (whose pods serve the tier) and Service.
    pub deployment: String,
    pub port: i32,
    /// Ready pods it needs to count as healthy; `None` when there is no
    /// NpuServer of that name in this pool.
    pub required: Option<i32>,
}

/// A tier with what serves it resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub spec: ModelTier,
    pub npu: Option<NpuBackend>,
}

/// A Pool whose references all resolved: everything the builders need.
#[derive(Clone, Debug)]
pub struct ValidPool {
    pub pool: Pool,
    pub name: String,
    pub namespace: String,
    pub tiers: Vec<Tier>,
    /// The one database destination the pool's egress allows.
    pub database: NetworkPolicyPeer,
    /// The pool's live channel to its JWKS and revocation list.
    pub api_server: ApiServer,
    /// Trusted peers: in its config, and the only egress to other sites.
    pub peers: Vec<crate::peer_trust::Peer>,
}

/// Whether `pool`'s names make valid object names: what its routing
/// needs, even while the rest of it is blocked.
pub fn routable(pool: &Pool) -> bool {
    check_names(&pool.name_any(), &pool.spec).is_ok()
}

/// `pool`'s tiers, each with the NpuServer that serves it resolved.
pub fn tiers(pool: &Pool, refs: &impl References) -> Vec<Tier> {
    let name = pool.name_any();
    pool.spec
        .tiers
        .iter()
        .map(|tier| Tier {
            spec: tier.clone(),
            npu: match (tier.backend, &tier.npu_server_ref) {
                (TierBackend::Npu, Some(reference)) => Some(npu_backend(
                    &reference.name,
                    refs.npu_server(&reference.name).as_deref(),
                    &name,
                )),
                _ => None,
            },
        })
        .collect()
}

/// Validates `pool` against what it references (pure given `refs`).
pub fn validate(pool: &Pool, refs: &impl References) -> Result<ValidPool, Blocked> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let spec = &pool.spec;
    check_names(&name, spec)?;
    check_spec(spec).map_err(|(reason, message)| Blocked::Invalid { reason, message })?;
    check_quantities(spec)?;
    let endpoint = &spec.database.endpoint;
    let database = match (&endpoint.pod_selector, &endpoint.cidr) {
        (Some(pod_selector), _) => NetworkPolicyPeer {
            pod_selector: Some(pod_selector.clone()),
            namespace_selector: endpoint.namespace_selector.clone(),
            ip_block: None,
        },
        (None, Some(range)) => netpol::cidr(range),
        (None, None) => {
            return Err(Blocked::Invalid {
                reason: "DatabaseEndpointMissing",
                message: "spec.database.endpoint needs podSelector or cidr: without one no egress to the database can be allowed".into(),
            });
        }
    };
    for (reason, what, secret) in [
        (
            "DatabaseSecretMissing",
            "database",
            &spec.database.dsn_secret_ref.name,
        ),
        ("TlsSecretMissing", "TLS", &spec.tls.name),
    ] {
        if !refs.secret_exists(secret) {
            return Err(Blocked::SecretMissing {
                reason,
                what,
                name: secret.clone(),
            });
        }
    }
    let tiers = tiers(pool, refs);
    Ok(ValidPool {
        name,
        namespace,
        tiers,
        database,
        api_server: refs.api_server(),
        peers: refs.peers(),
        pool: pool.clone(),
    })
}

/// What admission (schema and CEL) refuses, checked again: an object
/// stored before a rule existed keeps its value (CEL ratcheting), and the
/// builders must never turn it into a policy that allows too much.
fn check_spec(spec: &PoolSpec) -> Result<(), (&'static str, String)> {
    let invalid = |reason, message: String| Err((reason, message));
    // Every CIDR: well formed, not a default route, no host bits.
    let cidrs = spec
        .database
        .endpoint
        .cidr
        .iter()
        .map(|c| ("spec.database.endpoint.cidr", c))
        .chain(
            spec.extra_egress
                .iter()
                .map(|r| ("spec.extraEgress[].cidr", &r.cidr)),
        )
        .chain(spec.dns.cidrs.iter().map(|c| ("spec.dns.cidrs[]", c)))
        .chain(
            spec.workers
                .allowed_cidrs
                .iter()
                .map(|c| ("spec.workers.allowedCidrs[]", c)),
        );
    for (field, cidr) in cidrs {
        if let Some(problem) = cidr_problem(cidr) {
            return invalid(
                "InvalidCidr",
                format!("{field} {:?}: {problem}", reconcile::bounded(cidr)),
            );
        }
    }
    let endpoint = &spec.database.endpoint;
    if endpoint.pod_selector.is_some() && endpoint.cidr.is_some() {
        return invalid(
            "InvalidDatabaseEndpoint",
            "spec.database.endpoint: give exactly one of podSelector and cidr".into(),
        );
    }
    if endpoint.namespace_selector.is_some() && endpoint.pod_selector.is_none() {
        return invalid(
            "InvalidDatabaseEndpoint",
            "spec.database.endpoint: namespaceSelector goes with podSelector".into(),
        );
    }
    let dns = &spec.dns;
    if dns.pod_labels.is_empty() && dns.namespace_labels.is_empty() && dns.cidrs.is_empty() {
        return invalid(
            "InvalidDns",
            "spec.dns: give podLabels, namespaceLabels or cidrs".into(),
        );
    }
    if !dns.pod_labels.is_empty() && dns.namespace_labels.is_empty() {
        return invalid(
            "InvalidDns",
            "spec.dns.namespaceLabels: podLabels need namespaceLabels".into(),
        );
    }
    if dns.ports.is_empty() || dns.ports.iter().any(|p| !(1..=65535).contains(p)) {
        return invalid(
            "InvalidDns",
            "spec.dns.ports: one to four ports between 1 and 65535".into(),
        );
    }
    if spec.tiers.is_empty() {
        return invalid("InvalidTiers", "spec.tiers: at least one tier".into());
    }
    let tier = |name: &str| spec.tiers.iter().find(|t| t.name == name);
    for (i, t) in spec.tiers.iter().enumerate() {
        if spec.tiers[..i].iter().any(|o| o.name == t.name) {
            return invalid(
                "InvalidTiers",
                format!("spec.tiers: two tiers named {:?}", t.name),
            );
        }
        if (t.backend == TierBackend::Npu) != t.npu_server_ref.is_some() {
            return invalid(
                "InvalidTiers",
                format!(
                    "spec.tiers[{i}].npuServerRef is required when backend is Npu, and only then"
                ),
            );
        }
        if let Some(fallback) = &t.fallback_tier {
            let ok = t.backend == TierBackend::Npu
                && *fallback != t.name
                && tier(fallback).is_some_and(|f| f.backend == TierBackend::Cpu);
            if !ok {
                return invalid(
                    "InvalidTiers",
                    format!(
                        "spec.tiers[{i}].fallbackTier: an Npu tier's fallback must name another tier with backend Cpu"
                    ),
                );
            }
        }
    }
    for (i, set) in spec.cpu_workers.iter().enumerate() {
        if spec.cpu_workers[..i].iter().any(|o| o.name == set.name) {
            return invalid(
                "InvalidWorkerSet",
                format!("spec.cpuWorkers: two sets named {:?}", set.name),
            );
        }
        if !tier(&set.tier).is_some_and(|t| t.backend == TierBackend::Cpu) {
            return invalid(
                "InvalidWorkerSet",
                format!("spec.cpuWorkers[{i}].tier must name a tier of this pool with backend Cpu"),
            );
        }
    }
    for (i, rule) in spec.extra_egress.iter().enumerate() {
        if spec.extra_egress[..i].iter().any(|o| o.name == rule.name) {
            return invalid(
                "InvalidEgress",
                format!("spec.extraEgress: two rules named {:?}", rule.name),
            );
        }
    }
    let hour = crate::api::common::Duration::from_secs(3600);
    let tokens = &spec.tokens;
    let settings = [
        (spec.replicas < 1, "spec.replicas must be at least 1"),
        (
            tokens.default_ttl < hour,
            "spec.tokens.defaultTtl must be at least 1h",
        ),
        (
            tokens.default_ttl > tokens.max_ttl,
            "spec.tokens.defaultTtl must not exceed maxTtl",
        ),
        (
            tokens.renew_before.is_some_and(|r| r >= tokens.default_ttl),
            "spec.tokens.renewBefore must be shorter than defaultTtl",
        ),
        (
            !(300..=1800).contains(&spec.workers.heartbeat_interval.0.as_secs()),
            "spec.workers.heartbeatInterval must be between 5m and 30m",
        ),
        (
            spec.verification.mode == VerificationMode::Required
                && spec.verification.workers_per_request < 2,
            "spec.verification: mode Required needs workersPerRequest of 2 or more",
        ),
    ];
    if let Some((_, message)) = settings.iter().find(|(bad, _)| *bad) {
        return invalid("InvalidSetting", (*message).to_owned());
    }
    Ok(())
}

/// Why `cidr` cannot be a NetworkPolicy peer of ours, if it cannot.
pub(crate) fn cidr_problem(cidr: &str) -> Option<&'static str> {
    let Some((ip, prefix)) = cidr.split_once('/') else {
        return Some("not a CIDR like 10.20.0.0/16");
    };
    let (Ok(ip), Ok(prefix)) = (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) else {
        return Some("not a CIDR like 10.20.0.0/16");
    };
    let bits = match ip {
        std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
        std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    if prefix == 0 {
        return Some("a default route would allow everything");
    }
    if prefix > bits.1 {
        return Some("prefix longer than the address");
    }
    let host_bits = bits.0 << u32::from(prefix);
    (host_bits != 0).then_some("host bits are set (write the network address)")
}

/// Every worker resource is a quantity the API server accepts (`4GB` is
/// not): said here with the field's path rather than as a refused apply.
fn check_quantities(spec: &PoolSpec) -> Result<(), Blocked> {
    for (i, set) in spec.cpu_workers.iter().enumerate() {
        let Some(resources) = &set.resources else {
            continue;
        };
        for (what, map) in [
            ("limits", &resources.limits),
            ("requests", &resources.requests),
        ] {
            for (key, value) in map.iter().flatten() {
                if !quantity::is_valid(&value.0) {
                    return Err(Blocked::Invalid {
                        reason: "InvalidQuantity",
                        message: format!(
                            "spec.cpuWorkers[{i}].resources.{what}.{key}: {:?} is not a quantity (write it like 500m, 2 or 4Gi)",
                            reconcile::bounded(&value.0)
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The checks of admission that derived names rely on, again: a Pool
/// stored before they existed must not make names that collide or that
/// the API server refuses.
fn check_names(pool: &str, spec: &PoolSpec) -> Result<(), Blocked> {
    let label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && !s.contains("--")
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !label(pool, names::POOL_NAME_MAX) {
        return Err(Blocked::Invalid {
            reason: "InvalidName",
            message: format!(
                "metadata.name: a Pool name must be at most {} characters of lowercase letters, digits and '-' (no '.', no '--'); recreate the Pool under such a name",
                names::POOL_NAME_MAX
            ),
        });
    }
    for tier in &spec.tiers {
        let clash = spec.cpu_workers.iter().any(|w| w.name == tier.name);
        if names::tier(pool, &tier.name).len() > names::DNS_LABEL_MAX || clash {
            return Err(Blocked::Invalid {
                reason: "InvalidName",
                message: format!(
                    "spec.tiers[].name {:?}: the tier's Service is named <pool>--<tier>, so the Pool name and the tier name together must be at most {} characters, and no cpuWorkers[].name may equal it",
                    tier.name,
                    names::DNS_LABEL_MAX - 2
                ),
            });
        }
    }
    for set in spec.cpu_workers.iter().map(|w| w.name.as_str()) {
        // A set name may contain `--`: the pool part before it cannot.
        if set.is_empty()
            || set.len() > names::CPU_WORKER_SET_MAX
            || !set
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Blocked::Invalid {
                reason: "InvalidName",
                message: format!(
                    "spec.cpuWorkers[].name {set:?} must be at most {} characters of lowercase letters, digits and '-'",
                    names::CPU_WORKER_SET_MAX
                ),
            });
        }
    }
    Ok(())
}

fn npu_backend(name: &str, server: Option<&NpuServer>, pool: &str) -> NpuBackend {
    let server = server.filter(|s| s.spec.pool_ref.name == pool);
    NpuBackend {
        name: name.into(),
        deployment: names::npu_server(name),
        port: server.map_or(crate::api::npu_server::defaults::port(), |s| s.spec.port),
        required: server.map(|s| s.spec.min_healthy_replicas),
    }
}
