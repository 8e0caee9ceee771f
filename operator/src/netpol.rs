//! NetworkPolicy building blocks (pure). Every pod of a pool is selected
//! by a default-deny policy; the policies here only ever add narrow
//! allowances. No egress rule is ever built without a destination, and
//! CIDRs of 0.0.0.0/0 are refused at admission.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::Resource;

use crate::{reconcile::labels, workload};

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

/// DNS to the cluster DNS pods only, UDP and TCP 53.
pub fn dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector(BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "kube-system".into(),
            )]))),
            pod_selector: Some(selector(BTreeMap::from([(
                "k8s-app".into(),
                "kube-dns".into(),
            )]))),
            ip_block: None,
        }]),
        ports: Some(vec![udp(53), tcp(53)]),
    }
}

pub fn egress(
    to: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicyEgressRule {
    assert!(
        !to.is_empty(),
        "an egress rule without a destination would allow everything"
    );
    NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(ports),
    }
}

pub fn ingress(
    from: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicyIngressRule {
    assert!(
        !from.is_empty(),
        "an ingress rule without a source would allow everything"
    );
    NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(ports),
    }
}

/// Labels of every pod of `pool`.
pub fn pool_pods(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::POOL.into(), pool.into())])
}

/// A policy for the pods with `pod_labels`, covering both directions: what
/// is not listed is denied.
pub fn policy<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    pool: &str,
    pod_labels: BTreeMap<String, String>,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
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
