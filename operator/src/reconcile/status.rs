//! Status writes: a server-side-apply patch of the status subresource under
//! the operator's field manager, at the resourceVersion read, sent only
//! when the status changed.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Error, MANAGER, Result};

/// Writes `status` on `obj` unless it already has exactly that status.
/// Returns whether a write was made.
pub async fn write<K, S>(
    client: &kube::Client,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Conditions,
{
    Ok(commit(client, obj, current, status).await?.is_some())
}

/// [`write`], returning `obj` as written (with its new resourceVersion) when
/// a write was made: what a second write in the same reconcile is made at.
pub async fn commit<K, S>(
    client: &kube::Client,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Conditions,
{
    if current == Some(status) {
        return Ok(None);
    }
    tracing::debug!(
        before = %serde_json::to_string(&current).unwrap_or_default(),
        after = %serde_json::to_string(status).unwrap_or_default(),
        "status changed"
    );
    let api: Api<K> = Api::namespaced(
        client.clone(),
        &obj.namespace().ok_or(Error::MissingMetadata("namespace"))?,
    );
    // At the resourceVersion the status was computed from: a reconcile
    // working from a stale copy fails with a conflict (and runs again)
    // instead of writing over a newer status, e.g. a just-issued token.
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if S::AT_RESOURCE_VERSION
        && let Some(version) = obj.resource_version()
    {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Some(written))
}

/// A status that carries the conditions every kind shares.
pub trait Conditions: Serialize + PartialEq {
    /// Whether it is written at the resourceVersion it was computed from.
    /// A status whose every field the reconcile recomputes from the caches
    /// needs no such precondition (and would lose races it need not).
    const AT_RESOURCE_VERSION: bool = true;

    fn common_mut(&mut self) -> &mut crate::api::common::CommonStatus;
}

// A Pool's status carries its routing, decided from the routing it
// recorded before (`tiers[].since`, what served each tier): a reconcile
// from a stale copy must not decide a switch again, or write an older
// one back.
impl Conditions for crate::api::PoolStatus {
    fn common_mut(&mut self) -> &mut crate::api::common::CommonStatus {
        &mut self.common
    }
}

impl Conditions for crate::api::NpuServerStatus {
    fn common_mut(&mut self) -> &mut crate::api::common::CommonStatus {
        &mut self.common
    }
}

// Carries the reputation baseline and a downgrade, which only the status
// remembers: a stale copy must not write them away.
impl Conditions for crate::api::PeerTrustStatus {
    fn common_mut(&mut self) -> &mut crate::api::common::CommonStatus {
        &mut self.common
    }
}

impl Conditions for crate::api::WorkerGrantStatus {
    fn common_mut(&mut self) -> &mut crate::api::common::CommonStatus {
        &mut self.common
    }
}

/// Records that `obj` cannot progress until something changes: `Stalled`
/// (and `Ready=False`) with `reason` and `message` in `next`, written if
/// it changed, with a Warning Event then (so a retry does not repeat it).
pub async fn stall<K, S>(
    ctx: &super::Context,
    obj: &K,
    current: Option<&S>,
    mut next: S,
    reason: &'static str,
    message: String,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: Conditions,
{
    let message = super::bounded(&message);
    let generation = obj.meta().generation;
    let common = next.common_mut();
    common.observed_generation = generation;
    crate::conditions::set_summary(
        &mut common.conditions,
        crate::conditions::Summary::Stalled {
            reason,
            message: message.clone(),
        },
        generation,
        jiff::Timestamp::now(),
    );
    if write(&ctx.client, obj, current, &next).await? {
        ctx.event(
            obj,
            kube::runtime::events::EventType::Warning,
            reason,
            "Reconcile",
            message,
        )
        .await;
    }
    Ok(())
}

/// How often a stalled write is tried again.
pub const STALL_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Ends a reconcile whose writes failed: what only a person can resolve
/// (a name taken, a value the API server refuses) becomes `Stalled` and is
/// tried again every [`STALL_RETRY`]; the rest is an error to retry.
pub async fn stall_on<K, S>(
    ctx: &super::Context,
    obj: &K,
    next: S,
    error: super::Error,
) -> Result<kube::runtime::controller::Action>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + kube::core::object::HasStatus<Status = S>,
    S: Conditions + Clone,
{
    let Some((reason, message)) = error.stall() else {
        return Err(error);
    };
    tracing::warn!(name = %obj.name_any(), %error, "stalled");
    stall(ctx, obj, obj.status(), next, reason, message).await?;
    // Looked at again at a steady pace: the fix may come from outside our
    // watches (a person deletes their object, an admission policy is lifted).
    Ok(kube::runtime::controller::Action::requeue(STALL_RETRY))
}
