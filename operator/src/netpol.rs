//! NetworkPolicy building blocks (pure). Every pod of a pool is selected
//! by a default-deny policy; the policies here only ever add narrow
//! allowances. No rule is ever built without a peer or a port (the builders
//! return `None` instead: fail closed), and CIDRs of 0.0.0.0/0 are refused
//! at admission.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::Resource;

use crate::{api::pool::DnsSpec, reconcile::labels, workload};

pub fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

pub fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

fn udp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("UDP".into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

/// Pods in this namespace with these labels.
pub fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(labels)),
        ..Default::default()
    }
}

pub fn cidr(cidr: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.into(),
            except: None,
        }),
        ..Default::default()
    }
}

/// DNS to the cluster DNS only (pods chosen by labels, and/or IP ranges),
/// UDP and TCP on each port. `None` when the spec names no destination
/// (admission refuses that): no DNS rather than DNS to everyone.
pub fn dns_egress(dns: &DnsSpec) -> Option<NetworkPolicyEgressRule> {
    let mut to = Vec::new();
    if !dns.pod_labels.is_empty() || !dns.namespace_labels.is_empty() {
        to.push(NetworkPolicyPeer {
            namespace_selector: Some(selector(dns.namespace_labels.clone())),
            pod_selector: Some(selector(dns.pod_labels.clone())),
            ip_block: None,
        });
    }
    to.extend(dns.cidrs.iter().map(|c| cidr(c)));
    let ports = dns.ports.iter().flat_map(|&p| [udp(p), tcp(p)]).collect();
    egress(to, ports)
}

/// An egress rule to `to` on `ports`; `None` without a destination (a
/// rule without one would allow everything) or without a port (a rule
/// without one allows every port).
pub fn egress(
    to: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> Option<NetworkPolicyEgressRule> {
    (!to.is_empty() && !ports.is_empty()).then_some(NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(ports),
    })
}

/// An ingress rule from `from` on `ports`; `None` as for [`egress`].
pub fn ingress(
    from: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> Option<NetworkPolicyIngressRule> {
    (!from.is_empty() && !ports.is_empty()).then_some(NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(ports),
    })
}

/// Labels of every pod of `pool`.
pub fn pool_pods(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::POOL.into(), pool.into())])
}

/// A policy for the pods with `pod_labels`, covering both directions: what
/// is not listed is denied (rules that came out `None` are left out).
pub fn policy<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    pool: &str,
    pod_labels: BTreeMap<String, String>,
    ingress: impl IntoIterator<Item = Option<NetworkPolicyIngressRule>>,
    egress: impl IntoIterator<Item = Option<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let ingress: Vec<_> = ingress.into_iter().flatten().collect();
    let egress: Vec<_> = egress.into_iter().flatten().collect();
    let mut meta_labels = pool_pods(pool);
    meta_labels.insert(labels::NAME.into(), "cellule".into());
    NetworkPolicy {
        metadata: workload::owned_meta(owner, name, meta_labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(pod_labels)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
    }
}
