//! The operator's own image, built on this machine without a container
//! engine (`e2e/scripts/build-image.sh`) from the binary under test, pushed
//! to the e2e registry, signed with cosign and its SBOM attested; then
//! checked as a platform team would: `cosign verify`, `cosign
//! verify-attestation` (the SBOM lists what Cargo.lock pins), the image's
//! user and entrypoint, the chart pulling it by digest, and the operator's
//! own image verification pinning a workload to it.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use cellule_e2e::{
    Env, apply_sample_site, cellule_api, eventually, in_namespace, repo_path, run_tool,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use serde_json::{Value, json};

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs build-image.sh; returns the digest it printed.
async fn build(repository: &str, tag: &str) -> anyhow::Result<String> {
    let path = format!(
        "{}:{}",
        Env::var("CELLULE_E2E_BIN"),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::process::Command::new("bash")
        .arg(repo_path("e2e/scripts/build-image.sh"))
        .args([
            &Env::var("CELLULE_E2E_OPERATOR_BIN"),
            repository,
            tag,
            &Env::var("CELLULE_E2E_COSIGN_KEY"),
        ])
        .env("PATH", path)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "build-image.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let digest = String::from_utf8(output.stdout)?.trim().to_owned();
    ensure!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "not a digest: {digest:?}"
    );
    Ok(digest)
}

/// What Cargo.lock pins: name → versions.
fn locked() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let lock = std::fs::read_to_string(repo_path("Cargo.lock"))?;
    let mut pinned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            pinned
                .entry(n)
                .or_default()
                .push(v.trim_matches('"').to_owned());
        }
    }
    Ok(pinned)
}

