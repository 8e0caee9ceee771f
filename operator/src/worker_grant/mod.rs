//! WorkerGrant: one worker's token. The pipeline: dereference the Pool and
//! its key ring → decide what the grant is now ([`decide`], pure) → issue,
//! keep, or revoke the token → status with the audit trail.
//!
//! A finalizer puts the token on the revocation list when the grant is
//! deleted: the list is state that an owner reference cannot clean.

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::{self, Action},
        events::EventType,
        finalizer,
        reflector::{ObjectRef, Store},
    },
};

use crate::{
    api::{
        Pool, WorkerGrant, WorkerGrantStatus,
        worker_grant::{RetiringToken, TokenStatus, WorkerGrantPhase},
    },
    conditions::{self, Summary},
    controller::{Caches, drive, spec_changes},
    reconcile::{self, Context, Error, MANAGER, Result, labels},
    tokens::{
        self,
        revocations::{self, RevocationStore},
    },
    workload,
};

pub const FINALIZER: &str = "cellule.ai/revoke-token";
/// How long a renewed token stays valid beside its successor.
pub const RENEWAL_GRACE_SECS: i64 = 300;
/// Secret key holding the token.
pub const TOKEN_KEY: &str = "token";

/// What the grant should be now (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Cannot be acted on until the spec or the pool changes.
    Invalid {
        reason: &'static str,
        message: String,
    },
    PendingApproval,
    Suspended,
    Revoked,
    Expired,
    /// Keep the current token until `renew_at`.
    Keep {
        renew_at: i64,
    },
    /// Issue a token valid until `exp`; `why` is the Event reason.
    Issue {
        exp: i64,
        why: &'static str,
    },
}

/// Decides from the spec, the pool, the current token, whether the key
/// that signed it is still published, and the clock.
pub fn decide(
    grant: &WorkerGrant,
    pool: &Pool,
    token: Option<&TokenStatus>,
    key_published: bool,
    now: i64,
) -> Decision {
    let spec = &grant.spec;
    let policy = &pool.spec.tokens;
    if let Some(tier) = spec
        .tiers
        .iter()
        .find(|t| !pool.spec.tiers.iter().any(|pt| &pt.name == *t))
    {
        return Decision::Invalid {
            reason: "UnknownTier",
            message: format!("tier {tier:?} is not a tier of Pool {:?}", pool.name_any()),
        };
    }
    let ttl = spec.ttl.unwrap_or(policy.default_ttl);
    if ttl > policy.max_ttl {
        return Decision::Invalid {
            reason: "TtlAboveMaximum",
            message: format!(
                "ttl {ttl} exceeds the pool's tokens.maxTtl {}",
                policy.max_ttl
            ),
        };
    }
    let end = spec.expires_at.as_ref().map(|t| t.0.as_second());
    if spec.revoked {
        return Decision::Revoked;
    }
    if end.is_some_and(|end| end <= now) {
        return Decision::Expired;
    }
    if spec.suspended {
        return Decision::Suspended;
    }
    if policy.approval_required && spec.approved_by.is_none() {
        return Decision::PendingApproval;
    }
    let lifetime = secs(ttl);
    if lifetime < MIN_TOKEN_LIFETIME_SECS {
        // Admission refuses ttl and defaultTtl under 1h; a stored object
        // from before that rule must not get a token that dies at once
        // (and a new one every second).
        return Decision::Invalid {
            reason: "TtlTooShort",
            message: format!(
                "token lifetime {ttl} is too short (at least {MIN_TOKEN_LIFETIME_SECS}s): set ttl or the pool's tokens.defaultTtl"
            ),
        };
    }
    let exp = now.saturating_add(lifetime);
    let exp = end.map_or(exp, |end| end.min(exp));
    let Some(token) = token else {
        return Decision::Issue {
            exp,
            why: "TokenIssued",
        };
    };
    let (issued, expires) = (
        token.issued_at.0.as_second(),
        token.expires_at.0.as_second(),
    );
    let renew_before = policy
        .renew_before
        .map_or(expires.saturating_sub(issued) / 3, secs);
    // A renewal window as long as the token's whole life would renew at
    // once, forever: such a token (ttl not longer than renewBefore) is
    // replaced only when it expires, one token at a time.
    let renew_at = if renew_before >= expires.saturating_sub(issued) {
        expires
    } else {
        expires.saturating_sub(renew_before)
    };
    if !key_published {
        // Its key was declared compromised, or retired and unpublished
        // early: verifiers refuse the token, so the worker gets a new one.
        Decision::Issue {
            exp,
            why: "SigningKeyWithdrawn",
        }
    } else if grant
        .status
        .as_ref()
        .and_then(|s| s.observed_rotation)
        .unwrap_or(0)
        < spec.rotation
    {
        Decision::Issue {
            exp,
            why: "TokenRotated",
        }
    } else if token
        .tiers
        .as_ref()
        .is_none_or(|tiers| !same_set(tiers, &spec.tiers))
    {
        // The token must carry exactly the tiers the grant allows now (a
        // token from before they were recorded is replaced once).
        Decision::Issue {
            exp,
            why: "TokenTiersChanged",
        }
    } else if expires.saturating_sub(issued) > secs(policy.max_ttl) {
        // maxTtl was lowered below this token's lifetime: verifiers now
        // refuse it, so the worker gets one within the new limit.
        Decision::Issue {
            exp,
            why: "MaxTtlLowered",
        }
    } else if end.is_some_and(|end| expires > end) || expires.saturating_sub(issued) > lifetime {
        // The grant was narrowed (an earlier expiresAt, a shorter ttl):
        // the token must not outlive what is approved now.
        Decision::Issue {
            exp,
            why: "TokenNarrowed",
        }
    } else if now >= renew_at && exp > expires {
        Decision::Issue {
            exp,
            why: "TokenRenewed",
        }
    } else {
        // Not due, or a successor would not outlive it (the grant ends
        // first): kept until then; at `expiresAt` the grant is Expired.
        let wake = if now >= renew_at { expires } else { renew_at };
        Decision::Keep {
            renew_at: end.map_or(wake, |end| end.min(wake)),
        }
    }
}

