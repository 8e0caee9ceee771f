//! The revocation store: every revoked `jti` is kept with its `exp` in a
//! durable record the operator owns (the Pool's `status.revokedTokens`),
//! and delivered to the pool's verifiers as a list (`<pool>-revocations`,
//! `jti` → `exp`) rewritten from that record, so deleting or editing the
//! list un-revokes nothing. Reconcilers see [`RevocationStore`] only: how
//! revocations reach the pool can change behind it.

use std::{collections::BTreeMap, future::Future};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::ObjectRef,
};

use super::jwt::LEEWAY_SECS;
use crate::{
    api::Pool,
    names,
    reconcile::{Context, Result},
};

/// Field manager of revocation entries: each is a key of the ConfigMap's
/// data (and of the record), added and removed with merge patches, never
/// read-modify-written.
pub const REVOCATION_MANAGER: &str = "cellule-operator-revocations";

/// Where a pool's revocations are kept and how they reach its verifiers.
pub trait RevocationStore {
    /// Records `jti` (valid until `exp`) as revoked, durably first, then
    /// delivers it; a failure after the record is completed by [`sync`].
    ///
    /// [`sync`]: RevocationStore::sync
    fn revoke(&self, jti: &str, exp: i64) -> impl Future<Output = Result<()>> + Send;

    /// Prunes expired entries and brings what the verifiers read back in
    /// step with the record. Returns when the next entry expires.
    fn sync(&self, pool: &Pool, now: i64) -> impl Future<Output = Result<Option<i64>>> + Send;
}

/// The store of `pool` in `namespace`: the record in the Pool's status,
/// the list in a ConfigMap.
pub fn store<'a>(ctx: &'a Context, namespace: &str, pool: &str) -> impl RevocationStore + 'a {
    ConfigMapStore {
        ctx,
        namespace: namespace.to_owned(),
        pool: pool.to_owned(),
    }
}

struct ConfigMapStore<'a> {
    ctx: &'a Context,
    namespace: String,
    pool: String,
}

impl ConfigMapStore<'_> {
    /// The record's expiry of `jti`, as the cache has it.
    fn recorded(&self, jti: &str) -> Option<i64> {
        let pool = self
            .ctx
            .pools
            .get(&ObjectRef::new(&self.pool).within(&self.namespace))?;
        pool.status.as_ref()?.revoked_tokens.get(jti).copied()
    }

    /// The list's entry for `jti`, as the cache has it.
    fn listed(&self, jti: &str) -> Option<String> {
        let list = self
            .ctx
            .owned
            .config_maps
            .get(&ObjectRef::new(&names::revocations(&self.pool)).within(&self.namespace))?;
        list.data.as_ref()?.get(jti).cloned()
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(REVOCATION_MANAGER.into()),
            ..Default::default()
        }
    }

    async fn patch_record(&self, entries: serde_json::Value) -> Result<Pool> {
        Ok(
            Api::<Pool>::namespaced(self.ctx.client.clone(), &self.namespace)
                .patch_status(
                    &self.pool,
                    &Self::params(),
                    &Patch::Merge(serde_json::json!({"status": {"revokedTokens": entries}})),
                )
                .await?,
        )
    }

    async fn patch_list(&self, entries: serde_json::Value) -> Result<()> {
        Api::<ConfigMap>::namespaced(self.ctx.client.clone(), &self.namespace)
            .patch(
                &names::revocations(&self.pool),
                &Self::params(),
                &Patch::Merge(serde_json::json!({ "data": entries })),
            )
            .await?;
        Ok(())
    }
}

