//! A pool's revocation store as its verifiers read it: `RevocationList`
//! objects (`cellule.ai/v1alpha1`), labelled `cellule.ai/pool=<pool>`,
//! written by the operator alone.
//!
//! Each list holds the revoked tokens (`jti`, `exp`) whose `exp` falls in
//! one time bucket ending at `spec.expiresAt`, a few hundred per object (a full bucket continues in the next part). Entries are
//! only ever appended; a list is deleted whole once `expiresAt` (plus the
//! leeway) has passed, when none of its tokens verifies anyway. So a
//! revocation writes one small object whatever the pool's size, and a
//! verifier may keep the union of every version of every list it has
//! seen: an older copy can never un-revoke anything.

use std::collections::{BTreeMap, HashMap, HashSet};

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The label naming a list's pool (what a verifier selects by).
pub const POOL_LABEL: &str = "cellule.ai/pool";

/// Hard bound on a list's entries, enforced by the API server; the
/// operator starts a new part long before ([`PART_CAPACITY`]).
pub const MAX_ENTRIES: usize = 5000;

/// Entries the operator puts in one list before it starts the next part:
/// about 12 KB, what each revocation rewrites on the API server. The
/// API server's cost of an append grows with the object (measured: about
/// 86 ms at p50 per append to a 1,000-entry list under a mass revocation),
/// while the object count only grows by one per part.
pub const PART_CAPACITY: usize = 250;

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "RevocationList",
    namespaced,
    doc = "Revoked worker tokens of one pool whose expiry falls before spec.expiresAt, written by the operator alone and read by the pool's verifiers.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "ExpiresAt", type_ = "integer", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.entries.all(e, e.exp <= self.expiresAt)").message("every entry's exp must be at most spec.expiresAt"))]
/// Revoked tokens of one pool, in one time bucket.
pub struct RevocationListSpec {
    /// The pool whose tokens these are.
    #[schemars(length(min = 1, max = 63))]
    pub pool: String,
    /// Unix seconds: no entry's `exp` is later. The list is deleted once
    /// this (plus the verification leeway) has passed.
    pub expires_at: i64,
    /// The revoked tokens, in the order they were revoked.
    #[serde(default)]
    #[schemars(length(max = 5000))]
    pub entries: Vec<RevokedToken>,
}

/// One revoked token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RevokedToken {
    /// The token's `jti`.
    #[schemars(regex(pattern = "^[-._A-Za-z0-9]{1,253}$"))]
    pub jti: String,
    /// The token's `exp` (Unix seconds): it is refused anyway after that.
    pub exp: i64,
}

/// The union of a pool's revocation lists, kept current from their
/// versions as they arrive in any order: entries seen in any version of a
/// list stay until the list is deleted. Lists are told apart by uid, so a
/// late deletion of one never touches another of the same name.
#[derive(Debug, Default)]
pub struct Revoked {
    /// jti → (exp, how many lists hold it).
    entries: HashMap<String, (i64, u32)>,
    /// List uid → what it holds.
    lists: HashMap<String, Held>,
    /// Counts applies: tells lists seen before a full read from later ones.
    applied: u64,
}

#[derive(Debug)]
struct Held {
    jtis: HashSet<String>,
    first_applied: u64,
    resource_version: Option<String>,
}

/// How [`Revoked`] tells lists apart: the uid (the name for a list that
/// has none, as in a file).
pub fn list_key(meta: &kube::api::ObjectMeta) -> String {
    meta.uid
        .clone()
        .or_else(|| meta.name.clone())
        .unwrap_or_default()
}

impl Revoked {
    /// Takes in a version of `list` (older or newer than any seen).
    pub fn apply(&mut self, list: &RevocationList) {
        self.applied += 1;
        let held = self.lists.entry(list_key(&list.metadata)).or_insert(Held {
            jtis: HashSet::new(),
            first_applied: self.applied,
            resource_version: None,
        });
        held.resource_version = list.metadata.resource_version.clone();
        for entry in &list.spec.entries {
            if held.jtis.insert(entry.jti.clone()) {
                let slot = self
                    .entries
                    .entry(entry.jti.clone())
                    .or_insert((entry.exp, 0));
                slot.0 = slot.0.max(entry.exp);
                slot.1 += 1;
            }
        }
    }

