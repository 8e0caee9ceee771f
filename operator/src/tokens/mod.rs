//! Worker tokens, in one place: each pool's signing key ring ([`ring`]),
//! what it publishes for verifiers (the JWKS and the verifier policy), the
//! revocation store ([`revocations`]), and issuing. Verification, which
//! the pool software applies too, is the `cellule-verifier` crate's
//! ([`jwt`]).
//!
//! The Pool reconcile calls [`sync_ring`] and [`published`]; the
//! WorkerGrant reconcile calls [`signer`], [`issue`] and revokes through
//! [`revocations::store`]. Nothing else touches key material.

pub mod revocations;
pub mod ring;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{Api, ResourceExt, api::PostParams, runtime::reflector::ObjectRef};

pub use cellule_verifier::jwt;
pub use jwt::{
    Claims, LEEWAY_SECS, PoolKey, VerifierPolicy, VerifyError, fingerprint, new_jti,
    unverified_claims, verify,
};
pub use ring::KeyRing;

use crate::{
    api::{Pool, WorkerGrant},
    names,
    reconcile::{Context, Error, Result, apply::ensure_ours},
    workload,
};

/// Key of the JWKS in the `<pool>-jwks` ConfigMap.
pub const JWKS_KEY: &str = "jwks.json";
/// Key of the [`VerifierPolicy`] beside the JWKS.
pub const POLICY_KEY: &str = "policy.json";

/// The pool a grant's tokens are for: `<namespace>/<pool>` (`iss` and `aud`).
pub fn audience(namespace: &str, pool: &str) -> String {
    format!("{namespace}/{pool}")
}

/// The key ring of `pool` as the cache holds it.
pub fn ring(ctx: &Context, namespace: &str, pool: &str) -> Option<KeyRing> {
    let secret = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&names::signing_keys(pool)).within(namespace))?;
    serde_json::from_slice(&secret.data.as_ref()?.get(ring::RING_KEY)?.0).ok()
}

/// The kids the applied JWKS of `pool` holds, as the cache shows it.
fn published_kids(ctx: &Context, namespace: &str, pool: &str) -> BTreeSet<String> {
    ctx.owned
        .config_maps
        .get(&ObjectRef::new(&names::jwks(pool)).within(namespace))
        .and_then(|cm| {
            let text = cm.data.as_ref()?.get(JWKS_KEY)?.clone();
            serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text).ok()
        })
        .map(|set| {
            set.keys
                .into_iter()
                .filter_map(|k| k.common.key_id)
                .collect()
        })
        .unwrap_or_default()
}

/// Brings `pool`'s key ring up to date (see [`ring::next`]) and returns it
/// with the time it next needs a look. The Secret is created with POST
/// (fails if another reconcile created it first) or replaced at the
/// resourceVersion read, so two reconciles never both mint a key.
pub async fn sync_ring(ctx: &Context, pool: &Pool, now: i64) -> Result<(KeyRing, i64)> {
    let namespace = pool.namespace().unwrap_or_default();
    let pool_name = pool.name_any();
    let name = names::signing_keys(&pool_name);
    let live = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&name).within(&namespace));
    let current = ring(ctx, &namespace, &pool_name).unwrap_or_default();
    let grants = ctx.grants.state();
    let outstanding = ring::outstanding(
        grants
            .iter()
            .filter(|g| {
                g.namespace().as_deref() == Some(&namespace) && g.spec.pool_ref.name == pool_name
            })
            .map(|g| g.as_ref()),
    );
    let (next, next_look) = ring::next(
        &current,
        &ring::RingPolicy::of(pool),
        &published_kids(ctx, &namespace, &pool_name),
        &outstanding,
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
                ring::RING_KEY.to_owned(),
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
        let kids: Vec<&str> = next.keys.iter().map(|k| k.kid.as_str()).collect();
        tracing::info!(pool = %pool_name, ?kids, "signing key ring updated");
    }
    Ok((next, next_look))
}

/// What `pool` publishes for verifiers besides its revocation lists: the
/// JWKS ConfigMap, with the verifier policy.
pub fn published(
    pool: &Pool,
    ring: &KeyRing,
    labels: BTreeMap<String, String>,
) -> Result<ConfigMap> {
    let name = pool.name_any();
    let policy = VerifierPolicy {
        audience: audience(&pool.namespace().unwrap_or_default(), &name),
        max_ttl_seconds: i64::try_from(pool.spec.tokens.max_ttl.0.as_secs()).unwrap_or(i64::MAX),
        leeway_seconds: LEEWAY_SECS as i64,
    };
    Ok(ConfigMap {
        metadata: workload::owned_meta(pool, &names::jwks(&name), labels),
        data: Some(BTreeMap::from([
            (JWKS_KEY.to_owned(), pretty("the JWKS", &ring.jwks())?),
            (
                POLICY_KEY.to_owned(),
                pretty("the verifier policy", &policy)?,
            ),
        ])),
        ..Default::default()
    })
}

fn pretty(what: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|source| Error::Serialize { what, source })
}

/// The key of `ring` that signs `pool`'s new tokens now.
pub fn signer(pool: &Pool, ring: &KeyRing, now: i64) -> Option<PoolKey> {
    ring.signer(ring::RingPolicy::of(pool).pre_publication, now)
}

/// A new token for `grant`, valid from `now` until `exp`, signed by `key`.
pub fn issue(key: &PoolKey, grant: &WorkerGrant, now: i64, exp: i64) -> (String, Claims) {
    let aud = audience(
        &grant.namespace().unwrap_or_default(),
        &grant.spec.pool_ref.name,
    );
    let claims = Claims {
        iss: aud.clone(),
        sub: grant.spec.worker_id.clone(),
        aud,
        iat: now,
        nbf: now,
        exp,
        jti: new_jti(),
        tiers: grant.spec.tiers.clone(),
    };
    (jwt::sign(key, &claims), claims)
}
