//! The Pool's NetworkPolicies (pure): default deny for every pod of the
//! pool, then the pool's own narrow allowances and its CPU workers'.

use std::collections::BTreeMap;

use crate::{
    names,
    netpol::{self, cidr, dns_egress, egress, ingress, pods, policy, pool_pods, tcp},
    reconcile::labels,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};

use super::{
    build::{CPU_WORKER_PORT, cpu_worker_component, pool_component},
    validate::ValidPool,
};

fn role_pods(pool: &str, role: &str) -> BTreeMap<String, String> {
    let mut labels = pool_pods(pool);
    labels.insert(labels::COMPONENT.into(), role.into());
    labels
}

pub fn pool_policies(valid: &ValidPool) -> Vec<NetworkPolicy> {
    let pool = &valid.pool;
    let spec = &pool.spec;
    let name = &valid.name;
    let dns = || dns_egress(&spec.dns);
    let mut policies = vec![policy(
        pool,
        &names::default_deny(name),
        name,
        pool_pods(name),
        [],
        [],
    )];

    let mut pool_egress = vec![
        dns(),
        egress(
            vec![valid.database.clone()],
            vec![tcp(spec.database.endpoint.port)],
        ),
    ];
    let mut npu_ports: Vec<i32> = valid
        .tiers
        .iter()
        .filter_map(|t| t.npu.as_ref().map(|n| n.port))
        .collect();
    npu_ports.sort_unstable();
    npu_ports.dedup();
    pool_egress.push(egress(
        vec![pods(role_pods(name, "npu-server"))],
        npu_ports.into_iter().map(tcp).collect(),
    ));
    if !spec.cpu_workers.is_empty() {
        pool_egress.push(egress(
            vec![pods(role_pods(name, "cpu-worker"))],
            vec![tcp(CPU_WORKER_PORT)],
        ));
    }
    // The live channel to its JWKS and revocation list: the API server's
    // addresses and port, nothing else there.
    let api_server = &valid.api_server;
    if !api_server.cidrs.is_empty() && !api_server.ports.is_empty() {
        pool_egress.push(egress(
            api_server.cidrs.iter().map(|c| cidr(c)).collect(),
            api_server.ports.iter().copied().map(tcp).collect(),
        ));
    }
    // Trusted peers: their own policy (`peer_policy`).
    for extra in &spec.extra_egress {
        pool_egress.push(egress(vec![cidr(&extra.cidr)], vec![tcp(extra.port)]));
    }
    let pool_ingress = ingress(
        spec.workers.allowed_cidrs.iter().map(|c| cidr(c)).collect(),
        vec![tcp(spec.workers.port)],
    );
    policies.push(policy(
        pool,
        &pool_component(name).name,
        name,
        role_pods(name, "pool"),
        [pool_ingress],
        pool_egress,
    ));
    policies.push(peer_policy(pool, &valid.peers));

    for set in &spec.cpu_workers {
        let worker = cpu_worker_component(valid, &set.name);
        policies.push(policy(
            pool,
            &worker.name,
            name,
            worker.selector(),
            [ingress(
                vec![pods(role_pods(name, "pool"))],
                vec![tcp(CPU_WORKER_PORT)],
            )],
            [dns()],
        ));
    }
    policies
}

/// The pool's egress to its trusted peers, each to its own range and port
/// (none in Paranoid: `peer_trust::peers`). A policy of its own, always
/// present (with no rule when there is no peer), so that it follows the
/// PeerTrusts even while the rest of the Pool is blocked.
pub fn peer_policy(pool: &crate::api::Pool, peers: &[crate::peer_trust::Peer]) -> NetworkPolicy {
    let name = kube::ResourceExt::name_any(pool);
    // Both directions, as every policy of ours: no ingress rule here adds
    // nothing (the pool's ingress is the pool policy's).
    policy(
        pool,
        &names::peers(&name),
        &name,
        role_pods(&name, "pool"),
        [],
        peers.iter().map(|peer| {
            let range = peer.cidr()?;
            egress(vec![cidr(&range)], vec![tcp(peer.endpoint.port)])
        }),
    )
}

/// Ingress for an NpuServer's pods: from its pool's orchestrator only.
pub fn from_pool_pods(pool: &str) -> NetworkPolicyPeer {
    netpol::pods(role_pods(pool, "pool"))
}
