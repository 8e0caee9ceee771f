//! Server-side apply of the desired objects, skipping what is already as
//! desired, then deletion of what this owner made before and no longer wants.
//! Only objects labelled with the owner's UID are ever written or deleted.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use super::{Error, MANAGER, Result, labels, quantity};

/// A namespaced kind the operator makes and caches.
pub trait Owned:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
{
}

impl<K> Owned for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
{
}

/// The sync of everything one owner wants in its namespace, kind by kind,
/// collecting what changed. A kind that fails does not stop the next
/// ones (a refused Deployment must not keep a removed ingress rule
/// alive): the first error is kept for [`OwnerSync::finish`].
pub struct OwnerSync<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    owner_uid: String,
    /// Names never pruned: objects another part of the reconcile deletes
    /// once it has read them.
    kept: BTreeSet<String>,
    changes: Vec<Change>,
    failed: Option<Error>,
}

impl<'a> OwnerSync<'a> {
    pub fn new(client: &'a kube::Client, namespace: &'a str, owner_uid: String) -> Self {
        Self {
            client,
            namespace,
            owner_uid,
            kept: BTreeSet::new(),
            changes: Vec::new(),
            failed: None,
        }
    }

    /// Never prunes an object named `name`, of any kind.
    pub fn keep(mut self, name: String) -> Self {
        self.kept.insert(name);
        self
    }

    /// What changed, and the first failure if any kind failed.
    pub fn finish(self) -> (Vec<Change>, Result<()>) {
        (self.changes, self.failed.map_or(Ok(()), Err))
    }

    /// Applies `desired` (every object of kind `K` the owner wants) and
    /// deletes the ones of that kind it owned before and no longer wants.
    pub async fn kind<K: Owned>(&mut self, store: &Store<K>, desired: Vec<K>) {
        self.run(store, desired, true).await;
    }

    /// Applies `desired`, some of the objects of kind `K` the owner wants,
    /// and deletes nothing.
    pub async fn some<K: Owned>(&mut self, store: &Store<K>, desired: Vec<K>) {
        self.run(store, desired, false).await;
    }

    async fn run<K: Owned>(&mut self, store: &Store<K>, desired: Vec<K>, prune: bool) {
        let result = sync(
            self.client,
            store,
            self.namespace,
            &self.owner_uid,
            desired,
            prune.then_some(&self.kept),
            &mut self.changes,
        )
        .await;
        if let Err(error) = result {
            self.failed.get_or_insert(error);
        }
    }
}

/// What a sync did to one object, for Events and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub verb: Verb,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Created,
    Updated,
    Deleted,
}

impl Change {
    pub fn reason(&self) -> String {
        format!("{}{:?}", self.kind, self.verb)
    }
}

/// Annotation holding the SHA-256 of the object as last applied: a
/// desired object whose hash differs was changed by us (including a field
/// we stopped setting, which server-side apply then removes).
pub const APPLIED_HASH: &str = "cellule.ai/applied-sha256";

