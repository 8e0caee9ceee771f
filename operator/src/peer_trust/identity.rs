//! A pool's federation identity, kept in the Secret `<pool>-federation`
//! that the operator mints and owns: the pool's Ed25519 keys (the newest
//! signs; a replaced one still signs, and is accepted in handshakes, for
//! the Pool's `federation.keyOverlap`) and the ledger of handshake nonces
//! this pool has accepted (one nonce, one statement).
//!
//! The decisions are pure ([`next`], [`Nonces::admit`]); [`sync`] and
//! [`record_nonce`] write the Secret at the resourceVersion read, so two
//! reconciles never both mint a key or both take a nonce.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt, api::PostParams, runtime::reflector::ObjectRef};
use serde::{Deserialize, Serialize};

use super::handshake;
use crate::{
    api::{
        Pool,
        pool::{FederationStatus, PreviousFederationKey},
    },
    names,
    reconcile::{Context, Error, Result, apply::ensure_ours},
    workload,
};

/// Keys of the Secret's data.
pub const KEYS_KEY: &str = "keys.json";
pub const NONCES_KEY: &str = "nonces.json";

/// One federation key as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    /// The 32-byte Ed25519 seed, base64.
    seed: String,
    pub created_at: i64,
    /// When a newer key replaced it; it goes `overlap` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("created_at", &self.created_at)
            .field("replaced_at", &self.replaced_at)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    fn new(seed: [u8; 32], now: i64) -> Self {
        Self {
            seed: STANDARD.encode(seed),
            created_at: now,
            replaced_at: None,
        }
    }

    /// The private half, for as long as one signature takes.
    pub fn signing(&self) -> Option<SigningKey> {
        handshake::signing_key(&self.seed).ok()
    }

    pub fn public(&self) -> Option<VerifyingKey> {
        self.signing().map(|k| k.verifying_key())
    }
}

/// A pool's federation keys, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub keys: Vec<StoredKey>,
    /// The Pool's `federation.keyGeneration` last acted on.
    #[serde(default)]
    pub generation: i64,
}

impl Identity {
    /// The keys that sign and are accepted at `now`: the current one
    /// first, then the replaced ones still in their overlap, newest first
    /// (whether or not a Pool reconcile has pruned the others yet).
    pub fn valid(&self, now: i64, overlap: i64) -> impl Iterator<Item = &StoredKey> {
        self.keys.iter().rev().filter(move |k| {
            k.replaced_at
                .is_none_or(|at| at.saturating_add(overlap) > now)
        })
    }

    /// The key that signs from now on.
    pub fn current(&self) -> Option<&StoredKey> {
        self.keys.last().filter(|k| k.replaced_at.is_none())
    }

    /// The keys as the Pool's status shows them.
    pub fn status(&self, overlap: i64) -> Option<FederationStatus> {
        let current = self.current()?.public()?;
        let previous_keys = self
            .keys
            .iter()
            .rev()
            .skip(1)
            .filter_map(|k| {
                let public = k.public()?;
                let until = k.replaced_at?.saturating_add(overlap);
                Some(PreviousFederationKey {
                    public_key: handshake::encode(&public),
                    fingerprint: handshake::fingerprint(&public),
                    valid_until: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        crate::reconcile::at(until).ok()?,
                    ),
                })
            })
            .collect();
        Some(FederationStatus {
            public_key: handshake::encode(&current),
            fingerprint: handshake::fingerprint(&current),
            previous_keys,
        })
    }
}

/// The identity as it should be at `now` for key generation `generation`
/// and `overlap` seconds, and when it next changes by itself (a replaced
/// key's end). `generate` makes a seed (random in production).
pub fn next(
    identity: &Identity,
    generation: i64,
    overlap: i64,
    now: i64,
    generate: impl FnOnce() -> [u8; 32],
) -> (Identity, Option<i64>) {
    let mut next = identity.clone();
    next.keys.retain(|k| {
        k.replaced_at
            .is_none_or(|at| at.saturating_add(overlap) > now)
    });
    let requested = generation > next.generation;
    next.generation = next.generation.max(generation);
    if requested || next.current().is_none() {
        for key in next.keys.iter_mut().filter(|k| k.replaced_at.is_none()) {
            key.replaced_at = Some(now);
        }
        next.keys.push(StoredKey::new(generate(), now));
        next.keys.retain(|k| {
            k.replaced_at
                .is_none_or(|at| at.saturating_add(overlap) > now)
        });
    }
    let wake = next
        .keys
        .iter()
        .filter_map(|k| k.replaced_at.map(|at| at.saturating_add(overlap)))
        .min();
    (next, wake)
}

