//! A pool's live view of its routing: how each tier is served now (NPU
//! server, CPU fallback during a fail-over, or nothing), from the
//! `<pool>-routing` ConfigMap, watched on the API server with the pool's
//! own credentials. A watch delivers a fail-over as soon as the API server
//! has it; a ConfigMap volume would be refreshed by the kubelet about a
//! minute later.

use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::Value;

/// The key of the `<pool>-routing` ConfigMap.
pub const ROUTING_KEY: &str = "routing.yaml";

/// The routing last delivered: `{"resourceVersion": …, "tiers": {…}}`, or
/// why there is none.
#[derive(Clone, Default)]
pub struct Routing {
    state: Arc<RwLock<Option<Result<Value, String>>>>,
}

impl Routing {
    /// Starts watching `pool`'s routing in `namespace` with `client`'s
    /// credentials.
    pub fn start(client: Client, namespace: &str, pool: &str) -> Self {
        let routing = Self::default();
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        tokio::spawn(watch(api, format!("{pool}-routing"), routing.state.clone()));
        routing
    }

    /// What the watch last delivered.
    pub fn current(&self) -> Result<Value, String> {
        self.state
            .read()
            .expect("no writer panics while holding it")
            .clone()
            .unwrap_or_else(|| Err("not read yet".into()))
    }
}

fn parse(cm: &ConfigMap) -> Result<Value, String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ROUTING_KEY))
        .ok_or_else(|| format!("no {ROUTING_KEY} in ConfigMap {}", cm.name_any()))?;
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| format!("{ROUTING_KEY}: {e}"))?;
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "resourceVersion".into(),
            cm.resource_version().unwrap_or_default().into(),
        );
    }
    Ok(value)
}

async fn watch(
    api: Api<ConfigMap>,
    name: String,
    state: Arc<RwLock<Option<Result<Value, String>>>>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let value = match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => parse(&cm),
            Ok(watcher::Event::Delete(_)) => Err(format!("ConfigMap {name} was deleted")),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(error) => {
                tracing::warn!(%name, %error, "watch failed; retrying");
                continue;
            }
        };
        *state.write().expect("no writer panics while holding it") = Some(value);
    }
}