/// Applies `desired` (all objects of kind `K` that `owner_uid` wants in
/// `namespace`) and deletes the ones it owned before and no longer wants.
///
/// An object is written when its hash differs from the one recorded at
/// the last apply (a field was added, changed or removed) or when the live
/// copy lost a desired value (drift); otherwise not at all, so a no-op
/// reconcile makes no request. An object of that name that this owner did
/// not make is never written: [`Error::NameConflict`].
async fn sync<K: Owned>(
    client: &kube::Client,
    store: &Store<K>,
    namespace: &str,
    owner_uid: &str,
    desired: Vec<K>,
    prune_except: Option<&BTreeSet<String>>,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&()).into_owned();
    let mut wanted = BTreeSet::new();
    for mut object in desired {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingMetadata("name"))?;
        let hash = hash(&object)?;
        object
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_HASH.into(), hash.clone());
        let live = store.get(&ObjectRef::new(&name).within(namespace));
        let foreign = match &live {
            Some(live) => foreign_containers(&to_value(live.as_ref())?, &to_value(&object)?),
            None => false,
        };
        if let Some(live) = &live
            && live.annotations().get(APPLIED_HASH) == Some(&hash)
            && owner_uid_of(live.meta()) == Some(owner_uid)
            && !foreign
            && contains(&to_value(live.as_ref())?, &to_value(&object)?)
        {
            wanted.insert(name);
            continue;
        }
        let exists = ensure_ours(&api, live.as_deref(), &name, owner_uid).await?;
        let written = if foreign && let Some(live) = &live {
            // A container someone else added belongs to their field
            // manager, and server-side apply would leave it: the object
            // is replaced whole, at the version read (a conflict retries).
            let mut replacement = object.clone();
            replacement.meta_mut().resource_version = live.resource_version();
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            api.replace(&name, &params, &replacement).await
        } else {
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
        };
        written.map_err(|error| Error::apply(&kind, &name, error))?;
        changes.push(Change {
            verb: if exists { Verb::Updated } else { Verb::Created },
            kind: kind.clone(),
            name: name.clone(),
        });
        wanted.insert(name);
    }
    let Some(kept) = prune_except else {
        return Ok(());
    };
    let orphans = store.state_filter(|o| {
        o.namespace().as_deref() == Some(namespace)
            && o.labels().get(labels::OWNER_UID).map(String::as_str) == Some(owner_uid)
            && !wanted.contains(&o.name_any())
            && !kept.contains(&o.name_any())
    });
    for orphan in orphans {
        let name = orphan.name_any();
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => changes.push(Change {
                verb: Verb::Deleted,
                kind: kind.clone(),
                name,
            }),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn owner_uid_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()?
        .get(labels::OWNER_UID)
        .map(String::as_str)
}

/// Before a write of `name`: whether it exists, and an error if it is not
/// this owner's. `cached` is the copy from the cache of labelled objects;
/// when that has none, the API server is asked (a person's object of that
/// name is not in the cache, and the cache may lag a create).
pub async fn ensure_ours<K>(
    api: &Api<K>,
    cached: Option<&K>,
    name: &str,
    owner_uid: &str,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&());
    match cached {
        Some(live) => check_owner(&kind, name, live.meta(), owner_uid).map(|()| true),
        None => match api.get_metadata_opt(name).await? {
            Some(live) => check_owner(&kind, name, &live.metadata, owner_uid).map(|()| true),
            None => Ok(false),
        },
    }
}

/// Refuses to write over an object this owner did not make: a person's
/// object of the same name, or another owner's.
fn check_owner(kind: &str, name: &str, live: &ObjectMeta, owner_uid: &str) -> Result<()> {
    if owner_uid_of(live) == Some(owner_uid) {
        return Ok(());
    }
    let by = match live
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    {
        Some(owner) => format!("{} {:?}", owner.kind, owner.name),
        None => "someone else (it has no owner of ours)".into(),
    };
    Err(Error::NameConflict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        by,
    })
}

/// SHA-256 (hex) of the object's JSON, as it is before the hash annotation
/// is added. serde_json writes struct fields in declaration order and maps
/// (BTreeMap) sorted, so the same object always gives the same hash.
/// Whether `object` is on the API server as last applied (per the cache):
/// applying it would change nothing the operator wrote.
pub fn is_current<K: Owned>(store: &Store<K>, object: &K) -> Result<bool> {
    let name = object.meta().name.clone().unwrap_or_default();
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let live = store.get(&ObjectRef::new(&name).within(&namespace));
    let hash = hash(object)?;
    Ok(live.is_some_and(|live| live.annotations().get(APPLIED_HASH) == Some(&hash)))
}

