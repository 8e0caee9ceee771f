//! Each tier's Service and its EndpointSlices (pure).
//!
//! The Service has no selector: the operator writes its EndpointSlices
//! itself, from the decision. A managed selector would leave the switch to
//! the EndpointSlice controller (one more hop after the Service update),
//! would list every pod the labels match, Ready or not, on a dead node or
//! not, and could not fall back to the other backend while the chosen one
//! has no ready pod. One slice per address family holds at most 1,000
//! endpoints; a tier has at most 72 NPU pods or 800 CPU workers.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{ObjectReference, Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::Resource;

use crate::workload::{Component, owned_meta};

use super::health::Member;

/// The port of every tier Service.
pub const TIER_PORT: i32 = 8080;
pub const PORT_NAME: &str = "http";
/// Tells the EndpointSlice controller and mirroring to leave the slices
/// alone, and tells the operator's slices from the ones that controller
/// makes for the selector Services (which carry the operator's labels,
/// copied from their Service).
pub const SLICE_MANAGER_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_MANAGER: &str = "cellule-operator.cellule.ai";
/// Which backend a slice points at: `npu`, `cpu` or `none`.
pub const BACKEND_LABEL: &str = "cellule.ai/backend";

/// Pods that can serve a tier, and the port they listen on.
#[derive(Clone, Copy, Debug)]
pub struct Backend<'a> {
    /// `npu` or `cpu`.
    pub kind: &'static str,
    pub port: i32,
    pub members: &'a [Member],
}

impl Backend<'_> {
    fn any_ready(&self) -> bool {
        self.members.iter().any(|m| m.ready && m.ip.is_some())
    }
}

/// The backend the slices point at: the one routing chose, unless it has
/// no ready pod and the other one has (never an empty Service while a
/// backend is ready).
pub fn choose<'a>(chosen: Option<Backend<'a>>, other: Option<Backend<'a>>) -> Option<Backend<'a>> {
    match (chosen, other) {
        (Some(c), Some(o)) if !c.any_ready() && o.any_ready() => Some(o),
        (None, o) => o,
        (c, _) => c,
    }
}

fn component(pool: &str, service: &str) -> Component {
    Component {
        name: service.to_owned(),
        pool: pool.to_owned(),
        role: "tier",
    }
}

/// The tier's Service, without a selector.
pub fn service<K: Resource<DynamicType = ()>>(owner: &K, pool: &str, name: &str) -> Service {
    Service {
        metadata: owned_meta(owner, name, component(pool, name).selector()),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: TIER_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The EndpointSlices of Service `name`: the ready pods of `backend`, one
/// slice per address family (IPv4 always, IPv6 when a pod has such an
/// address).
pub fn slices<K: Resource<DynamicType = ()>>(
    owner: &K,
    pool: &str,
    name: &str,
    backend: Option<Backend<'_>>,
) -> Vec<EndpointSlice> {
    let namespace = owner.meta().namespace.clone();
    let mut by_family: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::from([("IPv4", Vec::new())]);
    for member in backend.iter().flat_map(|b| b.members) {
        let Some(ip) = member.ip.as_deref().filter(|_| member.ready) else {
            continue;
        };
        let family = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => "IPv4",
            Ok(std::net::IpAddr::V6(_)) => "IPv6",
            Err(_) => continue,
        };
        by_family.entry(family).or_default().push(Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: member.node.clone(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(member.pod.clone()),
                namespace: namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    by_family
        .into_iter()
        .map(|(family, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let mut labels = component(pool, name).selector();
            labels.insert("kubernetes.io/service-name".into(), name.into());
            labels.insert(SLICE_MANAGER_LABEL.into(), SLICE_MANAGER.into());
            labels.insert(
                BACKEND_LABEL.into(),
                backend.map_or("none", |b| b.kind).into(),
            );
            EndpointSlice {
                metadata: owned_meta(owner, &format!("{name}-{}", family.to_lowercase()), labels),
                address_type: family.into(),
                endpoints: Some(endpoints),
                ports: Some(vec![EndpointPort {
                    name: Some(PORT_NAME.into()),
                    port: backend.map(|b| b.port),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }]),
            }
        })
        .collect()
}
