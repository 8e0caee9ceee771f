//! Unit tests of the API types, without a cluster.

use serde_json::{Value, json};

use super::{
    common::Duration,
    pool::{PoolSpec, PrivacyMode, VerificationMode},
};

/// Walks a CRD schema and returns the paths of properties without a
/// description; counts the properties it saw in `seen`.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>, seen: &mut usize) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            *seen += 1;
            let here = format!("{path}.{name}");
            // metadata and apiVersion/kind come from Kubernetes itself.
            let inherited =
                path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
            if !inherited
                && property
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                out.push(here.clone());
            }
            undocumented(property, &here, out, seen);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out, seen);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    for crd in super::crds() {
        let name = crd.metadata.name.clone().unwrap();
        for version in &crd.spec.versions {
            let schema =
                serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let (mut missing, mut seen) = (vec![], 0);
            undocumented(&schema, "", &mut missing, &mut seen);
            // The smallest kind (RevocationList) has 6.
            assert!(seen >= 6, "{name}: the walk saw only {seen} properties");
            assert!(
                missing.is_empty(),
                "{name}: fields without a description: {missing:?}"
            );
        }
    }
}

#[test]
fn a_minimal_pool_gets_the_documented_defaults() {
    let spec: PoolSpec = serde_json::from_value(json!({
        "image": {"reference": "r.example.com/pool:1", "verification": {"keys": [{"secretKeyRef": {"name": "k", "key": "cosign.pub"}}]}},
        "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.0.0.0/24", "port": 5432}},
        "tls": {"name": "tls"},
        "tiers": [{"name": "light", "model": "m", "backend": "Cpu"}],
    }))
    .unwrap();
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.verification.spot_check_percent, 3);
    assert_eq!(spec.verification.cheat_threshold_percent, 30);
    assert_eq!(spec.verification.mode, VerificationMode::Sampled);
    assert_eq!(spec.privacy.mode, PrivacyMode::Balanced);
    assert_eq!(spec.rate_limit.requests_per_minute_per_signer, 60);
    assert_eq!(spec.federation.anti_replay_window, Duration::from_secs(60));
    assert_eq!(spec.workers.heartbeat_interval, Duration::from_secs(300));
    assert_eq!(spec.tokens.default_ttl, Duration::from_secs(720 * 3600));
    assert!(spec.tokens.approval_required);
    assert_eq!(spec.failover.fail_over_after, Duration::from_secs(30));
}

#[test]
fn schema_defaults_match_the_rust_defaults() {
    // The API server fills defaults from the schema; the operator from serde.
    // Both come from the same functions, and this proves it for nested objects.
    let crd = serde_json::to_value(super::Pool::crd_for_tests()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        spec["federation"]["properties"]["antiReplayWindow"]["default"],
        "60s"
    );
    assert_eq!(spec["tokens"]["properties"]["maxTtl"]["default"], "2160h");
    assert_eq!(
        spec["verification"]["properties"]["workersPerRequest"]["default"],
        2
    );
    assert_eq!(
        spec["workers"]["properties"]["heartbeatInterval"]["default"],
        "5m"
    );
}

#[test]
fn durations_parse_like_go_and_print_in_whole_units() {
    for (text, secs, printed) in [
        ("90s", 90, "90s"),
        ("1h30m", 5400, "90m"),
        ("720h", 2_592_000, "720h"),
        ("60s", 60, "60s"),
        ("2m", 120, "2m"),
    ] {
        let d: Duration = text.parse().unwrap();
        assert_eq!(d, Duration::from_secs(secs), "{text}");
        assert_eq!(d.to_string(), printed, "{text}");
    }
    assert!("-5m".parse::<Duration>().is_err());
    assert!("5 minutes".parse::<Duration>().is_err());
    assert_eq!(serde_json::to_value(Duration::from_secs(0)).unwrap(), "0s");
}

#[test]
fn durations_parse_like_go_and_never_panic() {
    use crate::api::common::Duration;
    let secs = |s: &str| s.parse::<Duration>().map(|d| d.0.as_secs_f64());
    assert_eq!(secs("1h30m"), Ok(5400.0));
    assert_eq!(secs("1.5s"), Ok(1.5));
    assert_eq!(secs("720h"), Ok(2_592_000.0));
    assert_eq!(secs("0"), Ok(0.0));
    assert_eq!(secs("250ms"), Ok(0.25));
    for bad in [
        "0ns-1ns",
        "59051853007042695142s",
        "562959859870450546m",
        "18446744073709551616s",
        "-1s",
        "",
        "5",
        "1d",
        "1..5s",
        "h",
    ] {
        assert!(bad.parse::<Duration>().is_err(), "{bad:?}");
    }
    // What the operator writes, it reads back.
    let largest = Duration(std::time::Duration::from_secs(u64::MAX));
    assert_eq!(largest.to_string().parse::<Duration>(), Ok(largest));
}

/// A Pool whose status an earlier version wrote still reads: its
/// `tiers[].serving` is pruned by the API server on read (not in the
/// schema), leaving no `servedBy` and no reason. An unreadable object
/// would keep the Pool cache from ever syncing.
#[test]
fn a_status_written_by_an_earlier_version_still_reads() {
    let pool: crate::api::Pool = serde_json::from_value(serde_json::json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "Pool",
        "metadata": {"name": "paris", "namespace": "site"},
        "spec": {
            "image": {"reference": "r.local/p:1", "verification": {"keys": [{"name": "k", "publicKey": "x"}]}},
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.1.0.0/16", "port": 5432}},
            "tls": {"name": "tls"},
            "tiers": [{"name": "heavy", "model": "m", "backend": "Npu", "npuServerRef": {"name": "heavy"}}],
        },
        "status": {"tiers": [{"name": "heavy", "via": "light"}]},
    }))
    .unwrap();
    let tier = &pool.status.unwrap().tiers[0];
    assert_eq!(tier.served_by, crate::api::pool::TierServing::Npu);
    assert_eq!(tier.reason, "");
}
