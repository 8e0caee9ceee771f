use super::*;

const POOL: &str = r#"
apiVersion: cellule.ai/v1alpha1
kind: Pool
metadata: {name: paris, namespace: site, generation: 3}
spec:
  image:
    reference: registry.intra/cellule/pool:1.4.2
    verification: {keys: [{configMapKeyRef: {name: cellule-signing, key: cosign.pub}}]}
  replicas: 2
  database: {dsnSecretRef: {name: paris-db, key: dsn}, endpoint: {cidr: 10.0.0.0/24, port: 5432}}
  tls: {name: paris-tls}
  tiers:
    - {name: light, model: m7b, backend: Cpu}
    - {name: heavy, model: q30b, backend: Npu, npuServerRef: {name: heavy}, fallbackTier: light}
status:
  observedGeneration: 2
  readyReplicas: 1
  conditions:
    - {type: Ready, status: "False", reason: NpuUnavailable, message: "tier heavy fails over", lastTransitionTime: "2026-11-26T10:00:00Z"}
    - {type: ImageVerified, status: "True", reason: Verified, message: "pool verified", lastTransitionTime: "2026-11-26T10:00:00Z"}
  image: {name: pool, reference: registry.intra/cellule/pool:1.4.2, digest: "sha256:abc123", shortDigest: abc123, verifiedBy: "ConfigMap cellule-signing[cosign.pub]", verifiedAt: "2026-11-26T11:00:00Z"}
  tiers:
    - {name: light, servedBy: Cpu, model: m7b, reason: CpuTier}
    - {name: heavy, servedBy: CpuFailover, via: light, model: m7b, reason: NpuUnavailable, since: "2026-11-26T11:30:00Z",
       npu: {server: heavy, ready: 0, required: 1, healthy: false}}
  routing: heavy=light light=cpu
  signingKeys:
    - {kid: k1, state: Signing, publishedAt: "2026-11-20T12:00:00Z"}
"#;

fn grant(name: &str, pool: &str, phase: &str, token_exp: Option<&str>) -> WorkerGrant {
    let mut value = serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
        "metadata": {"name": name, "namespace": "site"},
        "spec": {"poolRef": {"name": pool}, "workerId": format!("pc-{name}"), "owner": "o",
                 "tiers": ["light"], "ttl": "24h", "requestedBy": "a"},
        "status": {"phase": phase},
    });
    if let Some(exp) = token_exp {
        value["status"]["token"] = serde_json::json!({
            "secretName": format!("{name}-token"), "jti": format!("jti-{name}"), "keyId": "k1",
            "sha256": "00", "issuedAt": "2026-11-26T00:00:00Z", "expiresAt": exp,
        });
    }
    serde_json::from_value(value).unwrap()
}

fn peer(name: &str, requested: i32, effective: i32, until: Option<&str>) -> PeerTrust {
    let mut value = serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
        "metadata": {"name": name, "namespace": "site"},
        "spec": {"poolRef": {"name": "paris"}, "site": name, "endpoint": {"host": "10.1.0.1", "port": 8443},
                 "publicKey": "NHdy5oyjZ4b93GVLgWzYzLu7GAPq+pdFtK3hGTfbJaM=", "trustLevel": requested},
        "status": {"effectiveTrustLevel": effective, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Trusted", "message": "", "lastTransitionTime": "2026-11-26T10:00:00Z"}]},
    });
    if let Some(until) = until {
        value["status"]["level3Until"] = serde_json::json!(until);
    }
    serde_json::from_value(value).unwrap()
}

fn now() -> Timestamp {
    "2026-11-26T12:00:00Z".parse().unwrap()
}

fn screen() -> String {
    let pool: Pool = serde_yaml::from_str(POOL).unwrap();
    let grants = [
        grant("fresh", "paris", "Active", Some("2026-12-20T00:00:00Z")),
        grant("soon", "paris", "Active", Some("2026-11-26T20:00:00Z")),
        grant("gone", "paris", "Revoked", None),
        grant("paused", "paris", "Suspended", None),
        grant("elsewhere", "lyon", "Revoked", None),
    ];
    let peers = [
        peer("lyon", 3, 3, Some("2027-01-01T00:00:00Z")),
        peer("nice", 2, 1, None),
    ];
    render(
        &pool,
        &grants,
        &peers,
        now(),
        Duration::from_secs(24 * 3600),
    )
}

