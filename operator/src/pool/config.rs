//! The pool's rendered configuration (pure).
//!
//! Two ConfigMaps: `<pool>-config` holds the settings of the spec and rolls
//! the Deployment when it changes (checksum annotation); `<pool>-routing`
//! holds how each tier is served right now, which changes with NPU health:
//! the running pool watches it on the API server (its live channel, as for
//! its JWKS), never from a volume the kubelet refreshes a minute late, and
//! is never restarted for it.

use std::collections::BTreeMap;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::pool::{PrivacyMode, TierStatus};

use super::{
    build::{DB_DIR, FEDERATION_DIR, JWKS_DIR, TLS_DIR},
    validate::ValidPool,
};

pub const CONFIG_KEY: &str = "pool.yaml";
pub const ROUTING_KEY: &str = "routing.yaml";
pub const PEERS_KEY: &str = "peers.yaml";

/// The settings file of the pool orchestrator.
pub fn render_config(valid: &ValidPool) -> String {
    let spec = &valid.pool.spec;
    let audience = crate::tokens::audience(&valid.namespace, &valid.name);
    let config = json!({
        "site": spec.federation.site,
        "listen": {
            "port": spec.workers.port,
            "tls": {"certFile": format!("{TLS_DIR}/tls.crt"), "keyFile": format!("{TLS_DIR}/tls.key")},
        },
        "database": {"dsnFile": format!("{DB_DIR}/{}", spec.database.dsn_secret_ref.key)},
        "tiers": spec.tiers.iter().map(|t| json!({
            "name": t.name, "model": t.model, "backend": t.backend, "fallbackTier": t.fallback_tier,
            "service": tier_address(&valid.name, &valid.namespace, &t.name),
        })).collect::<Vec<_>>(),
        "verification": spec.verification,
        "privacy": {
            "mode": spec.privacy.mode,
            // Paranoid never fans out: to peers or to several workers.
            "fanOut": spec.privacy.mode == PrivacyMode::Balanced,
        },
        "rateLimit": spec.rate_limit,
        "federation": {
            "antiReplayWindow": spec.federation.anti_replay_window,
            // The key the pool signs federation messages with, from the
            // operator's Secret (docs/federation.md).
            "keysFile": format!("{FEDERATION_DIR}/{}", crate::peer_trust::identity::KEYS_KEY),
            // The trusted peers change with trust, never restarting the
            // pool: read live, as routing (render_peers).
            "peersConfigMap": crate::names::peers(&valid.name),
            "peersKey": PEERS_KEY,
            // Where the pool reports mismatches and samples per peer
            // (its Role may patch exactly this ConfigMap).
            "reportsConfigMap": crate::names::peer_reports(&valid.name),
        },
        "workers": {
            "heartbeatInterval": spec.workers.heartbeat_interval,
            "allowedCidrs": spec.workers.allowed_cidrs,
        },
        // What a worker token must carry and where the pool finds what
        // verifies it: the contract in docs/pool-contract.md.
        "tokens": {
            "issuer": audience,
            "audience": audience,
            "algorithms": ["EdDSA"],
            "jwksFile": format!("{JWKS_DIR}/{}", crate::tokens::JWKS_KEY),
            "policyFile": format!("{JWKS_DIR}/{}", crate::tokens::POLICY_KEY),
            // Watched live with the pool's ServiceAccount token, which
            // may read exactly these (cellule-verifier does): the JWKS
            // ConfigMap (the files above are its kubelet-refreshed copy,
            // about a minute late) and the revocation lists, which exist
            // only on the API server.
            "live": {
                "namespace": valid.namespace,
                "jwksConfigMap": crate::names::jwks(&valid.name),
                // How each tier is served now (fail-over), see
                // render_routing.
                "routingConfigMap": crate::names::routing(&valid.name),
                "routingKey": ROUTING_KEY,
                "revocationLists": {
                    "apiVersion": "cellule.ai/v1alpha1",
                    "kind": "RevocationList",
                    "labelSelector": format!("{}={}", crate::tokens::revocations::POOL_LABEL, valid.name),
                },
            },
        },
        "failover": spec.failover,
    });
    serde_yaml::to_string(&config).expect("JSON values always serialize to YAML")
}

/// The address of a tier's Service.
fn tier_address(pool: &str, namespace: &str, tier: &str) -> String {
    format!(
        "{}.{namespace}.svc:{}",
        crate::names::tier(pool, tier),
        crate::routing::endpoints::TIER_PORT
    )
}

/// Where each tier's requests go now: the tier's Service (whose endpoints
/// the operator points at the backend serving it), and for the pool's own
/// dispatch to laptop workers, which tier's workers take the requests.
pub fn render_routing(pool: &str, namespace: &str, tiers: &[TierStatus]) -> String {
    let routes: BTreeMap<&str, serde_json::Value> = tiers
        .iter()
        .map(|status| {
            (
                status.name.as_str(),
                json!({
                    "servedBy": status.served_by,
                    "via": status.via,
                    "model": status.model,
                    "since": status.since,
                    "reason": status.reason,
                    "service": tier_address(pool, namespace, &status.name),
                }),
            )
        })
        .collect();
    serde_yaml::to_string(&json!({ "tiers": routes }))
        .expect("JSON values always serialize to YAML")
}

/// The peers the pool federates with now (`<pool>-peers`; none when
/// Paranoid): each one's level, where it is and the key it signs with.
pub fn render_peers(peers: &[crate::peer_trust::Peer]) -> String {
    let peers: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "site": p.site,
                "host": p.endpoint.host,
                "cidr": p.endpoint.cidr,
                "port": p.endpoint.port,
                "publicKey": p.public_key,
                "trustLevel": p.level,
                // At this instant the pool itself drops the peer to 2.
                "level3Until": p.level3_until,
            })
        })
        .collect();
    serde_yaml::to_string(&json!({ "peers": peers })).expect("JSON values always serialize to YAML")
}

pub fn checksum(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
