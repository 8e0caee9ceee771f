//! PeerTrust: federation with the pools of other sites, in one place.
//!
//! - [`identity`]: each pool's federation key (minted, rotated with an
//!   overlap) and its ledger of handshake nonces, in a Secret the operator
//!   owns. The Pool reconcile calls [`identity::sync`].
//! - [`handshake`]: the canonical statement, admin signatures and pool
//!   countersignatures (also the `cellule-operator handshake` commands).
//! - [`judge`]: the effective level, purely.
//! - this module: the PeerTrust reconcile (status, countersignature,
//!   Events), and [`peers`], what a Pool renders into its config and
//!   egress.
//!
//! Reconciling never contacts a peer: everything comes from this cluster.

pub mod handshake;
pub mod identity;
pub mod judge;

use std::{future::Future, sync::Arc};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    ResourceExt,
    runtime::{
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use serde::Deserialize;

use crate::{
    api::{
        PeerTrust, PeerTrustStatus, Pool,
        peer_trust::{Countersignature, PeerEndpoint},
        pool::PrivacyMode,
    },
    conditions,
    controller::{Caches, drive},
    names,
    reconcile::{self, Context, Result, status},
};

/// The annotation whose new value clears a reputation downgrade.
pub const RESET_ANNOTATION: &str = "cellule.ai/reputation-reset";

/// The PeerTrust controller: a PeerTrust is judged again when it changes,
/// when its Pool changes (keys, site, privacy mode), when its pool's
/// federation Secret or reports change, and when another PeerTrust of the
/// same pool comes or goes (a key pinned twice).
pub fn controller(
    caches: &Caches,
    ctx: Arc<Context>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let of_pool = |store: Store<PeerTrust>| {
        move |namespace: Option<String>, pool: &str| {
            store
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace && p.spec.pool_ref.name == pool)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let (by_pool, by_secret, by_report, by_sibling) = (
        of_pool(caches.peer_trusts.store()),
        of_pool(caches.peer_trusts.store()),
        of_pool(caches.peer_trusts.store()),
        of_pool(caches.peer_trusts.store()),
    );
    let controller = caches
        .peer_trusts
        .controller(config)
        // Its spec (keys, site, privacy mode), or its going: not the
        // routing changes of its status.
        .watches_shared_stream(
            crate::controller::changes_of(
                caches.pools.subscribe(),
                caches.pools.store(),
                |p: &Pool| p.metadata.generation,
            ),
            move |pool| by_pool(pool.namespace(), &pool.name_any()),
        )
        .watches_shared_stream(caches.secrets.subscribe(), move |secret| {
            let name = secret.name_any();
            names::pool_of_federation(&name)
                .map(|pool| by_secret(secret.namespace(), pool))
                .unwrap_or_default()
        })
        .watches_shared_stream(caches.config_maps.subscribe(), move |map| {
            let name = map.name_any();
            name.strip_suffix(names::PEER_REPORTS)
                .map(|pool| by_report(map.namespace(), pool))
                .unwrap_or_default()
        })
        // Which PeerTrust pinned a key first changes only when one comes,
        // goes, or pins another key.
        .watches_shared_stream(
            crate::controller::changes_of(
                caches.peer_trusts.subscribe(),
                caches.peer_trusts.store(),
                |p: &PeerTrust| p.spec.public_key.clone(),
            ),
            move |peer| by_sibling(peer.namespace(), &peer.spec.pool_ref.name),
        );
    drive(controller, shutdown, reconcile, ctx)
}

pub async fn reconcile(peer: Arc<PeerTrust>, ctx: Arc<Context>) -> Result<Action> {
    if reconcile::deleting(peer.as_ref()) {
        return Ok(Action::await_change());
    }
    let result = apply_peer(&peer, &ctx).await;
    reconcile::finish(&ctx, peer.as_ref(), result).await
}

/// What the pool reports on one peer (a value of `<pool>-peer-reports`,
/// keyed by the PeerTrust's name; see docs/federation.md).
#[derive(Deserialize)]
struct Report {
    mismatches: i64,
    samples: i64,
}

fn report(ctx: &Context, namespace: &str, pool: &str, peer: &str) -> Option<(i64, i64)> {
    let map = ctx
        .owned
        .config_maps
        .get(&ObjectRef::new(&names::peer_reports(pool)).within(namespace))?;
    let text = map.data.as_ref()?.get(peer)?;
    match serde_json::from_str::<Report>(text) {
        Ok(r) => Some((r.mismatches, r.samples)),
        Err(error) => {
            tracing::warn!(%namespace, %pool, %peer, %error, "unreadable peer report, ignored");
            None
        }
    }
}

/// The PeerTrust of the same pool that pinned `peer`'s key first (by
/// creation, then name), if it is not `peer`.
fn pinned_first(ctx: &Context, peer: &PeerTrust) -> Option<String> {
    let key = handshake::public_key("", &peer.spec.public_key).ok()?;
    let order = |p: &PeerTrust| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.name_any(),
        )
    };
    ctx.peer_trusts
        .state()
        .iter()
        .filter(|p| p.namespace() == peer.namespace() && p.spec.pool_ref == peer.spec.pool_ref)
        .filter(|p| handshake::public_key("", &p.spec.public_key).ok() == Some(key))
        .min_by_key(|p| order(p))
        .map(|p| p.name_any())
        .filter(|first| *first != peer.name_any())
}