/// A nonce this pool accepted, and for which statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsedNonce {
    /// SHA-256 (hex) of the statement it was accepted in.
    pub digest: String,
    /// The statement's end of validity: after it, its signatures are
    /// worthless, and the entry goes.
    pub not_after: i64,
}

/// The ledger of accepted nonces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonces(pub BTreeMap<String, UsedNonce>);

/// Whether a nonce may be used for a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Already recorded for this very statement.
    Recorded,
    /// Unused: recorded once the handshake verifies.
    Fresh,
    /// Recorded for another statement.
    Reused,
}

impl Nonces {
    pub fn admit(&self, nonce: &str, digest: &str) -> Admission {
        match self.0.get(nonce) {
            Some(used) if used.digest == digest => Admission::Recorded,
            Some(_) => Admission::Reused,
            None => Admission::Fresh,
        }
    }

    fn prune(&mut self, now: i64) {
        self.0.retain(|_, used| used.not_after > now);
    }
}

/// What the Secret holds, as the cache has it.
#[derive(Clone)]
pub struct Stored {
    pub identity: Identity,
    pub nonces: Nonces,
    live: Option<std::sync::Arc<Secret>>,
}

/// `pool`'s federation Secret from the cache (empty when there is none).
/// A key that is there but unreadable is an error, never taken for empty:
/// that would mint a new key over the old ones and forget every nonce.
pub fn stored(ctx: &Context, namespace: &str, pool: &str) -> Result<Stored> {
    let name = names::federation(pool);
    let live = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&name).within(namespace));
    fn read<T: Default + serde::de::DeserializeOwned>(
        live: Option<&Secret>,
        name: &str,
        key: &'static str,
    ) -> Result<T> {
        match live.and_then(|s| s.data.as_ref()?.get(key)) {
            None => Ok(T::default()),
            Some(bytes) => serde_json::from_slice(&bytes.0).map_err(|_| Error::Unreadable {
                kind: "Secret",
                name: name.to_owned(),
                key,
            }),
        }
    }
    Ok(Stored {
        identity: read(live.as_deref(), &name, KEYS_KEY)?,
        nonces: read(live.as_deref(), &name, NONCES_KEY)?,
        live,
    })
}

pub fn secs(d: crate::api::common::Duration) -> i64 {
    i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX)
}

/// Brings `pool`'s identity up to date (minting its first key) and prunes
/// expired nonces. Returns the status to publish and when to look again.
pub async fn sync(
    ctx: &Context,
    pool: &Pool,
    now: i64,
) -> Result<(Option<FederationStatus>, Option<i64>)> {
    let federation = &pool.spec.federation;
    let overlap = secs(federation.key_overlap);
    let mut stored = stored(ctx, &pool.namespace().unwrap_or_default(), &pool.name_any())?;
    let (identity, wake) = next(
        &stored.identity,
        federation.key_generation,
        overlap,
        now,
        handshake::random_seed,
    );
    let mut nonces = stored.nonces.clone();
    nonces.prune(now);
    let nonce_wake = nonces.0.values().map(|n| n.not_after).min();
    if identity != stored.identity || nonces != stored.nonces {
        let minted = identity.current().map(|k| k.created_at) == Some(now);
        stored.identity = identity;
        stored.nonces = nonces;
        write(ctx, pool, &stored).await?;
        if minted {
            tracing::info!(pool = %pool.name_any(), "federation key minted");
        }
    }
    let wake = [wake, nonce_wake].into_iter().flatten().min();
    Ok((stored.identity.status(overlap), wake))
}

/// Records that `nonce` was accepted (for the statement of `used`) in the
/// ledger `judged` is, at its resourceVersion: if another reconcile took a
/// nonce meanwhile, this fails with a conflict and the handshake is judged
/// again on the newer ledger.
pub async fn record_nonce(
    ctx: &Context,
    pool: &Pool,
    judged: &Stored,
    nonce: &str,
    used: UsedNonce,
) -> Result<()> {
    let mut stored = judged.clone();
    stored.nonces.0.insert(nonce.to_owned(), used);
    write(ctx, pool, &stored).await
}

