//! The pool's token signing keys: a key ring kept in a Secret the operator
//! owns, rotated on the Pool's period. A retired key stays published in
//! the JWKS until every token it can have signed has expired (its
//! retirement plus the pool's `tokens.maxTtl`), so no valid token is ever
//! refused because of a rotation. The decisions are pure ([`next_ring`]);
//! the Secret is written with optimistic concurrency so two reconciles can
//! never both mint a key.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use super::tokens::{LEEWAY_SECS, PoolKey};

/// Key of the Secret's data that holds the ring.
pub const RING_KEY: &str = "keys.json";

/// One key of the ring as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub kid: String,
    /// The 32-byte Ed25519 seed, base64.
    pub seed: String,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    fn new(key: &PoolKey, now: i64) -> Self {
        Self {
            kid: key.kid.clone(),
            seed: STANDARD.encode(key.key.as_bytes()),
            created_at: now,
            retired_at: None,
        }
    }

    pub fn pool_key(&self) -> Option<PoolKey> {
        let seed: [u8; 32] = STANDARD.decode(&self.seed).ok()?.try_into().ok()?;
        Some(PoolKey::from_seed(seed))
    }
}

/// Every key a pool still publishes, newest last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: Vec<StoredKey>,
    /// The Pool's `tokens.signingKeyGeneration` the active key answers.
    #[serde(default)]
    pub generation: i64,
}

impl KeyRing {
    /// The key that signs new tokens.
    pub fn active(&self) -> Option<PoolKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .and_then(StoredKey::pool_key)
    }

    /// Public keys to publish.
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        jsonwebtoken::jwk::JwkSet {
            keys: self
                .keys
                .iter()
                .filter_map(StoredKey::pool_key)
                .map(|k| k.jwk())
                .collect(),
        }
    }
}

/// The ring as it should be at `now`, and when it next needs a look.
/// `rotation` and `max_ttl` are the pool's `signingKeyRotation` and
/// `tokens.maxTtl` in seconds, `generation` its `signingKeyGeneration`
/// (a rotation on request when it grew); `generate` mints a key (random
/// in production, fixed in tests).
pub fn next_ring(
    ring: &KeyRing,
    rotation: i64,
    max_ttl: i64,
    generation: i64,
    now: i64,
    generate: impl FnOnce() -> PoolKey,
) -> (KeyRing, i64) {
    let mut next = ring.clone();
    let requested = generation > next.generation;
    next.generation = next.generation.max(generation);
    let due = requested
        || next
            .keys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .is_none_or(|k| k.created_at + rotation <= now);
    if due {
        for key in next.keys.iter_mut().filter(|k| k.retired_at.is_none()) {
            key.retired_at = Some(now);
        }
        next.keys.push(StoredKey::new(&generate(), now));
    }
    // A retired key can have signed tokens until its retirement, which
    // live at most max_ttl: after that (and the leeway) nobody needs it.
    let keep_until = |k: &StoredKey| k.retired_at.map(|r| r + max_ttl + LEEWAY_SECS as i64);
    next.keys
        .retain(|k| keep_until(k).is_none_or(|until| until > now));
    let active = next
        .keys
        .iter()
        .rev()
        .find(|k| k.retired_at.is_none())
        .expect("a key was just ensured");
    let next_look = next
        .keys
        .iter()
        .filter_map(keep_until)
        .fold(active.created_at + rotation, i64::min);
    (next, next_look)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn key(n: u8) -> PoolKey {
        PoolKey::from_seed([n; 32])
    }

    #[test]
    fn a_new_pool_gets_one_key() {
        let (ring, next) = next_ring(&KeyRing::default(), 90 * DAY, 30 * DAY, 0, 1000, || key(1));
        assert_eq!(ring.keys.len(), 1);
        assert_eq!(ring.active().unwrap().kid, key(1).kid);
        assert_eq!(next, 1000 + 90 * DAY);
    }

    #[test]
    fn nothing_changes_before_the_rotation_is_due() {
        let (ring, _) = next_ring(&KeyRing::default(), 90 * DAY, 30 * DAY, 0, 0, || key(1));
        let (again, _) = next_ring(&ring, 90 * DAY, 30 * DAY, 0, 10 * DAY, || {
            unreachable!("no new key")
        });
        assert_eq!(again, ring);
    }

    #[test]
    fn rotation_keeps_the_old_key_published_until_its_tokens_expired() {
        let (ring, _) = next_ring(&KeyRing::default(), 90 * DAY, 30 * DAY, 0, 0, || key(1));
        let (rotated, next) = next_ring(&ring, 90 * DAY, 30 * DAY, 0, 90 * DAY, || key(2));
        assert_eq!(rotated.active().unwrap().kid, key(2).kid);
        assert_eq!(
            rotated.jwks().keys.len(),
            2,
            "the old key is still published"
        );
        assert_eq!(
            next,
            120 * DAY + LEEWAY_SECS as i64,
            "next look: when the old key may go"
        );
        let (later, _) = next_ring(&rotated, 90 * DAY, 30 * DAY, 0, next + 1, || unreachable!());
        assert_eq!(later.keys.len(), 1);
        assert_eq!(later.active().unwrap().kid, key(2).kid);
    }

    #[test]
    fn a_generation_bump_rotates_now() {
        let (ring, _) = next_ring(&KeyRing::default(), 90 * DAY, 30 * DAY, 0, 0, || key(1));
        let (rotated, _) = next_ring(&ring, 90 * DAY, 30 * DAY, 1, DAY, || key(2));
        assert_eq!(rotated.active().unwrap().kid, key(2).kid);
        assert_eq!(rotated.keys.len(), 2, "the old key stays published");
        let (same, _) = next_ring(&rotated, 90 * DAY, 30 * DAY, 1, 2 * DAY, || {
            unreachable!("once per bump")
        });
        assert_eq!(same, rotated);
    }

    #[test]
    fn the_stored_form_round_trips_and_debug_hides_the_seed() {
        let (ring, _) = next_ring(&KeyRing::default(), DAY, DAY, 0, 0, || key(7));
        let json = serde_json::to_string(&ring).unwrap();
        let back: KeyRing = serde_json::from_str(&json).unwrap();
        assert_eq!(back.active().unwrap().kid, key(7).kid);
        assert!(!format!("{ring:?}").contains(&ring.keys[0].seed));
    }
}
