//! The mechanism every kind's reconcile shares: the context (client,
//! caches, event recorder), typed errors and the error policy, server-side
//! apply with orphan pruning, status writes and Events.
//!
//! Each kind's reconcile is the same pipeline, visible in its module:
//! dereference → validate into a typed value → build the desired objects
//! (pure) → [`apply::sync`] → status ([`status::write`]).

pub mod apply;
pub mod context;
pub mod status;

use std::time::Duration;

pub use context::Context;
use kube::runtime::{controller::Action, events::EventType};

/// The one field manager the operator applies with.
pub const MANAGER: &str = "cellule-operator";

/// Labels the operator puts on everything it makes.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// UID of the custom resource that owns the object: what orphan pruning selects on.
    pub const OWNER_UID: &str = "cellule.ai/owner-uid";
    /// The Pool a pod belongs to: what the NetworkPolicies select on.
    pub const POOL: &str = "cellule.ai/pool";
    /// The selector of every watch on owned objects.
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=cellule-operator";
}

/// What went wrong in a reconcile. Problems with the user's spec or its
/// references are not errors: they become a `Stalled` condition and the
/// reconcile waits for a change. These are the failures worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A stable PascalCase reason for Events and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Serialize { .. } => "SerializationError",
            Error::MissingMetadata(_) => "MissingMetadata",
            Error::Finalizer(_) => "FinalizerError",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Ends a reconcile of `obj`: resets its backoff on success, records a
/// Warning Event on failure.
pub async fn finish<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    result: Result<Action>,
) -> Result<Action> {
    match &result {
        Ok(_) => {
            ctx.succeeded(obj);
            let meta = obj.meta();
            let (name, namespace) = (
                meta.name.as_deref().unwrap_or_default(),
                meta.namespace.as_deref().unwrap_or_default(),
            );
            tracing::debug!(kind = %K::kind(&()), %name, %namespace, "reconciled");
        }
        Err(error) => {
            ctx.event(
                obj,
                EventType::Warning,
                error.reason(),
                "Reconcile",
                error.to_string(),
            )
            .await;
        }
    }
    result
}

/// One Normal Event per object created, updated or deleted.
pub async fn report_changes<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    changes: &[apply::Change],
) {
    for change in changes {
        tracing::info!(kind = %change.kind, name = %change.name, verb = ?change.verb, "applied");
        let note = format!("{:?} {} {}", change.verb, change.kind, change.name);
        ctx.event(obj, EventType::Normal, &change.reason(), "Apply", note)
            .await;
    }
}

/// The error policy of every controller: log, then back off per object.
pub fn error_policy<K: kube::Resource<DynamicType = ()> + kube::ResourceExt>(
    obj: std::sync::Arc<K>,
    error: &Error,
    ctx: std::sync::Arc<Context>,
) -> Action {
    let failures = ctx.failed(obj.as_ref());
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), %error, failures, "reconcile failed");
    backoff(failures)
}

/// Retry with per-object exponential backoff (1s, 2s, 4s … capped at 5 min):
/// kube-runtime has none by default.
pub fn backoff(failures: u32) -> Action {
    let secs = 1u64 << failures.min(8);
    Action::requeue(Duration::from_secs(secs.min(300)))
}
