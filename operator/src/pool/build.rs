//! The objects a Pool wants (pure functions of a [`ValidPool`]).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Service,
            ServiceAccount, Volume,
        },
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use kube::Resource as _;

use crate::{
    images::{self, Running},
    names,
    tokens::revocations::RevocationList,
    workload::{self, Component, ContainerSpec, Mount},
};

use super::{config, netpol, routing::Routing, validate::ValidPool};

pub const CONFIG_DIR: &str = "/etc/cellule/config";
pub const TLS_DIR: &str = "/etc/cellule/tls";
pub const DB_DIR: &str = "/etc/cellule/db";
pub const JWKS_DIR: &str = "/etc/cellule/jwks";
pub const FEDERATION_DIR: &str = "/etc/cellule/federation";
/// Port the in-cluster CPU workers serve on.
pub const CPU_WORKER_PORT: i32 = 8080;
pub const CONFIG_CHECKSUM: &str = "cellule.ai/config-sha256";

/// Everything a Pool wants to exist, by kind.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// The tier Services' endpoints (the Services are in `services`).
    pub endpoint_slices: Vec<EndpointSlice>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    /// Deployments left exactly as they are (not created, not updated, not
    /// pruned): their image has no verified digest.
    pub kept: Vec<String>,
}

impl Desired {
    /// The kind and metadata of every object.
    pub fn metadata(&self) -> impl Iterator<Item = (&'static str, &ObjectMeta)> {
        fn of<'a, K: kube::Resource<DynamicType = ()>>(
            kind: &'static str,
            objects: &'a [K],
        ) -> impl Iterator<Item = (&'static str, &'a ObjectMeta)> {
            objects.iter().map(move |o| (kind, o.meta()))
        }
        of("Deployment", &self.deployments)
            .chain(of("Service", &self.services))
            .chain(of("ConfigMap", &self.config_maps))
            .chain(of("ServiceAccount", &self.service_accounts))
            .chain(of("PodDisruptionBudget", &self.pod_disruption_budgets))
            .chain(of("NetworkPolicy", &self.network_policies))
            .chain(of("EndpointSlice", &self.endpoint_slices))
            .chain(of("Role", &self.roles))
            .chain(of("RoleBinding", &self.role_bindings))
    }
}

/// The pool orchestrator of Pool `pool`.
pub fn pool_component(pool: &str) -> Component {
    Component {
        name: names::pool(pool),
        pool: pool.to_owned(),
        role: "pool",
    }
}

pub fn cpu_worker_component(valid: &ValidPool, set: &str) -> Component {
    Component {
        name: names::cpu_workers(&valid.name, set),
        pool: valid.name.clone(),
        role: "cpu-worker",
    }
}

/// Everything `valid` wants; `routing` is each tier's, `images` has the
/// verified image of each workload (`pool`, `cpuWorkers[<set>]`), and a
/// workload without one is left as it is.
pub fn desired(valid: &ValidPool, routing: &Routing, images: &Running) -> Desired {
    let pool = &valid.pool;
    let spec = &pool.spec;
    let component = pool_component(&valid.name);
    let config_text = config::render_config(valid);
    let config_name = names::config(&valid.name);
    let config_map = |name: &str, key: &str, text: String| ConfigMap {
        metadata: workload::owned_meta(pool, name, component.selector()),
        data: Some(BTreeMap::from([(key.to_owned(), text)])),
        ..Default::default()
    };

    let mounts = vec![
        Mount {
            volume: config_map_volume("config", &config_name),
            path: CONFIG_DIR.into(),
        },
        Mount {
            volume: secret_volume("tls", &spec.tls.name, None),
            path: TLS_DIR.into(),
        },
        Mount {
            volume: config_map_volume("jwks", &names::jwks(&valid.name)),
            path: JWKS_DIR.into(),
        },
        // Only the DSN key is mounted from the database Secret.
        Mount {
            volume: secret_volume(
                "db",
                &spec.database.dsn_secret_ref.name,
                Some(&spec.database.dsn_secret_ref.key),
            ),
            path: DB_DIR.into(),
        },
        // The pool's federation keys, not the operator's nonce ledger.
        Mount {
            volume: secret_volume(
                "federation",
                &names::federation(&valid.name),
                Some(crate::peer_trust::identity::KEYS_KEY),
            ),
            path: FEDERATION_DIR.into(),
        },
    ];
    let checksum = BTreeMap::from([(CONFIG_CHECKSUM.to_owned(), config::checksum(&config_text))]);
    let deployment = images.0.get(images::POOL).map(|image| {
        let mut pod = workload::restricted_pod(
            ContainerSpec {
                image: image.clone(),
                args: vec![format!("--config={CONFIG_DIR}/{}", config::CONFIG_KEY)],
                port: spec.workers.port,
                resources: None,
                mounts,
                pull_secrets: spec.image.pull_secrets.clone(),
            },
            Some(component.name.clone()),
        );
        // The pool alone gets its ServiceAccount's (short-lived, projected)
        // token: the live channel to its JWKS and revocation list.
        pod.automount_service_account_token = Some(true);
        workload::deployment(pool, &component, spec.replicas, pod, checksum)
    });

    let mut desired = Desired {
        kept: deployment
            .is_none()
            .then(|| component.name.clone())
            .into_iter()
            .collect(),
        deployments: deployment.into_iter().collect(),
        services: std::iter::once(workload::service(pool, &component, spec.workers.port))
            .chain(routing.services.iter().cloned())
            .collect(),
        config_maps: vec![
            config_map(&config_name, config::CONFIG_KEY, config_text),
            routing_config_map(pool, &valid.namespace, &routing.tiers()),
            peers_config_map(pool, &valid.peers),
            // Created empty: its data is the pool's to write (another
            // field manager), never overwritten by an apply of ours.
            ConfigMap {
                metadata: workload::owned_meta(
                    pool,
                    &names::peer_reports(&valid.name),
                    component.selector(),
                ),
                ..Default::default()
            },
        ],
        service_accounts: vec![ServiceAccount {
            metadata: workload::owned_meta(pool, &component.name, component.selector()),
            automount_service_account_token: Some(false),
            ..Default::default()
        }],
        pod_disruption_budgets: Vec::new(),
        network_policies: netpol::pool_policies(valid),
        endpoint_slices: routing.slices.clone(),
        roles: vec![live_channel_role(valid, &component)],
        role_bindings: vec![live_channel_binding(valid, &component)],
    };
    if spec.replicas > 1 {
        desired.pod_disruption_budgets.push(PodDisruptionBudget {
            metadata: workload::owned_meta(pool, &component.name, component.selector()),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(component.selector()),
                    match_expressions: None,
                }),
                ..Default::default()
            }),
            status: None,
        });
    }
    for set in &spec.cpu_workers {
        let worker = cpu_worker_component(valid, &set.name);
        let model = spec
            .tiers
            .iter()
            .find(|t| t.name == set.tier)
            .map(|t| t.model.clone())
            .unwrap_or_default();
        desired
            .services
            .push(workload::service(pool, &worker, CPU_WORKER_PORT));
        let Some(image) = images.0.get(&images::cpu_workers(&set.name)) else {
            desired.kept.push(worker.name);
            continue;
        };
        let pod = workload::restricted_pod(
            ContainerSpec {
                image: image.clone(),
                args: vec![
                    format!("--tier={}", set.tier),
                    format!("--model={model}"),
                    format!("--port={CPU_WORKER_PORT}"),
                ],
                port: CPU_WORKER_PORT,
                resources: set.resources.clone(),
                mounts: Vec::new(),
                pull_secrets: set.image.pull_secrets.clone(),
            },
            None,
        );
        desired.deployments.push(workload::deployment(
            pool,
            &worker,
            set.replicas,
            pod,
            BTreeMap::new(),
        ));
    }
    desired
}

