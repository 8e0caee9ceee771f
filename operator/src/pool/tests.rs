//! Unit tests of the Pool builders, without a cluster.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ObjectMeta;

use std::sync::Arc;

use super::{
    build,
    validate::{self, References, ValidPool},
};
use crate::{
    api::{NpuServer, Pool},
    pool::routing,
    routing::health::Member,
};

fn sample_pool() -> Pool {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/pool.yaml"
    ))
    .unwrap();
    let mut pool: Pool = serde_yaml::from_str(&text).unwrap();
    pool.metadata = ObjectMeta {
        name: Some("paris".into()),
        namespace: Some("site".into()),
        uid: Some("0000-uid".into()),
        ..Default::default()
    };
    pool
}

/// The caches as a test wants them: every Secret exists, and every
/// NpuServer the pool names is its own (or none exists).
pub(super) struct Fake(pub bool);

impl References for Fake {
    fn secret_exists(&self, _: &str) -> bool {
        true
    }
    fn npu_server(&self, name: &str) -> Option<Arc<NpuServer>> {
        if !self.0 {
            return None;
        }
        let npu: NpuServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "cellule.ai/v1alpha1",
            "kind": "NpuServer",
            "metadata": {"name": name, "namespace": "site"},
            "spec": {"poolRef": {"name": "paris"}, "image": {"reference": "registry.local/npu:1", "verification": {"keys": [{"name": "k", "publicKey": "x"}]}}, "model": "m", "port": 8000},
        }))
        .unwrap();
        Some(Arc::new(npu))
    }
}

fn valid(pool: &Pool, npu_exists: bool) -> ValidPool {
    validate::validate(pool, &Fake(npu_exists)).unwrap()
}

const NOW: i64 = 1_800_000_000;

/// `n` pods, ready or not since `since`.
fn members(prefix: &str, n: usize, ready: bool, since: i64) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            pod: format!("{prefix}-{i}"),
            ready,
            since,
            ip: Some(format!("10.244.{}.{i}", prefix.len())),
            node: Some("node".into()),
        })
        .collect()
}

/// The sample's NPU server `heavy` with `npu_ready` of its 2 pods ready,
/// and its CPU workers (tier `light`) with 2 ready.
fn observed(npu_ready: usize) -> routing::Observed {
    let mut npu = members("npu", npu_ready, true, NOW - 600);
    npu.extend(members("npu-down", 2 - npu_ready, false, NOW - 600));
    routing::Observed {
        npu: [("heavy".to_owned(), npu)].into(),
        cpu: [("light".to_owned(), members("cpu", 2, true, NOW - 600))].into(),
    }
}

fn desired_with(valid: &ValidPool, observed: &routing::Observed) -> build::Desired {
    let routing = routing::route(routing::Scope::of(valid), observed, &[], NOW);
    build::desired(valid, &routing, &super::all_verified(&valid.pool))
}

fn desired(pool: &Pool) -> build::Desired {
    desired_with(&valid(pool, true), &observed(2))
}

#[test]
fn every_pod_passes_pod_security_restricted() {
    for deployment in desired(&sample_pool()).deployments {
        let name = deployment.metadata.name.clone().unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        // Only the pool's own pod holds a token: its live channel.
        let token = name == "paris-pool";
        assert_eq!(pod.automount_service_account_token, Some(token), "{name}");
        for container in pod.containers {
            let sc = container.security_context.unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        }
    }
}

#[test]
fn a_config_change_rolls_the_deployment_and_routing_does_not() {
    let checksum = |d: &build::Desired| {
        d.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[build::CONFIG_CHECKSUM]
            .clone()
    };
    let pool = sample_pool();
    let before = checksum(&desired(&pool));
    let mut changed = pool.clone();
    changed.spec.rate_limit.requests_per_minute_per_signer = 30;
    assert_ne!(checksum(&desired(&changed)), before);

    let routed = desired_with(&valid(&pool, true), &observed(0));
    assert_ne!(
        routed.config_maps,
        desired(&pool).config_maps,
        "the routing ConfigMap follows"
    );
    assert_eq!(
        checksum(&routed),
        before,
        "NPU health must not restart the pool"
    );
}

