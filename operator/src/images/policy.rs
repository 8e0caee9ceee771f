//! The dereference half of image verification: what a `SignedImage` names
//! (its keys, its pull secrets), read from the API server into a
//! [`Request`]. A policy that cannot be used is a [`Refusal::PolicyInvalid`]
//! naming the field; key and credential bytes never leave this module but
//! in the request.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use super::{Auth, ImageName, PublicKey, Refusal, Request};
use crate::api::common::{CosignKeyRef, SignedImage};

/// Reads what `image` names in `namespace`. `Ok(Err(_))`: the policy is
/// unusable; `Err(_)`: the API server failed (retry).
pub async fn request(
    client: &Client,
    namespace: &str,
    field: &str,
    image: &SignedImage,
) -> kube::Result<Result<Request, Refusal>> {
    let name = match ImageName::parse(&image.reference) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut keys = Vec::new();
    let mut unusable = Vec::new();
    for (i, key) in image.verification.keys.iter().enumerate() {
        match read_key(client, namespace, key).await? {
            Ok(key) => keys.push(key),
            Err(why) => unusable.push(format!("{field}.verification.keys[{i}]: {why}")),
        }
    }
    if keys.is_empty() {
        return Ok(Err(Refusal::PolicyInvalid(format!(
            "no usable cosign public key: {}",
            unusable.join("; ")
        ))));
    }
    if !unusable.is_empty() {
        // Another listed key may still verify (a rotation under way).
        tracing::info!(field, problems = %unusable.join("; "), "some listed cosign keys are unusable");
    }
    let mut auth = Auth::Anonymous;
    for (i, secret) in image.pull_secrets.iter().enumerate() {
        let field = format!("{field}.pullSecrets[{i}]");
        let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&secret.name)
            .await?
        else {
            return Ok(Err(Refusal::PolicyInvalid(format!(
                "{field}: Secret {:?} does not exist",
                secret.name
            ))));
        };
        match registry_auth(&secret, &name.registry) {
            Ok(Some(found)) => {
                auth = found;
                break;
            }
            Ok(None) => {}
            Err(why) => return Ok(Err(Refusal::PolicyInvalid(format!("{field}: {why}")))),
        }
    }
    Ok(Ok(Request {
        image: name,
        keys,
        auth,
        refresh: image.refresh_interval.0,
    }))
}

/// One listed key: `Ok(Err(why))` when it is missing or not a public key.
async fn read_key(
    client: &Client,
    namespace: &str,
    key: &CosignKeyRef,
) -> kube::Result<Result<PublicKey, String>> {
    let (source, pem) = match (&key.config_map_key_ref, &key.secret_key_ref) {
        (Some(r), _) => {
            let source = format!("ConfigMap {}[{}]", r.name, r.key);
            let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&r.name)
                .await?;
            let pem = map.as_ref().and_then(|m| {
                m.data
                    .as_ref()
                    .and_then(|d| d.get(&r.key).map(|s| s.clone().into_bytes()))
                    .or_else(|| m.binary_data.as_ref()?.get(&r.key).map(|b| b.0.clone()))
            });
            match (map.is_some(), pem) {
                (false, _) => return Ok(Err(format!("{source}: the ConfigMap does not exist"))),
                (true, None) => return Ok(Err(format!("{source}: no such key"))),
                (true, Some(pem)) => (source, pem),
            }
        }
        (None, Some(r)) => {
            let source = format!("Secret {}[{}]", r.name, r.key);
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&r.name)
                .await?;
            let pem = secret
                .as_ref()
                .and_then(|s| s.data.as_ref()?.get(&r.key).map(|b| b.0.clone()));
            match (secret.is_some(), pem) {
                (false, _) => return Ok(Err(format!("{source}: the Secret does not exist"))),
                (true, None) => return Ok(Err(format!("{source}: no such key"))),
                (true, Some(pem)) => (source, pem),
            }
        }
        (None, None) => return Ok(Err("neither configMapKeyRef nor secretKeyRef".into())),
    };
    Ok(public_key(source, &pem))
}

/// Checks that `pem` is a public key sigstore can verify with.
pub fn public_key(source: String, pem: &[u8]) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| format!("{source}: not a PEM public key (not text)"))?;
    sigstore::crypto::CosignVerificationKey::try_from_pem(pem).map_err(|_| {
        format!("{source}: not a PEM public key cosign makes (ECDSA P-256 and the like)")
    })?;
    Ok(PublicKey {
        source,
        pem: text.to_owned(),
    })
}

/// The credentials a dockerconfigjson Secret holds for `registry`, if any.
pub fn registry_auth(secret: &Secret, registry: &str) -> Result<Option<Auth>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let data = secret.data.as_ref();
    let (config, legacy) = match (
        data.and_then(|d| d.get(".dockerconfigjson")),
        data.and_then(|d| d.get(".dockercfg")),
    ) {
        (Some(json), _) => (json, false),
        (None, Some(cfg)) => (cfg, true),
        _ => {
            return Err(
                "not a kubernetes.io/dockerconfigjson Secret (no .dockerconfigjson key)".into(),
            );
        }
    };
    let auths: BTreeMap<String, Entry> = if legacy {
        serde_json::from_slice(&config.0)
    } else {
        serde_json::from_slice::<Config>(&config.0).map(|c| c.auths)
    }
    .map_err(|_| "its docker config is not valid JSON".to_string())?;
    let host = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let Some(entry) = auths
        .iter()
        .find(|(k, _)| host(k) == registry)
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    let (username, password) = match (&entry.username, &entry.password, &entry.auth) {
        (Some(u), Some(p), _) => (u.clone(), p.clone()),
        (_, _, Some(encoded)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("the auth of its entry is not base64 of user:password")?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or("the auth of its entry is not base64 of user:password")?;
            (u.to_owned(), p.to_owned())
        }
        _ => return Err("its entry has neither username/password nor auth".into()),
    };
    Ok(Some(Auth::Basic { username, password }))
}
