//! Verification decisions and tag resolutions, cached so that 500 Pools on
//! one image cost one verification per TTL, and a registry outage does not
//! take down what was verified.
//!
//! - Decisions are kept per (repository, digest, key set) for `ttl`, only
//!   when positive: a refusal is asked again at the next reconcile (with
//!   backoff), so a signature pushed later is seen.
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

use super::{Decision, ImageName, Refusal, Request, Verified, Verify, registry::Source};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TagKey {
    image: ImageName,
    refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    repository: String,
    digest: String,
    /// SHA-256 of the sorted key set: the decision holds for these keys.
    keys: [u8; 32],
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
    last_known: Cache<ImageName, String>,
    decisions: Cache<DecisionKey, Verified>,
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
            counts: Arc::default(),
        }
    }

    /// Entries held in all three caches, once pending evictions ran.
    pub async fn entries(&self) -> u64 {
        self.fresh.run_pending_tasks().await;
        self.last_known.run_pending_tasks().await;
        self.decisions.run_pending_tasks().await;
        self.fresh.entry_count() + self.last_known.entry_count() + self.decisions.entry_count()
    }

    /// The digest to verify, and why it may be stale.
    async fn digest(&self, request: &Request) -> Result<(String, Option<String>), Refusal> {
        let image = &request.image;
        if let Some(digest) = &image.digest {
            return Ok((digest.clone(), None));
        }
        let key = TagKey {
            image: image.clone(),
            refresh: request.refresh,
        };
        let resolved = self
            .fresh
            .try_get_with(key, async {
                self.counts.resolves.fetch_add(1, Ordering::Relaxed);
                self.source.resolve(image, &request.auth).await
            })
            .await;
        match resolved {
            Ok(digest) => {
                self.last_known.insert(image.clone(), digest.clone()).await;
                Ok((digest, None))
            }
            Err(refusal) => match (refusal.as_ref(), self.last_known.get(image).await) {
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

impl<S: Source> Verify for Cached<S> {
    fn verify<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Decision> {
        Box::pin(async move {
            let (digest, stale) = self.digest(request).await?;
            let key = DecisionKey {
                repository: request.image.repository_path(),
                digest: digest.clone(),
                keys: key_set(request),
            };
            if stale.is_some() {
                // The registry is down: only a decision already made counts.
                return match self.decisions.get(&key).await {
                    Some(verified) => Ok(Verified { stale, ..verified }),
                    None => Err(Refusal::RegistryUnavailable(stale.unwrap_or_default())),
                };
            }
            self.decisions
                .try_get_with(key, async {
                    self.counts.checks.fetch_add(1, Ordering::Relaxed);
                    let key = self
                        .source
                        .check(&request.image, &digest, &request.keys, &request.auth)
                        .await?;
                    Ok::<_, Refusal>(Verified {
                        digest: digest.clone(),
                        key,
                        // Whole seconds: what a status holds once read back.
                        at: Timestamp::from_second(Timestamp::now().as_second())
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                        stale: None,
                    })
                })
                .await
                .map_err(|refusal| refusal.as_ref().clone())
        })
    }
}
