//! The revocation store: a pool's revoked tokens in `RevocationList`
//! objects (see [`cellule_verifier::revocations`] for what a verifier
//! reads), which the operator alone may write (built-in roles may only
//! read them), so they are both the durable record and what the pool
//! watches.
//!
//! Layout, for 100,000 grants per pool: an entry (`jti`, `exp`) goes into
//! the list of the time bucket its `exp` falls in (a 32nd of the pool's
//! `maxTtl`, between 5 minutes and a day), filling parts of
//! [`PART_CAPACITY`] entries. Entries are appended with a JSON patch and never
//! rewritten; a list is deleted whole once its bucket has ended (plus the
//! leeway), when none of its tokens verifies anyway. So a revocation
//! writes one object of at most [`PART_CAPACITY`] entries whatever the
//! pool's size, no list outlives its tokens by more than a bucket, and
//! the object count stays near 32 plus one per part of live entries.
//!
//! Reconcilers see [`RevocationStore`] only.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::reflector::ObjectRef,
};

pub use cellule_verifier::revocations::{
    PART_CAPACITY, POOL_LABEL, RevocationList, RevocationListSpec, RevokedToken,
};

use super::jwt::LEEWAY_SECS;
use crate::{
    api::Pool,
    names,
    reconcile::{Context, Error, Result},
    workload,
};

/// Field manager of the revocation store's writes.
pub const REVOCATION_MANAGER: &str = "cellule-operator-revocations";

/// Where a pool's revocations are kept and how they reach its verifiers.
pub trait RevocationStore: Sync {
    /// Records `jti` (valid until `exp`) as revoked: once this returns,
    /// the pool's verifiers are told.
    fn revoke(&self, jti: &str, exp: i64) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.revoke_all(&[RevokedToken {
                jti: jti.to_owned(),
                exp,
            }])
            .await
        }
    }

    /// Records every token of `tokens` as revoked, in one write per list
    /// touched.
    fn revoke_all(&self, tokens: &[RevokedToken]) -> impl Future<Output = Result<()>> + Send;

    /// Deletes what has expired and takes in revocations kept the way an
    /// earlier version of the operator kept them. Returns when the next
    /// list expires.
    fn sync(&self, now: i64) -> impl Future<Output = Result<Option<i64>>> + Send;
}

/// The store of `pool` in `namespace`.
pub fn store<'a>(ctx: &'a Context, namespace: &str, pool: &str) -> impl RevocationStore + 'a {
    ListStore {
        ctx,
        namespace: namespace.to_owned(),
        pool: pool.to_owned(),
    }
}

/// Width of the time buckets of a pool whose tokens live at most
/// `max_ttl` seconds: about 32 buckets span every live token.
pub fn bucket_width(max_ttl: i64) -> i64 {
    (max_ttl / 32).clamp(300, 86_400)
}

/// The end of the bucket `exp` falls in (`exp` < end).
pub fn bucket_end(exp: i64, width: i64) -> i64 {
    exp.div_euclid(width)
        .saturating_add(1)
        .saturating_mul(width)
}

/// A write of the store (pure description).
#[derive(Debug, PartialEq, Eq)]
pub enum Write {
    /// Appends to an existing list.
    Append {
        name: String,
        entries: Vec<RevokedToken>,
    },
    /// Makes a new part of a bucket.
    Create {
        name: String,
        expires_at: i64,
        entries: Vec<RevokedToken>,
    },
}