/// Creates the Secret, or replaces it at the resourceVersion read.
async fn write(ctx: &Context, pool: &Pool, stored: &Stored) -> Result<()> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = names::federation(&pool.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = pool.uid().ok_or(Error::MissingMetadata("uid"))?;
    ensure_ours(&api, stored.live.as_deref(), &name, &uid).await?;
    let mut secret = Secret {
        metadata: workload::owned_meta(pool, &name, BTreeMap::new()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                KEYS_KEY.to_owned(),
                json("the federation keys", &stored.identity)?,
            ),
            (
                NONCES_KEY.to_owned(),
                json("the nonce ledger", &stored.nonces)?,
            ),
        ])),
        ..Default::default()
    };
    match &stored.live {
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
        Some(live) => {
            secret.metadata.resource_version = live.resource_version();
            api.replace(&name, &PostParams::default(), &secret).await?;
        }
    }
    Ok(())
}

fn json(what: &'static str, value: &impl Serialize) -> Result<ByteString> {
    serde_json::to_vec(value)
        .map(ByteString)
        .map_err(|source| Error::Serialize { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn seed(n: u8) -> impl FnOnce() -> [u8; 32] {
        move || [n; 32]
    }

    #[test]
    fn the_first_key_is_minted_once() {
        let (first, wake) = next(&Identity::default(), 0, 7 * DAY, 100, seed(1));
        assert_eq!(first.keys.len(), 1);
        assert_eq!(wake, None);
        let (again, _) = next(&first, 0, 7 * DAY, 200, seed(2));
        assert_eq!(again, first, "no new key without a new generation");
    }

    #[test]
    fn a_replaced_key_stays_valid_for_the_overlap_then_goes() {
        let (first, _) = next(&Identity::default(), 0, 7 * DAY, 100, seed(1));
        let (rotated, wake) = next(&first, 1, 7 * DAY, 1_000, seed(2));
        assert_eq!(rotated.keys.len(), 2);
        assert_eq!(
            rotated.current().unwrap().public(),
            Some(SigningKey::from_bytes(&[2; 32]).verifying_key())
        );
        assert_eq!(wake, Some(1_000 + 7 * DAY));
        let status = rotated.status(7 * DAY).unwrap();
        assert_eq!(status.previous_keys.len(), 1);
        assert_eq!(
            status.previous_keys[0].public_key,
            handshake::encode(&SigningKey::from_bytes(&[1; 32]).verifying_key())
        );
        let (before, _) = next(&rotated, 1, 7 * DAY, 1_000 + 7 * DAY - 1, seed(3));
        assert_eq!(
            before.keys.len(),
            2,
            "still valid one second before the end"
        );
        let (after, wake) = next(&rotated, 1, 7 * DAY, 1_000 + 7 * DAY, seed(3));
        assert_eq!(after.keys.len(), 1, "gone at the end of the overlap");
        assert_eq!(wake, None);
        assert_eq!(after.generation, 1);
    }

    #[test]
    fn a_zero_overlap_drops_the_old_key_at_once() {
        let (first, _) = next(&Identity::default(), 0, 0, 100, seed(1));
        let (rotated, wake) = next(&first, 5, 0, 200, seed(2));
        assert_eq!(rotated.keys.len(), 1);
        assert_eq!(rotated.generation, 5);
        assert_eq!(wake, None);
    }

    #[test]
    fn a_lower_generation_never_rotates_back() {
        let (first, _) = next(&Identity::default(), 3, 0, 100, seed(1));
        let (same, _) = next(&first, 1, 0, 200, seed(2));
        assert_eq!(same, first);
    }

    #[test]
    fn a_nonce_serves_one_statement() {
        let mut nonces = Nonces::default();
        assert_eq!(nonces.admit("n", "d1"), Admission::Fresh);
        nonces.0.insert(
            "n".into(),
            UsedNonce {
                digest: "d1".into(),
                not_after: 50,
            },
        );
        assert_eq!(nonces.admit("n", "d1"), Admission::Recorded);
        assert_eq!(nonces.admit("n", "d2"), Admission::Reused);
        nonces.prune(50);
        assert_eq!(nonces.admit("n", "d2"), Admission::Fresh);
    }

    #[test]
    fn debug_never_shows_a_seed() {
        let (first, _) = next(&Identity::default(), 0, 0, 100, seed(9));
        let shown = format!("{first:?}");
        assert!(!shown.contains(&STANDARD.encode([9u8; 32])), "{shown}");
    }
}