fn line<'a>(screen: &'a str, first: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no {first} line in\n{screen}"))
}

#[test]
fn conditions_and_a_stale_status_are_shown() {
    let screen = screen();
    assert!(
        screen.starts_with("Pool paris (namespace site)\n"),
        "{screen}"
    );
    assert!(screen.contains("Replicas: 1/2 ready (status is of generation 2, spec is at 3"));
    let ready: Vec<_> = line(&screen, "Ready").split_whitespace().collect();
    assert_eq!(ready[..3], ["Ready", "False", "NpuUnavailable"]);
    assert!(line(&screen, "Ready").ends_with("tier heavy fails over"));
    assert!(line(&screen, "Stalled").contains("absent: not stalled"));
}

#[test]
fn tiers_show_what_serves_them() {
    let screen = screen();
    assert!(screen.contains("Tiers (routing: heavy=light light=cpu)"));
    let heavy = line(&screen, "heavy");
    assert!(heavy.contains("CPU fail-over via light"), "{heavy}");
    assert!(
        heavy.contains("heavy 0/1 unhealthy") && heavy.contains("30m ago"),
        "{heavy}"
    );
    assert!(line(&screen, "light").contains(" CPU "));
}

#[test]
fn images_and_keys() {
    let screen = screen();
    let pool = line(&screen, "pool");
    assert!(
        pool.contains("sha256:abc123")
            && pool.contains("ConfigMap cellule-signing[cosign.pub]")
            && pool.ends_with("60m ago"),
        "{pool}"
    );
    assert!(line(&screen, "ImageVerified").contains("True"));
    assert!(line(&screen, "k1").contains("Signing"));
}

#[test]
fn only_grants_needing_attention_of_this_pool_are_listed() {
    let screen = screen();
    assert!(
        screen.contains("Grants: 4 of this pool, 2 active"),
        "{screen}"
    );
    assert!(line(&screen, "soon").contains("token expires soon"));
    assert!(line(&screen, "soon").contains("in 8h"));
    assert!(line(&screen, "gone").contains("Revoked"));
    assert!(line(&screen, "paused").contains("suspend --undo"));
    assert!(!screen.contains("fresh"), "{screen}");
    assert!(
        !screen.contains("elsewhere"),
        "another pool's grant: {screen}"
    );
}

#[test]
fn peers_show_requested_and_effective_levels() {
    let screen = screen();
    let lyon: Vec<_> = line(&screen, "lyon").split_whitespace().collect();
    assert_eq!(
        lyon,
        [
            "lyon",
            "lyon",
            "3",
            "3",
            "2027-01-01T00:00:00Z",
            "True",
            "Trusted"
        ]
    );
    let nice: Vec<_> = line(&screen, "nice").split_whitespace().collect();
    assert_eq!(nice[..5], ["nice", "nice", "2", "1", "-"]);
}

#[test]
fn a_pool_without_status_says_so() {
    let mut pool: Pool = serde_yaml::from_str(POOL).unwrap();
    pool.status = None;
    let screen = render(&pool, &[], &[], now(), Duration::from_secs(3600));
    assert!(screen.contains("Replicas: ?/2 ready"));
    assert!(line(&screen, "Ready").contains("Unknown"));
    assert!(screen.contains("Tiers (routing: not reported yet)\n  none reported yet"));
    assert!(screen.contains("none verified yet"));
    assert!(screen.contains("Peers: 0"));
}

#[test]
fn columns_align() {
    let rows = vec![
        vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
        vec![
            "long".to_owned(),
            "x".to_owned(),
            "last column unpadded".to_owned(),
        ],
    ];
    assert_eq!(
        table(&rows, 2),
        "  A     BB  C\n  long  x   last column unpadded\n"
    );
}
