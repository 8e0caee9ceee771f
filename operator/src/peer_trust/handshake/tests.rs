use super::*;

/// Committed test vectors: fixed seeds, the statement they make, its
/// canonical text, and every signature (Ed25519 is deterministic). Another
/// implementation of the handshake checks itself against these.
const VECTORS: &str = include_str!("vectors.json");

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
#[serde(rename_all = "camelCase")]
struct Vectors {
    /// Seeds (base64) of the keys, and their public halves.
    paris_admin_seed: String,
    lyon_admin_seed: String,
    paris_pool_seed: String,
    lyon_pool_seed: String,
    paris_admin_key: String,
    lyon_admin_key: String,
    paris_pool_key: String,
    lyon_pool_key: String,
    canonical: String,
    digest: String,
    paris_admin_signature: String,
    lyon_admin_signature: String,
    /// Paris's pool vouching for Paris's admin, and Lyon's for Lyon's.
    paris_countersignature: String,
    lyon_countersignature: String,
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn party(site: &str, namespace: &str, pool: &str, key: &SigningKey, cidr: &str) -> Party {
    Party {
        site: site.into(),
        namespace: namespace.into(),
        pool: pool.into(),
        pool_key: key.verifying_key(),
        host: Some(format!("pool.{site}.intra.example.com")),
        cidr: Some(cidr.into()),
        port: 8443,
    }
}

fn statement() -> Statement {
    Statement {
        parties: [
            party("paris", "cellule", "paris", &key(3), "10.20.0.0/24"),
            party("lyon", "cellule", "lyon", &key(4), "10.30.0.0/24"),
        ],
        not_before: "2026-11-01T00:00:00Z".parse().unwrap(),
        not_after: "2027-10-31T00:00:00Z".parse().unwrap(),
        nonce: "a6605d304af5cf8bac6e8ce132f8cd99".into(),
    }
}

fn computed() -> Vectors {
    let s = statement();
    let b64 = |k: &SigningKey| STANDARD.encode(k.as_bytes());
    let public = |k: &SigningKey| encode(&k.verifying_key());
    let (paris_admin, lyon_admin, paris_pool, lyon_pool) = (key(1), key(2), key(3), key(4));
    Vectors {
        paris_admin_seed: b64(&paris_admin),
        lyon_admin_seed: b64(&lyon_admin),
        paris_pool_seed: b64(&paris_pool),
        lyon_pool_seed: b64(&lyon_pool),
        paris_admin_key: public(&paris_admin),
        lyon_admin_key: public(&lyon_admin),
        paris_pool_key: public(&paris_pool),
        lyon_pool_key: public(&lyon_pool),
        canonical: s.canonical().unwrap(),
        digest: s.digest().unwrap(),
        paris_admin_signature: sign(&paris_admin, &s).unwrap(),
        lyon_admin_signature: sign(&lyon_admin, &s).unwrap(),
        paris_countersignature: countersign(&paris_pool, &paris_admin.verifying_key(), &s).unwrap(),
        lyon_countersignature: countersign(&lyon_pool, &lyon_admin.verifying_key(), &s).unwrap(),
    }
}

#[test]
fn the_committed_vectors_hold() {
    let committed: Vectors = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(computed(), committed);
}

/// Rewrites vectors.json; run on purpose only, when the format changes
/// (and bump STATEMENT_VERSION then).
#[test]
#[ignore]
fn write_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/peer_trust/handshake/vectors.json"
    );
    let text = serde_json::to_string_pretty(&computed()).unwrap();
    std::fs::write(path, text + "\n").unwrap();
}

#[test]
fn canonical_form_is_stable_and_readable() {
    let lines: Vec<String> = statement()
        .canonical()
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines[0], STATEMENT_VERSION);
    assert_eq!(lines[1], "level=3");
    // Lyon sorts before Paris: `a` is Lyon whichever side builds it.
    assert_eq!(lines[2], "a.site=lyon");
    assert_eq!(lines[3], "a.pool=cellule/lyon");
    assert!(lines[4].starts_with("a.pool-key=sha256:"), "{}", lines[4]);
    assert_eq!(lines[8], "b.site=paris");
    assert_eq!(
        lines.last().unwrap(),
        "nonce=a6605d304af5cf8bac6e8ce132f8cd99"
    );
}

#[test]
fn both_sites_build_the_same_bytes() {
    let mut swapped = statement();
    swapped.parties.reverse();
    assert_eq!(swapped.canonical(), statement().canonical());
}

#[test]
fn every_field_is_signed() {
    let admin = key(1);
    let signature = sign(&admin, &statement()).unwrap();
    let public = admin.verifying_key();
    assert_eq!(verify("sig", &public, &signature, &statement()), Ok(()));
    type Change = Box<dyn Fn(&mut Statement)>;
    let changes: Vec<Change> = vec![
        Box::new(|s| s.parties[1].site = "lyon2".into()),
        Box::new(|s| s.parties[1].namespace = "other".into()),
        Box::new(|s| s.parties[1].pool = "other".into()),
        Box::new(|s| s.parties[1].pool_key = key(9).verifying_key()),
        Box::new(|s| s.parties[0].pool_key = key(9).verifying_key()),
        Box::new(|s| s.parties[1].host = None),
        Box::new(|s| s.parties[1].cidr = Some("10.30.0.0/25".into())),
        Box::new(|s| s.parties[0].port = 8444),
        Box::new(|s| s.not_before = "2026-11-01T00:00:01Z".parse().unwrap()),
        Box::new(|s| s.not_after = "2027-10-31T00:00:01Z".parse().unwrap()),
        Box::new(|s| s.nonce.push('x')),
    ];
    for (i, change) in changes.iter().enumerate() {
        let mut changed = statement();
        change(&mut changed);
        assert_eq!(
            verify("sig", &public, &signature, &changed),
            Err(HandshakeError::BadSignature { what: "sig" }),
            "change {i}"
        );
    }
}

