//! Signed images only, on the real API server with a real registry and
//! real cosign signatures made here, offline: only a digest whose
//! signature verifies, for that digest and that repository, reaches a
//! Deployment; every refusal is readable in status and Events; what ran
//! keeps running through refusals and outages; the user's spec is never
//! changed.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::ensure;
use cellule_e2e::{
    Env, cellule_api, event_about, eventually,
    images::{
        apply, deployment_image, garble, image_verified, key_config_map, keypair, npu_server, push,
        scratch, sig_tag, sign, spare_registry, wait_deployment_image,
    },
    in_namespace, run_tool, sample_documents, sample_site_ready, wait_condition,
};
use cellule_operator::names;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn signed_images_run_pinned_to_their_verified_digest_and_the_spec_stays_as_applied() {
    in_namespace("img-signed", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let registry = Env::registry();
        for (deployment, image) in [
            (names::pool("paris"), "pool"),
            (names::cpu_workers("paris", "light-workers"), "worker"),
            (names::npu_server("heavy"), "npu-server"),
        ] {
            let digest = run_tool(
                "crane",
                &["digest", &format!("{registry}/cellule/{image}:1.4.2")],
                &[],
            )
            .await?;
            let want = format!("{registry}/cellule/{image}@{}", digest.trim());
            let got = deployment_image(&client, &ns, &deployment).await?;
            ensure!(
                got.as_deref() == Some(want.as_str()),
                "{deployment} runs {got:?}, not {want}"
            );
        }
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let image = &pool.data["status"]["image"];
        ensure!(
            image["name"] == "pool"
                && image["verifiedBy"] == "ConfigMap cellule-signing[cosign.pub]",
            "{image}"
        );
        ensure!(
            image["reference"]
                .as_str()
                .unwrap()
                .ends_with("/cellule/pool:1.4.2"),
            "{image}"
        );
        ensure!(
            image["digest"]
                .as_str()
                .unwrap()
                .contains(image["shortDigest"].as_str().unwrap()),
            "{image}"
        );
        ensure!(
            pool.data["status"]["workerImages"][0]["name"] == "cpuWorkers[light-workers]",
            "{}",
            pool.data["status"]
        );
        let npu = cellule_api(&client, &ns, "NpuServer").get("heavy").await?;
        ensure!(
            npu.data["status"]["image"]["verifiedAt"].is_string(),
            "{}",
            npu.data["status"]
        );
        for kind in ["Pool", "NpuServer"] {
            let name = if kind == "Pool" { "paris" } else { "heavy" };
            image_verified(&client, &ns, kind, name, "Verified").await?;
            // Argo-style drift check: the spec is what was applied. Its only
            // spec manager is the applier, the generation never moved, and
            // applying the same document again (dry run) changes nothing.
            let object = cellule_api(&client, &ns, kind).get(name).await?;
            ensure!(
                object.metadata.generation == Some(1),
                "{kind} generation {:?}",
                object.metadata.generation
            );
            for entry in object.metadata.managed_fields.iter().flatten() {
                let spec = entry
                    .fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:spec").is_some());
                ensure!(
                    !spec || entry.manager.as_deref() == Some("cellule-e2e"),
                    "{kind} spec managed by {:?}",
                    entry.manager
                );
            }
            let (_, doc) = sample_documents()
                .into_iter()
                .find(|(_, d)| d["kind"] == kind)
                .unwrap();
            let again = cellule_api(&client, &ns, kind)
                .patch(
                    name,
                    &PatchParams::apply("cellule-e2e").force().dry_run(),
                    &Patch::Apply(&doc),
                )
                .await?;
            ensure!(
                again.data["spec"] == object.data["spec"],
                "{kind}: applying the same document would change the spec"
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn images_without_a_valid_signature_for_their_digest_and_repository_never_reach_a_deployment()
{
    in_namespace("img-refused", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        let registry = Env::registry();
        let key = PathBuf::from(Env::var("CELLULE_E2E_COSIGN_KEY"));
        let (other_key, _) = keypair(&dir, "other").await?;
        let repo = |name: &str| format!("{registry}/{ns}/{name}");

        // Unsigned.
        push(&dir, &format!("{}:1", repo("unsigned")), "unsigned").await?;
        // Signed with a key the spec does not list.
        let d = push(&dir, &format!("{}:1", repo("other-key")), "other key").await?;
        sign(&other_key, &format!("{}@{d}", repo("other-key"))).await?;
        // A valid signature of A put where B's signature goes.
        let a = push(&dir, &format!("{}:a", repo("mixed")), "a").await?;
        let b = push(&dir, &format!("{}:b", repo("mixed")), "b").await?;
        sign(&key, &format!("{}@{a}", repo("mixed"))).await?;
        run_tool(
            "crane",
            &[
                "copy",
                &sig_tag(&repo("mixed"), &a),
                &sig_tag(&repo("mixed"), &b),
            ],
            &[],
        )
        .await?;
        // A signed image copied with its signature into another repository.
        let d = push(&dir, &format!("{}:1", repo("original")), "original").await?;
        sign(&key, &format!("{}@{d}", repo("original"))).await?;
        run_tool(
            "crane",
            &[
                "copy",
                &format!("{}@{d}", repo("original")),
                &format!("{}:1", repo("copy")),
            ],
            &[],
        )
        .await?;
        run_tool(
            "crane",
            &[
                "copy",
                &sig_tag(&repo("original"), &d),
                &sig_tag(&repo("copy"), &d),
            ],
            &[],
        )
        .await?;
        // A signature whose bytes were replaced (malformed).
        let g = push(&dir, &format!("{}:1", repo("garbled")), "garbled").await?;
        sign(&key, &format!("{}@{g}", repo("garbled"))).await?;
        garble(&dir, &sig_tag(&repo("garbled"), &g)).await?;
        // An image manifest without any signature layer where the
        // signatures go.
        let e = push(&dir, &format!("{}:1", repo("empty-sig")), "empty").await?;
        push(&dir, &sig_tag(&repo("empty-sig"), &e), "not a signature").await?;

        let cases = [
            (
                "unsigned",
                format!("{}:1", repo("unsigned")),
                "cellule-signing",
                "SignatureMissing",
            ),
            (
                "other-key",
                format!("{}:1", repo("other-key")),
                "cellule-signing",
                "SignatureInvalid",
            ),
            (
                "mixed",
                format!("{}:b", repo("mixed")),
                "cellule-signing",
                "DigestMismatch",
            ),
            (
                "copy",
                format!("{}:1", repo("copy")),
                "cellule-signing",
                "IdentityMismatch",
            ),
            (
                "garbled",
                format!("{}:1", repo("garbled")),
                "cellule-signing",
                "SignatureInvalid",
            ),
            (
                "empty-sig",
                format!("{}:1", repo("empty-sig")),
                "cellule-signing",
                "SignatureMissing",
            ),
            (
                "missing",
                format!("{}:1", repo("nowhere")),
                "cellule-signing",
                "ImageNotFound",
            ),
            (
                "unlisted",
                "registry.unlisted.example/team/x:1".to_owned(),
                "cellule-signing",
                "PolicyInvalid",
            ),
            (
                "no-key",
                format!("{registry}/cellule/npu-server:1.4.2"),
                "no-such-configmap",
                "PolicyInvalid",
            ),
        ];
        for (name, reference, keys, _) in &cases {
            apply(&client, &ns, &npu_server(name, reference, &[keys], "5m")).await?;
        }
        for (name, reference, _, reason) in &cases {
            let condition = image_verified(&client, &ns, "NpuServer", name, reason).await?;
            let message = condition["message"].as_str().unwrap_or_default();
            ensure!(
                message.contains("what runs is left as it is"),
                "{name}: {message}"
            );
            let npu =
                wait_condition(&client, &ns, "NpuServer", name, "Ready", "False", WAIT).await?;
            ensure!(
                npu.data["status"]["image"].is_null(),
                "{name} records an image: {}",
                npu.data["status"]
            );
            ensure!(
                deployment_image(&client, &ns, &names::npu_server(name))
                    .await?
                    .is_none(),
                "{name} ({reference}) got a Deployment"
            );
            let event = event_about(&client, &ns, name, reason).await?;
            ensure!(
                event
                    .note
                    .as_deref()
                    .unwrap_or_default()
                    .contains("what runs is left as it is"),
                "{event:?}"
            );
        }
        // The rest of each NpuServer is rendered: its Service exists.
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), &ns);
        ensure!(
            services
                .get_opt(&names::npu_server("unsigned"))
                .await?
                .is_some()
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_second_key_verifies_during_rotation_and_dropping_it_leaves_the_deployment_as_it_was() {
    in_namespace("img-rotation", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        let repo = format!("{}/{ns}/rotated", Env::registry());
        let (new_key, new_pem) = keypair(&dir, "new").await?;
        key_config_map(&client, &ns, "new-signing", &new_pem).await?;
        let digest = push(&dir, &format!("{repo}:1"), "rotated").await?;
        sign(&new_key, &format!("{repo}@{digest}")).await?;

        apply(
            &client,
            &ns,
            &npu_server(
                "rotated",
                &format!("{repo}:1"),
                &["cellule-signing", "new-signing"],
                "5m",
            ),
        )
        .await?;
        let condition = image_verified(&client, &ns, "NpuServer", "rotated", "Verified").await?;
        ensure!(
            condition["message"]
                .as_str()
                .unwrap()
                .contains("ConfigMap new-signing[cosign.pub]"),
            "{condition}"
        );
        let pinned = format!("{repo}@{digest}");
        let deployment = names::npu_server("rotated");
        wait_deployment_image(&client, &ns, &deployment, &pinned).await?;
        wait_condition(&client, &ns, "NpuServer", "rotated", "Ready", "True", WAIT).await?;
        let before = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&deployment)
            .await?;

        // The key that signed it is removed from the list: refused, and
        // the Deployment stays exactly as it is, even when the spec asks
        // for another change.
        let mut npu = npu_server("rotated", &format!("{repo}:1"), &["cellule-signing"], "5m");
        npu["spec"]["replicas"] = json!(3);
        apply(&client, &ns, &npu).await?;
        image_verified(&client, &ns, "NpuServer", "rotated", "SignatureInvalid").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&deployment)
            .await?;
        // (Its status moves with its pods: the spec and generation do not.)
        ensure!(
            after.metadata.generation == before.metadata.generation && after.spec == before.spec,
            "the Deployment was written"
        );
        let status = cellule_api(&client, &ns, "NpuServer")
            .get("rotated")
            .await?
            .data["status"]
            .clone();
        ensure!(
            status["image"]["digest"] == digest.as_str(),
            "status no longer says what runs: {status}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_tag_moved_to_an_unsigned_image_keeps_the_verified_digest_running() {
    in_namespace("img-tag-move", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        let repo = format!("{}/{ns}/moving", Env::registry());
        let key = PathBuf::from(Env::var("CELLULE_E2E_COSIGN_KEY"));
        let signed = push(&dir, &format!("{repo}:stable"), "v1").await?;
        sign(&key, &format!("{repo}@{signed}")).await?;
        apply(
            &client,
            &ns,
            &npu_server(
                "moving",
                &format!("{repo}:stable"),
                &["cellule-signing"],
                "10s",
            ),
        )
        .await?;
        image_verified(&client, &ns, "NpuServer", "moving", "Verified").await?;
        let deployment = names::npu_server("moving");
        let pinned = format!("{repo}@{signed}");
        wait_deployment_image(&client, &ns, &deployment, &pinned).await?;

        // Someone pushes an unsigned image to the same tag.
        let moved = push(&dir, &format!("{repo}:stable"), "v2, unsigned").await?;
        let started = Instant::now();
        let condition =
            image_verified(&client, &ns, "NpuServer", "moving", "SignatureMissing").await?;
        println!(
            "tag move refused {:.1}s after the push (refresh interval 10s)",
            started.elapsed().as_secs_f64()
        );
        ensure!(
            condition["message"].as_str().unwrap().contains(&moved),
            "{condition}"
        );
        ensure!(
            deployment_image(&client, &ns, &deployment)
                .await?
                .as_deref()
                == Some(pinned.as_str()),
            "the unsigned digest reached the Deployment"
        );
        let status = cellule_api(&client, &ns, "NpuServer")
            .get("moving")
            .await?
            .data["status"]
            .clone();
        ensure!(status["image"]["digest"] == signed.as_str(), "{status}");

        // Signed after all: it rolls out.
        sign(&key, &format!("{repo}@{moved}")).await?;
        let now_pinned = format!("{repo}@{moved}");
        wait_deployment_image(&client, &ns, &deployment, &now_pinned).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_registry_outage_keeps_cached_decisions_and_a_silent_registry_times_out() {
    in_namespace("img-outage", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        // A registry of this test's own, on the spare port the operator
        // knows as plain HTTP.
        let (spare, mut registry) = spare_registry().await?;
        let key = PathBuf::from(Env::var("CELLULE_E2E_COSIGN_KEY"));
        for image in ["cached", "never-seen"] {
            let digest = push(&dir, &format!("{spare}/outage/{image}:1"), image).await?;
            sign(&key, &format!("{spare}/outage/{image}@{digest}")).await?;
        }
        apply(
            &client,
            &ns,
            &npu_server(
                "cached",
                &format!("{spare}/outage/cached:1"),
                &["cellule-signing"],
                "10s",
            ),
        )
        .await?;
        image_verified(&client, &ns, "NpuServer", "cached", "Verified").await?;
        wait_condition(&client, &ns, "NpuServer", "cached", "Ready", "True", WAIT).await?;

        registry.kill().await?;
        // Past the refresh interval the tag cannot be resolved: the
        // decision cached for its last digest keeps it Ready, and says so.
        let condition = eventually("the cached decision to be used", WAIT, || async {
            let c = image_verified(&client, &ns, "NpuServer", "cached", "Verified")
                .await
                .map_err(|e| e.to_string())?;
            let m = c["message"].as_str().unwrap_or_default().to_owned();
            m.contains("cached decision").then_some(c).ok_or(m)
        })
        .await?;
        println!("during the outage: {}", condition["message"]);
        wait_condition(&client, &ns, "NpuServer", "cached", "Ready", "True", WAIT).await?;
        // An image never verified before is refused.
        apply(
            &client,
            &ns,
            &npu_server(
                "never-seen",
                &format!("{spare}/outage/never-seen:1"),
                &["cellule-signing"],
                "10s",
            ),
        )
        .await?;
        image_verified(
            &client,
            &ns,
            "NpuServer",
            "never-seen",
            "RegistryUnavailable",
        )
        .await?;
        wait_condition(
            &client,
            &ns,
            "NpuServer",
            "never-seen",
            "Reconciling",
            "True",
            WAIT,
        )
        .await?;
        ensure!(
            deployment_image(&client, &ns, &names::npu_server("never-seen"))
                .await?
                .is_none()
        );

        // A registry that accepts connections and never answers.
        // (On the spare port, now free: the operator may call it, over
        // plain HTTP, so this is the HTTP read that never ends.)
        let silent = tokio::net::TcpListener::bind(&spare).await?;
        let address = silent.local_addr()?;
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let started = Instant::now();
        apply(
            &client,
            &ns,
            &npu_server(
                "silent",
                &format!("{address}/x/y:1"),
                &["cellule-signing"],
                "10s",
            ),
        )
        .await?;
        let condition =
            image_verified(&client, &ns, "NpuServer", "silent", "RegistryUnavailable").await?;
        let took = started.elapsed();
        println!(
            "silent registry refused after {:.1}s: {}",
            took.as_secs_f64(),
            condition["message"]
        );
        let message = condition["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("timed out") || message.contains("no answer within 3s"),
            "not a timeout: {condition}"
        );
        ensure!(
            took < Duration::from_secs(30),
            "a silent registry took {took:?}"
        );
        // The operator is not stuck behind it: another object still reconciles.
        apply(
            &client,
            &ns,
            &npu_server(
                "after",
                &format!("{}/cellule/npu-server:1.4.2", Env::registry()),
                &["cellule-signing"],
                "5m",
            ),
        )
        .await?;
        image_verified(&client, &ns, "NpuServer", "after", "Verified").await?;
        held.abort();
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_pool_leaves_its_running_workers_as_they_are_when_their_new_image_is_refused() {
    in_namespace("img-pool-kept", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        let unsigned = format!("{}/{ns}/worker:2", Env::registry());
        push(&dir, &unsigned, "worker 2, unsigned").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let workers = names::cpu_workers("paris", "light-workers");
        let before = deployments.get(&workers).await?;
        let pool_before = deployments.get(&names::pool("paris")).await?;
        let status_before =
            cellule_api(&client, &ns, "Pool").get("paris").await?.data["status"].clone();

        // The worker set moves to an unsigned image, and one more replica.
        let mut pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        pool.data["spec"]["cpuWorkers"][0]["image"]["reference"] = json!(unsigned);
        pool.data["spec"]["cpuWorkers"][0]["replicas"] = json!(3);
        let patch = json!({"spec": {"cpuWorkers": pool.data["spec"]["cpuWorkers"]}});
        cellule_api(&client, &ns, "Pool")
            .patch("paris", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let condition = image_verified(&client, &ns, "Pool", "paris", "SignatureMissing").await?;
        ensure!(
            condition["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cpuWorkers[light-workers]"),
            "{condition}"
        );
        wait_condition(&client, &ns, "Pool", "paris", "Stalled", "True", WAIT).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for (name, before) in [(&workers, &before), (&names::pool("paris"), &pool_before)] {
            let after = deployments.get(name).await?;
            ensure!(
                after.metadata.generation == before.metadata.generation
                    && after.spec == before.spec,
                "Deployment {name} was written while an image is refused"
            );
        }
        let status = cellule_api(&client, &ns, "Pool").get("paris").await?.data["status"].clone();
        ensure!(
            status["workerImages"] == status_before["workerImages"]
                && status["image"]["digest"] == status_before["image"]["digest"],
            "the status no longer says what runs: {status}"
        );
        // Back to the signed image: the replica change rolls out.
        let mut pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        pool.data["spec"]["cpuWorkers"][0]["image"]["reference"] =
            json!(format!("{}/cellule/worker:1.4.2", Env::registry()));
        let patch = json!({"spec": {"cpuWorkers": pool.data["spec"]["cpuWorkers"]}});
        cellule_api(&client, &ns, "Pool")
            .patch("paris", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        image_verified(&client, &ns, "Pool", "paris", "Verified").await?;
        eventually("three workers asked for", WAIT, || async {
            let d = deployments.get(&workers).await.map_err(|e| e.to_string())?;
            let replicas = d.spec.and_then(|s| s.replicas);
            (replicas == Some(3))
                .then_some(())
                .ok_or(format!("{replicas:?}"))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn containers_added_by_hand_to_a_rendered_deployment_are_removed() {
    in_namespace("img-sidecar", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        let unsigned = push(
            &dir,
            &format!("{}/{ns}/sidecar:1", Env::registry()),
            "sidecar",
        )
        .await?;
        let image = format!("{}/{ns}/sidecar@{unsigned}", Env::registry());
        let restricted = json!({
            "allowPrivilegeEscalation": false, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        });
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let name = names::pool("paris");
        // Someone who may edit Deployments slips an unsigned init
        // container and sidecar into the pool's pod template.
        let patch = json!({"spec": {"template": {"spec": {
            "initContainers": [{"name": "x", "image": image, "securityContext": restricted}],
            "containers": [{"name": "sidecar", "image": image, "securityContext": restricted}],
        }}}});
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        eventually("the added containers removed", WAIT, || async {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let pod = d.spec.and_then(|s| s.template.spec).ok_or("no pod spec")?;
            let names: Vec<String> = pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
                .map(|c| format!("{} {}", c.name, c.image.clone().unwrap_or_default()))
                .collect();
            (names.len() == 1 && !names[0].contains(&unsigned))
                .then_some(())
                .ok_or(format!("{names:?}"))
        })
        .await?;
        // And it stays that way: no write loop.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settled = deployments.get(&name).await?.metadata.generation;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            deployments.get(&name).await?.metadata.generation == settled,
            "the Deployment keeps being written"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_registry_that_wants_credentials_is_read_with_the_pull_secret() {
    use cellule_e2e::images::{push_with, sign_with};
    in_namespace("img-private", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let dir = scratch(&ns);
        // A registry behind Basic auth, on a port of its own (a proxy to
        // the e2e registry that refuses requests without the credentials).
        let spare = Env::var("CELLULE_E2E_AUTH_REGISTRY");
        let _proxy = tokio::process::Command::new("python3")
            .arg(cellule_e2e::repo_path("e2e/scripts/auth-proxy.py"))
            .args([&spare, &Env::registry(), "puller", "s3cret-pull"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let auth = base64_basic("puller", "s3cret-pull");
        let docker_config = dir.join("docker");
        std::fs::create_dir_all(&docker_config)?;
        std::fs::write(
            docker_config.join("config.json"),
            json!({"auths": {spare.clone(): {"auth": auth}}}).to_string(),
        )?;
        let env = [("DOCKER_CONFIG", docker_config.to_str().unwrap())];
        let repository = format!("{spare}/{ns}/private");
        let digest = eventually("pushing through the proxy", WAIT, || async {
            push_with(&dir, &format!("{repository}:1"), "private", &env)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        sign_with(
            &PathBuf::from(Env::var("CELLULE_E2E_COSIGN_KEY")),
            &format!("{repository}@{digest}"),
            &env,
        )
        .await?;
        let secret = |name: &str, password: &str| {
            json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": name},
                "stringData": {".dockerconfigjson": json!({"auths": {spare.clone(): {"auth": base64_basic("puller", password)}}}).to_string()},
            })
        };
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
        for (name, password) in [("pull", "s3cret-pull"), ("wrong", "not-it")] {
            secrets
                .patch(name, &PatchParams::apply("cellule-e2e"), &Patch::Apply(&secret(name, password)))
                .await?;
        }
        let reference = format!("{repository}:1");
        for (name, pull_secret) in [("private", Some("pull")), ("anonymous", None), ("wrong", Some("wrong"))] {
            let mut npu = npu_server(name, &reference, &["cellule-signing"], "5m");
            if let Some(secret) = pull_secret {
                npu["spec"]["image"]["pullSecrets"] = json!([{"name": secret}]);
            }
            apply(&client, &ns, &npu).await?;
        }
        image_verified(&client, &ns, "NpuServer", "private", "Verified").await?;
        wait_deployment_image(&client, &ns, &names::npu_server("private"), &format!("{repository}@{digest}")).await?;
        // The pod spec names the pull secret, for the kubelet.
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns).get(&names::npu_server("private")).await?;
        let pod = deployment.spec.and_then(|s| s.template.spec).unwrap_or_default();
        ensure!(pod.image_pull_secrets.unwrap_or_default().iter().any(|s| s.name == "pull"), "no imagePullSecrets");
        for name in ["anonymous", "wrong"] {
            let condition = image_verified(&client, &ns, "NpuServer", name, "PolicyInvalid").await?;
            let message = condition["message"].as_str().unwrap_or_default();
            ensure!(message.contains("pullSecrets"), "{name}: {message}");
            ensure!(!message.contains("s3cret") && !message.contains("not-it"), "a password in status");
        }
        Ok(())
    })
    .await;
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