/// Where `entries` go, given `lists` (the pool's, as cached) and `taken`
/// (every list name of the namespace: a new part never reuses one, not
/// even one of an earlier pool of the same name still being deleted):
/// entries already in their bucket are left out; each goes to the first
/// part of its bucket with room, or a new part.
pub fn place(
    pool: &str,
    lists: &[(String, RevocationListSpec)],
    taken: &HashSet<String>,
    entries: &[RevokedToken],
    width: i64,
) -> Vec<Write> {
    struct Bucket {
        /// Its parts: name and entry count, in part order.
        parts: Vec<(String, usize)>,
        listed: HashSet<String>,
    }
    let mut buckets: BTreeMap<i64, Bucket> = BTreeMap::new();
    let mut writes: BTreeMap<String, Write> = BTreeMap::new();
    let mut placed: HashSet<&str> = HashSet::new();
    for entry in entries {
        let end = bucket_end(entry.exp, width);
        let bucket = buckets.entry(end).or_insert_with(|| {
            let mut parts: Vec<(u32, &String, &RevocationListSpec)> = lists
                .iter()
                .filter_map(|(name, list)| {
                    let (p, e, part) = names::parse_revocation_list(name)?;
                    (p == pool && e == end).then_some((part, name, list))
                })
                .collect();
            parts.sort_by_key(|(part, ..)| *part);
            Bucket {
                listed: parts
                    .iter()
                    .flat_map(|(.., l)| l.entries.iter().map(|e| e.jti.clone()))
                    .collect(),
                parts: parts
                    .into_iter()
                    .map(|(_, name, l)| (name.clone(), l.entries.len()))
                    .collect(),
            }
        });
        // Already there (a retry, or a reconcile from an older copy).
        if bucket.listed.contains(&entry.jti) || !placed.insert(&entry.jti) {
            continue;
        }
        let name = match bucket
            .parts
            .iter_mut()
            .find(|(_, len)| *len < PART_CAPACITY)
        {
            Some((name, len)) => {
                *len += 1;
                name.clone()
            }
            None => {
                let name = (0..)
                    .map(|part| names::revocation_list(pool, end, part))
                    .find(|name| {
                        !taken.contains(name) && !bucket.parts.iter().any(|(n, _)| n == name)
                    })
                    .expect("some part number is free");
                bucket.parts.push((name.clone(), 1));
                writes.insert(
                    name.clone(),
                    Write::Create {
                        name: name.clone(),
                        expires_at: end,
                        entries: Vec::new(),
                    },
                );
                name
            }
        };
        writes
            .entry(name.clone())
            .or_insert_with(|| Write::Append {
                name,
                entries: Vec::new(),
            })
            .entries_mut()
            .push(entry.clone());
    }
    writes.into_values().collect()
}

impl Write {
    #[cfg(test)]
    fn entries(&self) -> &[RevokedToken] {
        match self {
            Write::Append { entries, .. } | Write::Create { entries, .. } => entries,
        }
    }

    fn entries_mut(&mut self) -> &mut Vec<RevokedToken> {
        match self {
            Write::Append { entries, .. } | Write::Create { entries, .. } => entries,
        }
    }
}

