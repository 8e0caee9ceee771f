//! A pool's revocation store as its verifiers read it: `RevocationList`
//! objects (`cellule.ai/v1alpha1`), labelled `cellule.ai/pool=<pool>`,
//! written by the operator alone.
//!
//! Each list holds the revoked tokens (`jti`, `exp`) whose `exp` falls in
//! one time bucket ending at `spec.expiresAt`, at most a thousand or so
//! per object (a full bucket continues in the next part). Entries are
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
/// about 50 KB, what each revocation rewrites on the API server.
pub const PART_CAPACITY: usize = 1000;

#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "RevocationList",
    namespaced,
    doc = "Revoked worker tokens of one pool whose expiry falls before spec.expiresAt, written by the operator alone and read by the pool's verifiers.",
    category = "cellule",
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
/// versions as they arrive in any order: entries seen in any version of
/// a list stay until the list is deleted.
#[derive(Debug, Default)]
pub struct Revoked {
    /// jti → (exp, how many lists hold it).
    entries: HashMap<String, (i64, u32)>,
    /// List name → the jtis it holds.
    lists: HashMap<String, HashSet<String>>,
}

impl Revoked {
    /// Takes in a version of `list` (older or newer than any seen).
    pub fn apply(&mut self, name: &str, list: &RevocationListSpec) {
        let held = self.lists.entry(name.to_owned()).or_default();
        for entry in &list.entries {
            if held.insert(entry.jti.clone()) {
                let slot = self
                    .entries
                    .entry(entry.jti.clone())
                    .or_insert((entry.exp, 0));
                slot.0 = slot.0.max(entry.exp);
                slot.1 += 1;
            }
        }
    }

    /// Forgets the list `name` (deleted).
    pub fn remove(&mut self, name: &str) {
        for jti in self.lists.remove(name).unwrap_or_default() {
            if let Some(slot) = self.entries.get_mut(&jti) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    self.entries.remove(&jti);
                }
            }
        }
    }

    /// Forgets every list not in `names` (a full read showed them gone).
    pub fn retain(&mut self, names: &HashSet<String>) {
        let gone: Vec<String> = self
            .lists
            .keys()
            .filter(|name| !names.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
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
        let name = list.metadata.name.clone().unwrap_or_default();
        revoked.apply(&name, &list.spec);
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, i64)]) -> RevocationListSpec {
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
        }
    }

    #[test]
    fn an_older_version_of_a_list_unrevokes_nothing() {
        let mut revoked = Revoked::default();
        revoked.apply("a-0", &list(&[("x", 10), ("y", 20)]));
        revoked.apply("a-0", &list(&[("x", 10)]));
        assert_eq!(revoked.get("y"), Some(20));
        assert_eq!(revoked.len(), 2);
    }

    #[test]
    fn a_jti_in_two_lists_stays_until_both_are_gone() {
        let mut revoked = Revoked::default();
        revoked.apply("a-0", &list(&[("x", 10)]));
        revoked.apply("a-1", &list(&[("x", 12), ("z", 5)]));
        assert_eq!(revoked.get("x"), Some(12));
        revoked.remove("a-0");
        assert_eq!(revoked.get("x"), Some(12));
        revoked.retain(&HashSet::from(["a-0".to_owned()]));
        assert_eq!(revoked.get("x"), None);
        assert!(revoked.is_empty());
        // Removing what is not there changes nothing.
        revoked.remove("a-1");
        assert!(revoked.is_empty());
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
