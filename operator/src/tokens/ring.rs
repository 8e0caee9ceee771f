//! A pool's signing keys: a ring kept in a Secret the operator owns.
//!
//! A key's life: created (published in the JWKS by the same reconcile) →
//! `Pending` until the applied JWKS is seen to hold it → signs once it has
//! been published for the pool's pre-publication time (at once when no
//! other key could sign) → `Retired` when its successor signs: its private
//! half is deleted then, its public half stays published until the latest
//! token it signed has expired → gone. A key declared compromised is gone
//! at once, and a new one signs as soon as it is published.
//!
//! The decisions are one pure function of (ring, policy, what is
//! published, tokens outstanding, now) → (ring, next wake-up): [`next`].

use std::collections::{BTreeMap, BTreeSet};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde::{Deserialize, Serialize};

use super::jwt::{LEEWAY_SECS, PoolKey};

/// Key of the Secret's data that holds the ring.
pub const RING_KEY: &str = "keys.json";

/// A retired key stays published at least this long, whatever the grants
/// show: a grant reconcile that signed with it just before it retired has
/// had its status seen by then (and a token whose key is gone is re-issued).
pub const RETIRED_MIN_PUBLISHED_SECS: i64 = 300;

/// One key of the ring as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub kid: String,
    /// The public key, base64url (the JWK's `x`). Empty in rings written
    /// before it was kept: then derived from the seed.
    #[serde(default)]
    pub x: String,
    /// The 32-byte Ed25519 seed, base64; deleted when the key retires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    pub created_at: i64,
    /// When the applied JWKS was first seen to hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<i64>,
    /// When it stopped signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
    /// The latest `exp` of a token it signed, as the grants' statuses show
    /// (only grows).
    #[serde(default)]
    pub latest_exp: i64,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("published_at", &self.published_at)
            .field("retired_at", &self.retired_at)
            .field("latest_exp", &self.latest_exp)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    fn new(key: &PoolKey, now: i64) -> Self {
        Self {
            kid: key.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(key.key.verifying_key().as_bytes()),
            seed: Some(STANDARD.encode(key.key.as_bytes())),
            created_at: now,
            published_at: None,
            retired_at: None,
            latest_exp: 0,
        }
    }

    fn private(&self) -> Option<PoolKey> {
        let seed: [u8; 32] = STANDARD.decode(self.seed.as_ref()?).ok()?.try_into().ok()?;
        Some(PoolKey::from_seed(seed))
    }

    fn jwk(&self) -> jsonwebtoken::jwk::Jwk {
        super::jwt::public_jwk(&self.kid, &self.x)
    }

    /// When its public half may leave the JWKS (a retired key only).
    fn unpublish_at(&self) -> Option<i64> {
        let retired = self.retired_at?;
        Some(
            self.latest_exp
                .max(retired + RETIRED_MIN_PUBLISHED_SECS)
                .saturating_add(LEEWAY_SECS as i64),
        )
    }
}

/// Every key a pool still publishes, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: Vec<StoredKey>,
    /// The Pool's `tokens.signingKeyGeneration` last acted on.
    #[serde(default)]
    pub generation: i64,
}

/// What of the Pool's token policy the ring follows, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingPolicy {
    pub rotation: i64,
    pub pre_publication: i64,
    pub generation: i64,
    pub compromised: BTreeSet<String>,
}

impl RingPolicy {
    pub fn of(pool: &crate::api::Pool) -> Self {
        let tokens = &pool.spec.tokens;
        let secs =
            |d: crate::api::common::Duration| i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX);
        Self {
            rotation: secs(tokens.signing_key_rotation),
            pre_publication: secs(tokens.signing_key_pre_publication),
            generation: tokens.signing_key_generation,
            compromised: tokens.compromised_keys.iter().cloned().collect(),
        }
    }
}

impl KeyRing {
    /// The key that signs new tokens at `now`, if any: the newest key that
    /// has been published for `pre_publication`, or, when no key has, the
    /// oldest published one (the one that signed so far, or the first key
    /// of a pool, or a compromised key's successor: nothing else could).
    pub fn signer(&self, pre_publication: i64, now: i64) -> Option<PoolKey> {
        self.signer_index(pre_publication, now)
            .and_then(|i| self.keys[i].private())
    }

    fn signer_index(&self, pre_publication: i64, now: i64) -> Option<usize> {
        let usable =
            |k: &&StoredKey| k.seed.is_some() && k.retired_at.is_none() && k.published_at.is_some();
        let mature = self.keys.iter().enumerate().rev().find(|(_, k)| {
            usable(k)
                && k.published_at
                    .is_some_and(|p| p.saturating_add(pre_publication) <= now)
        });
        mature
            .or_else(|| self.keys.iter().enumerate().find(|(_, k)| usable(k)))
            .map(|(i, _)| i)
    }

