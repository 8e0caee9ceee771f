//! The pool's live channel, tried as the pool: `cellule-verifier` runs with
//! a token of the pool's own ServiceAccount (so under the Role the operator
//! gave it), and a token revoked on the API server is refused there.

use std::time::Duration;

use anyhow::ensure;
use cellule_e2e::{apply_sample_site, cellule_api, in_namespace, merge_patch, start_verifier};
use cellule_verifier::revocations::{RevocationList, RevocationListSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, api::PostParams};
use serde_json::json;

/// The verifier's verdict on `token`: the HTTP status and the body.
async fn verdict(addr: &str, token: &str) -> Result<(u16, String), String> {
    cellule_e2e::http_post(addr, "/verify", token).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_the_verifier_running_as_the_pool() {
    in_namespace("live", |client: Client, ns: String| async move {
        const GRANTS: usize = 20;
        apply_sample_site(&client, &ns).await?;
        merge_patch(&client, &ns, "Pool", "paris", json!({"spec": {"tokens": {"approvalRequired": false}}})).await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        for i in 0..GRANTS {
            let grant = serde_json::from_value(json!({
                "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
                "metadata": {"name": format!("live-{i}")},
                "spec": {"poolRef": {"name": "paris"}, "workerId": format!("pc-live-{i}"), "owner": "o@example.com",
                         "tiers": ["light"], "ttl": "24h", "requestedBy": "alice"},
            }))?;
            grants.create(&PostParams::default(), &grant).await?;
        }
        let mut tokens = Vec::new();
        for i in 0..GRANTS {
            tokens.push(cellule_e2e::token_of(&client, &ns, &format!("live-{i}")).await?);
        }

        let kubeconfig = cellule_e2e::service_account_kubeconfig(&client, &ns, "paris-pool").await?;
        let (_verifier, addr) = start_verifier(&kubeconfig, &ns, "paris").await?;
        for token in &tokens {
            let (code, body) = verdict(&addr, token).await.map_err(anyhow::Error::msg)?;
            ensure!(code == 200, "a valid token: {code} {body}");
        }

        // The pool's credentials read its JWKS and the revocation lists,
        // and write nothing here (its peer reports are federation's test).
        let as_pool = cellule_e2e::client_from(&kubeconfig).await?;
        let pool_cms = Api::<ConfigMap>::namespaced(as_pool.clone(), &ns);
        pool_cms.get("paris-jwks").await?;
        let pool_lists = Api::<RevocationList>::namespaced(as_pool.clone(), &ns);
        pool_lists.list(&Default::default()).await?;
        let forged = RevocationList::new("paris-revoked-1-9", RevocationListSpec { pool: "paris".into(), expires_at: 1, entries: vec![] });
        for denied in [
            pool_cms.get("paris-config").await.err().map(|e| e.to_string()),
            Api::<Secret>::namespaced(as_pool.clone(), &ns).get("paris-signing-keys").await.err().map(|e| e.to_string()),
            Api::<Secret>::namespaced(as_pool.clone(), &ns).get("paris-federation").await.err().map(|e| e.to_string()),
            pool_cms.list(&Default::default()).await.err().map(|e| e.to_string()),
            pool_lists.create(&PostParams::default(), &forged).await.err().map(|e| e.to_string()),
            pool_lists.delete_collection(&Default::default(), &Default::default()).await.err().map(|e| e.to_string()),
        ] {
            ensure!(denied.as_deref().is_some_and(|e| e.contains("forbidden")), "the pool's token reached more than it reads: {denied:?}");
        }

        // Revocation, as the pool sees it: from the grant's update on the
        // API server to the verifier refusing the token.
        let mut latencies = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let started = std::time::Instant::now();
            merge_patch(&client, &ns, "WorkerGrant", &format!("live-{i}"), json!({"spec": {"revoked": true}})).await?;
            loop {
                let (code, body) = verdict(&addr, token).await.map_err(anyhow::Error::msg)?;
                if code == 401 {
                    ensure!(body.contains("revoked"), "refused for another reason: {body}");
                    break;
                }
                ensure!(started.elapsed() < Duration::from_secs(10), "still accepted after 10 s");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!("revocation as the pool sees it, over {GRANTS}: p50 {p50:?}, p99 {p99:?}, max {:?}", latencies.last().unwrap());
        ensure!(p99 <= Duration::from_millis(250), "p99 {p99:?} above 250 ms");

        // A verifier started now (a pool restarted) reads the same from
        // the API server: every revoked token refused, the others accepted.
        let alice = cellule_e2e::token_of(&client, &ns, "laptop-alice").await?;
        let (_second, addr) = start_verifier(&kubeconfig, &ns, "paris").await?;
        for token in &tokens {
            let (code, body) = verdict(&addr, token).await.map_err(anyhow::Error::msg)?;
            ensure!(code == 401 && body.contains("revoked"), "a revoked token after a restart: {code} {body}");
        }
        let (code, body) = verdict(&addr, &alice).await.map_err(anyhow::Error::msg)?;
        ensure!(code == 200, "a valid token after a restart: {code} {body}");

        // The Pool deleted with its dependents orphaned: the JWKS stays,
        // but no revocation would be written any more. A JWKS no Pool owns
        // verifies nothing.
        cellule_api(&client, &ns, "Pool")
            .delete("paris", &kube::api::DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() })
            .await?;
        cellule_e2e::eventually("every token refused once the JWKS is orphaned", Duration::from_secs(60), || async {
            let (code, body) = verdict(&addr, &alice).await?;
            (code == 401 && body.contains("no Pool owns it")).then_some(()).ok_or(format!("{code} {body}"))
        })
        .await?;
        Ok(())
    })
    .await;
}
