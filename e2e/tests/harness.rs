//! Proves the local control plane behaves like a real cluster for what the
//! operator relies on: scheduling on CPU and NPU nodes, pod readiness that
//! the tests can flip, EndpointSlices, node readiness, and real cosign
//! signatures in a local OCI registry.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    Env, NODE_READY_ANNOTATION, POD_READY_ANNOTATION, eventually, in_namespace,
    restricted_pod_spec, run_tool,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn deployment(
    name: &str,
    replicas: i32,
    pod_spec: k8s_openapi::api::core::v1::PodSpec,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}
        }
    }))
    .unwrap()
}

async fn running_pods(pods: &Api<Pod>, app: &str, want: usize) -> anyhow::Result<Vec<Pod>> {
    eventually(&format!("{want} ready pods of {app}"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map_err(|e| e.to_string())?;
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_is_ready).collect();
        if ready.len() == want {
            Ok(ready)
        } else {
            Err(format!("{} ready", ready.len()))
        }
    })
    .await
}

fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn annotate<K>(api: &Api<K>, name: &str, key: &str, value: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .with_context(|| format!("annotating {name}"))?;
    Ok(())
}

#[tokio::test]
async fn deployment_gets_ready_pods_on_cpu_nodes() {
    in_namespace("cpu", |client: Client, ns: String| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(
                &PostParams::default(),
                &deployment("web", 2, restricted_pod_spec("registry.invalid/web:1")),
            )
            .await?;
        let pods = running_pods(&Api::namespaced(client.clone(), &ns), "web", 2).await?;
        for pod in &pods {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            ensure!(
                node.starts_with("cpu-"),
                "pod landed on {node}, not a CPU node"
            );
            ensure!(
                pod.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some(),
                "pod has no IP"
            );
        }
        eventually("Deployment readyReplicas = 2", WAIT, || async {
            let d = deployments.get("web").await.map_err(|e| e.to_string())?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready == 2 {
                Ok(())
            } else {
                Err(format!("readyReplicas {ready}"))
            }
        })
        .await
    })
    .await;
}

