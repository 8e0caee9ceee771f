//! Building blocks shared by every workload the operator renders: labels,
//! owner references, and pods that pass Pod Security `restricted`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, LocalObjectReference,
            PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecurityContext, Service,
            ServicePort, ServiceSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::{
    api::common::LocalObjectRef,
    images::ResolvedImage,
    reconcile::{MANAGER, labels},
};

/// Identity of one component: what its labels and names derive from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Object name of the Deployment, Service, …
    pub name: String,
    /// The pool it belongs to (what NetworkPolicies select on).
    pub pool: String,
    /// `pool`, `cpu-worker` or `npu-server`.
    pub role: &'static str,
}

impl Component {
    /// Labels that select the component's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::NAME.into(), "cellule".into()),
            (labels::INSTANCE.into(), self.name.clone()),
            (labels::COMPONENT.into(), self.role.into()),
            (labels::POOL.into(), self.pool.clone()),
        ])
    }
}

/// Metadata for an object owned by `owner`: name, namespace, the
/// component's labels plus the ownership labels, and a controller owner
/// reference so deletion cascades.
pub fn owned_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = labels;
    labels.insert(labels::MANAGED_BY.into(), MANAGER.into());
    labels.insert(labels::OWNER_UID.into(), owner.uid().unwrap_or_default());
    ObjectMeta {
        name: Some(name.into()),
        namespace: owner.namespace(),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// A volume mounted read-only into the main container.
pub struct Mount {
    pub volume: Volume,
    pub path: String,
}

/// What differs between the operator's containers.
pub struct ContainerSpec {
    pub image: ResolvedImage,
    pub args: Vec<String>,
    pub port: i32,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    pub mounts: Vec<Mount>,
    pub pull_secrets: Vec<LocalObjectRef>,
}

/// A pod that passes Pod Security `restricted`: non-root, RuntimeDefault
/// seccomp, no privilege escalation, no capabilities, read-only root
/// filesystem with an emptyDir for scratch, no service account token.
pub fn restricted_pod(spec: ContainerSpec, service_account: Option<String>) -> PodSpec {
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: None,
            medium: None,
        }),
        ..Default::default()
    }];
    let mut volume_mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    for mount in spec.mounts {
        volume_mounts.push(VolumeMount {
            name: mount.volume.name.clone(),
            mount_path: mount.path,
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(mount.volume);
    }
    PodSpec {
        service_account_name: service_account,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        image_pull_secrets: (!spec.pull_secrets.is_empty()).then(|| {
            spec.pull_secrets
                .into_iter()
                .map(|s| LocalObjectReference { name: s.name })
                .collect()
        }),
        containers: vec![Container {
            name: "main".into(),
            image: Some(spec.image.reference),
            args: (!spec.args.is_empty()).then_some(spec.args),
            ports: Some(vec![ContainerPort {
                name: Some("main".into()),
                container_port: spec.port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            resources: spec.resources,
            volume_mounts: Some(volume_mounts),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// A Deployment of `component`'s pods.
pub fn deployment<K: Resource<DynamicType = ()>>(
    owner: &K,
    component: &Component,
    replicas: i32,
    pod: PodSpec,
    pod_annotations: BTreeMap<String, String>,
) -> Deployment {
    Deployment {
        metadata: owned_meta(owner, &component.name, component.selector()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(component.selector()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(component.selector()),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A ClusterIP Service in front of `component`'s pods on `port`.
pub fn service<K: Resource<DynamicType = ()>>(
    owner: &K,
    component: &Component,
    port: i32,
) -> Service {
    Service {
        metadata: owned_meta(owner, &component.name, component.selector()),
        spec: Some(ServiceSpec {
            selector: Some(component.selector()),
            ports: Some(vec![ServicePort {
                name: Some("main".into()),
                port,
                target_port: Some(IntOrString::String("main".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}
