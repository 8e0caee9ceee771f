//! `config/samples/` read as the operator's typed API, and the level-3
//! handshake in it verified as the PeerTrust reconciler will.

use cellule_operator::{
    api::{NpuServer, PeerTrust, Pool, WorkerGrant},
    peer_trust::handshake::{self, Statement},
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
    assert_eq!(levels, [3, 2]);
}

#[test]
fn sample_level_3_handshake_verifies() {
    let pool = &samples::<Pool>("pool.yaml", "Pool")[0];
    let lyon = samples::<PeerTrust>("peertrusts.yaml", "PeerTrust")
        .into_iter()
        .find(|p| p.spec.trust_level == 3)
        .unwrap();
    let hs = lyon.spec.handshake.as_ref().unwrap();
    let statement = Statement {
        local_site: pool.spec.federation.site.clone().unwrap(),
        peer_site: lyon.spec.site.clone(),
        peer_public_key: lyon.spec.public_key.clone(),
        not_before: hs.not_before.0,
        not_after: hs.not_after.0,
        nonce: hs.nonce.clone(),
    };
    let local_admin =
        handshake::public_key("admin key", &pool.spec.federation.admin_public_keys[0]).unwrap();
    let peer_admin = handshake::public_key("peer admin key", &hs.peer_admin_public_key).unwrap();
    handshake::verify(
        "localSignature",
        &local_admin,
        &hs.local_signature,
        &statement,
    )
    .unwrap();
    handshake::verify("peerSignature", &peer_admin, &hs.peer_signature, &statement).unwrap();
    // Swapped signers do not verify.
    assert!(handshake::verify("x", &local_admin, &hs.peer_signature, &statement).is_err());
}
