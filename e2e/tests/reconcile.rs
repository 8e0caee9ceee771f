//! The shared reconcile mechanism on the real API server: a field removed
//! from the spec leaves the live objects (the np-guard analyzer confirms a
//! removed ingress path is gone), names cannot collide and an object the
//! operator did not make is never taken over, a value the API server
//! refuses becomes a condition, and the DNS peer is configurable.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    allowed_connections, apply_sample_site, apply_samples, cellule_api, create_secret,
    egress_allowed, events_with, eventually, in_namespace, install_crds, merge_patch,
    sample_site_ready, wait_condition,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// Waits until `check` holds for the live object `name` of kind `K`.
async fn until<K, F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: F,
) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    F: Fn(&Value) -> bool,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    eventually(what, WAIT, || async {
        let object = api.get(name).await.map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
        if check(&value) {
            Ok(object)
        } else {
            Err(value["spec"].to_string())
        }
    })
    .await
}

/// Ingress rows of the analyzer into the pool's pods, as `src conn`.
async fn into_pool(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=pool"))
        .await?;
    let pod = pods.items.first().context("a pool pod")?;
    let replica_set = pod
        .owner_references()
        .first()
        .context("pod owner")?
        .name
        .clone();
    let group = format!("{ns}/{replica_set}[ReplicaSet]");
    let (_, rows) = allowed_connections(ns).await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.1 == group)
        .map(|r| format!("{} {}", r.0, r.2))
        .collect())
}