fn spec_tolerations() -> Option<Vec<k8s_openapi::api::core::v1::Toleration>> {
    serde_json::from_value(json!([{"key": "cellule.ai/npu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}])).ok()
}

#[tokio::test]
async fn npu_pod_lands_on_an_npu_node_only() {
    in_namespace("npu", |client: Client, ns: String| async move {
        let mut spec = restricted_pod_spec("registry.invalid/npu:1");
        spec.containers[0].resources = Some(serde_json::from_value(
            json!({"limits": {"cellule.ai/npu": "2"}}),
        )?);
        spec.tolerations = spec_tolerations();
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &deployment("heavy", 3, spec))
            .await?;
        let pods = running_pods(&Api::namespaced(client.clone(), &ns), "heavy", 3).await?;
        for pod in &pods {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            ensure!(node.starts_with("npu-"), "NPU pod landed on {node}");
        }
        // A pod asking more accelerators than any node has (16) is left
        // Unschedulable by the scheduler, as on a real cluster.
        let mut greedy = restricted_pod_spec("registry.invalid/npu:1");
        greedy.containers[0].resources = Some(serde_json::from_value(
            json!({"limits": {"cellule.ai/npu": "17"}}),
        )?);
        greedy.tolerations = spec_tolerations();
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &deployment("greedy", 1, greedy))
            .await?;
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        eventually(
            "the greedy NPU pod Unschedulable for lack of cellule.ai/npu",
            WAIT,
            || async {
                let list = pods
                    .list(&ListParams::default().labels("app=greedy"))
                    .await
                    .map_err(|e| e.to_string())?;
                let condition = list
                    .items
                    .iter()
                    .filter_map(|p| {
                        p.status
                            .as_ref()?
                            .conditions
                            .as_ref()?
                            .iter()
                            .find(|c| c.type_ == "PodScheduled")
                            .cloned()
                    })
                    .next();
                match condition {
                    Some(c)
                        if c.reason.as_deref() == Some("Unschedulable")
                            && c.message
                                .as_deref()
                                .is_some_and(|m| m.contains("Insufficient cellule.ai/npu")) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    })
    .await;
}

#[tokio::test]
async fn not_ready_pod_leaves_its_service_endpoints() {
    in_namespace("eps", |client: Client, ns: String| async move {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &deployment("api", 2, restricted_pod_spec("registry.invalid/api:1")),
            )
            .await?;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "api"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]}
        }))?;
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &service)
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let victim = running_pods(&pods, "api", 2).await?[0]
            .metadata
            .name
            .clone()
            .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let ready_endpoints = |want: usize| {
            let slices = slices.clone();
            async move {
                eventually(&format!("{want} ready endpoints"), WAIT, || async {
                    let list = slices
                        .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let ready: Vec<String> = list
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter().flatten())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
                        .collect();
                    if ready.len() == want {
                        Ok(ready)
                    } else {
                        Err(format!("ready: {ready:?}"))
                    }
                })
                .await
            }
        };
        ready_endpoints(2).await?;

        annotate(&pods, &victim, POD_READY_ANNOTATION, "false").await?;
        let ready = ready_endpoints(1).await?;
        ensure!(
            !ready.contains(&victim),
            "the NotReady pod {victim} is still a ready endpoint"
        );
        let pod = pods.get(&victim).await?;
        ensure!(!pod_is_ready(&pod), "pod {victim} still reports Ready");

        annotate(&pods, &victim, POD_READY_ANNOTATION, "true").await?;
        let ready = ready_endpoints(2).await?;
        ensure!(ready.contains(&victim), "pod {victim} did not come back");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_node_can_be_made_not_ready_and_ready_again() {
    let client = cellule_e2e::admin_client().await;
    let nodes: Api<Node> = Api::all(client);
    // npu-2 is used by no other harness test for readiness.
    let node_ready = |want: &'static str| {
        let nodes = nodes.clone();
        async move {
            eventually(&format!("node npu-2 Ready={want}"), WAIT, || async {
                let node = nodes.get("npu-2").await.map_err(|e| e.to_string())?;
                let status = node
                    .status
                    .and_then(|s| s.conditions)
                    .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.status)
                    .unwrap_or_default();
                if status == want {
                    Ok(())
                } else {
                    Err(format!("Ready={status}"))
                }
            })
            .await
        }
    };
    node_ready("True").await.unwrap();
    annotate(&nodes, "npu-2", NODE_READY_ANNOTATION, "false")
        .await
        .unwrap();
    let result = node_ready("False").await;
    annotate(&nodes, "npu-2", NODE_READY_ANNOTATION, "true")
        .await
        .unwrap();
    result.unwrap();
    node_ready("True").await.unwrap();
}

#[tokio::test]
async fn cosign_signature_verifies_and_unsigned_image_fails() {
    use cellule_e2e::images::{keypair, push, sign};
    let dir = tempdir();
    let (key, _) = keypair(&dir, "cosign").await.unwrap();
    let public = dir.join("cosign.pub").display().to_string();
    let repo = |name: &str| format!("{}/harness/{name}", Env::registry());
    let digest = push(&dir, &format!("{}:1", repo("signed")), "signed")
        .await
        .unwrap();
    let signed = format!("{}@{digest}", repo("signed"));
    let digest = push(&dir, &format!("{}:1", repo("unsigned")), "unsigned")
        .await
        .unwrap();
    let unsigned = format!("{}@{digest}", repo("unsigned"));
    sign(&key, &signed).await.expect("signing");

    let verify = |image: String| {
        let public = public.clone();
        async move {
            run_tool(
                "cosign",
                &[
                    "verify",
                    "--key",
                    &public,
                    "--insecure-ignore-tlog=true",
                    "--allow-http-registry",
                    &image,
                ],
                &[],
            )
            .await
        }
    };
    let verified = verify(signed.clone())
        .await
        .expect("the signed image verifies");
    assert!(
        verified.contains(signed.split('@').nth(1).unwrap()),
        "verification names the digest: {verified}"
    );
    let refused = verify(unsigned)
        .await
        .expect_err("the unsigned image must fail verification");
    assert!(
        refused.to_string().contains("no signatures found"),
        "unexpected failure: {refused}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cellule-e2e-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