/// The peers the pool watches (`<pool>-peers`).
pub fn peers_config_map(pool: &crate::api::Pool, peers: &[crate::peer_trust::Peer]) -> ConfigMap {
    let name = kube::ResourceExt::name_any(pool);
    ConfigMap {
        metadata: workload::owned_meta(
            pool,
            &names::peers(&name),
            pool_component(&name).selector(),
        ),
        data: Some(BTreeMap::from([(
            config::PEERS_KEY.to_owned(),
            config::render_peers(peers),
        )])),
        ..Default::default()
    }
}

/// The routing the pool watches (`<pool>-routing`), for `tiers`.
pub fn routing_config_map(
    pool: &crate::api::Pool,
    namespace: &str,
    tiers: &[crate::api::pool::TierStatus],
) -> ConfigMap {
    let name = kube::ResourceExt::name_any(pool);
    ConfigMap {
        metadata: workload::owned_meta(
            pool,
            &names::routing(&name),
            pool_component(&name).selector(),
        ),
        data: Some(BTreeMap::from([(
            config::ROUTING_KEY.to_owned(),
            config::render_routing(&name, namespace, tiers),
        )])),
        ..Default::default()
    }
}

/// The pool's live channel: its ServiceAccount may read and watch exactly
/// its JWKS and routing ConfigMaps and the namespace's RevocationLists
/// (RBAC cannot narrow by label, and their names come and go; they hold
/// no secret), nothing else (docs/pool-contract.md).
fn live_channel_role(valid: &ValidPool, component: &Component) -> Role {
    let read: Vec<String> = ["get", "list", "watch"].map(String::from).into();
    Role {
        metadata: workload::owned_meta(&valid.pool, &component.name, component.selector()),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![
                    names::jwks(&valid.name),
                    names::routing(&valid.name),
                    names::peers(&valid.name),
                ]),
                verbs: read.clone(),
                non_resource_urls: None,
            },
            // Its reports on peers (mismatches, samples): the one object
            // it writes.
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![names::peer_reports(&valid.name)]),
                verbs: ["get", "patch"].map(String::from).into(),
                non_resource_urls: None,
            },
            PolicyRule {
                api_groups: Some(vec![RevocationList::group(&()).into_owned()]),
                resources: Some(vec![RevocationList::plural(&()).into_owned()]),
                resource_names: None,
                verbs: read,
                non_resource_urls: None,
            },
        ]),
    }
}

fn live_channel_binding(valid: &ValidPool, component: &Component) -> RoleBinding {
    RoleBinding {
        metadata: workload::owned_meta(&valid.pool, &component.name, component.selector()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: component.name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: component.name.clone(),
            namespace: Some(valid.namespace.clone()),
            api_group: None,
        }]),
    }
}

fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: &str, only_key: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: only_key.map(|key| {
                vec![KeyToPath {
                    key: key.into(),
                    path: key.into(),
                    mode: None,
                }]
            }),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}