async fn apply_peer(peer: &PeerTrust, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    let generation = peer.metadata.generation;
    let namespace = peer.namespace().unwrap_or_default();
    let current = peer.status.as_ref();
    let mut next = PeerTrustStatus::default();
    next.common.observed_generation = generation;
    // Conditions carried over, so that their transition times hold (a
    // status rewritten at every look would wake this object forever).
    next.common.conditions = current
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    // The reputation (and a downgrade) is kept whatever happens below.
    next.reputation = current.and_then(|s| s.reputation.clone());

    let pool_name = &peer.spec.pool_ref.name;
    let Some(pool) = ctx.pools.get(&ObjectRef::new(pool_name).within(&namespace)) else {
        next.effective_trust_level = Some(0);
        keep_only(&mut next.common.conditions, &[]);
        let message = format!("Pool {pool_name:?} does not exist in this namespace");
        status::stall(ctx, peer, current, next, "PoolNotFound", message).await?;
        return Ok(Action::await_change());
    };
    let stored = match identity::stored(ctx, &namespace, pool_name) {
        Ok(stored) => stored,
        Err(error) => return status::stall_on(ctx, peer, next, error).await,
    };
    let federation = &pool.spec.federation;
    let overlap = identity::secs(federation.key_overlap);
    let own_keys = || stored.identity.valid(now.as_second(), overlap);
    let pinned_by = pinned_first(ctx, peer);
    let facts = judge::Facts {
        spec: &peer.spec,
        pool: judge::LocalPool {
            site: federation.site.as_deref(),
            namespace: &namespace,
            name: pool_name,
            endpoint: federation.endpoint.as_ref(),
            admin_keys: &federation.admin_public_keys,
            own_keys: own_keys().filter_map(|k| k.public()).collect(),
            paranoid: pool.spec.privacy.mode == PrivacyMode::Paranoid,
            reputation: &federation.reputation,
        },
        pinned_by: pinned_by.as_deref(),
        nonces: &stored.nonces,
        report: report(ctx, &namespace, pool_name, &peer.name_any()),
        previous: current.and_then(|s| s.reputation.as_ref()),
        reset: peer.annotations().get(RESET_ANNOTATION).map(String::as_str),
    };
    let verdict = judge::judge(&facts, now.as_second());

    // The nonce is taken before any status grants level 3 with it, in the
    // ledger as judged (a newer one means a conflict, and a new look).
    if let Some((nonce, used)) = &verdict.record_nonce {
        identity::record_nonce(ctx, &pool, &stored, nonce, used.clone()).await?;
    }
    next.effective_trust_level = Some(verdict.level);
    next.peer_key_fingerprint = handshake::public_key("", &peer.spec.public_key)
        .ok()
        .map(|k| handshake::fingerprint(&k));
    next.level3_until = verdict
        .level3_until
        .and_then(|t| reconcile::at(t).ok())
        .map(Time);
    next.reputation = verdict.reputation.clone();
    next.countersignature = verdict.countersign.as_ref().and_then(|c| {
        // The private half, for one signature (dropped, and zeroed, after).
        let key = own_keys()
            .find(|k| k.public() == Some(c.own_key))?
            .signing()?;
        let signature = handshake::countersign(&key, &c.admin, &c.statement).ok()?;
        Some(Countersignature {
            pool_public_key: handshake::encode(&c.own_key),
            admin_public_key: handshake::encode(&c.admin),
            signature,
        })
    });
    let conds = &mut next.common.conditions;
    let kept: Vec<&str> = verdict.conditions.iter().map(|c| c.type_).collect();
    keep_only(conds, &kept);
    for desired in verdict.conditions.iter().cloned() {
        conditions::set(conds, desired, generation, now);
    }
    conditions::set_summary(conds, verdict.summary.clone(), generation, now);

    if status::write(&ctx.client, peer, current, &next).await? {
        tell(ctx, peer, current, &next, &verdict).await;
    }
    Ok(match verdict.wake {
        Some(at) => reconcile::requeue_at(at, Timestamp::now()),
        None => Action::await_change(),
    })
}

