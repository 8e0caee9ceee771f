//! Dereference and validate a Pool: look up what it points to and turn it
//! into a [`ValidPool`], or say what is missing.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::ResourceExt;

use crate::{
    api::{
        NpuServer, Pool,
        pool::{ModelTier, TierBackend},
    },
    conditions,
    images::{self, ResolvedImage},
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
}

/// The NpuServer behind an NPU tier, as seen now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpuBackend {
    pub name: String,
    /// Its Service name and port, where the pool reaches it.
    pub service: String,
    pub port: i32,
    pub state: NpuState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpuState {
    Healthy,
    Unhealthy,
    /// No NpuServer of that name, or it belongs to another pool.
    Missing,
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
    pub image: ResolvedImage,
    pub tiers: Vec<Tier>,
    /// The one database destination the pool's egress allows.
    pub database: NetworkPolicyPeer,
}

/// Validates `pool` against what it references (pure given `refs`).
pub fn validate(pool: &Pool, refs: &impl References) -> Result<ValidPool, Blocked> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let spec = &pool.spec;
    check_names(&name, spec.cpu_workers.iter().map(|w| w.name.as_str()))?;
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
    let tiers = spec
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
        .collect();
    Ok(ValidPool {
        name,
        namespace,
        image: images::resolve(&spec.image),
        tiers,
        database,
        pool: pool.clone(),
    })
}

/// Every worker resource is a quantity the API server accepts (`4GB` is
/// not): said here with the field's path rather than as a refused apply.
fn check_quantities(spec: &crate::api::PoolSpec) -> Result<(), Blocked> {
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
fn check_names<'a>(pool: &str, sets: impl Iterator<Item = &'a str>) -> Result<(), Blocked> {
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
    for set in sets {
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
    let state = match server {
        None => NpuState::Missing,
        Some(s) => {
            let healthy = s
                .status
                .as_ref()
                .and_then(|st| conditions::get(&st.common.conditions, crate::npu_server::HEALTHY))
                .is_some_and(|c| c.status == "True");
            if healthy {
                NpuState::Healthy
            } else {
                NpuState::Unhealthy
            }
        }
    };
    NpuBackend {
        name: name.into(),
        service: crate::npu_server::component_name(name),
        port: server.map_or(crate::api::npu_server::defaults::port(), |s| s.spec.port),
        state,
    }
}
