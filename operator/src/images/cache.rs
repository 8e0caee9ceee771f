//! Verification decisions and tag resolutions, cached so that 500 Pools on
//! one image cost one verification per TTL, and a registry outage does not
//! take down what was verified.
//!
//! - Decisions are kept per (repository, digest, key set, credentials)
//!   for `ttl` when positive; a refusal for [`REFUSAL_TTL`] (a signature
//!   pushed later is seen then), an outage not at all.
//! - Entries are per credentials: a namespace's pull secret is never what
//!   proves another namespace's access.
//! - A tag's digest is trusted for the request's refresh interval; after
//!   that it is resolved again. If the registry cannot be reached then, the
//!   last digest it gave (kept for `ttl`) stands in, provided its positive
//!   decision is still cached: what ran keeps running, and says so.
//! - Concurrent requests for the same entry wait for one computation.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use jiff::Timestamp;
use moka::{Expiry, future::Cache};
use sha2::{Digest as _, Sha256};

use super::{Auth, Decision, ImageName, Refusal, Request, Verified, Verify, registry::Source};

/// How long a refusal (other than an outage) is reused: concurrent and
/// repeated reconciles of many objects on one bad image cost one check.
pub const REFUSAL_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TagKey {
    image: ImageName,
    credentials: [u8; 32],
    refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    repository: String,
    digest: String,
    /// SHA-256 of the sorted key set: the decision holds for these keys.
    keys: [u8; 32],
    credentials: [u8; 32],
}

/// A positive decision as cached: which key (by its PEM) verified it.
#[derive(Clone, Debug)]
struct Decided {
    digest: String,
    pem: String,
    at: Timestamp,
}

/// A fresh resolution lives as long as its request's refresh interval.
struct RefreshExpiry;

impl Expiry<TagKey, String> for RefreshExpiry {
    fn expire_after_create(&self, key: &TagKey, _: &String, _: Instant) -> Option<Duration> {
        Some(key.refresh)
    }
}

/// Counters, for the benchmark and metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub resolves: AtomicU64,
    pub checks: AtomicU64,
}

/// A [`Verify`] over a registry [`Source`].
pub struct Cached<S> {
    source: S,
    fresh: Cache<TagKey, String>,
    last_known: Cache<(ImageName, [u8; 32]), String>,
    decisions: Cache<DecisionKey, Decided>,
    refusals: Cache<DecisionKey, Refusal>,
    pub counts: Arc<Counts>,
}

impl<S: Source> Cached<S> {
    /// `ttl`: how long a positive decision holds; `capacity`: entries per cache.
    pub fn new(source: S, ttl: Duration, capacity: u64) -> Self {
        Self {
            source,
            fresh: Cache::builder()
                .max_capacity(capacity)
                .expire_after(RefreshExpiry)
                .build(),
            last_known: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            decisions: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            refusals: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(REFUSAL_TTL.min(ttl))
                .build(),
            counts: Arc::default(),
        }
    }

    /// Entries held in all three caches, once pending evictions ran.
    pub async fn entries(&self) -> u64 {
        self.fresh.run_pending_tasks().await;
        self.last_known.run_pending_tasks().await;
        self.decisions.run_pending_tasks().await;
        self.refusals.run_pending_tasks().await;
        self.fresh.entry_count()
            + self.last_known.entry_count()
            + self.decisions.entry_count()
            + self.refusals.entry_count()
    }

    /// The digest to verify, and why it may be stale.
    async fn digest(&self, request: &Request) -> Result<(String, Option<String>), Refusal> {
        let image = &request.image;
        if let Some(digest) = &image.digest {
            return Ok((digest.clone(), None));
        }
        let credentials = credentials(&request.auth);
        let key = TagKey {
            image: image.clone(),
            credentials,
            refresh: request.refresh,
        };
        let known = (image.clone(), credentials);
        let resolved = self
            .fresh
            .try_get_with(key, async {
                self.counts.resolves.fetch_add(1, Ordering::Relaxed);
                self.source.resolve(image, &request.auth).await
            })
            .await;
        match resolved {
            Ok(digest) => {
                self.last_known.insert(known, digest.clone()).await;
                Ok((digest, None))
            }
            Err(refusal) => match (refusal.as_ref(), self.last_known.get(&known).await) {
                (Refusal::RegistryUnavailable(why), Some(digest)) => {
                    Ok((digest, Some(why.clone())))
                }
                _ => Err(refusal.as_ref().clone()),
            },
        }
    }
}

/// The key set's fingerprint: order and duplicates do not matter.
fn key_set(request: &Request) -> [u8; 32] {
    let mut pems: Vec<&str> = request.keys.iter().map(|k| k.pem.trim()).collect();
    pems.sort_unstable();
    pems.dedup();
    let mut hash = Sha256::new();
    for pem in pems {
        hash.update(pem.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// The credentials' fingerprint (zero when anonymous).
fn credentials(auth: &Auth) -> [u8; 32] {
    match auth {
        Auth::Anonymous => [0; 32],
        Auth::Basic { username, password } => {
            let mut hash = Sha256::new();
            hash.update((username.len() as u64).to_be_bytes());
            hash.update(username.as_bytes());
            hash.update(password.as_bytes());
            hash.finalize().into()
        }
    }
}

impl<S: Source> Verify for Cached<S> {
    fn verify<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let (digest, stale) = self.digest(request).await?;
            let key = DecisionKey {
                repository: request.image.repository_path(),
                digest: digest.clone(),
                keys: key_set(request),
                credentials: credentials(&request.auth),
            };
            let decided = if stale.is_some() {
                // The registry is down: only a decision already made counts.
                self.decisions
                    .get(&key)
                    .await
                    .ok_or_else(|| Refusal::RegistryUnavailable(stale.clone().unwrap_or_default()))
            } else if let Some(refusal) = self.refusals.get(&key).await {
                Err(refusal)
            } else {
                let decided = self
                    .decisions
                    .try_get_with(key.clone(), async {
                        self.counts.checks.fetch_add(1, Ordering::Relaxed);
                        let checked = self
                            .source
                            .check(&request.image, &digest, &request.keys, &request.auth)
                            .await;
                        let outcome = checked
                            .as_ref()
                            .map_or_else(Refusal::reason, |_| "Verified");
                        crate::metrics::global()
                            .image_verifications
                            .get_or_create(&crate::metrics::OutcomeLabels {
                                outcome: outcome.to_owned(),
                            })
                            .inc();
                        let pem = checked?;
                        Ok::<_, Refusal>(Decided {
                            digest: digest.clone(),
                            pem,
                            // Whole seconds: what a status holds once read back.
                            at: Timestamp::from_second(Timestamp::now().as_second())
                                .unwrap_or(Timestamp::UNIX_EPOCH),
                        })
                    })
                    .await
                    .map_err(|refusal| refusal.as_ref().clone());
                if let Err(refusal) = &decided
                    && !matches!(refusal, Refusal::RegistryUnavailable(_))
                {
                    self.refusals.insert(key, refusal.clone()).await;
                }
                decided
            }?;
            // Named as this request names the key (another namespace may
            // hold the same key under another name).
            let key = request
                .keys
                .iter()
                .find(|k| k.pem.trim() == decided.pem.trim())
                .map(|k| k.source.clone())
                .unwrap_or_default();
            Ok(Verified {
                digest: decided.digest,
                key,
                at: decided.at,
                stale,
            })
        })
    }
}
