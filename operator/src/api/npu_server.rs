//! `NpuServer`: heavy-inference servers on accelerator nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, LocalObjectRef, SignedImage, derived_name_rule, resources_rule};
use crate::names;

/// A heavy-inference server (e.g. a 30B model) on accelerator nodes. Its
/// health drives the pool's routing: while it is unhealthy its tier fails
/// over to CPU workers.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cellule.ai",
    version = "v1alpha1",
    kind = "NpuServer",
    namespaced,
    doc = "A heavy-inference server on accelerator nodes; its health drives the pool's NPU to CPU fail-over.",
    status = "NpuServerStatus",
    shortname = "npu",
    category = "cellule",
    validation = derived_name_rule("NpuServer", names::NPU_SERVER_NAME_MAX),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas / desired"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Healthy\")].status"
    ),
    printcolumn(
        name = "Accelerator",
        type_ = "string",
        json_path = ".spec.accelerator.resourceName"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.image.shortDigest",
        description = "Verified image digest"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".spec.model",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minHealthyReplicas <= self.replicas + self.hotSpares").message("minHealthyReplicas cannot exceed replicas + hotSpares").field_path(".minHealthyReplicas"))]
pub struct NpuServerSpec {
    /// The Pool this server belongs to. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("poolRef is immutable: create a new NpuServer for another pool"))]
    pub pool_ref: LocalObjectRef,
    /// Server image and its signature policy.
    pub image: SignedImage,
    /// Model it serves, e.g. `qwen-30b-instruct`.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// The accelerator each replica needs.
    #[serde(default)]
    pub accelerator: AcceleratorSpec,
    /// Replicas that serve requests.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// Extra replicas kept running and warm to take over at once.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub hot_spares: i32,
    /// Ready replicas needed for the server to count as healthy; below it
    /// the tier fails over.
    #[serde(default = "defaults::min_healthy_replicas")]
    #[schemars(range(min = 1, max = 72))]
    pub min_healthy_replicas: i32,
    /// Port the server listens on.
    #[serde(default = "defaults::port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Nodes the pods may run on (added to the accelerator's own placement).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints of accelerator nodes the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory per replica (the accelerator is added to limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = resources_rule("resources"))]
    pub resources: Option<ResourceRequirements>,
}

/// An extended resource the nodes advertise for their accelerators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorSpec {
    /// Extended resource name, e.g. `cellule.ai/npu` or `amd.com/gpu`.
    #[serde(default = "defaults::accelerator_resource")]
    #[schemars(
        length(min = 3, max = 253),
        regex(
            pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
        )
    )]
    pub resource_name: String,
    /// Accelerators per replica.
    #[serde(default = "defaults::accelerator_count")]
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,
}

impl Default for AcceleratorSpec {
    fn default() -> Self {
        Self {
            resource_name: defaults::accelerator_resource(),
            count: defaults::accelerator_count(),
        }
    }
}

/// Observed state of an NpuServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NpuServerStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Ready replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Replicas asked for (replicas + hot spares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The verified image the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::api::common::ImageStatus>,
}

pub mod defaults {
    pub fn replicas() -> i32 {
        1
    }
    pub fn min_healthy_replicas() -> i32 {
        1
    }
    pub fn port() -> i32 {
        8000
    }
    pub fn accelerator_resource() -> String {
        "cellule.ai/npu".into()
    }
    pub fn accelerator_count() -> i32 {
        1
    }
}