#[test]
fn pdb_only_with_more_than_one_replica() {
    let mut pool = sample_pool();
    assert_eq!(desired(&pool).pod_disruption_budgets.len(), 1);
    pool.spec.replicas = 1;
    assert!(desired(&pool).pod_disruption_budgets.is_empty());
}

fn all_policies(pool: &Pool) -> Vec<NetworkPolicy> {
    desired(pool).network_policies
}

#[test]
fn no_policy_rule_allows_everything() {
    let mut pool = sample_pool();
    pool.spec.extra_egress.push(crate::api::pool::EgressRule {
        name: "siem".into(),
        cidr: "10.9.0.0/16".into(),
        port: 514,
    });
    for policy in all_policies(&pool) {
        let spec = policy.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
        for rule in spec.egress.unwrap_or_default() {
            let to = rule.to.unwrap();
            assert!(!to.is_empty());
            for peer in to {
                assert!(
                    peer.pod_selector.is_some() || peer.ip_block.is_some(),
                    "a peer with only a namespace selector"
                );
                if let Some(block) = peer.ip_block {
                    assert!(!block.cidr.ends_with("/0"), "{}", block.cidr);
                }
            }
            assert!(!rule.ports.unwrap().is_empty());
        }
        for rule in spec.ingress.unwrap_or_default() {
            assert!(!rule.from.unwrap().is_empty());
        }
    }
}

#[test]
fn default_deny_covers_every_pod_of_the_pool() {
    let deny = all_policies(&sample_pool())
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("paris-default-deny"))
        .unwrap();
    let spec = deny.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap(),
        [("cellule.ai/pool".to_owned(), "paris".to_owned())].into()
    );
    assert!(spec.ingress.is_none() && spec.egress.is_none());
}

#[test]
fn routing_summary_reads_for_on_call() {
    let pool = sample_pool();
    let summary = |valid: &ValidPool, observed: &routing::Observed| {
        crate::routing::summary(
            &routing::route(routing::Scope::of(valid), observed, &[], NOW).tiers(),
        )
    };
    assert_eq!(
        summary(&valid(&pool, true), &observed(2)),
        "light=cpu heavy=npu"
    );
    // failOverAfter is 30s in the sample; the pods have been down 600s.
    assert_eq!(
        summary(&valid(&pool, true), &observed(0)),
        "light=cpu heavy=cpu(failover)"
    );
    assert_eq!(
        summary(&valid(&pool, false), &routing::Observed::default()),
        "light=cpu heavy=npu",
        "a missing server fails over only after failOverAfter from when it was seen missing"
    );
}

#[test]
fn the_rendered_config_names_the_issuer_and_audience_tokens_carry() {
    let pool = sample_pool();
    let valid = valid(&pool, true);
    let config: serde_json::Value =
        serde_yaml::from_str(&super::config::render_config(&valid)).unwrap();
    let expected = crate::tokens::audience(&valid.namespace, &valid.name);
    assert_eq!(config["tokens"]["audience"], expected.as_str());
    assert_eq!(config["tokens"]["issuer"], expected.as_str());
    assert!(expected.contains('/'), "{expected}");
}

