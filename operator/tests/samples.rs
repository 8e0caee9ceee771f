//! `config/samples/` read as the operator's typed API, and the level-3
//! handshake in it verified as the PeerTrust reconciler will.

use cellule_operator::{
    api::{NpuServer, PeerTrust, Pool, WorkerGrant},
    peer_trust::{self, handshake},
};
use serde::Deserialize;

fn samples<T: for<'de> Deserialize<'de>>(file: &str, kind: &str) -> Vec<T> {
    let text = std::fs::read_to_string(format!(
        "{}/../config/samples/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .map(Result::unwrap)
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .map(|doc| serde_yaml::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

#[test]
fn samples_are_a_complete_site() {
    let pools: Vec<Pool> = samples("pool.yaml", "Pool");
    let npus: Vec<NpuServer> = samples("npuserver.yaml", "NpuServer");
    let grants: Vec<WorkerGrant> = samples("workergrants.yaml", "WorkerGrant");
    let peers: Vec<PeerTrust> = samples("peertrusts.yaml", "PeerTrust");
    assert_eq!(
        (pools.len(), npus.len(), grants.len(), peers.len()),
        (1, 1, 2, 2)
    );
    assert!(!pools[0].spec.cpu_workers.is_empty());
    let levels: Vec<i32> = peers.iter().map(|p| p.spec.trust_level).collect();
    assert_eq!(levels, [2, 1]);
}

#[test]
fn sample_peers_are_routable_and_the_pool_can_be_named_in_a_handshake() {
    let pool = &samples::<Pool>("pool.yaml", "Pool")[0];
    let federation = &pool.spec.federation;
    assert!(federation.site.is_some() && federation.endpoint.is_some());
    assert!(!federation.admin_public_keys.is_empty());
    for peer in samples::<PeerTrust>("peertrusts.yaml", "PeerTrust") {
        assert!(
            peer_trust::egress_cidr(&peer.spec.endpoint).is_some(),
            "{}: no range for egress",
            peer.spec.site
        );
        handshake::public_key("publicKey", &peer.spec.public_key).unwrap();
    }
}