impl RevocationStore for ConfigMapStore<'_> {
    async fn revoke(&self, jti: &str, exp: i64) -> Result<()> {
        // Already in both, as the caches show them: a reconcile from a
        // copy that predates its own last write makes no second write.
        if self.recorded(jti) == Some(exp) && self.listed(jti) == Some(exp.to_string()) {
            return Ok(());
        }
        // The record first: a failure before the list is written is
        // completed by the Pool's reconcile, which restores the list.
        self.patch_record(serde_json::json!({ jti: exp })).await?;
        self.patch_list(serde_json::json!({ jti: exp.to_string() }))
            .await
    }

    async fn sync(&self, pool: &Pool, now: i64) -> Result<Option<i64>> {
        let name = names::revocations(&self.pool);
        let live = self
            .ctx
            .owned
            .config_maps
            .get(&ObjectRef::new(&name).within(&self.namespace));
        let list = live
            .as_ref()
            .and_then(|list| list.data.clone())
            .unwrap_or_default();
        // The record as the cache has it now, not as this reconcile started
        // with: a grant may have added to it since (a reconcile takes seconds).
        let record = self
            .ctx
            .pools
            .get(&ObjectRef::new(&self.pool).within(&self.namespace))
            .and_then(|p| p.status.clone())
            .map(|status| status.revoked_tokens)
            .unwrap_or_default();
        let max_ttl = i64::try_from(pool.spec.tokens.max_ttl.0.as_secs()).unwrap_or(i64::MAX);
        let changes = revocation_changes(&record, &list, max_ttl, now);
        // The record first: it is what the list is restored from.
        if !changes.record.is_empty() {
            self.patch_record(serde_json::json!(changes.record)).await?;
        }
        // Not made yet (or not ours): the record waits, and the list is
        // filled from it once the Pool's apply has made it.
        if !changes.list.is_empty() && live.is_some() {
            let restored = changes.list.values().filter(|v| v.is_some()).count();
            if restored > 0 {
                tracing::info!(pool = %pool.name_any(), restored, "revocation list entries restored from the record");
            }
            self.patch_list(serde_json::json!(changes.list)).await?;
        }
        Ok(changes.next_expiry)
    }
}

/// What the revocation list and its record must change at `now` (pure).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RevocationChanges {
    /// List entries to set (`Some`) or drop (`None`).
    pub list: BTreeMap<String, Option<String>>,
    /// Record entries to set or drop.
    pub record: BTreeMap<String, Option<i64>>,
    /// When the next entry expires.
    pub next_expiry: Option<i64>,
}

