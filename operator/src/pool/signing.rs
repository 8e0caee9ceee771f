//! The Pool's side of worker tokens: its signing key ring (Secret), the
//! published JWKS and the revocation list (ConfigMaps).

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::reflector::ObjectRef,
};

use crate::{
    api::Pool,
    names,
    reconcile::{Context, Error, Result, apply::ensure_ours},
    worker_grant::{
        keys::{self, KeyRing},
        tokens::{LEEWAY_SECS, PoolKey, VerifierPolicy},
    },
    workload,
};

pub const JWKS_KEY: &str = "jwks.json";
/// Key of the [`VerifierPolicy`] beside the JWKS.
pub const POLICY_KEY: &str = "policy.json";
/// Field manager of revocation entries: each is a key of the ConfigMap's
/// data, added and removed with merge patches, never read-modify-written.
pub const REVOCATION_MANAGER: &str = "cellule-operator-revocations";

/// The key ring of `pool` as the cache holds it.
pub fn ring(ctx: &Context, namespace: &str, pool: &str) -> Option<KeyRing> {
    let secret = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&names::signing_keys(pool)).within(namespace))?;
    serde_json::from_slice(&secret.data.as_ref()?.get(keys::RING_KEY)?.0).ok()
}

/// Brings the ring up to date (first key, rotation, retirement) and
/// returns it with the time of its next change. The Secret is created
/// with POST (fails if another reconcile created it first) or replaced at
/// the resourceVersion read, so two reconciles never both mint a key.
pub async fn sync_ring(ctx: &Context, pool: &Pool, now: i64) -> Result<(KeyRing, i64)> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = names::signing_keys(&pool.name_any());
    let live = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&name).within(&namespace));
    let current = ring(ctx, &namespace, &pool.name_any()).unwrap_or_default();
    let tokens = &pool.spec.tokens;
    let (next, next_look) = keys::next_ring(
        &current,
        tokens.signing_key_rotation.0.as_secs() as i64,
        tokens.max_ttl.0.as_secs() as i64,
        tokens.signing_key_generation,
        now,
        PoolKey::generate,
    );
    if next != current {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let uid = pool.uid().ok_or(Error::MissingMetadata("uid"))?;
        ensure_ours(&api, live.as_deref(), &name, &uid).await?;
        let mut secret = Secret {
            metadata: workload::owned_meta(pool, &name, BTreeMap::new()),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                keys::RING_KEY.to_owned(),
                ByteString(
                    serde_json::to_vec(&next).map_err(|source| Error::Serialize {
                        what: "the key ring",
                        source,
                    })?,
                ),
            )])),
            ..Default::default()
        };
        match live {
            None => {
                api.create(&PostParams::default(), &secret).await?;
            }
            Some(live) => {
                secret.metadata.resource_version = live.resource_version();
                api.replace(&name, &PostParams::default(), &secret).await?;
            }
        }
        tracing::info!(pool = %pool.name_any(), keys = next.keys.len(), "signing key ring updated");
    }
    Ok((next, next_look))
}

/// The JWKS ConfigMap and the (data-less) revocation list ConfigMap.
pub fn config_maps(
    pool: &Pool,
    ring: &KeyRing,
    labels: BTreeMap<String, String>,
) -> Result<Vec<ConfigMap>> {
    let name = pool.name_any();
    let jwks = serde_json::to_string_pretty(&ring.jwks()).map_err(|source| Error::Serialize {
        what: "the JWKS",
        source,
    })?;
    let policy = VerifierPolicy {
        audience: crate::worker_grant::audience(&pool.namespace().unwrap_or_default(), &name),
        max_ttl_seconds: pool.spec.tokens.max_ttl.0.as_secs() as i64,
        leeway_seconds: LEEWAY_SECS as i64,
    };
    let policy = serde_json::to_string_pretty(&policy).map_err(|source| Error::Serialize {
        what: "the verifier policy",
        source,
    })?;
    Ok(vec![
        ConfigMap {
            metadata: workload::owned_meta(pool, &names::jwks(&name), labels.clone()),
            data: Some(BTreeMap::from([
                (JWKS_KEY.to_owned(), jwks),
                (POLICY_KEY.to_owned(), policy),
            ])),
            ..Default::default()
        },
        // Entries (`jti` → `exp`, Unix seconds) are added by the WorkerGrant
        // reconcile; this apply never names `data`, so it never removes them.
        ConfigMap {
            metadata: workload::owned_meta(pool, &names::revocations(&name), labels),
            ..Default::default()
        },
    ])
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

/// Prunes, repairs and restores the revocation list from the record (see
/// [`revocation_changes`]), and updates `record` (the status about to be
/// written) to match; returns the next expiry still on the list.
pub async fn sync_revocations(
    ctx: &Context,
    pool: &Pool,
    record: &mut BTreeMap<String, i64>,
    now: i64,
) -> Result<Option<i64>> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = names::revocations(&pool.name_any());
    let live = ctx
        .owned
        .config_maps
        .get(&ObjectRef::new(&name).within(&namespace));
    let list = live
        .as_ref()
        .and_then(|list| list.data.clone())
        .unwrap_or_default();
    // The record as the cache has it now, not as this reconcile started
    // with: a grant may have added to it since (a reconcile takes seconds).
    if let Some(fresh) = ctx
        .pools
        .get(&ObjectRef::new(&pool.name_any()).within(&namespace))
        .and_then(|p| p.status.clone())
    {
        *record = fresh.revoked_tokens;
    }
    let max_ttl = pool.spec.tokens.max_ttl.0.as_secs() as i64;
    let changes = revocation_changes(record, &list, max_ttl, now);
    let params = PatchParams {
        field_manager: Some(REVOCATION_MANAGER.into()),
        ..Default::default()
    };
    // The record first: it is what the list is restored from.
    if !changes.record.is_empty() {
        Api::<Pool>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &pool.name_any(),
                &params,
                &Patch::Merge(serde_json::json!({"status": {"revokedTokens": changes.record}})),
            )
            .await?;
        for (jti, exp) in &changes.record {
            match exp {
                Some(exp) => record.insert(jti.clone(), *exp),
                None => record.remove(jti),
            };
        }
    }
    // Not made yet (or not ours): the record waits, and the list is
    // filled from it once the Pool's apply has made it.
    if !changes.list.is_empty() && live.is_some() {
        let restored = changes.list.values().filter(|v| v.is_some()).count();
        if restored > 0 {
            tracing::info!(pool = %pool.name_any(), restored, "revocation list entries restored from the record");
        }
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
            .patch(
                &name,
                &params,
                &Patch::Merge(serde_json::json!({ "data": changes.list })),
            )
            .await?;
    }
    Ok(changes.next_expiry)
}

/// Puts `jti` (valid until `exp`) on `pool`'s revocation list at once.
pub async fn revoke(ctx: &Context, namespace: &str, pool: &str, jti: &str, exp: i64) -> Result<()> {
    // The record first (durable, in the Pool's status), then the list the
    // pool reads: a failure between the two is completed by the Pool's
    // reconcile, which restores the list from the record.
    Api::<Pool>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            pool,
            &PatchParams {
                field_manager: Some(REVOCATION_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"status": {"revokedTokens": {jti: exp}}})),
        )
        .await?;
    Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &names::revocations(pool),
            &PatchParams {
                field_manager: Some(REVOCATION_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"data": {jti: exp.to_string()}})),
        )
        .await?;
    Ok(())
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
