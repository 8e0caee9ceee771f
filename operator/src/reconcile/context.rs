//! What every reconcile gets: a client, read caches and an event recorder.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Node, Pod, Secret, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
    },
};

use super::MANAGER;

/// Caches of the objects the operator makes (watched by label), so a
/// reconcile can tell whether anything needs writing without a request.
#[derive(Clone)]
pub struct OwnedStores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub service_accounts: Store<ServiceAccount>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub revocation_lists: Store<crate::tokens::revocations::RevocationList>,
    /// Only the operator's own Secrets (signing keys, worker tokens).
    pub secrets: Store<Secret>,
    /// The tier Services' EndpointSlices.
    pub endpoint_slices: Store<EndpointSlice>,
}

/// Every cache a reconcile reads.
pub struct Stores {
    pub owned: OwnedStores,
    pub secret_metadata: Store<PartialObjectMeta<Secret>>,
    pub api_server: Store<EndpointSlice>,
    pub npu_servers: Store<crate::api::NpuServer>,
    pub pools: Store<crate::api::Pool>,
    pub grants: Store<crate::api::WorkerGrant>,
    pub peer_trusts: Store<crate::api::PeerTrust>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
}

pub struct Context {
    pub client: Client,
    reporter: Reporter,
    recorder: Recorder,
    pub owned: OwnedStores,
    /// Metadata of every Secret: the operator checks that referenced
    /// Secrets exist, never reads what the pool's Secrets hold.
    pub secret_metadata: Store<PartialObjectMeta<Secret>>,
    /// The API server's own EndpointSlice.
    pub api_server: Store<EndpointSlice>,
    pub npu_servers: Store<crate::api::NpuServer>,
    pub pools: Store<crate::api::Pool>,
    pub grants: Store<crate::api::WorkerGrant>,
    pub peer_trusts: Store<crate::api::PeerTrust>,
    /// NPU servers' and CPU workers' pods, and every node (routing).
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Image signature verification (a cache over the registries).
    pub images: Arc<dyn crate::images::Verify>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        images: Arc<dyn crate::images::Verify>,
    ) -> Arc<Self> {
        let Stores {
            owned,
            secret_metadata,
            api_server,
            npu_servers,
            pools,
            grants,
            peer_trusts,
            pods,
            nodes,
        } = stores;
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            owned,
            secret_metadata,
            api_server,
            npu_servers,
            pools,
            grants,
            peer_trusts,
            pods,
            nodes,
            images,
            failures: Mutex::default(),
        })
    }

    /// Publishes an Event on `obj`. A failure to record is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        publish(&self.recorder, obj, type_, reason, action, note).await;
    }

    /// Publishes an Event on `obj` as a new Event, never as one more
    /// occurrence of an earlier one with the same reason (the recorder
    /// groups those and keeps the first note): for what happens once per
    /// incident and must be told with its own note, like a fail-over.
    pub async fn event_once<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        publish(&recorder, obj, type_, reason, action, note).await;
    }

    /// Counts a failed reconcile of `obj`; returns how many in a row.
    pub fn failed<K: Resource>(&self, obj: &K) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(obj.uid().unwrap_or_default()).or_default();
        *count += 1;
        *count
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub fn succeeded<K: Resource>(&self, obj: &K) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&obj.uid().unwrap_or_default());
    }
}

/// Whether the Secret `name` exists in `namespace` (from the metadata cache).
pub fn secret_exists(ctx: &Context, namespace: &str, name: &str) -> bool {
    ctx.secret_metadata
        .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
        .is_some()
}

async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(super::bounded(&note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not record an Event");
    }
}