    /// Whether `kid` is published: tokens it signed verify.
    pub fn publishes(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Public keys to publish.
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        jsonwebtoken::jwk::JwkSet {
            keys: self.keys.iter().map(StoredKey::jwk).collect(),
        }
    }

    /// The keys as the Pool's status shows them.
    pub fn status(
        &self,
        pre_publication: i64,
        now: i64,
    ) -> Vec<crate::api::pool::SigningKeyStatus> {
        use crate::api::pool::{SigningKeyState, SigningKeyStatus};
        let signer = self.signer_index(pre_publication, now);
        let time = |t: i64| {
            crate::reconcile::at(t)
                .ok()
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
        };
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| SigningKeyStatus {
                kid: k.kid.clone(),
                state: if Some(i) == signer {
                    SigningKeyState::Signing
                } else if k.seed.is_some() {
                    SigningKeyState::Pending
                } else {
                    SigningKeyState::Retired
                },
                published_at: k.published_at.and_then(time),
                latest_token_expiry: Some(k.latest_exp).filter(|e| *e > 0).and_then(time),
            })
            .collect()
    }
}

/// The ring as it should be at `now`, and when it next needs a look.
/// `published` holds the kids the applied JWKS holds (as the cache shows
/// it), `outstanding` the latest `exp` of a live token per kid (from the
/// grants' statuses); `generate` mints a key (random in production, fixed
/// in tests).
pub fn next(
    ring: &KeyRing,
    policy: &RingPolicy,
    published: &BTreeSet<String>,
    outstanding: &BTreeMap<String, i64>,
    now: i64,
    generate: impl FnOnce() -> PoolKey,
) -> (KeyRing, i64) {
    let mut next = ring.clone();
    // A compromised key goes at once, public and private halves.
    next.keys.retain(|k| !policy.compromised.contains(&k.kid));
    for key in &mut next.keys {
        if key.x.is_empty()
            && let Some(private) = key.private()
        {
            key.x = URL_SAFE_NO_PAD.encode(private.key.verifying_key().as_bytes());
        }
        // A ring written before seeds were deleted at retirement kept them.
        if key.retired_at.is_some() {
            key.seed = None;
        }
        if key.published_at.is_none() && published.contains(&key.kid) {
            key.published_at = Some(now);
        }
        if let Some(exp) = outstanding.get(&key.kid) {
            key.latest_exp = key.latest_exp.max(*exp);
        }
    }
    let requested = policy.generation > next.generation;
    next.generation = next.generation.max(policy.generation);
    let newest = next.keys.iter().rev().find(|k| k.seed.is_some());
    if requested || newest.is_none_or(|k| k.created_at.saturating_add(policy.rotation) <= now) {
        next.keys.push(StoredKey::new(&generate(), now));
    }
    // Every key older than the signer retires: its private half goes.
    if let Some(signer) = next.signer_index(policy.pre_publication, now) {
        for key in next.keys[..signer].iter_mut().filter(|k| k.seed.is_some()) {
            key.seed = None;
            key.retired_at = Some(now);
        }
    }
    next.keys
        .retain(|k| k.unpublish_at().is_none_or(|at| at > now));

    let newest = next.keys.iter().rev().find(|k| k.seed.is_some());
    let rotation_due = newest.map(|k| k.created_at.saturating_add(policy.rotation));
    // A pending key starts signing when its pre-publication ends (one not
    // yet published wakes the pool through the JWKS ConfigMap's change).
    let signs_at = next
        .keys
        .iter()
        .filter(|k| k.seed.is_some())
        .filter_map(|k| k.published_at)
        .map(|p| p.saturating_add(policy.pre_publication))
        .filter(|at| *at > now);
    let next_look = next
        .keys
        .iter()
        .filter_map(StoredKey::unpublish_at)
        .chain(signs_at)
        .chain(rotation_due)
        .min()
        .unwrap_or(now + 1);
    (next, next_look)
}

/// The latest `exp` of each key's live tokens in `grants`' statuses.
pub fn outstanding<'a>(
    grants: impl IntoIterator<Item = &'a crate::api::WorkerGrant>,
) -> BTreeMap<String, i64> {
    outstanding_of(
        grants
            .into_iter()
            .filter_map(|g| g.status.as_ref())
            .flat_map(|status| {
                let current = status
                    .token
                    .as_ref()
                    .map(|t| (t.key_id.clone(), t.expires_at.0.as_second()));
                let retiring = status
                    .retiring_token
                    .as_ref()
                    .and_then(|r| Some((r.key_id.clone()?, r.expires_at.0.as_second())));
                current.into_iter().chain(retiring)
            }),
    )
}

