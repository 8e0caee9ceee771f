//! A second opinion on the NetworkPolicies the operator made: the np-guard
//! NetworkPolicy analyzer (built by e2e/scripts/build-tools.sh) reads the
//! objects from the real API server and lists every allowed connection.
//! A pool pod may reach its database, its NPU and CPU worker pods,
//! kube-dns on 53, the API server's address and port (its live channel)
//! and its trusted peer sites (the sample PeerTrusts: lyon's range and
//! marseille's address, each on its port), and nothing else; worker pods
//! reach only DNS.

use std::{collections::BTreeSet, time::Duration};

use anyhow::ensure;
use cellule_e2e::{
    allowed_connections, apply_sample_site, egress_allowed, eventually,
    federation::{rule, wait_ip_egress, wait_level},
    in_namespace, wait_condition,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn group(pod: &Pod) -> String {
    // The analyzer names pods by their ReplicaSet: ns/name-hash[ReplicaSet].
    let owner = pod
        .owner_references()
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_default();
    format!("{}/{owner}[ReplicaSet]", pod.namespace().unwrap())
}

#[tokio::test]
async fn the_analyzer_finds_no_egress_beyond_the_allowlist() {
    in_namespace("egress", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        // The database the sample Pool selects, and a bystander it must not reach.
        for (name, labels) in [("postgresql", json!({"app.kubernetes.io/name": "postgresql"})), ("bystander", json!({"app": "bystander"}))] {
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": cellule_e2e::restricted_pod_spec("registry.invalid/x:1")}}
            }))?;
            Api::<Deployment>::namespaced(client.clone(), &ns).create(&PostParams::default(), &deployment).await?;
        }
        wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", WAIT).await?;
        wait_condition(&client, &ns, "NpuServer", "heavy", "Ready", "True", WAIT).await?;
        // The sample peers judged (lyon at 2, marseille at 1) and in the egress.
        wait_level(&client, &ns, "lyon", 2).await?;
        wait_level(&client, &ns, "marseille", 1).await?;
        wait_ip_egress(&client, &ns, "paris", "the sample peers", |e| {
            e.contains(&rule("10.30.0.0/24", 8443)) && e.contains(&rule("10.40.0.10/32", 8443))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let all = eventually("9 running pods", WAIT, || async {
            let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let running = list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()).count();
            if running == 9 { Ok(list.items) } else { Err(format!("{running} with an IP")) }
        })
        .await?;
        let by_role = |role: &str| {
            all.iter()
                .find(|p| p.labels().get("app.kubernetes.io/component").map(String::as_str) == Some(role))
                .expect("a pod of each role")
                .clone()
        };
        let by_app = |key: &str, value: &str| all.iter().find(|p| p.labels().get(key).map(String::as_str) == Some(value)).unwrap().clone();
        let (pool, npu, worker) = (by_role("pool"), by_role("npu-server"), by_role("cpu-worker"));
        let database = by_app("app.kubernetes.io/name", "postgresql");

        let (dir, rows) = allowed_connections(&ns).await?;
        let from = |src: &str| -> BTreeSet<(String, String)> {
            rows.iter().filter(|r| r.0 == src).map(|r| (r.1.clone(), r.2.clone())).collect()
        };
        let dns = rows
            .iter()
            .find_map(|r| r.1.starts_with("kube-system/coredns").then(|| r.1.clone()))
            .expect("kube-dns pods in the analysis");
        let dns_only = BTreeSet::from([(dns.clone(), "TCP 53,UDP 53".to_owned())]);

        // The live channel: the API server's address and port, as its own
        // EndpointSlice gives them.
        let slice = Api::<EndpointSlice>::namespaced(client.clone(), "default").get("kubernetes").await?;
        let api_ip = slice.endpoints.iter().flatten().flat_map(|e| &e.addresses).next().expect("an API server address").clone();
        let api_port = slice.ports.iter().flatten().find_map(|p| p.port).expect("an API server port");
        let pool_egress = from(&group(&pool));
        let expected = BTreeSet::from([
            (dns.clone(), "TCP 53,UDP 53".to_owned()),
            (group(&database), "TCP 5432".to_owned()),
            (group(&npu), "TCP 8000".to_owned()),
            (group(&worker), "TCP 8080".to_owned()),
            (format!("{api_ip}-{api_ip}"), format!("TCP {api_port}")),
            // The trusted peers: lyon's cidr, marseille's host as a /32.
            ("10.30.0.0-10.30.0.255".to_owned(), "TCP 8443".to_owned()),
            ("10.40.0.10-10.40.0.10".to_owned(), "TCP 8443".to_owned()),
        ]);
        println!("pool egress per the analyzer: {pool_egress:?}");
        ensure!(pool_egress == expected, "pool egress {pool_egress:?}, expected exactly {expected:?}");
        ensure!(from(&group(&npu)) == dns_only, "NPU egress: {:?}", from(&group(&npu)));
        ensure!(from(&group(&worker)) == dns_only, "CPU worker egress: {:?}", from(&group(&worker)));

        // Into the pool: only the workers' CIDRs (10.50/16, 10.51/16), on 8443.
        let into_pool: BTreeSet<(String, String)> =
            rows.iter().filter(|r| r.1 == group(&pool)).map(|r| (r.0.clone(), r.2.clone())).collect();
        let expected_in = BTreeSet::from([
            ("10.50.0.0-10.50.255.255".to_owned(), "TCP 8443".to_owned()),
            ("10.51.0.0-10.51.255.255".to_owned(), "TCP 8443".to_owned()),
        ]);
        ensure!(into_pool == expected_in, "ingress to the pool {into_pool:?}");

        // Point checks, with the analyzer's eval: the internet, another
        // address of the API server's range, its address on another port,
        // the peers on another port and next to their ranges are out...
        let other_port = (api_port + 1).to_string();
        for (ip, port) in [
            ("1.1.1.1", "443"),
            ("10.0.0.1", "443"),
            ("10.10.255.2", api_port.to_string().as_str()),
            (api_ip.as_str(), other_port.as_str()),
            ("10.30.0.200", "443"),
            ("10.30.1.1", "8443"),
            ("10.40.0.10", "443"),
            ("10.40.0.11", "8443"),
        ] {
            ensure!(!egress_allowed(&dir, &ns, &pool.name_any(), ip, port, None).await?, "pool -> {ip}:{port} allowed");
        }
        // ...and the peers themselves are in.
        for ip in ["10.30.0.200", "10.40.0.10"] {
            ensure!(egress_allowed(&dir, &ns, &pool.name_any(), ip, "8443", None).await?, "pool -> {ip}:8443 refused");
        }
        Ok(())
    })
    .await;
}
