//! The mechanism every kind's reconcile shares: the context (client,
//! caches, event recorder), typed errors and the error policy, server-side
//! apply with orphan pruning, status writes and Events.
//!
//! Each kind's reconcile is the same pipeline, visible in its module:
//! dereference → validate into a typed value → build the desired objects
//! (pure) → [`apply::sync`] → status ([`status::write`]).

pub mod apply;
pub mod context;
pub mod quantity;
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
/// reconcile waits for a change. These are the failures worth a retry;
/// [`Error::stall`] tells the ones only a person can resolve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {}", api_message(.0))]
    Kube(#[from] kube::Error),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    #[error("{0} seconds since the epoch is outside the range of a timestamp")]
    TimeOutOfRange(i64),
    #[error("finalizer: {}", finalizer_message(.0))]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The name of an object the owner wants is taken by an object it did
    /// not make (a person's, or another owner's): it is left untouched.
    #[error(
        "{kind} {name:?} already exists and belongs to {by}: it is left untouched; rename or delete one of them"
    )]
    NameConflict {
        kind: String,
        name: String,
        by: String,
    },
    /// The API server refused an object built from the spec (a value it
    /// does not accept): only a change of the spec helps.
    #[error("the API server refused {kind} {name:?}: {message}")]
    ApplyRefused {
        kind: String,
        name: String,
        message: String,
    },
    /// An object the operator keeps its own state in cannot be read (a
    /// hand edit, a rollback): nothing is written over it.
    #[error(
        "{kind} {name:?}: {key} cannot be read; it is left as it is (restore it, or delete the {kind} to start over)"
    )]
    Unreadable {
        kind: &'static str,
        name: String,
        key: &'static str,
    },
    /// An image is refused (unsigned, wrongly signed, unreachable): what
    /// runs is left as it is, the status says why, and it is tried again
    /// with backoff (a signature may be pushed, the registry come back).
    #[error("{message}")]
    ImageRefused {
        reason: &'static str,
        message: String,
        /// A time (seconds) the object must be looked at again by, backoff
        /// or not: the end of a fail-over hold.
        retry_by: Option<i64>,
    },
}