#[test]
fn the_live_channel_reads_its_jwks_routing_and_revocation_lists_and_reaches_only_the_api_server() {
    let pool = sample_pool();
    let desired = desired(&pool);
    let rules: Vec<_> = desired.roles[0]
        .rules
        .iter()
        .flatten()
        .map(|r| {
            (
                r.api_groups.clone().unwrap(),
                r.resources.clone().unwrap(),
                r.resource_names.clone(),
                r.verbs.clone(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            (
                vec![String::new()],
                vec!["configmaps".to_owned()],
                Some(vec![
                    "paris-jwks".to_owned(),
                    "paris-routing".into(),
                    "paris-peers".into()
                ]),
                vec!["get".to_owned(), "list".into(), "watch".into()],
            ),
            (
                vec![String::new()],
                vec!["configmaps".to_owned()],
                Some(vec!["paris-peer-reports".to_owned()]),
                vec!["get".to_owned(), "patch".into()],
            ),
            (
                vec!["cellule.ai".to_owned()],
                vec!["revocationlists".to_owned()],
                None,
                vec!["get".to_owned(), "list".into(), "watch".into()],
            ),
        ]
    );
    let binding = &desired.role_bindings[0];
    assert_eq!(
        binding.role_ref.name,
        desired.roles[0].metadata.name.clone().unwrap()
    );
    assert_eq!(binding.subjects.as_ref().unwrap()[0].name, "paris-pool");

    // Without known API server addresses there is no rule; with them, one
    // rule of exactly those addresses and ports.
    let count = |valid: &ValidPool| {
        super::netpol::pool_policies(valid)
            .iter()
            .flat_map(|p| p.spec.as_ref().unwrap().egress.clone().unwrap_or_default())
            .filter(|rule| {
                rule.to.iter().flatten().any(|peer| {
                    peer.ip_block
                        .as_ref()
                        .is_some_and(|b| b.cidr == "10.10.255.1/32")
                })
            })
            .count()
    };
    let mut valid = valid(&pool, true);
    assert_eq!(count(&valid), 0);
    valid.api_server = super::validate::ApiServer {
        cidrs: vec!["10.10.255.1/32".into()],
        ports: vec![6443],
    };
    assert_eq!(count(&valid), 1);
}

#[test]
fn each_trusted_peer_gets_its_own_range_and_port_in_egress_and_config() {
    let pool = sample_pool();
    let mut valid = valid(&pool, true);
    let rules = |valid: &ValidPool| -> Vec<(String, i32)> {
        super::netpol::pool_policies(valid)
            .iter()
            .flat_map(|p| p.spec.as_ref().unwrap().egress.clone().unwrap_or_default())
            .filter_map(|rule| {
                let to = rule.to?;
                let block = to.first()?.ip_block.clone()?;
                let port = match rule.ports?.first()?.port.clone()? {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p,
                    _ => return None,
                };
                Some((block.cidr, port))
            })
            .collect()
    };
    let before = rules(&valid);
    valid.peers = vec![crate::peer_trust::Peer {
        name: "lyon".into(),
        site: "lyon".into(),
        endpoint: crate::api::peer_trust::PeerEndpoint {
            host: Some("10.30.0.7".into()),
            cidr: None,
            port: 9443,
        },
        public_key: "k".into(),
        level: 3,
        level3_until: None,
    }];
    let after = rules(&valid);
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.contains(&("10.30.0.7/32".into(), 9443)), "{after:?}");
    // Read live by the pool, beside its config, which does not change
    // (a change of trust never restarts the pool).
    let config = super::config::render_config(&valid);
    valid.peers.clear();
    assert_eq!(super::config::render_config(&valid), config);
    let map = super::build::peers_config_map(
        &pool,
        &[crate::peer_trust::Peer {
            name: "lyon".into(),
            site: "lyon".into(),
            endpoint: Default::default(),
            public_key: "k".into(),
            level: 3,
            level3_until: None,
        }],
    );
    assert_eq!(map.metadata.name.as_deref(), Some("paris-peers"));
    let peers: serde_json::Value =
        serde_yaml::from_str(&map.data.unwrap()[super::config::PEERS_KEY]).unwrap();
    assert_eq!(peers["peers"][0]["name"], "lyon");
    assert_eq!(peers["peers"][0]["trustLevel"], 3);
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1);
}
