//! Server-side apply of the desired objects, skipping what is already as
//! desired, then deletion of what this owner made before and no longer wants.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Error, MANAGER, Result, labels};

/// The sync of everything one owner wants in its namespace, kind by kind,
/// collecting what changed.
pub struct OwnerSync<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    owner_uid: String,
    pub changes: Vec<Change>,
}

impl<'a> OwnerSync<'a> {
    pub fn new(client: &'a kube::Client, namespace: &'a str, owner_uid: String) -> Self {
        Self {
            client,
            namespace,
            owner_uid,
            changes: Vec::new(),
        }
    }

    /// Applies `desired` (every object of kind `K` the owner wants) and
    /// deletes the ones of that kind it owned before and no longer wants.
    pub async fn kind<K>(&mut self, store: &Store<K>, desired: Vec<K>) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        sync(
            self.client,
            store,
            self.namespace,
            &self.owner_uid,
            desired,
            &mut self.changes,
        )
        .await
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

/// Applies `desired` (all objects of kind `K` that `owner_uid` wants in
/// `namespace`) and deletes the ones it owned before and no longer wants.
/// An object whose live copy already holds every desired field is not
/// written: a no-op reconcile makes no request at all.
async fn sync<K>(
    client: &kube::Client,
    store: &Store<K>,
    namespace: &str,
    owner_uid: &str,
    desired: Vec<K>,
    changes: &mut Vec<Change>,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&()).into_owned();
    let mut wanted = BTreeSet::new();
    for object in desired {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingMetadata("name"))?;
        let live = store.get(&ObjectRef::new(&name).within(namespace));
        let desired_value = to_value(&object)?;
        match &live {
            Some(live) if contains(&to_value(live.as_ref())?, &desired_value) => {}
            _ => {
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await?;
                let verb = if live.is_some() {
                    Verb::Updated
                } else {
                    Verb::Created
                };
                changes.push(Change {
                    verb,
                    kind: kind.clone(),
                    name: name.clone(),
                });
            }
        }
        wanted.insert(name);
    }
    let orphans = store.state_filter(|o| {
        o.namespace().as_deref() == Some(namespace)
            && o.labels().get(labels::OWNER_UID).map(String::as_str) == Some(owner_uid)
            && !wanted.contains(&o.name_any())
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

fn to_value<T: Serialize>(object: &T) -> Result<Value> {
    serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: "an owned object",
        source,
    })
}

/// Whether `live` holds every field of `desired` with the same value (the
/// API server adds defaults and status, which do not count). Lists must
/// match element by element.
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
    fn empty_desired_collections_match_absent_ones() {
        assert!(contains(
            &json!({"metadata": {}}),
            &json!({"metadata": {"annotations": {}}, "spec": {"args": []}})
        ));
    }
}