    /// Forgets the list `key` (deleted).
    pub fn remove(&mut self, key: &str) {
        for jti in self.lists.remove(key).map(|h| h.jtis).unwrap_or_default() {
            if let Some(slot) = self.entries.get_mut(&jti) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    self.entries.remove(&jti);
                }
            }
        }
    }

    /// A mark to take before a full read (see [`Revoked::retain`]).
    pub fn mark(&self) -> u64 {
        self.applied
    }

    /// After a full read sent at `mark` returned the lists `keys`: forgets
    /// the lists it lacks that were seen before `mark` (deleted since). A
    /// list first seen after the mark may be newer than the read: kept.
    pub fn retain(&mut self, keys: &HashSet<String>, mark: u64) {
        let gone: Vec<String> = self
            .lists
            .iter()
            .filter(|(key, held)| held.first_applied <= mark && !keys.contains(*key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Whether the version `resource_version` of list `key` was applied
    /// last (so reading it again would add nothing).
    pub fn holds(&self, key: &str, resource_version: Option<&str>) -> bool {
        self.lists.get(key).is_some_and(|h| {
            resource_version.is_some() && h.resource_version.as_deref() == resource_version
        })
    }

    /// The `exp` of a revoked `jti`.
    pub fn get(&self, jti: &str) -> Option<i64> {
        self.entries.get(jti).map(|(exp, _)| *exp)
    }

    /// How many distinct tokens are revoked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every revoked `jti` with its `exp`.
    pub fn to_map(&self) -> BTreeMap<String, i64> {
        self.entries
            .iter()
            .map(|(jti, (exp, _))| (jti.clone(), *exp))
            .collect()
    }
}

/// The revocation data of `pool` in `json`: what `kubectl get
/// revocationlists -o json` prints (a `List`), or one list. Read strictly:
/// anything that is not a list of well-formed entries makes the whole
/// input unreadable, and a verifier then refuses every token (fail closed)
/// rather than skip an entry and accept the token it revokes. Lists of
/// other pools are left out.
pub fn parse_lists(json: &str, pool: &str) -> Result<Revoked, crate::jwt::VerifyError> {
    #[derive(Deserialize)]
    struct Items {
        items: Vec<RevocationList>,
    }
    let unreadable =
        |e: serde_json::Error| crate::jwt::VerifyError::RevocationsUnreadable(e.to_string());
    let value: serde_json::Value = serde_json::from_str(json).map_err(unreadable)?;
    let lists = if value.get("items").is_some() {
        serde_json::from_value::<Items>(value)
            .map_err(unreadable)?
            .items
    } else {
        vec![serde_json::from_value::<RevocationList>(value).map_err(unreadable)?]
    };
    let mut revoked = Revoked::default();
    for list in lists.iter().filter(|l| l.spec.pool == pool) {
        revoked.apply(list);
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(uid: &str, rv: &str, entries: &[(&str, i64)]) -> RevocationList {
        let mut list = RevocationList::new(
            "paris-revoked-1-0",
            RevocationListSpec {
                pool: "paris".into(),
                expires_at: 2_000_000_000,
                entries: entries
                    .iter()
                    .map(|(jti, exp)| RevokedToken {
                        jti: (*jti).into(),
                        exp: *exp,
                    })
                    .collect(),
            },
        );
        list.metadata.uid = Some(uid.into());
        list.metadata.resource_version = Some(rv.into());
        list
    }

    #[test]
    fn an_older_version_of_a_list_unrevokes_nothing() {
        let mut revoked = Revoked::default();
        revoked.apply(&list("a", "2", &[("x", 10), ("y", 20)]));
        revoked.apply(&list("a", "1", &[("x", 10)]));
        assert_eq!(revoked.get("y"), Some(20));
        assert_eq!(revoked.len(), 2);
        assert!(revoked.holds("a", Some("1")) && !revoked.holds("a", Some("2")));
        assert!(!revoked.holds("a", None) && !revoked.holds("b", Some("1")));
    }

    #[test]
    fn a_jti_in_two_lists_stays_until_both_are_gone() {
        let mut revoked = Revoked::default();
        revoked.apply(&list("a", "1", &[("x", 10)]));
        revoked.apply(&list("b", "1", &[("x", 12), ("z", 5)]));
        assert_eq!(revoked.get("x"), Some(12));
        revoked.remove("a");
        assert_eq!(revoked.get("x"), Some(12));
        revoked.retain(&HashSet::from(["a".to_owned()]), revoked.mark());
        assert_eq!(revoked.get("x"), None);
        assert!(revoked.is_empty());
        // Removing what is not there changes nothing.
        revoked.remove("b");
        assert!(revoked.is_empty());
    }

    #[test]
    fn a_full_read_drops_only_lists_seen_before_it_was_sent() {
        let mut revoked = Revoked::default();
        revoked.apply(&list("old", "1", &[("x", 10)]));
        let mark = revoked.mark();
        // Made after the read's snapshot, delivered by the watch before
        // the read came back: the read lacks it, and it stays.
        revoked.apply(&list("new", "1", &[("y", 10)]));
        revoked.retain(&HashSet::new(), mark);
        assert_eq!((revoked.get("x"), revoked.get("y")), (None, Some(10)));
        // A deleted list and a newer one of the same name are two lists.
        revoked.apply(&list("new-again", "1", &[("y", 10), ("w", 3)]));
        revoked.remove("new");
        assert_eq!((revoked.get("y"), revoked.get("w")), (Some(10), Some(3)));
    }

    #[test]
    fn malformed_revocation_data_is_unreadable() {
        let good = r#"{"apiVersion":"cellule.ai/v1alpha1","kind":"RevocationList","metadata":{"name":"p-1"},
            "spec":{"pool":"paris","expiresAt":20,"entries":[{"jti":"a","exp":10}]}}"#;
        assert_eq!(parse_lists(good, "paris").unwrap().get("a"), Some(10));
        assert!(parse_lists(good, "lyon").unwrap().is_empty());
        let items = format!(r#"{{"kind":"List","items":[{good}]}}"#);
        assert_eq!(parse_lists(&items, "paris").unwrap().len(), 1);
        for bad in [
            "",
            "{}",
            r#"{"items":[{"spec":{"pool":"paris","expiresAt":20,"entries":[{"jti":"a","exp":"10"}]}}]}"#,
            r#"{"items":{"a":"10"}}"#,
            r#"{"a":"1795642470"}"#,
        ] {
            assert!(
                matches!(
                    parse_lists(bad, "paris"),
                    Err(crate::jwt::VerifyError::RevocationsUnreadable(_))
                ),
                "{bad:?}"
            );
        }
    }
}
