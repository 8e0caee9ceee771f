//! What a Pool renders of its PeerTrusts.

use super::*;
use crate::api::{PeerTrustSpec, common::LocalObjectRef};

fn pool(mode: PrivacyMode) -> Pool {
    let mut pool: Pool = serde_json::from_value(serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "Pool",
        "metadata": {"name": "paris", "namespace": "ns"},
        "spec": {
            "image": {"reference": "r/pool:1", "verification": {"keys": [{"configMapKeyRef": {"name": "k", "key": "k"}}]}},
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.0.0.0/24", "port": 5432}},
            "tls": {"name": "tls"},
            "tiers": [{"name": "light", "model": "m", "backend": "Cpu"}],
        },
    }))
    .unwrap();
    pool.spec.privacy.mode = mode;
    pool
}

fn trust(name: &str, pool: &str, host: &str, level: Option<i32>, judged: bool) -> PeerTrust {
    let mut peer = PeerTrust::new(
        name,
        PeerTrustSpec {
            pool_ref: LocalObjectRef { name: pool.into() },
            site: name.into(),
            endpoint: PeerEndpoint {
                host: Some(host.into()),
                cidr: None,
                port: 8443,
            },
            public_key: "k".into(),
            trust_level: 2,
            peer_pool: None,
            handshake: None,
            requested_by: None,
            approved_by: None,
        },
    );
    peer.metadata.namespace = Some("ns".into());
    peer.metadata.generation = Some(2);
    let mut status = PeerTrustStatus {
        effective_trust_level: level,
        ..Default::default()
    };
    status.common.observed_generation = Some(if judged { 2 } else { 1 });
    peer.status = Some(status);
    peer
}

#[test]
fn a_pool_renders_its_judged_trusted_peers_in_order() {
    let trusts = [
        trust("marseille", "paris", "10.40.0.10", Some(1), true),
        trust("lyon", "paris", "fd00::10", Some(2), true),
        trust("nantes", "paris", "10.50.0.1", Some(0), true),
        trust("lille", "paris", "10.60.0.1", Some(2), false),
        trust("other", "rome", "10.70.0.1", Some(2), true),
        trust("unjudged", "paris", "10.80.0.1", None, true),
    ];
    let peers = peers(&pool(PrivacyMode::Balanced), &trusts);
    let seen: Vec<(&str, i32, Option<String>)> = peers
        .iter()
        .map(|p| (p.name.as_str(), p.level, p.cidr()))
        .collect();
    assert_eq!(
        seen,
        [
            ("lyon", 2, Some("fd00::10/128".into())),
            ("marseille", 1, Some("10.40.0.10/32".into())),
        ],
        "a refused, a stale and an unjudged PeerTrust, and another pool's, are left out"
    );
}

#[test]
fn a_paranoid_pool_renders_no_peer_whatever_the_statuses_say() {
    let trusts = [trust("lyon", "paris", "10.30.0.1", Some(3), true)];
    assert!(peers(&pool(PrivacyMode::Paranoid), &trusts).is_empty());
}

#[test]
fn a_peer_being_deleted_is_left_out() {
    let mut lyon = trust("lyon", "paris", "10.30.0.1", Some(2), true);
    lyon.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    assert!(peers(&pool(PrivacyMode::Balanced), [&lyon]).is_empty());
}

#[test]
fn egress_goes_to_the_cidr_when_given() {
    let mut endpoint = PeerEndpoint {
        host: Some("pool.lyon.example.com".into()),
        cidr: Some("10.30.0.0/24".into()),
        port: 1,
    };
    assert_eq!(egress_cidr(&endpoint).as_deref(), Some("10.30.0.0/24"));
    endpoint.cidr = None;
    assert_eq!(
        egress_cidr(&endpoint),
        None,
        "a DNS name alone gives no range"
    );
}