/// The WorkerGrant controller: reconciled when the grant or its token
/// Secret changes, and when its pool's key ring or spec changes (a status
/// write of the Pool, or a revocation, wakes no grant).
pub fn controller(
    caches: &Caches,
    ctx: Arc<Context>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let grants = caches.grants.store();
    let (for_rings, for_pools) = (grants.clone(), grants.clone());
    let controller = caches
        .grants
        .controller(config)
        .owns_shared_stream(caches.secrets.subscribe())
        // A pool's key ring changing wakes only the grants it concerns
        // (see `concerned_by_keys`). Revocation lists wake no grant.
        .watches_shared_stream(caches.secrets.subscribe(), move |secret: Arc<Secret>| {
            let pool = crate::names::pool_of_signing_keys(&secret.name_any()).map(str::to_owned);
            let ring = secret
                .data
                .as_ref()
                .and_then(|d| d.get(tokens::ring::RING_KEY))
                .and_then(|ring| serde_json::from_slice::<tokens::KeyRing>(&ring.0).ok());
            grants_of(&for_rings, secret.namespace(), pool, |g| {
                concerned_by_keys(g, ring.as_ref())
            })
        })
        // A pool's tiers or token policy changing concerns each of its grants.
        .watches_shared_stream(
            spec_changes(caches.pools.subscribe()),
            move |pool: Arc<Pool>| {
                grants_of(&for_pools, pool.namespace(), Some(pool.name_any()), |_| {
                    true
                })
            },
        );
    drive(controller, shutdown, reconcile, ctx)
}