/// Brings the list (`jti` → `exp` as text, as the ConfigMap holds it) and
/// the record (the Pool's `status.revokedTokens`) together: each revoked
/// jti is kept with the later of its two expiries until that has passed;
/// an entry deleted, lowered or garbled by hand is restored from the
/// record; a garbled entry the record lacks (verifiers refuse every token
/// while it is there) is rewritten to `now + maxTtl`, the latest a token of
/// the pool issued before now can live; entries only on the list enter the
/// record.
pub fn revocation_changes(
    record: &BTreeMap<String, i64>,
    list: &BTreeMap<String, String>,
    max_ttl: i64,
    now: i64,
) -> RevocationChanges {
    let leeway = LEEWAY_SECS as i64;
    let mut changes = RevocationChanges::default();
    let jtis: std::collections::BTreeSet<&String> = record.keys().chain(list.keys()).collect();
    for jti in jtis {
        // A garbled list entry says nothing: the record's expiry if it has
        // one, else the latest any token of the pool can live.
        // So is an expiry beyond any token's reach (it would overflow).
        let latest = now.saturating_add(max_ttl);
        let listed = list
            .get(jti)
            .map(|v| v.parse::<i64>().ok().filter(|e| *e <= latest));
        let exp = match (record.get(jti).copied(), listed) {
            (Some(a), Some(Some(b))) => a.max(b),
            (Some(e), _) | (None, Some(Some(e))) => e,
            (None, Some(None)) => latest,
            (None, None) => continue,
        };
        if exp.saturating_add(leeway) < now {
            if list.contains_key(jti) {
                changes.list.insert(jti.clone(), None);
            }
            if record.contains_key(jti) {
                changes.record.insert(jti.clone(), None);
            }
            continue;
        }
        if list.get(jti) != Some(&exp.to_string()) {
            changes.list.insert(jti.clone(), Some(exp.to_string()));
        }
        if record.get(jti) != Some(&exp) {
            changes.record.insert(jti.clone(), Some(exp));
        }
        let expiry = exp.saturating_add(leeway + 1);
        changes.next_expiry = Some(changes.next_expiry.map_or(expiry, |n| n.min(expiry)));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const MAX_TTL: i64 = 90 * 86400;

    fn list(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(j, e)| (j.to_string(), e.to_string()))
            .collect()
    }

    #[test]
    fn a_deleted_or_lowered_entry_is_restored_from_the_record() {
        let record = BTreeMap::from([("a".to_owned(), NOW + 100), ("b".to_owned(), NOW + 200)]);
        let changes = revocation_changes(&record, &list(&[("b", "5")]), MAX_TTL, NOW);
        assert_eq!(changes.list["a"], Some((NOW + 100).to_string()));
        assert_eq!(changes.list["b"], Some((NOW + 200).to_string()));
        assert!(changes.record.is_empty());
        assert_eq!(
            changes.next_expiry,
            Some(NOW + 100 + LEEWAY_SECS as i64 + 1)
        );
    }

    #[test]
    fn expired_entries_leave_both_and_listed_ones_enter_the_record() {
        let record = BTreeMap::from([("old".to_owned(), NOW - 3600)]);
        let entries = list(&[
            ("old", &(NOW - 3600).to_string()),
            ("new", &(NOW + 60).to_string()),
        ]);
        let changes = revocation_changes(&record, &entries, MAX_TTL, NOW);
        assert_eq!(changes.list.get("old"), Some(&None));
        assert_eq!(changes.record.get("old"), Some(&None));
        assert_eq!(changes.record.get("new"), Some(&Some(NOW + 60)));
        assert!(!changes.list.contains_key("new"));
    }

    #[test]
    fn a_garbled_entry_is_rewritten_to_outlive_any_token() {
        for garbled in ["revoked", "", " 1795642470"] {
            let changes =
                revocation_changes(&BTreeMap::new(), &list(&[("x", garbled)]), MAX_TTL, NOW);
            assert_eq!(
                changes.list["x"],
                Some((NOW + MAX_TTL).to_string()),
                "{garbled:?}"
            );
            assert_eq!(changes.record["x"], Some(NOW + MAX_TTL));
        }
    }

    #[test]
    fn a_garbled_entry_the_record_has_takes_the_record_expiry() {
        let record = BTreeMap::from([("x".to_owned(), NOW + 100)]);
        let changes = revocation_changes(&record, &list(&[("x", "revoked")]), MAX_TTL, NOW);
        assert_eq!(changes.list["x"], Some((NOW + 100).to_string()));
        assert!(changes.record.is_empty());
    }

    #[test]
    fn an_absurd_expiry_on_the_list_does_not_expire_the_entry() {
        let record = BTreeMap::from([("x".to_owned(), NOW + 100)]);
        let max = i64::MAX.to_string();
        let changes = revocation_changes(&record, &list(&[("x", &max)]), MAX_TTL, NOW);
        assert_eq!(changes.list["x"], Some((NOW + 100).to_string()));
        assert!(changes.record.is_empty());
        let changes = revocation_changes(&BTreeMap::new(), &list(&[("y", &max)]), MAX_TTL, NOW);
        assert_eq!(changes.list["y"], Some((NOW + MAX_TTL).to_string()));
    }

    #[test]
    fn a_list_in_step_with_its_record_changes_nothing() {
        let record = BTreeMap::from([("a".to_owned(), NOW + 100)]);
        let changes = revocation_changes(
            &record,
            &list(&[("a", &(NOW + 100).to_string())]),
            MAX_TTL,
            NOW,
        );
        assert!(changes.list.is_empty() && changes.record.is_empty());
    }
}