/// The lists to delete at `now` (their bucket has ended, plus the
/// leeway) and when the next one will be due.
pub fn expired(lists: &[(String, RevocationListSpec)], now: i64) -> (Vec<String>, Option<i64>) {
    let leeway = LEEWAY_SECS as i64;
    let mut due = Vec::new();
    let mut next: Option<i64> = None;
    for (name, list) in lists {
        let at = list.expires_at.saturating_add(leeway);
        if at < now {
            due.push(name.clone());
        } else {
            let at = at.saturating_add(1);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (due, next)
}

struct ListStore<'a> {
    ctx: &'a Context,
    namespace: String,
    pool: String,
}

impl ListStore<'_> {
    fn cached_pool(&self) -> Option<std::sync::Arc<Pool>> {
        self.ctx
            .pools
            .get(&ObjectRef::new(&self.pool).within(&self.namespace))
    }

    /// The lists of this pool (this very Pool: its uid) as the cache has
    /// them, and every list name taken in the namespace.
    fn lists(&self, pool: &Pool) -> (Vec<(String, RevocationListSpec)>, HashSet<String>) {
        let all: Vec<_> = self
            .ctx
            .owned
            .revocation_lists
            .state()
            .into_iter()
            .filter(|l| l.namespace().as_deref() == Some(&self.namespace))
            .collect();
        let taken = all.iter().map(|l| l.name_any()).collect();
        let ours = all
            .into_iter()
            .filter(|l| owned_by(&l.metadata, pool))
            .map(|l| (l.name_any(), l.spec.clone()))
            .collect();
        (ours, taken)
    }

    fn api(&self) -> Api<RevocationList> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(REVOCATION_MANAGER.into()),
            ..Default::default()
        }
    }

    /// Appends `entries` to the pool's lists (one write per list touched).
    async fn append(&self, entries: &[RevokedToken]) -> Result<()> {
        let Some(pool) = self.cached_pool() else {
            // The pool is gone: nobody accepts its tokens any more.
            return Ok(());
        };
        let max_ttl = i64::try_from(pool.spec.tokens.max_ttl.0.as_secs()).unwrap_or(i64::MAX);
        let entries = storable(entries, Timestamp::now().as_second());
        let (lists, taken) = self.lists(&pool);
        for write in place(&self.pool, &lists, &taken, &entries, bucket_width(max_ttl)) {
            let written = match &write {
                Write::Append { entries, .. } | Write::Create { entries, .. } => entries.len(),
            };
            match write {
                Write::Append { name, entries } => self.patch(&name, &entries).await?,
                Write::Create {
                    name,
                    expires_at,
                    entries,
                } => self.create(&pool, &name, expires_at, entries).await?,
            }
            crate::metrics::global()
                .token_revocations
                .inc_by(written as u64);
        }
        Ok(())
    }

    /// Makes the part `name` holding `entries`, or the next free part of
    /// its bucket when that name is taken by a list that is not ours (made
    /// by hand, or unlabelled, so the cache did not show it).
    async fn create(
        &self,
        pool: &Pool,
        name: &str,
        expires_at: i64,
        entries: Vec<RevokedToken>,
    ) -> Result<()> {
        const ATTEMPTS: u32 = 16;
        let first = names::parse_revocation_list(name).map_or(0, |(_, _, part)| part);
        let params = PostParams {
            field_manager: Some(REVOCATION_MANAGER.into()),
            ..Default::default()
        };
        let mut labels = BTreeMap::from([(POOL_LABEL.to_owned(), self.pool.clone())]);
        labels.extend(crate::pool::build::pool_component(&self.pool).selector());
        for part in first..first.saturating_add(ATTEMPTS) {
            let name = names::revocation_list(&self.pool, expires_at, part);
            let list = RevocationList {
                metadata: workload::owned_meta(pool, &name, labels.clone()),
                spec: RevocationListSpec {
                    pool: self.pool.clone(),
                    expires_at,
                    entries: entries.clone(),
                },
            };
            match self.api().create(&params, &list).await {
                Ok(_) => return Ok(()),
                // Made since the cache was read: ours (a retry after a
                // lost reply) takes the entries; another's, the next part.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    if let Some(live) = self.api().get_opt(&name).await?
                        && owned_by(&live.metadata, pool)
                    {
                        return self.patch(&name, &entries).await;
                    }
                    tracing::warn!(pool = %self.pool, list = %name, "a RevocationList that is not this pool's holds the name: trying the next part");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::NameConflict {
            kind: "RevocationList".into(),
            name: name.into(),
            by: format!("someone else (and the next {ATTEMPTS} parts too)"),
        })
    }

    /// Appends `entries` to the list `name` on the API server, whatever it
    /// holds there (JSON patch: no read, no conflict).
    async fn patch(&self, name: &str, entries: &[RevokedToken]) -> Result<()> {
        let ops: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::json!({"op": "add", "path": "/spec/entries/-", "value": e}))
            .collect();
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|source| Error::Serialize {
                what: "a revocation patch",
                source,
            })?;
        self.api()
            .patch(name, &Self::params(), &Patch::<()>::Json(patch))
            .await?;
        Ok(())
    }

    /// Revocations an earlier version kept in the Pool's
    /// `status.revokedTokens` and the `<pool>-revocations` ConfigMap: moved
    /// into the lists, then removed there.
    async fn migrate(&self, now: i64) -> Result<()> {
        let Some(pool) = self.cached_pool() else {
            return Ok(());
        };
        let record = pool
            .status
            .as_ref()
            .map(|s| s.revoked_tokens.clone())
            .unwrap_or_default();
        let legacy = names::legacy_revocations(&self.pool);
        let config_maps: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        // Only the list this pool's operator made (owner label): a
        // ConfigMap of that name made by anyone else is not ours to read
        // or delete.
        let ours = self
            .ctx
            .owned
            .config_maps
            .get(&ObjectRef::new(&legacy).within(&self.namespace))
            .filter(|cm| {
                cm.labels().get(crate::reconcile::labels::OWNER_UID) == pool.uid().as_ref()
            });
        let listed = ours
            .as_ref()
            .and_then(|cm| cm.data.clone())
            .unwrap_or_default();
        if record.is_empty() && ours.is_none() {
            return Ok(());
        }
        let leeway = LEEWAY_SECS as i64;
        let moved_from_record: BTreeMap<String, Option<i64>> =
            record.keys().map(|jti| (jti.clone(), None)).collect();
        let mut entries: BTreeMap<String, i64> = record;
        for (jti, exp) in listed {
            // An entry that is not a time outlives any token (fail closed;
            // the store brings it within reach).
            let exp = exp.parse::<i64>().unwrap_or(i64::MAX);
            let slot = entries.entry(jti).or_insert(exp);
            *slot = (*slot).max(exp);
        }
        let entries: Vec<RevokedToken> = entries
            .into_iter()
            .filter(|(_, exp)| exp.saturating_add(leeway) >= now)
            .map(|(jti, exp)| RevokedToken { jti, exp })
            .collect();
        self.append(&entries).await?;
        tracing::info!(pool = %self.pool, moved = entries.len(), "revocations moved to RevocationLists");
        Api::<Pool>::namespaced(self.ctx.client.clone(), &self.namespace)
            .patch_status(
                &self.pool,
                &Self::params(),
                &Patch::Merge(serde_json::json!({"status": {"revokedTokens": moved_from_record}})),
            )
            .await?;
        // Only the version read: an entry added since stays for the next
        // reconcile to move.
        if let Some(cm) = ours {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: cm.resource_version(),
                    uid: cm.uid(),
                }),
                ..Default::default()
            };
            match config_maps.delete(&legacy, &params).await {
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                other => crate::reconcile::gone(other)?,
            }
        }
        Ok(())
    }
}

