//! Images for the e2e tests: pushed with crane, signed with cosign, as a
//! release pipeline does it, offline; and the objects that run them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{Env, cellule_api, eventually, run_tool, sample_documents};

const WAIT: Duration = Duration::from_secs(90);

/// A scratch directory for one test's keys and image layers.
pub fn scratch(ns: &str) -> PathBuf {
    let dir = PathBuf::from(Env::var("CELLULE_E2E_STATE"))
        .join("images")
        .join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pushes a one-file image with `content` to `reference` (a tag); returns
/// its digest.
pub async fn push(dir: &Path, reference: &str, content: &str) -> anyhow::Result<String> {
    push_with(dir, reference, content, &[]).await
}

/// [`push`] with `env` for crane (e.g. `DOCKER_CONFIG` with credentials).
pub async fn push_with(
    dir: &Path,
    reference: &str,
    content: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let layer = dir.join(format!("{}.d", reference.replace(['/', ':', '@'], "_")));
    std::fs::create_dir_all(&layer)?;
    std::fs::write(layer.join("CONTENT"), content)?;
    let tar = layer.with_extension("tar");
    let status = tokio::process::Command::new("tar")
        .args([
            "-C",
            layer.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "CONTENT",
        ])
        .status()
        .await?;
    ensure!(status.success(), "tar failed");
    run_tool(
        "crane",
        &[
            "append",
            "--oci-empty-base",
            "-f",
            tar.to_str().unwrap(),
            "-t",
            reference,
        ],
        env,
    )
    .await?;
    Ok(run_tool("crane", &["digest", reference], env)
        .await?
        .trim()
        .to_owned())
}

/// A fresh cosign key pair in `dir`: (private key, public key PEM).
pub async fn keypair(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let prefix = dir.join(name);
    let status = tokio::process::Command::new(Env::bin("cosign"))
        .args([
            "generate-key-pair",
            "--output-key-prefix",
            prefix.to_str().unwrap(),
        ])
        .env("COSIGN_PASSWORD", "")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    ensure!(
        status.status.success(),
        "cosign generate-key-pair: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let public = std::fs::read_to_string(prefix.with_extension("pub"))?;
    Ok((prefix.with_extension("key"), public))
}

/// `cosign sign` as a release pipeline does it, offline.
pub async fn sign(key: &Path, image_at_digest: &str) -> anyhow::Result<()> {
    sign_with(key, image_at_digest, &[]).await
}

/// [`sign`] with `env` for cosign (e.g. `DOCKER_CONFIG` with credentials).
pub async fn sign_with(
    key: &Path,
    image_at_digest: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut env = env.to_vec();
    env.push(("COSIGN_PASSWORD", ""));
    run_tool(
        "cosign",
        &[
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            image_at_digest,
        ],
        &env,
    )
    .await
    .map(drop)
}

/// The signature tag of `digest` in `repository`.
pub fn sig_tag(repository: &str, digest: &str) -> String {
    format!("{repository}:{}.sig", digest.replace(':', "-"))
}

/// Replaces the signature in the signature manifest at `sig` with bytes
/// that are base64 but no signature.
pub async fn garble(dir: &Path, sig: &str) -> anyhow::Result<()> {
    let manifest = run_tool("crane", &["manifest", sig], &[]).await?;
    let mut manifest: Value = serde_json::from_str(&manifest)?;
    for layer in manifest["layers"].as_array_mut().context("layers")? {
        layer["annotations"]["dev.cosignproject.cosign/signature"] = json!("bm90IGEgc2lnbmF0dXJl");
    }
    let file = dir.join("garbled.json");
    std::fs::write(&file, manifest.to_string())?;
    let status = tokio::process::Command::new(Env::bin("crane"))
        .args(["edit", "manifest", sig])
        .stdin(std::fs::File::open(&file)?)
        .output()
        .await?;
    ensure!(
        status.status.success(),
        "crane edit manifest: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    Ok(())
}

pub async fn key_config_map(
    client: &Client,
    ns: &str,
    name: &str,
    pem: &str,
) -> anyhow::Result<()> {
    let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"cosign.pub": pem}});
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("cellule-e2e").force(),
            &Patch::Apply(&map),
        )
        .await?;
    Ok(())
}

/// The sample NpuServer renamed `name`, on `reference`, verified with the
/// keys of these ConfigMaps (`cosign.pub` in each).
pub fn npu_server(name: &str, reference: &str, key_maps: &[&str], refresh: &str) -> Value {
    let (_, mut npu) = sample_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "NpuServer")
        .expect("a sample NpuServer");
    npu["metadata"] = json!({"name": name});
    npu["spec"]["image"] = json!({
        "reference": reference,
        "refreshInterval": refresh,
        "verification": {"keys": key_maps.iter().map(|m| json!({"configMapKeyRef": {"name": m, "key": "cosign.pub"}})).collect::<Vec<_>>()},
    });
    npu
}

pub async fn apply(client: &Client, ns: &str, object: &Value) -> anyhow::Result<DynamicObject> {
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    cellule_api(client, ns, kind)
        .patch(
            name,
            &PatchParams::apply("cellule-e2e").force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))
}

/// The `ImageVerified` condition of `kind/name` once its reason is `reason`.
pub async fn image_verified(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    let api = cellule_api(client, ns, kind);
    eventually(
        &format!("{kind} {name} ImageVerified reason {reason}"),
        WAIT,
        || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            let condition = object.data["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "ImageVerified"))
                .cloned()
                .unwrap_or_default();
            if condition["reason"] == reason {
                Ok(condition)
            } else {
                Err(condition.to_string())
            }
        },
    )
    .await
}

pub async fn deployment_image(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    Ok(Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .map(|d| {
            serde_json::to_value(d).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }))
}

/// A registry of a test's own on the spare port (known to the operator as
/// plain HTTP): stopped when the returned child is killed or dropped.
pub async fn spare_registry() -> anyhow::Result<(String, tokio::process::Child)> {
    let spare = Env::var("CELLULE_E2E_SPARE_REGISTRY");
    let registry = tokio::process::Command::new(Env::bin("crane"))
        .args(["registry", "serve", "--address", &spare])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    eventually("the spare registry", WAIT, || async {
        run_tool("crane", &["catalog", &spare], &[])
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok((spare, registry))
}

/// Waits until Deployment `name` runs `image`.
pub async fn wait_deployment_image(
    client: &Client,
    ns: &str,
    name: &str,
    image: &str,
) -> anyhow::Result<()> {
    eventually(&format!("Deployment {name} on {image}"), WAIT, || async {
        let got = deployment_image(client, ns, name)
            .await
            .map_err(|e| e.to_string())?;
        (got.as_deref() == Some(image))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await
}
