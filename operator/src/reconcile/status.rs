//! Status writes: a server-side-apply patch of the status subresource under
//! the operator's field manager, sent only when the status changed.

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
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
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
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}