#[tokio::test]
async fn the_operator_image_is_built_signed_attested_and_verified_by_the_operator() {
    in_namespace("opimage", |client: Client, ns: String| async move {
        let repository = format!("{}/cellule/cellule-operator", Env::registry());
        let digest = build(&repository, "e2e").await?;
        let pinned = format!("{repository}@{digest}");
        // Reproducible: the same binary gives the same image.
        let again = build(&repository, "e2e-again").await?;
        ensure!(
            again == digest,
            "two builds of one binary: {digest} then {again}"
        );

        // Signed with the release key; refused with another.
        let public = Env::var("CELLULE_E2E_COSIGN_PUB");
        run_tool(
            "cosign",
            &[
                "verify",
                "--key",
                &public,
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &pinned,
            ],
            &[],
        )
        .await?;
        let other = std::env::temp_dir().join(format!("cellule-e2e-other-{}", std::process::id()));
        std::fs::create_dir_all(&other)?;
        run_tool(
            "cosign",
            &[
                "generate-key-pair",
                "--output-key-prefix",
                other.join("k").to_str().unwrap(),
            ],
            &[("COSIGN_PASSWORD", "")],
        )
        .await?;
        let refused = run_tool(
            "cosign",
            &[
                "verify",
                "--key",
                other.join("k.pub").to_str().unwrap(),
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &pinned,
            ],
            &[],
        )
        .await;
        ensure!(refused.is_err(), "verified with a key that did not sign it");

        // The SBOM, signed: every component is a package Cargo.lock pins, at
        // that version, and the operator's main dependencies are there.
        let attestations = run_tool(
            "cosign",
            &[
                "verify-attestation",
                "--key",
                &public,
                "--type",
                "cyclonedx",
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &pinned,
            ],
            &[],
        )
        .await?;
        let envelope: Value =
            serde_json::from_str(attestations.lines().next().context("no attestation")?)?;
        let statement: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(envelope["payload"].as_str().context("payload")?)?,
        )?;
        ensure!(
            statement["subject"][0]["digest"]["sha256"] == digest.trim_start_matches("sha256:"),
            "{}",
            statement["subject"]
        );
        let bom = &statement["predicate"];
        ensure!(bom["bomFormat"] == "CycloneDX", "{bom}");
        ensure!(
            bom["metadata"]["component"]["name"] == "cellule-operator",
            "{}",
            bom["metadata"]
        );
        let lock = locked()?;
        let components = bom["components"].as_array().context("components")?;
        let mut names = Vec::new();
        for c in components {
            let (name, version) = (
                c["name"].as_str().unwrap_or_default(),
                c["version"].as_str().unwrap_or_default(),
            );
            ensure!(
                lock.get(name)
                    .is_some_and(|v| v.iter().any(|v| v == version)),
                "the SBOM names {name} {version}, which Cargo.lock does not pin"
            );
            names.push(name.to_owned());
        }
        for needed in [
            "kube",
            "k8s-openapi",
            "sigstore",
            "ed25519-dalek",
            "jsonwebtoken",
            "tokio",
            "kube-lease-manager",
            "prometheus-client",
        ] {
            ensure!(
                names.iter().any(|n| n == needed),
                "{needed} missing from the SBOM ({} components)",
                names.len()
            );
        }

        // What runs: non-root, the operator binary with `run`.
        let config: Value =
            serde_json::from_str(&run_tool("crane", &["config", &pinned], &[]).await?)?;
        ensure!(
            config["config"]["User"] == "65532:65532",
            "{}",
            config["config"]
        );
        ensure!(
            config["config"]["Entrypoint"] == json!(["/usr/local/bin/cellule-operator"]),
            "{}",
            config["config"]
        );
        ensure!(
            config["config"]["Cmd"] == json!(["run"]),
            "{}",
            config["config"]
        );
        // The binary and the loader it needs are in the layer.
        let listing = tokio::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "{} export {pinned} - | tar -tf -",
                    Env::bin("crane").display()
                ),
            ])
            .output()
            .await?;
        let listing = String::from_utf8_lossy(&listing.stdout);
        for file in [
            "usr/local/bin/cellule-operator",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            ensure!(
                listing.lines().any(|l| l.trim_start_matches("./") == file),
                "{file} not in the image:\n{listing}"
            );
        }

        // The chart pulls it by digest.
        let rendered = run_tool(
            "helm",
            &[
                "template",
                "cellule-operator",
                repo_path("charts/cellule-operator").to_str().unwrap(),
                "--namespace",
                "cellule-system",
                "--set",
                &format!("image.repository={repository}"),
                "--set",
                &format!("image.digest={digest}"),
            ],
            &[],
        )
        .await?;
        ensure!(
            rendered.contains(&format!("image: {pinned}")),
            "the chart does not pull {pinned}"
        );

        // The operator's own verification: a workload on this image, by
        // tag, runs the verified digest.
        apply_sample_site(&client, &ns).await?;
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "NpuServer",
            "heavy",
            json!({"spec": {"image": {"reference": format!("{repository}:e2e")}}}),
        )
        .await?;
        let npu = cellule_api(&client, &ns, "NpuServer");
        eventually(
            "the NpuServer runs the operator image, verified",
            WAIT,
            || async {
                let status =
                    npu.get("heavy").await.map_err(|e| e.to_string())?.data["status"].clone();
                (status["image"]["digest"] == digest.as_str()
                    && status["image"]["reference"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(":e2e")))
                .then_some(())
                .ok_or(status["image"].to_string())
            },
        )
        .await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        eventually("its Deployment pinned to the digest", WAIT, || async {
            let images: Vec<String> = deployments
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .flat_map(|d| {
                    d.spec
                        .as_ref()
                        .and_then(|s| s.template.spec.as_ref())
                        .map(|s| s.containers.clone())
                        .unwrap_or_default()
                })
                .filter_map(|c| c.image)
                .collect();
            images
                .iter()
                .any(|i| i == &pinned)
                .then_some(())
                .ok_or(format!("{images:?}"))
        })
        .await?;
        let _ = std::fs::remove_dir_all(Path::new(&other));
        Ok(())
    })
    .await;
}