/// Whether a list was made for `pool` (this uid, not an earlier Pool of
/// the same name).
fn owned_by(meta: &kube::api::ObjectMeta, pool: &Pool) -> bool {
    let owner = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::reconcile::labels::OWNER_UID));
    owner.is_some() && owner == pool.metadata.uid.as_ref()
}

/// The longest `maxTtl` a Pool may have (its CRD's bound): no token of any
/// pool lives longer.
const LONGEST_TTL: i64 = 8760 * 3600;

/// What of `entries` a list can hold: a `jti` no list could hold names no
/// token a verifier accepts (it refuses those), and an `exp` beyond any
/// token's reach is brought within it (such claims come, at worst, from a
/// token Secret someone overwrote by hand).
fn storable(entries: &[RevokedToken], now: i64) -> Vec<RevokedToken> {
    entries
        .iter()
        .filter(|e| {
            let listable = super::jwt::listable_jti(&e.jti);
            if !listable {
                tracing::warn!(
                    jti_len = e.jti.len(),
                    "not listing a jti no verifier accepts"
                );
            }
            listable
        })
        .map(|e| RevokedToken {
            jti: e.jti.clone(),
            exp: e.exp.min(now.saturating_add(LONGEST_TTL)),
        })
        .collect()
}

impl RevocationStore for ListStore<'_> {
    async fn revoke_all(&self, tokens: &[RevokedToken]) -> Result<()> {
        self.append(tokens).await
    }

    async fn sync(&self, now: i64) -> Result<Option<i64>> {
        self.migrate(now).await?;
        let Some(pool) = self.cached_pool() else {
            return Ok(None);
        };
        let (due, next) = expired(&self.lists(&pool).0, now);
        for name in due {
            crate::reconcile::gone(self.api().delete(&name, &DeleteParams::default()).await)?;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const WIDTH: i64 = 3600;

    fn token(jti: &str, exp: i64) -> RevokedToken {
        RevokedToken {
            jti: jti.into(),
            exp,
        }
    }

    fn list(end: i64, part: u32, entries: Vec<RevokedToken>) -> (String, RevocationListSpec) {
        (
            names::revocation_list("paris", end, part),
            RevocationListSpec {
                pool: "paris".into(),
                expires_at: end,
                entries,
            },
        )
    }

    #[test]
    fn buckets_hold_their_expiries_and_span_max_ttl_in_about_32() {
        for exp in [NOW, NOW + 1, NOW + WIDTH - 1, 0, -5] {
            let end = bucket_end(exp, WIDTH);
            assert!(end > exp && end - exp <= WIDTH, "{exp}");
            assert_eq!(end % WIDTH, 0);
        }
        assert_eq!(bucket_width(90 * 86_400), 86_400);
        assert_eq!(bucket_width(86_400), 2_700);
        assert_eq!(bucket_width(60), 300);
        assert!(bucket_end(i64::MAX, WIDTH) >= i64::MAX - WIDTH);
    }

    #[test]
    fn a_revocation_goes_to_its_bucket_once() {
        let end = bucket_end(NOW, WIDTH);
        let writes = place(
            "paris",
            &[],
            &HashSet::new(),
            &[token("a", NOW), token("a", NOW)],
            WIDTH,
        );
        assert_eq!(
            writes,
            vec![Write::Create {
                name: names::revocation_list("paris", end, 0),
                expires_at: end,
                entries: vec![token("a", NOW)],
            }]
        );
        let lists = [list(end, 0, vec![token("a", NOW)])];
        assert!(place("paris", &lists, &HashSet::new(), &[token("a", NOW)], WIDTH).is_empty());
        assert_eq!(
            place(
                "paris",
                &lists,
                &HashSet::new(),
                &[token("b", NOW + 1)],
                WIDTH
            ),
            vec![Write::Append {
                name: names::revocation_list("paris", end, 0),
                entries: vec![token("b", NOW + 1)],
            }]
        );
    }

    #[test]
    fn a_full_part_continues_in_the_next_and_other_pools_lists_are_not_touched() {
        let end = bucket_end(NOW, WIDTH);
        let full = (0..PART_CAPACITY)
            .map(|i| token(&format!("j{i}"), NOW))
            .collect();
        let mut lyon = list(end, 1, vec![]);
        lyon.0 = names::revocation_list("lyon", end, 1);
        lyon.1.pool = "lyon".into();
        let lists = [list(end, 0, full), lyon];
        let fresh: Vec<RevokedToken> = (0..PART_CAPACITY + 1)
            .map(|i| token(&format!("k{i}"), NOW))
            .collect();
        // Part 2's name is taken (an earlier pool's list, being deleted).
        let taken = HashSet::from([names::revocation_list("paris", end, 2)]);
        let writes = place("paris", &lists, &taken, &fresh, WIDTH);
        let sizes: Vec<(String, usize)> = writes
            .iter()
            .map(|w| match w {
                Write::Create { name, .. } => (name.clone(), w.entries().len()),
                Write::Append { .. } => panic!("appended to a full part"),
            })
            .collect();
        assert_eq!(
            sizes,
            vec![
                (names::revocation_list("paris", end, 1), PART_CAPACITY),
                (names::revocation_list("paris", end, 3), 1),
            ]
        );
    }

    #[test]
    fn what_no_verifier_accepts_is_not_listed_and_expiries_stay_in_reach() {
        let stored = storable(
            &[
                token("bad jti!/x", NOW),
                token("", NOW),
                token("ok", i64::MAX),
            ],
            NOW,
        );
        assert_eq!(stored, vec![token("ok", NOW + LONGEST_TTL)]);
    }

    #[test]
    fn lists_go_once_their_bucket_and_the_leeway_have_passed() {
        let leeway = LEEWAY_SECS as i64;
        let lists = [
            list(NOW - leeway - 1, 0, vec![]),
            list(NOW - leeway, 0, vec![]),
            list(NOW + 10, 0, vec![]),
        ];
        let (due, next) = expired(&lists, NOW);
        assert_eq!(due, vec![lists[0].0.clone()]);
        assert_eq!(next, Some(NOW + 1));
        assert_eq!(expired(&[], NOW), (vec![], None));
    }
}
