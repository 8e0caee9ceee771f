//! Dereference and validate a Pool: look up what it points to and turn it
//! into a [`ValidPool`], or say what is missing.

use kube::{ResourceExt, runtime::reflector::ObjectRef};

use crate::{
    api::{
        NpuServer, Pool,
        pool::{ModelTier, TierBackend},
    },
    conditions,
    images::{self, ResolvedImage},
    reconcile::{Context, context::secret_exists},
};

/// Why the pool cannot be rendered until something changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    SecretMissing {
        reason: &'static str,
        what: &'static str,
        name: String,
    },
}

impl Blocked {
    pub fn reason(&self) -> &'static str {
        match self {
            Blocked::SecretMissing { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Blocked::SecretMissing { what, name, .. } => {
                format!(
                    "{what} Secret {name:?} does not exist in this namespace; the pool starts once it is created"
                )
            }
        }
    }
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
}

pub fn validate(pool: &Pool, ctx: &Context) -> Result<ValidPool, Blocked> {
    let namespace = pool.namespace().unwrap_or_default();
    let spec = &pool.spec;
    for (reason, what, name) in [
        (
            "DatabaseSecretMissing",
            "database",
            &spec.database.dsn_secret_ref.name,
        ),
        ("TlsSecretMissing", "TLS", &spec.tls.name),
    ] {
        if !secret_exists(ctx, &namespace, name) {
            return Err(Blocked::SecretMissing {
                reason,
                what,
                name: name.clone(),
            });
        }
    }
    let tiers = spec
        .tiers
        .iter()
        .map(|tier| Tier {
            spec: tier.clone(),
            npu: match (tier.backend, &tier.npu_server_ref) {
                (TierBackend::Npu, Some(reference)) => {
                    let server = ctx
                        .npu_servers
                        .get(&ObjectRef::new(&reference.name).within(&namespace));
                    Some(npu_backend(
                        &reference.name,
                        server.as_deref(),
                        &pool.name_any(),
                    ))
                }
                _ => None,
            },
        })
        .collect();
    Ok(ValidPool {
        name: pool.name_any(),
        namespace,
        image: images::resolve(&spec.image),
        tiers,
        pool: pool.clone(),
    })
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