fn hash<T: Serialize>(object: &T) -> Result<String> {
    let bytes = serde_json::to_vec(object).map_err(|source| Error::Serialize {
        what: "an owned object",
        source,
    })?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

fn to_value<T: Serialize>(object: &T) -> Result<Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: "an owned object",
        source,
    })
}

/// Whether the live pod template (of a Deployment) runs a container or an
/// init container the desired one does not: someone else's sidecar, which
/// no image verification vouches for.
pub fn foreign_containers(live: &Value, desired: &Value) -> bool {
    let names = |object: &Value, list: &str| -> BTreeSet<String> {
        object
            .pointer(&format!("/spec/template/spec/{list}"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .any(|list| !names(live, list).is_subset(&names(desired, list)))
}

/// Whether `live` holds every field of `desired` with the same value (the
/// API server adds defaults and status, which do not count). Lists must
/// match element by element; quantities compare by value (`0.5` = `500m`).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match live.get(key) {
                Some(have) => contains(have, want),
                None => is_empty(want),
            })
        }
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| contains(have, want))
        }
        (Value::Number(have), Value::Number(want)) => have.as_f64() == want.as_f64(),
        (Value::String(have), Value::String(want)) => have == want || quantity::same(have, want),
        (have, want) => have == want,
    }
}

/// Empty maps and lists (and maps of only those) are dropped by the API
/// server; asking for one is the same as not asking.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(list) => list.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_container_the_desired_template_lacks_is_foreign() {
        let desired = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "a"}]}}}});
        let same = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "b"}]}}}});
        assert!(!foreign_containers(&same, &desired));
        for extra in [
            json!({"spec": {"template": {"spec": {"containers": [{"name": "main"}, {"name": "sidecar"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "main"}], "initContainers": [{"name": "x"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "main"}], "ephemeralContainers": [{"name": "debug"}]}}}}),
        ] {
            assert!(foreign_containers(&extra, &desired), "{extra}");
        }
        // Objects without a pod template have none.
        assert!(!foreign_containers(
            &json!({"data": {"a": "b"}}),
            &json!({"data": {}})
        ));
    }

    #[test]
    fn defaults_added_by_the_api_server_do_not_count() {
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10, "ports": [{"port": 80, "protocol": "TCP"}]}});
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_counts() {
        let live = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
        assert!(!contains(&live, &json!({"spec": {"replicas": 2}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}})
        ));
        assert!(!contains(&live, &json!({"spec": {"paused": true}})));
    }

    #[test]
    fn quantities_compare_by_value() {
        let live = json!({"limits": {"cpu": "500m", "memory": "1Gi"}});
        assert!(contains(
            &live,
            &json!({"limits": {"cpu": "0.5", "memory": "1024Mi"}})
        ));
        assert!(!contains(&live, &json!({"limits": {"cpu": "0.6"}})));
    }

    #[test]
    fn the_hash_sees_a_removed_field() {
        let with = json!({"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}});
        let without = json!({"spec": {}});
        assert_ne!(hash(&with).unwrap(), hash(&without).unwrap());
        // What `contains` alone could not see:
        assert!(contains(&with, &without));
    }

    #[test]
    fn an_object_without_our_owner_label_is_a_conflict() {
        let mut meta = ObjectMeta::default();
        assert!(matches!(
            check_owner("Service", "x", &meta, "uid-1"),
            Err(Error::NameConflict { .. })
        ));
        meta.labels = Some([(labels::OWNER_UID.to_owned(), "uid-2".to_owned())].into());
        assert!(check_owner("Service", "x", &meta, "uid-1").is_err());
        meta.labels = Some([(labels::OWNER_UID.to_owned(), "uid-1".to_owned())].into());
        assert!(check_owner("Service", "x", &meta, "uid-1").is_ok());
    }

    #[test]
    fn empty_desired_collections_match_absent_ones() {
        assert!(contains(
            &json!({"metadata": {}}),
            &json!({"metadata": {"annotations": {}}, "spec": {"args": []}})
        ));
    }
}