impl Error {
    /// A stable PascalCase reason for conditions, Events and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Serialize { .. } => "SerializationError",
            Error::MissingMetadata(_) => "MissingMetadata",
            Error::TimeOutOfRange(_) => "TimeOutOfRange",
            Error::Finalizer(_) => "FinalizerError",
            Error::NameConflict { .. } => "NameConflict",
            Error::ApplyRefused { .. } => "ApplyFailed",
            Error::Unreadable { .. } => "StateUnreadable",
            Error::ImageRefused { reason, .. } => reason,
        }
    }

    /// Classifies a failed apply: what the server refuses as invalid or
    /// forbidden by policy is the spec's problem; the rest is transient.
    pub fn apply(kind: &str, name: &str, error: kube::Error) -> Error {
        match &error {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 413 | 422) => {
                Error::ApplyRefused {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    message: status.message.clone(),
                }
            }
            _ => Error::Kube(error),
        }
    }

    /// An error that only a change by a person resolves: the object gets
    /// `Stalled` with this reason and message instead of a bare retry.
    pub fn stall(&self) -> Option<(&'static str, String)> {
        matches!(
            self,
            Error::NameConflict { .. } | Error::ApplyRefused { .. } | Error::Unreadable { .. }
        )
        .then(|| (self.reason(), bounded(&self.to_string())))
    }

    /// A write from a stale copy (409 Conflict, or the 422 a stale
    /// finalizer patch gets): the next reconcile, from a fresher copy,
    /// resolves it, so it is retried without a Warning.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        let api_conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        match self {
            Error::Kube(e) => api_conflict(e),
            Error::Finalizer(f) => match f.as_ref() {
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => {
                    api_conflict(e) || matches!(e, kube::Error::Api(s) if s.code == 422)
                }
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The server's own words for an API error, not a `Debug` dump.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

fn finalizer_message(error: &kube::runtime::finalizer::Error<Error>) -> String {
    use kube::runtime::finalizer::Error as F;
    match error {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e.to_string(),
        F::AddFinalizer(e) | F::RemoveFinalizer(e) => {
            format!("updating the finalizer: {}", api_message(e))
        }
        other => other.to_string(),
    }
}

/// The instant `secs` seconds after the epoch.
pub fn at(secs: i64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second(secs).map_err(|_| Error::TimeOutOfRange(secs))
}

/// Longest condition message or Event note the operator writes: the API
/// refuses Event notes over 1,024 bytes.
pub const MESSAGE_MAX: usize = 1000;

/// `message` cut to [`MESSAGE_MAX`] bytes at a character boundary.
pub fn bounded(message: &str) -> String {
    if message.len() <= MESSAGE_MAX {
        return message.to_owned();
    }
    let mut end = MESSAGE_MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
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
        // A conflict is a stale copy: retried, not worth a Warning.
        Err(error) if error.is_conflict() => {
            tracing::debug!(%error, "conflict, retrying");
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

/// Reconcile again at `at` (seconds since the epoch) exactly, not a
/// fraction of a second late (a handshake's end, a hold's); a second from
/// `now` when that time has come already.
pub fn requeue_at(at: i64, now: jiff::Timestamp) -> Action {
    let ahead = at.saturating_sub(now.as_second());
    if ahead <= 0 {
        return Action::requeue(Duration::from_secs(1));
    }
    let exact = jiff::Timestamp::from_second(at)
        .ok()
        .and_then(|at| Duration::try_from(at.duration_since(now)).ok());
    Action::requeue(exact.unwrap_or(Duration::from_secs(ahead as u64)))
}

/// Whether `obj` is being deleted: what becomes of its objects is then the
/// garbage collector's (a cascade, or an orphaning, which applying them
/// again with their owner reference would undo).
pub fn deleting<K: kube::Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// A delete's outcome: gone already counts as done.
pub fn gone<T>(deleted: kube::Result<T>) -> Result<()> {
    match deleted {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The error policy of every controller: log, then back off per object.
pub fn error_policy<K: kube::Resource<DynamicType = ()> + kube::ResourceExt>(
    obj: std::sync::Arc<K>,
    error: &Error,
    ctx: std::sync::Arc<Context>,
) -> Action {
    let failures = ctx.failed(obj.as_ref());
    if error.is_conflict() {
        // Soon: the cache is about to catch up (still bounded, in case not).
        let millis = 100u64 << failures.min(11);
        return Action::requeue(Duration::from_millis(millis.min(300_000)));
    }
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), %error, failures, "reconcile failed");
    match error {
        // A registry back, a signature pushed: seen within a minute; a
        // hold time that ends sooner, at its end.
        Error::ImageRefused { retry_by, .. } => {
            let by = retry_by.map(|at| {
                Duration::from_secs((at - jiff::Timestamp::now().as_second()).max(1) as u64)
            });
            backoff(
                failures,
                by.map_or(IMAGE_RETRY_MAX, |by| by.min(IMAGE_RETRY_MAX)),
            )
        }
        _ => backoff(failures, RETRY_MAX),
    }
}

const RETRY_MAX: Duration = Duration::from_secs(300);
const IMAGE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Retry with per-object exponential backoff (1s, 2s, 4s … up to `max`):
/// kube-runtime has none by default.
pub fn backoff(failures: u32, max: Duration) -> Action {
    let secs = 1u64 << failures.min(16);
    Action::requeue(Duration::from_secs(secs).min(max))
}

#[cfg(test)]
mod requeue_tests {
    use super::*;

    #[test]
    fn a_requeue_lands_on_the_second_not_a_fraction_after() {
        let now = jiff::Timestamp::from_millisecond(100_300).unwrap();
        assert_eq!(
            requeue_at(101, now),
            Action::requeue(Duration::from_millis(700))
        );
        assert_eq!(
            requeue_at(160, now),
            Action::requeue(Duration::from_millis(59_700))
        );
        // Due already (or this very second): soon, never at once.
        assert_eq!(
            requeue_at(100, now),
            Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(
            requeue_at(i64::MIN, now),
            Action::requeue(Duration::from_secs(1))
        );
        // Beyond what a timestamp holds: far away, not soon.
        assert_eq!(
            requeue_at(i64::MAX, now),
            Action::requeue(Duration::from_secs((i64::MAX - 100) as u64))
        );
    }
}