/// The WorkerGrants of `pool` in `namespace` that `concerned` selects.
fn grants_of(
    grants: &Store<WorkerGrant>,
    namespace: Option<String>,
    pool: Option<String>,
    concerned: impl Fn(&WorkerGrant) -> bool,
) -> Vec<ObjectRef<WorkerGrant>> {
    let Some(pool) = pool else { return Vec::new() };
    grants
        .state()
        .into_iter()
        .filter(|g| g.namespace() == namespace && g.spec.pool_ref.name == pool)
        .filter(|g| concerned(g))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Why a grant waits for its pool's signing key.
pub const SIGNING_KEY_PENDING: &str = "SigningKeyPending";

/// Whether a change of its pool's key ring (`ring`, as changed; `None`
/// when unreadable) concerns `grant`: it waits for a signing key, or the
/// key of its token is no longer published. Nothing else does: every other
/// decision about the grant is made at its own changes and wake-ups.
pub fn concerned_by_keys(grant: &WorkerGrant, ring: Option<&tokens::KeyRing>) -> bool {
    let Some(status) = &grant.status else {
        return false;
    };
    let waiting = status
        .common
        .conditions
        .iter()
        .any(|c| c.type_ == crate::conditions::types::READY && c.reason == SIGNING_KEY_PENDING);
    let withdrawn = ring
        .zip(status.token.as_ref())
        .is_some_and(|(ring, token)| !ring.publishes(&token.key_id));
    waiting || withdrawn
}

/// The grant that holds `grant`'s worker id in its pool, if not `grant`:
/// the oldest approved, live one (created first, then by name). Pending,
/// revoked, expired and deleted grants hold nothing.
pub fn older_claimant<'a>(
    grant: &WorkerGrant,
    grants: impl Iterator<Item = &'a WorkerGrant>,
    now: i64,
) -> Option<&'a WorkerGrant> {
    // Only an approved grant holds its worker id: a pending request for
    // someone else's worker id must not lock the real grant out.
    let live = |g: &WorkerGrant| {
        !g.spec.revoked
            && g.spec.approved_by.is_some()
            && g.metadata.deletion_timestamp.is_none()
            && g.spec
                .expires_at
                .as_ref()
                .is_none_or(|t| t.0.as_second() > now)
    };
    let key = |g: &WorkerGrant| {
        (
            g.metadata.creation_timestamp.as_ref().map(|t| t.0),
            g.name_any(),
        )
    };
    grants
        .filter(|g| {
            g.namespace() == grant.namespace()
                && g.spec.pool_ref.name == grant.spec.pool_ref.name
                && g.spec.worker_id == grant.spec.worker_id
                && live(g)
        })
        .min_by_key(|g| key(g))
        .filter(|holder| holder.uid() != grant.uid())
}

/// Shortest token lifetime the operator issues (admission's own floor is 1h).
pub const MIN_TOKEN_LIFETIME_SECS: i64 = 60;

/// Whole seconds of `d`, saturating (a stored duration may be absurd).
fn secs(d: crate::api::common::Duration) -> i64 {
    i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX)
}