#[tokio::test]
async fn a_field_removed_from_the_spec_leaves_the_live_objects() {
    in_namespace("remove", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;

        // The last allowed CIDRs go: the ingress rule goes, and the
        // analyzer finds no path into the pool any more.
        let before = into_pool(&client, &ns).await?;
        ensure!(before.iter().any(|r| r.starts_with("10.50.")), "ingress before: {before:?}");
        merge_patch(&client, &ns, "Pool", "paris", json!({"spec": {"workers": {"allowedCidrs": null}}})).await?;
        until::<NetworkPolicy, _>(&client, &ns, "paris-pool", "the pool's ingress rule removed", |p| {
            p["spec"]["ingress"].is_null()
        })
        .await?;
        let after = into_pool(&client, &ns).await?;
        println!("ingress into the pool per the analyzer: before {before:?}, after {after:?}");
        ensure!(after.is_empty(), "ingress into the pool after removing every CIDR: {after:?}");

        // A node selector and a toleration added, then removed.
        merge_patch(&client, &ns, "NpuServer", "heavy", json!({"spec": {
            "nodeSelector": {"cellule.ai/accelerator": "npu", "e2e.cellule.ai/zone": "a"},
            "tolerations": [
                {"key": "cellule.ai/npu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "e2e.cellule.ai/maintenance", "operator": "Exists"},
            ],
        }}))
        .await?;
        let pod = |d: &Value| d["spec"]["template"]["spec"].clone();
        until::<Deployment, _>(&client, &ns, "heavy-npu", "selector and toleration added", |d| {
            pod(d)["nodeSelector"]["e2e.cellule.ai/zone"] == "a" && pod(d)["tolerations"].as_array().is_some_and(|t| t.len() == 2)
        })
        .await?;
        merge_patch(&client, &ns, "NpuServer", "heavy", json!({"spec": {
            "nodeSelector": {"e2e.cellule.ai/zone": null},
            "tolerations": [{"key": "cellule.ai/npu", "operator": "Exists", "effect": "NoSchedule"}],
        }}))
        .await?;
        until::<Deployment, _>(&client, &ns, "heavy-npu", "selector and toleration removed", |d| {
            pod(d)["nodeSelector"].get("e2e.cellule.ai/zone").is_none()
                && pod(d)["nodeSelector"]["cellule.ai/accelerator"] == "npu"
                && pod(d)["tolerations"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await?;

        // A worker set's resources removed: the container has none left.
        let mut pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        pool.data["spec"]["cpuWorkers"][0]
            .as_object_mut()
            .context("a worker set")?
            .remove("resources");
        let workers = json!({"spec": {"cpuWorkers": pool.data["spec"]["cpuWorkers"]}});
        merge_patch(&client, &ns, "Pool", "paris", workers).await?;
        until::<Deployment, _>(&client, &ns, "paris--light-workers", "worker resources removed", |d| {
            let resources = &pod(d)["containers"][0]["resources"];
            resources.get("limits").is_none() && resources.get("requests").is_none()
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_name_someone_else_holds_is_left_untouched() {
    in_namespace("conflict", |client: Client, ns: String| async move {
        install_crds(&client).await;
        // A person's Service with the name the Pool's would have.
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let theirs: Service = serde_json::from_value(json!({
            "metadata": {"name": "paris-pool", "labels": {"team": "theirs"}},
            "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]},
        }))?;
        services.create(&PostParams::default(), &theirs).await?;
        apply_sample_site(&client, &ns).await?;

        let pool = wait_condition(&client, &ns, "Pool", "paris", "Stalled", "True", WAIT).await?;
        let stalled = pool.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled"))
            .cloned()
            .unwrap_or_default();
        ensure!(stalled["reason"] == "NameConflict", "{stalled}");
        ensure!(
            stalled["message"]
                .as_str()
                .unwrap_or_default()
                .contains("Service \"paris-pool\""),
            "the message names the object: {stalled}"
        );
        events_with(&client, &ns, "NameConflict").await?;
        // Theirs, exactly as they made it, some seconds later.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let live = services.get("paris-pool").await?;
        ensure!(
            live.labels().get("team").map(String::as_str) == Some("theirs"),
            "labels: {:?}",
            live.labels()
        );
        ensure!(
            !live.labels().contains_key("app.kubernetes.io/managed-by"),
            "not adopted"
        );
        let selector = live
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        ensure!(
            selector.get("app").map(String::as_str) == Some("theirs") && selector.len() == 1,
            "selector: {selector:?}"
        );
        ensure!(
            live.owner_references().is_empty(),
            "no owner reference added"
        );

        // Once they remove it, the pool comes up by itself.
        services.delete("paris-pool", &Default::default()).await?;
        wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", WAIT).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn names_of_sets_pools_and_npu_servers_do_not_collide() {
    in_namespace("names", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        // A worker set named `pool` in Pool paris; a Pool named `heavy`
        // (like the NpuServer) with a worker set named `npu`.
        let mut pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let mut set = pool.data["spec"]["cpuWorkers"][0].clone();
        set["name"] = json!("pool");
        set["replicas"] = json!(1);
        let sets = pool.data["spec"]["cpuWorkers"]
            .as_array_mut()
            .context("sets")?;
        sets.push(set.clone());
        let sets = json!({"spec": {"cpuWorkers": sets}});
        merge_patch(&client, &ns, "Pool", "paris", sets).await?;
        set["name"] = json!("npu");
        let heavy = json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "Pool", "metadata": {"name": "heavy"},
            "spec": {
                "image": pool.data["spec"]["image"], "replicas": 1,
                "database": pool.data["spec"]["database"], "tls": pool.data["spec"]["tls"],
                "tiers": [{"name": "light", "model": "m-7b", "backend": "Cpu"}],
                "cpuWorkers": [set],
            }
        });
        cellule_api(&client, &ns, "Pool")
            .patch("heavy", &PatchParams::apply("e2e"), &Patch::Apply(&heavy))
            .await?;
        for (kind, name) in [("Pool", "paris"), ("Pool", "heavy"), ("NpuServer", "heavy")] {
            wait_condition(&client, &ns, kind, name, "Ready", "True", WAIT).await?;
        }
        // Each Service has its one owner, and nobody flips them: two
        // looks, five seconds apart, see the same resourceVersion.
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let owners = || async {
            let mut owners = std::collections::BTreeMap::new();
            for s in services
                .list(
                    &ListParams::default().labels("app.kubernetes.io/managed-by=cellule-operator"),
                )
                .await?
            {
                let owner = s
                    .owner_references()
                    .first()
                    .map(|o| format!("{}/{}", o.kind, o.name))
                    .unwrap_or_default();
                owners.insert(
                    s.name_any(),
                    (owner, s.resource_version().unwrap_or_default()),
                );
            }
            anyhow::Ok(owners)
        };
        let first = owners().await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let second = owners().await?;
        println!("services and owners: {second:?}");
        ensure!(
            first == second,
            "Services changed while idle:\n{first:?}\n{second:?}"
        );
        let owner = |name: &str| second.get(name).map(|o| o.0.clone()).unwrap_or_default();
        ensure!(
            owner("paris-pool") == "Pool/paris",
            "paris-pool: {}",
            owner("paris-pool")
        );
        ensure!(
            owner("paris--pool") == "Pool/paris",
            "paris--pool: {}",
            owner("paris--pool")
        );
        ensure!(
            owner("heavy-npu") == "NpuServer/heavy",
            "heavy-npu: {}",
            owner("heavy-npu")
        );
        ensure!(
            owner("heavy--npu") == "Pool/heavy",
            "heavy--npu: {}",
            owner("heavy--npu")
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_value_the_api_server_refuses_becomes_a_condition() {
    in_namespace("refused", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        // A node selector value longer than a label value may be: nothing
        // in the NpuServer schema limits it, the Deployment refuses it.
        let long = "v".repeat(64);
        merge_patch(
            &client,
            &ns,
            "NpuServer",
            "heavy",
            json!({"spec": {"nodeSelector": {"e2e.cellule.ai/zone": long}}}),
        )
        .await?;
        let npu =
            wait_condition(&client, &ns, "NpuServer", "heavy", "Stalled", "True", WAIT).await?;
        let stalled = npu.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled"))
            .cloned()
            .unwrap_or_default();
        let message = stalled["message"].as_str().unwrap_or_default();
        println!("Stalled: {stalled}");
        ensure!(stalled["reason"] == "ApplyFailed", "{stalled}");
        ensure!(
            message.contains("Deployment \"heavy-npu\"") && message.contains("63"),
            "{message}"
        );
        ensure!(
            message.len() <= 1000,
            "bounded message ({} bytes)",
            message.len()
        );
        let ready = npu.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        ensure!(ready["status"] == "False", "Ready while refused: {ready}");
        let refused = events_with(&client, &ns, "ApplyFailed").await?;
        ensure!(
            refused
                .iter()
                .all(|e| e.note.as_deref().unwrap_or_default().len() <= 1024),
            "Event notes fit"
        );

        merge_patch(
            &client,
            &ns,
            "NpuServer",
            "heavy",
            json!({"spec": {"nodeSelector": {"e2e.cellule.ai/zone": null}}}),
        )
        .await?;
        wait_condition(&client, &ns, "NpuServer", "heavy", "Ready", "True", WAIT).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_dns_peer_follows_the_pool() {
    in_namespace("dns", |client: Client, ns: String| async move {
        install_crds(&client).await;
        create_secret(&client, &ns, "paris-db", &[("dsn", "postgres://db")]).await?;
        create_secret(
            &client,
            &ns,
            "paris-tls",
            &[("tls.crt", "c"), ("tls.key", "k")],
        )
        .await?;
        apply_samples(&client, &ns).await?;
        // NodeLocal DNSCache on its link-local address, on 53 and 5353.
        merge_patch(
            &client,
            &ns,
            "Pool",
            "paris",
            json!({"spec": {"dns": {"cidrs": ["169.254.20.10/32"], "ports": [53, 5353]}}}),
        )
        .await?;
        let has_dns = |p: &Value| {
            let dns = &p["spec"]["egress"][0];
            let ports: Vec<String> = dns["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["protocol"].as_str().unwrap_or_default(),
                        p["port"]
                    )
                })
                .collect();
            dns["to"].as_array().is_some_and(|to| {
                to.iter()
                    .any(|t| t["ipBlock"]["cidr"] == "169.254.20.10/32")
            }) && ports == ["UDP/53", "TCP/53", "UDP/5353", "TCP/5353"]
        };
        for policy in ["paris-pool", "paris--light-workers", "heavy-npu"] {
            until::<NetworkPolicy, _>(
                &client,
                &ns,
                policy,
                &format!("{policy} allows the node-local DNS"),
                has_dns,
            )
            .await?;
        }
        wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", WAIT).await?;
        let pool = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/component=pool"))
            .await?
            .items
            .first()
            .map(|p| p.name_any())
            .context("a pool pod")?;
        let (dir, _) = allowed_connections(&ns).await?;
        for (port, protocol, allowed) in [
            ("5353", "udp", true),
            ("53", "tcp", true),
            ("80", "tcp", false),
        ] {
            let verdict =
                egress_allowed(&dir, &ns, &pool, "169.254.20.10", port, Some(protocol)).await?;
            ensure!(
                verdict == allowed,
                "pool -> 169.254.20.10 {protocol}/{port}: allowed {verdict}"
            );
        }
        Ok(())
    })
    .await;
}
