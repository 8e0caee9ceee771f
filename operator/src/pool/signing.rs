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

pub use crate::names::{
    jwks as jwks_name, revocations as revocations_name, signing_keys as ring_secret_name,
};

/// The key ring of `pool` as the cache holds it.
pub fn ring(ctx: &Context, namespace: &str, pool: &str) -> Option<KeyRing> {
    let secret = ctx
        .owned
        .secrets
        .get(&ObjectRef::new(&ring_secret_name(pool)).within(namespace))?;
    serde_json::from_slice(&secret.data.as_ref()?.get(keys::RING_KEY)?.0).ok()
}

/// Brings the ring up to date (first key, rotation, retirement) and
/// returns it with the time of its next change. The Secret is created
/// with POST (fails if another reconcile created it first) or replaced at
/// the resourceVersion read, so two reconciles never both mint a key.
pub async fn sync_ring(ctx: &Context, pool: &Pool, now: i64) -> Result<(KeyRing, i64)> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = ring_secret_name(&pool.name_any());
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
            metadata: workload::owned_meta(pool, &jwks_name(&name), labels.clone()),
            data: Some(BTreeMap::from([
                (JWKS_KEY.to_owned(), jwks),
                (POLICY_KEY.to_owned(), policy),
            ])),
            ..Default::default()
        },
        // Entries (`jti` → `exp`, Unix seconds) are added by the WorkerGrant
        // reconcile; this apply never names `data`, so it never removes them.
        ConfigMap {
            metadata: workload::owned_meta(pool, &revocations_name(&name), labels),
            ..Default::default()
        },
    ])
}

/// What to change on a revocation list at `now` (pure): entries whose
/// token has expired anyway are dropped (`None`), and an entry that is not
/// a Unix time (hand-edited: verifiers refuse every token while it is
/// there) is rewritten to the latest instant a token of the pool issued
/// before now can live, `now + maxTtl`, so its token stays refused.
/// Returns the changes and the next instant an entry expires.
pub fn revocation_changes(
    entries: &BTreeMap<String, String>,
    max_ttl: i64,
    now: i64,
) -> (BTreeMap<String, Option<String>>, Option<i64>) {
    let leeway = LEEWAY_SECS as i64;
    let mut changes = BTreeMap::new();
    let mut next = None::<i64>;
    for (jti, value) in entries {
        let exp = match value.parse::<i64>() {
            Ok(exp) if exp + leeway < now => {
                changes.insert(jti.clone(), None);
                continue;
            }
            Ok(exp) => exp,
            Err(_) => {
                let repaired = now + max_ttl;
                changes.insert(jti.clone(), Some(repaired.to_string()));
                repaired
            }
        };
        next = Some(next.map_or(exp + leeway + 1, |n| n.min(exp + leeway + 1)));
    }
    (changes, next)
}

/// Prunes and repairs the revocation list (see [`revocation_changes`]);
/// returns the next expiry still on the list.
pub async fn prune_revocations(ctx: &Context, pool: &Pool, now: i64) -> Result<Option<i64>> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = revocations_name(&pool.name_any());
    let Some(list) = ctx
        .owned
        .config_maps
        .get(&ObjectRef::new(&name).within(&namespace))
    else {
        return Ok(None);
    };
    let max_ttl = pool.spec.tokens.max_ttl.0.as_secs() as i64;
    let (changes, next) = revocation_changes(&list.data.clone().unwrap_or_default(), max_ttl, now);
    if !changes.is_empty() {
        let repaired = changes.values().filter(|v| v.is_some()).count();
        if repaired > 0 {
            tracing::warn!(pool = %pool.name_any(), repaired, "revocation entries that were not Unix times rewritten");
        }
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
            .patch(
                &name,
                &PatchParams {
                    field_manager: Some(REVOCATION_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(serde_json::json!({ "data": changes })),
            )
            .await?;
    }
    Ok(next)
}

/// Puts `jti` (valid until `exp`) on `pool`'s revocation list at once.
pub async fn revoke(ctx: &Context, namespace: &str, pool: &str, jti: &str, exp: i64) -> Result<()> {
    Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &revocations_name(pool),
            &PatchParams {
                field_manager: Some(REVOCATION_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"data": {jti: exp.to_string()}})),
        )
        .await?;
    Ok(())
}