fn same_set(a: &[String], b: &[String]) -> bool {
    use std::collections::BTreeSet;
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

pub async fn reconcile(grant: Arc<WorkerGrant>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<WorkerGrant> =
        Api::namespaced(ctx.client.clone(), &grant.namespace().unwrap_or_default());
    let result = finalizer::finalizer(&api, FINALIZER, grant.clone(), |event| async {
        match event {
            finalizer::Event::Apply(grant) => apply_grant(&grant, &ctx).await,
            finalizer::Event::Cleanup(grant) => cleanup(&grant, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    reconcile::finish(&ctx, grant.as_ref(), result).await
}

/// On deletion: the current token goes on the revocation list.
async fn cleanup(grant: &WorkerGrant, ctx: &Context) -> Result<Action> {
    revoke_current(grant, ctx, "deleted").await?;
    Ok(Action::await_change())
}

/// Puts the current token, if still valid, on the pool's revocation list,
/// and deletes its Secret. Returns whether there was one.
async fn revoke_current(grant: &WorkerGrant, ctx: &Context, why: &str) -> Result<bool> {
    let revoked = revoke_tokens(grant, ctx, why).await?;
    if let Some(token) = grant.status.as_ref().and_then(|s| s.token.as_ref()) {
        let ns = grant.namespace().unwrap_or_default();
        delete_token_secret(ctx, &ns, &token.secret_name).await?;
    }
    Ok(revoked)
}

/// Deletes the token Secret `name` (gone counts as done).
async fn delete_token_secret(ctx: &Context, ns: &str, name: &str) -> Result<()> {
    reconcile::gone(
        Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .delete(name, &DeleteParams::background())
            .await,
    )
}

/// Puts the current token, if still valid, and a renewed one still in its
/// grace on the pool's revocation list. Returns whether there was a
/// current token.
async fn revoke_tokens(grant: &WorkerGrant, ctx: &Context, why: &str) -> Result<bool> {
    let ns = grant.namespace().unwrap_or_default();
    let pool = &grant.spec.pool_ref.name;
    // A renewed token still in its grace goes too.
    if let Some(retiring) = grant
        .status
        .as_ref()
        .and_then(|s| s.retiring_token.as_ref())
    {
        revoke_jti(
            ctx,
            &ns,
            pool,
            &retiring.jti,
            retiring.expires_at.0.as_second(),
        )
        .await?;
    }
    let Some(token) = grant.status.as_ref().and_then(|s| s.token.as_ref()) else {
        return Ok(false);
    };
    revoke_jti(ctx, &ns, pool, &token.jti, token.expires_at.0.as_second()).await?;
    tracing::info!(grant = %grant.name_any(), jti = %token.jti, why, "token revoked");
    Ok(true)
}

/// Puts `jti` on the list unless it expired already or the pool is gone
/// (then nobody accepts it); a failure is retried until it is there.
async fn revoke_jti(ctx: &Context, ns: &str, pool: &str, jti: &str, exp: i64) -> Result<()> {
    let pool_exists = ctx.pools.get(&ObjectRef::new(pool).within(ns)).is_some();
    if exp > Timestamp::now().as_second() && pool_exists {
        revocations::store(ctx, ns, pool).revoke(jti, exp).await?;
    }
    Ok(())
}

async fn apply_grant(grant: &WorkerGrant, ctx: &Context) -> Result<Action> {
    let ns = grant.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let generation = grant.metadata.generation;
    let mut next = grant.status.clone().unwrap_or_default();
    next.common.observed_generation = generation;
    next.audit.requested_by = Some(grant.spec.requested_by.clone());
    next.audit.approved_by = grant.spec.approved_by.clone();

    let pool_name = &grant.spec.pool_ref.name;
    // A renewed token's grace is over: it goes on the list.
    if let Some(retiring) = next.retiring_token.clone()
        && retiring.revoke_at.0 <= now
    {
        revoke_jti(
            ctx,
            &ns,
            pool_name,
            &retiring.jti,
            retiring.expires_at.0.as_second(),
        )
        .await?;
        next.retiring_token = None;
    }
    let Some(pool) = ctx.pools.get(&ObjectRef::new(pool_name).within(&ns)) else {
        let message = format!("Pool {pool_name:?} does not exist in this namespace");
        return stall(grant, ctx, next, "PoolNotFound", message, None, now).await;
    };
    // A token whose Secret is gone (deleted by hand) is replaced; the old
    // jti is revoked first, since nobody can tell where the token went.
    if let Some(token) = next.token.clone()
        && !token_secret_exists(grant, ctx, &token.secret_name).await?
    {
        revoke_current(grant, ctx, "secret deleted").await?;
        next.token = None;
    }
    // A Secret that holds another token than the status names: an issue
    // was cut between its two writes (status first, then the Secret). The
    // token in the Secret may be one that was being rotated out, and the
    // one in the status never reached the worker: both are revoked, and a
    // new token is issued below.
    if let Some(token) = next.token.clone()
        && let Some(held) = held_token(grant, ctx, &token).await?
    {
        tracing::warn!(grant = %grant.name_any(), held = %held.jti, status = %token.jti, "token Secret out of step with status");
        revoke_jti(ctx, &ns, pool_name, &held.jti, held.exp).await?;
        revoke_current(grant, ctx, "secret out of step").await?;
        next.token = None;
    }
    // One worker id, one live grant per pool: a second grant gets no token.
    if !grant.spec.revoked {
        let grants = ctx.grants.state();
        if let Some(holder) =
            older_claimant(grant, grants.iter().map(|g| g.as_ref()), now.as_second())
        {
            revoke_current(grant, ctx, "WorkerIdInUse").await?;
            next.token = None;
            next.retiring_token = None;
            next.phase = Some(WorkerGrantPhase::Invalid);
            let message = format!(
                "workerId {:?} is already granted by WorkerGrant {:?} of this pool: one grant per worker",
                grant.spec.worker_id,
                holder.name_any()
            );
            // Looked at again at a steady pace: the holder's end wakes no one here.
            let retry = now.as_second() + reconcile::status::STALL_RETRY.as_secs() as i64;
            return stall(grant, ctx, next, "WorkerIdInUse", message, Some(retry), now).await;
        }
    }
    let ring = tokens::ring(ctx, &ns, pool_name);
    // Without a ring (its Secret being recreated) no key is known to be
    // unpublished.
    let key_published = next
        .token
        .as_ref()
        .zip(ring.as_ref())
        .is_none_or(|(token, ring)| ring.publishes(&token.key_id));
    let decision = decide(
        grant,
        &pool,
        next.token.as_ref(),
        key_published,
        now.as_second(),
    );
    let (phase, summary, wake) = match &decision {
        Decision::Invalid { reason, message } => {
            return stall(grant, ctx, next, reason, message.clone(), None, now).await;
        }
        Decision::PendingApproval => {
            // Only reachable with a token when the pool started requiring
            // approval after the token was issued: it goes.
            revoke_tokens(grant, ctx, "PendingApproval").await?;
            next.token = None;
            next.retiring_token = None;
            // An approval withdrawn: the next one is a new approval.
            next.audit.approved_at = None;
            (
                WorkerGrantPhase::PendingApproval,
                Summary::Progressing {
                    reason: "PendingApproval",
                    message: "waiting for a second person to set approvedBy".into(),
                },
                None,
            )
        }
        Decision::Suspended | Decision::Revoked | Decision::Expired => {
            let (phase, reason, message) = match decision {
                Decision::Suspended => (
                    WorkerGrantPhase::Suspended,
                    "Suspended",
                    "suspended: no valid token",
                ),
                Decision::Revoked => (
                    WorkerGrantPhase::Revoked,
                    "Revoked",
                    "revoked for good: no valid token",
                ),
                _ => (
                    WorkerGrantPhase::Expired,
                    "Expired",
                    "past expiresAt: no valid token",
                ),
            };
            if revoke_tokens(grant, ctx, reason).await? {
                ctx.event(
                    grant,
                    EventType::Normal,
                    &format!("Token{reason}"),
                    "Revoke",
                    format!("token {message}"),
                )
                .await;
            }
            next.token = None;
            next.retiring_token = None;
            if decision == Decision::Revoked && next.audit.revoked_at.is_none() {
                next.audit.revoked_at = Some(Time(now));
            }
            (
                phase,
                Summary::Ready {
                    reason,
                    message: message.into(),
                },
                None,
            )
        }
        Decision::Keep { renew_at } => (
            WorkerGrantPhase::Active,
            Summary::Ready {
                reason: "TokenValid",
                message: "a valid token is issued".into(),
            },
            Some(*renew_at),
        ),
        Decision::Issue { exp, why } => {
            // No token before the pool can verify it (its key is published).
            let key = ring
                .as_ref()
                .and_then(|ring| tokens::signer(&pool, ring, now.as_second()));
            let Some(key) = key else {
                let summary = Summary::Progressing {
                    reason: SIGNING_KEY_PENDING,
                    message: format!("Pool {pool_name:?} has no published signing key yet"),
                };
                conditions::set_summary(&mut next.common.conditions, summary, generation, now);
                reconcile::status::write(&ctx.client, grant, grant.status.as_ref(), &next).await?;
                return Ok(wake_at(None, &next, now));
            };
            if let Err(error) = check_token_secret(grant, ctx).await {
                next.phase = Some(WorkerGrantPhase::Invalid);
                // stall_on retries every STALL_RETRY; a grace may end sooner.
                let wake = wake_at(
                    Some(now.as_second() + reconcile::status::STALL_RETRY.as_secs() as i64),
                    &next,
                    now,
                );
                reconcile::status::stall_on(ctx, grant, next, error).await?;
                return Ok(wake);
            }
            let (token, claims) = tokens::issue(&key, grant, now.as_second(), *exp);
            let expires_at = reconcile::at(*exp)?;
            let previous = next.token.replace(TokenStatus {
                secret_name: crate::names::token(&grant.name_any()),
                jti: claims.jti.clone(),
                key_id: key.kid.clone(),
                sha256: tokens::fingerprint(&token),
                issued_at: Time(now),
                expires_at: Time(expires_at),
                tiers: Some(grant.spec.tiers.clone()),
            });
            next.observed_rotation = Some(grant.spec.rotation);
            if next.audit.approved_at.is_none() && grant.spec.approved_by.is_some() {
                next.audit.approved_at = Some(Time(now));
            }
            conditions::set_summary(
                &mut next.common.conditions,
                Summary::Ready {
                    reason: "TokenValid",
                    message: "a valid token is issued".into(),
                },
                generation,
                now,
            );
            next.phase = Some(WorkerGrantPhase::Active);
            // A renewed token gets a grace; a rotated one (asked for
            // because it must stop) is revoked once its successor exists.
            // A token still in its grace when the next renewal comes is
            // revoked then (one retiring token at a time).
            let mut revoke_now: Vec<(String, i64)> = next
                .retiring_token
                .take()
                .map(|r| (r.jti, r.expires_at.0.as_second()))
                .into_iter()
                .collect();
            let rotated_out = match previous {
                Some(previous) if *why == "TokenRenewed" => {
                    let revoke_at = reconcile::at(now.as_second() + RENEWAL_GRACE_SECS)?;
                    next.retiring_token = Some(RetiringToken {
                        jti: previous.jti,
                        expires_at: previous.expires_at,
                        revoke_at: Time(revoke_at),
                        key_id: Some(previous.key_id),
                    });
                    None
                }
                other => other,
            };
            // The status (with the new jti) is written first, at the
            // resourceVersion read: a reconcile working from a stale copy
            // fails here instead of minting a second token.
            reconcile::status::write(&ctx.client, grant, grant.status.as_ref(), &next).await?;
            write_token_secret(grant, ctx, &token, &claims.jti).await?;
            revoke_now.extend(rotated_out.map(|p| (p.jti, p.expires_at.0.as_second())));
            for (jti, exp) in revoke_now {
                revoke_jti(ctx, &ns, pool_name, &jti, exp).await?;
            }
            ctx.event(
                grant,
                EventType::Normal,
                why,
                "Issue",
                format!("token {} valid until {expires_at}", claims.jti),
            )
            .await;
            let renew_at = match decide(grant, &pool, next.token.as_ref(), true, now.as_second()) {
                Decision::Keep { renew_at } => renew_at,
                _ => now.as_second() + 1,
            };
            return Ok(wake_at(Some(renew_at), &next, now));
        }
    };
    next.phase = Some(phase);
    conditions::set_summary(&mut next.common.conditions, summary, generation, now);
    reconcile::status::write(&ctx.client, grant, grant.status.as_ref(), &next).await?;
    // A grant without a token keeps no token Secret. Deleted only once the
    // status says so: the reconcile this deletion wakes then finds the
    // grant settled, instead of revoking again from a copy that predates
    // the status write (what made a mass revocation cost ~3 reconciles a
    // grant). A restart between the two writes deletes it here too.
    let secret = crate::names::token(&grant.name_any());
    if next.token.is_none()
        && ctx
            .owned
            .secrets
            .get(&ObjectRef::new(&secret).within(&ns))
            .is_some()
    {
        delete_token_secret(ctx, &ns, &secret).await?;
    }
    Ok(wake_at(wake, &next, now))
}

/// Requeue for the first of `at` and the end of a renewed token's grace.
fn wake_at(at: Option<i64>, status: &WorkerGrantStatus, now: Timestamp) -> Action {
    let grace_end = status
        .retiring_token
        .as_ref()
        .map(|r| r.revoke_at.0.as_second());
    match at.into_iter().chain(grace_end).min() {
        Some(at) => Action::requeue(Duration::from_secs((at - now.as_second()).max(1) as u64)),
        None => Action::await_change(),
    }
}

/// The claims of the token the Secret holds, when that is not the token
/// the status names. A mismatch seen in the cache is confirmed with a read
/// (the cache may not have seen the Secret written a moment ago).
async fn held_token(
    grant: &WorkerGrant,
    ctx: &Context,
    token: &TokenStatus,
) -> Result<Option<tokens::Claims>> {
    let ns = grant.namespace().unwrap_or_default();
    let held = |secret: &Secret| {
        let text = secret.data.as_ref()?.get(TOKEN_KEY)?;
        tokens::unverified_claims(std::str::from_utf8(&text.0).ok()?)
    };
    let cached = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&token.secret_name).within(&ns));
    match cached.as_deref().map(held) {
        None => return Ok(None),
        Some(Some(claims)) if claims.jti == token.jti => return Ok(None),
        Some(_) => {}
    }
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&token.secret_name)
        .await?
    else {
        return Ok(None);
    };
    Ok(match held(&secret) {
        Some(claims) if claims.jti != token.jti => Some(claims),
        _ => None,
    })
}

/// From the cache, confirmed with a read when the cache has not seen it
/// (it may lag right after the Secret was written).
async fn token_secret_exists(grant: &WorkerGrant, ctx: &Context, name: &str) -> Result<bool> {
    let ns = grant.namespace().unwrap_or_default();
    if ctx
        .owned
        .secrets
        .get(&ObjectRef::new(name).within(&ns))
        .is_some()
    {
        return Ok(true);
    }
    Ok(Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_metadata_opt(name)
        .await?
        .is_some())
}

/// Invalid until the spec or the pool changes; a renewed token still in
/// its grace is revoked on time all the same.
async fn stall(
    grant: &WorkerGrant,
    ctx: &Context,
    mut next: WorkerGrantStatus,
    reason: &'static str,
    message: String,
    retry: Option<i64>,
    now: Timestamp,
) -> Result<Action> {
    next.phase = Some(WorkerGrantPhase::Invalid);
    let wake = wake_at(retry, &next, now);
    reconcile::status::stall(ctx, grant, grant.status.as_ref(), next, reason, message).await?;
    Ok(wake)
}

/// The token Secret's name is free or ours: a Secret of that name that
/// someone else made is never written over (nor handed a token).
async fn check_token_secret(grant: &WorkerGrant, ctx: &Context) -> Result<()> {
    let ns = grant.namespace().unwrap_or_default();
    let name = crate::names::token(&grant.name_any());
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let cached = ctx.owned.secrets.get(&ObjectRef::new(&name).within(&ns));
    let uid = grant.uid().ok_or(Error::MissingMetadata("uid"))?;
    reconcile::apply::ensure_ours(&api, cached.as_deref(), &name, &uid).await?;
    Ok(())
}

async fn write_token_secret(
    grant: &WorkerGrant,
    ctx: &Context,
    token: &str,
    jti: &str,
) -> Result<()> {
    let name = crate::names::token(&grant.name_any());
    let mut meta_labels =
        BTreeMap::from([(labels::POOL.to_owned(), grant.spec.pool_ref.name.clone())]);
    meta_labels.insert(labels::COMPONENT.into(), "worker-token".into());
    let mut secret = Secret {
        metadata: workload::owned_meta(grant, &name, meta_labels),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secret.metadata.annotations = Some(BTreeMap::from([(
        "cellule.ai/jti".to_owned(),
        jti.to_owned(),
    )]));
    Api::<Secret>::namespaced(ctx.client.clone(), &grant.namespace().unwrap_or_default())
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}