/// The latest `exp` per kid of `tokens` (kid, exp).
pub fn outstanding_of(tokens: impl IntoIterator<Item = (String, i64)>) -> BTreeMap<String, i64> {
    let mut latest = BTreeMap::<String, i64>::new();
    for (kid, exp) in tokens {
        let entry = latest.entry(kid).or_insert(exp);
        *entry = (*entry).max(exp);
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const PRE: i64 = 300;

    fn key(n: u8) -> PoolKey {
        PoolKey::from_seed([n; 32])
    }

    fn policy() -> RingPolicy {
        RingPolicy {
            rotation: 90 * DAY,
            pre_publication: PRE,
            ..Default::default()
        }
    }

    fn published(ring: &KeyRing) -> BTreeSet<String> {
        ring.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// The ring after `now`, every key in it being in the applied JWKS.
    fn step(ring: &KeyRing, policy: &RingPolicy, now: i64, mint: u8) -> (KeyRing, i64) {
        next(
            ring,
            policy,
            &published(ring),
            &BTreeMap::new(),
            now,
            || key(mint),
        )
    }

    /// A pool's first key, published at 0 and signing.
    fn first() -> KeyRing {
        let (ring, _) = step(&KeyRing::default(), &policy(), 0, 1);
        let (ring, _) = step(&ring, &policy(), 0, 99);
        ring
    }

    #[test]
    fn a_first_key_signs_once_published_and_not_before() {
        let (ring, next_look) = step(&KeyRing::default(), &policy(), 0, 1);
        assert!(ring.signer(PRE, 0).is_none(), "not published yet");
        assert_eq!(next_look, 90 * DAY);
        let (ring, _) = step(&ring, &policy(), 1, 99);
        assert_eq!(
            ring.signer(PRE, 1).unwrap().kid,
            key(1).kid,
            "no other key could sign"
        );
    }

    #[test]
    fn nothing_changes_before_the_rotation_is_due() {
        let ring = first();
        let (again, _) = next(
            &ring,
            &policy(),
            &published(&ring),
            &BTreeMap::new(),
            10 * DAY,
            || unreachable!("no new key"),
        );
        assert_eq!(again, ring);
    }

    #[test]
    fn a_rotation_publishes_first_signs_after_pre_publication_then_retires_the_old_seed() {
        let ring = first();
        let t = 90 * DAY;
        let (rotated, _) = step(&ring, &policy(), t, 2);
        assert_eq!(
            rotated.signer(PRE, t).unwrap().kid,
            key(1).kid,
            "the old key still signs"
        );
        assert_eq!(rotated.jwks().keys.len(), 2, "the new key is published");
        // The applied JWKS is seen at t+1: pre-publication runs from then.
        let (seen, wake) = step(&rotated, &policy(), t + 1, 99);
        assert_eq!(wake, t + 1 + PRE);
        assert_eq!(seen.signer(PRE, t + PRE).unwrap().kid, key(1).kid);
        let (switched, wake) = step(&seen, &policy(), t + 1 + PRE, 99);
        assert_eq!(switched.signer(PRE, t + 1 + PRE).unwrap().kid, key(2).kid);
        let old = &switched.keys[0];
        assert!(
            old.seed.is_none(),
            "a retired key's private half is deleted"
        );
        assert_eq!(old.retired_at, Some(t + 1 + PRE));
        assert!(switched.publishes(&key(1).kid), "its public half stays");
        assert_eq!(
            wake,
            t + 1 + PRE + RETIRED_MIN_PUBLISHED_SECS + LEEWAY_SECS as i64
        );
    }

    #[test]
    fn a_retired_key_stays_published_until_its_latest_token_expired() {
        let ring = first();
        let bump = RingPolicy {
            generation: 1,
            ..policy()
        };
        let (ring, _) = step(&ring, &bump, DAY, 2);
        let (ring, _) = step(&ring, &bump, DAY, 99);
        let outstanding = BTreeMap::from([(key(1).kid, 40 * DAY)]);
        let retire = DAY + PRE;
        let (ring, wake) = next(
            &ring,
            &bump,
            &published(&ring),
            &outstanding,
            retire,
            || unreachable!(),
        );
        assert!(ring.keys[0].seed.is_none());
        assert_eq!(wake, 40 * DAY + LEEWAY_SECS as i64);
        // Lowering maxTtl or renewing tokens does not shorten it: the record only grows.
        let (ring, _) = next(
            &ring,
            &bump,
            &published(&ring),
            &BTreeMap::new(),
            30 * DAY,
            || unreachable!(),
        );
        assert!(ring.publishes(&key(1).kid));
        let (ring, _) = step(&ring, &bump, wake + 1, 99);
        assert!(
            !ring.publishes(&key(1).kid),
            "unpublished after its last token"
        );
        assert_eq!(ring.keys.len(), 1);
    }

    #[test]
    fn a_rotation_right_after_the_first_key_keeps_that_key_signing_until_the_new_one_matured() {
        let ring = first();
        let bump = RingPolicy {
            generation: 1,
            ..policy()
        };
        let (ring, _) = step(&ring, &bump, 10, 2);
        let (ring, _) = step(&ring, &bump, 11, 99);
        assert_eq!(
            ring.signer(PRE, 11).unwrap().kid,
            key(1).kid,
            "neither is mature: the old one goes on"
        );
        assert_eq!(ring.signer(PRE, 11 + PRE).unwrap().kid, key(2).kid);
    }

    #[test]
    fn a_generation_bump_rotates_once() {
        let ring = first();
        let bump = RingPolicy {
            generation: 1,
            ..policy()
        };
        let (rotated, _) = step(&ring, &bump, DAY, 2);
        assert_eq!(rotated.keys.len(), 2);
        let (same, _) = next(
            &rotated,
            &bump,
            &BTreeSet::new(),
            &BTreeMap::new(),
            DAY + 1,
            || unreachable!("once per bump"),
        );
        assert_eq!(same.keys.len(), 2);
    }

    #[test]
    fn a_compromised_key_is_gone_at_once_and_its_successor_signs_when_published() {
        let ring = first();
        let compromised = RingPolicy {
            compromised: BTreeSet::from([key(1).kid]),
            ..policy()
        };
        let (ring, _) = next(
            &ring,
            &compromised,
            &BTreeSet::new(),
            &BTreeMap::new(),
            DAY,
            || key(2),
        );
        assert!(!ring.publishes(&key(1).kid));
        assert!(ring.jwks().find(&key(1).kid).is_none());
        assert!(ring.signer(PRE, DAY).is_none(), "not until published");
        let (ring, _) = step(&ring, &compromised, DAY + 1, 99);
        assert_eq!(
            ring.signer(PRE, DAY + 1).unwrap().kid,
            key(2).kid,
            "no pre-publication: nothing else signs"
        );
    }

    #[test]
    fn a_compromised_signer_hands_over_to_its_pending_successor_at_once() {
        let ring = first();
        let (ring, _) = step(
            &ring,
            &RingPolicy {
                generation: 1,
                ..policy()
            },
            DAY,
            2,
        );
        let (ring, _) = step(
            &ring,
            &RingPolicy {
                generation: 1,
                ..policy()
            },
            DAY + 1,
            99,
        );
        let compromised = RingPolicy {
            generation: 1,
            compromised: BTreeSet::from([key(1).kid]),
            ..policy()
        };
        let (ring, _) = step(&ring, &compromised, DAY + 2, 99);
        assert_eq!(ring.signer(PRE, DAY + 2).unwrap().kid, key(2).kid);
    }

    #[test]
    fn a_ring_of_the_old_format_gets_its_public_halves() {
        let old = r#"{"keys":[{"kid":"K","seed":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","createdAt":0}],"generation":0}"#;
        let ring: KeyRing = serde_json::from_str(old).unwrap();
        let (ring, _) = next(
            &ring,
            &policy(),
            &BTreeSet::from(["K".to_owned()]),
            &BTreeMap::new(),
            5,
            || unreachable!(),
        );
        assert_eq!(
            ring.keys[0].x,
            URL_SAFE_NO_PAD.encode(key(1).key.verifying_key().as_bytes())
        );
        assert_eq!(ring.keys[0].published_at, Some(5));
    }

    #[test]
    fn a_retired_key_of_the_old_format_loses_its_seed_and_never_signs_again() {
        let seed = STANDARD.encode([1u8; 32]);
        let active = STANDARD.encode([2u8; 32]);
        let old = serde_json::json!({"keys": [
            {"kid": key(1).kid, "seed": seed, "createdAt": 0, "retiredAt": 100},
            {"kid": key(2).kid, "seed": active, "createdAt": 100},
        ], "generation": 1});
        let ring: KeyRing = serde_json::from_value(old).unwrap();
        assert!(
            ring.signer(PRE, 150).is_none(),
            "not published yet: nothing signs"
        );
        let (ring, _) = next(
            &ring,
            &policy(),
            &published(&ring),
            &BTreeMap::new(),
            150,
            || unreachable!(),
        );
        assert_eq!(ring.signer(PRE, 150).unwrap().kid, key(2).kid);
        assert!(ring.keys[0].seed.is_none());
        assert!(ring.publishes(&key(1).kid), "its tokens still verify");
    }

    #[test]
    fn the_stored_form_round_trips_and_debug_hides_the_seed() {
        let ring = first();
        let json = serde_json::to_string(&ring).unwrap();
        let back: KeyRing = serde_json::from_str(&json).unwrap();
        assert_eq!(back.signer(PRE, 1).unwrap().kid, key(1).kid);
        assert!(!format!("{ring:?}").contains(ring.keys[0].seed.as_ref().unwrap()));
    }
}