#[test]
fn fields_cannot_shift_between_lines() {
    // A value may not smuggle a line of its own.
    let mut s = statement();
    s.parties[0].host = Some("evil\nnonce=x".into());
    assert!(matches!(s.canonical(), Err(HandshakeError::Unprintable(_))));
    // An empty host and a host moved into the cidr differ.
    let mut a = statement();
    a.parties[0].host = None;
    let mut b = statement();
    b.parties[0].host = Some(String::new());
    assert_eq!(a.canonical(), b.canonical(), "absent and empty are one");
    let mut c = statement();
    c.parties[0].cidr = a.parties[0].host.clone();
    assert_ne!(a.canonical(), c.canonical());
}

#[test]
fn a_countersignature_vouches_for_one_admin_key() {
    let (pool, admin, other) = (key(3), key(1), key(7));
    let s = statement();
    let signature = countersign(&pool, &admin.verifying_key(), &s).unwrap();
    let pool_key = pool.verifying_key();
    assert_eq!(
        verify_countersignature(&pool_key, &admin.verifying_key(), &signature, &s),
        Ok(())
    );
    assert!(verify_countersignature(&pool_key, &other.verifying_key(), &signature, &s).is_err());
    // Domain separation: a countersignature is not an admin signature of
    // the statement, nor the other way round.
    assert!(verify("sig", &pool_key, &signature, &s).is_err());
    let admin_signature = sign(&pool, &s).unwrap();
    assert!(
        verify_countersignature(&pool_key, &admin.verifying_key(), &admin_signature, &s).is_err()
    );
}

#[test]
fn weak_and_malformed_keys_are_refused_without_echoing_them() {
    let zero = STANDARD.encode([0u8; 32]);
    assert!(public_key("peer key", &zero).is_err());
    // The identity point (small order): any signature would verify.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(
        public_key("peer key", &STANDARD.encode(identity)),
        Err(HandshakeError::WeakKey { what: "peer key" })
    );
    let err = public_key("peer key", "c2hvcnQ=").unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer key is not the base64 of a 32-byte Ed25519 public key"
    );
    let err = signing_key("not base64!").unwrap_err();
    assert!(!err.to_string().contains("not base64!"));
}

#[test]
fn fingerprints_are_sha256_of_the_key_bytes() {
    let public = key(3).verifying_key();
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(public.as_bytes())));
    assert_eq!(fingerprint(&public), expected);
    assert_eq!(fingerprint(&public).len(), 7 + 64);
}

/// The Pool and PeerTrust of Paris that make `statement()`.
fn manifests() -> (crate::api::Pool, crate::api::PeerTrust) {
    let pool = serde_json::from_value(serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "Pool",
        "metadata": {"name": "paris", "namespace": "cellule"},
        "spec": {
            "image": {"reference": "r/pool:1", "verification": {"keys": []}},
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.0.0.0/24", "port": 5432}},
            "tls": {"name": "tls"},
            "tiers": [{"name": "light", "model": "m", "backend": "Cpu"}],
            "federation": {"site": "paris", "endpoint": {"host": "pool.paris.intra.example.com", "cidr": "10.20.0.0/24", "port": 8443}},
        },
        "status": {"federation": {"publicKey": encode(&key(3).verifying_key()), "fingerprint": ""}},
    }))
    .unwrap();
    let peer = serde_json::from_value(serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
        "metadata": {"name": "lyon", "namespace": "cellule"},
        "spec": {
            "poolRef": {"name": "paris"}, "site": "lyon", "peerPool": {"namespace": "cellule", "name": "lyon"},
            "endpoint": {"host": "pool.lyon.intra.example.com", "cidr": "10.30.0.0/24", "port": 8443},
            "publicKey": encode(&key(4).verifying_key()), "trustLevel": 2,
            "handshake": {"nonce": "a6605d304af5cf8bac6e8ce132f8cd99",
                          "notBefore": "2026-11-01T00:00:00Z", "notAfter": "2027-10-31T00:00:00Z"},
        },
    }))
    .unwrap();
    (pool, peer)
}

#[test]
fn the_statement_of_a_pool_and_its_peer_trust() {
    let (pool, peer) = manifests();
    assert_eq!(
        statement_of(&pool, &peer).unwrap().canonical(),
        statement().canonical()
    );
}

#[test]
fn a_statement_names_what_is_missing() {
    let (pool, peer) = manifests();
    let mut no_site = pool.clone();
    no_site.spec.federation.site = None;
    assert_eq!(
        statement_of(&no_site, &peer).unwrap_err().to_string(),
        "the Pool has no spec.federation.site"
    );
    let mut no_status = pool.clone();
    no_status.status = None;
    assert!(
        statement_of(&no_status, &peer)
            .unwrap_err()
            .to_string()
            .contains("status.federation")
    );
    let mut no_handshake = peer.clone();
    no_handshake.spec.handshake = None;
    assert!(
        statement_of(&pool, &no_handshake)
            .unwrap_err()
            .to_string()
            .starts_with("the PeerTrust has no spec.handshake")
    );
    let mut weak = peer;
    weak.spec.public_key = STANDARD.encode([0u8; 32]);
    assert!(matches!(
        statement_of(&pool, &weak),
        Err(StatementError::Key(_))
    ));
}