/// Removes the PeerTrust-specific conditions not in `kept`.
fn keep_only(
    conds: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    kept: &[&str],
) {
    for type_ in [
        judge::types::HANDSHAKE_VERIFIED,
        judge::types::DOWNGRADED,
        judge::types::SUSPENDED,
    ] {
        if !kept.contains(&type_) {
            conditions::remove(conds, type_);
        }
    }
}

/// Events for what on-call must see: the effective level moving, a
/// downgrade, a handshake refused.
async fn tell(
    ctx: &Context,
    peer: &PeerTrust,
    current: Option<&PeerTrustStatus>,
    next: &PeerTrustStatus,
    verdict: &judge::Verdict,
) {
    let before = current.and_then(|s| s.effective_trust_level);
    let after = next.effective_trust_level.unwrap_or(0);
    let was_downgraded = current
        .and_then(|s| s.reputation.as_ref())
        .is_some_and(|r| r.downgrade.is_some());
    if let Some(downgrade) = next.reputation.as_ref().and_then(|r| r.downgrade.as_ref())
        && !was_downgraded
    {
        let note = format!(
            "{} mismatches in {} samples: effective trust level lowered to {after}",
            downgrade.mismatches, downgrade.samples
        );
        ctx.event_once(peer, EventType::Warning, "Downgraded", "Judge", note)
            .await;
    }
    let handshake = verdict
        .conditions
        .iter()
        .find(|c| c.type_ == judge::types::HANDSHAKE_VERIFIED && !c.status);
    let handshake_before = current
        .and_then(|s| conditions::get(&s.common.conditions, judge::types::HANDSHAKE_VERIFIED))
        .map(|c| c.reason.as_str());
    if let Some(refused) = handshake
        && handshake_before != Some(refused.reason)
    {
        ctx.event_once(
            peer,
            EventType::Warning,
            refused.reason,
            "Verify",
            refused.message.clone(),
        )
        .await;
    }
    if before != Some(after) {
        let type_ = if before.is_some_and(|b| b > after) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = match before {
            Some(before) => format!("effective trust level {before} → {after}"),
            None => format!("effective trust level {after}"),
        };
        ctx.event_once(peer, type_, "TrustLevelChanged", "Judge", note)
            .await;
    }
}

/// A peer as a pool renders it: into its config and its egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub site: String,
    pub endpoint: PeerEndpoint,
    pub public_key: String,
    pub level: i32,
    /// When level 3 ends, and the pool drops to 2 by itself.
    pub level3_until: Option<Time>,
}

impl Peer {
    /// Where egress to it goes.
    pub fn cidr(&self) -> Option<String> {
        egress_cidr(&self.endpoint)
    }
}

/// Where egress to `endpoint` goes: its CIDR, or its IP address as one.
pub fn egress_cidr(endpoint: &PeerEndpoint) -> Option<String> {
    if let Some(cidr) = &endpoint.cidr {
        return Some(cidr.clone());
    }
    let ip: std::net::IpAddr = endpoint.host.as_deref()?.parse().ok()?;
    Some(match ip {
        std::net::IpAddr::V4(_) => format!("{ip}/32"),
        std::net::IpAddr::V6(_) => format!("{ip}/128"),
    })
}

/// The peers `pool` federates with: none when Paranoid; otherwise each
/// PeerTrust of the pool whose status is about its current spec and grants
/// a level. A PeerTrust not yet judged since its last change is left out
/// until it is (egress fails closed).
pub fn peers<'a>(pool: &Pool, trusts: impl IntoIterator<Item = &'a PeerTrust>) -> Vec<Peer> {
    if pool.spec.privacy.mode == PrivacyMode::Paranoid {
        return Vec::new();
    }
    let (namespace, name) = (pool.namespace(), pool.name_any());
    let mut peers: Vec<Peer> = trusts
        .into_iter()
        .filter(|p| p.namespace() == namespace && p.spec.pool_ref.name == name)
        .filter(|p| !reconcile::deleting(*p))
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let level = status.effective_trust_level.filter(|l| *l >= 1)?;
            (status.common.observed_generation == p.metadata.generation).then(|| Peer {
                name: p.name_any(),
                site: p.spec.site.clone(),
                endpoint: p.spec.endpoint.clone(),
                public_key: p.spec.public_key.clone(),
                level,
                level3_until: status.level3_until.clone().filter(|_| level == 3),
            })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

#[cfg(test)]
mod tests;
