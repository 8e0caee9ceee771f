//! The registry side of verification, offline: resolve a tag, fetch the
//! cosign signatures of a digest (the `sha256-<hex>.sig` tag), verify them
//! with sigstore's keys.
//!
//! Why not sigstore's own `cosign::Client`: it cannot time out, and it
//! returns the same empty list for "unsigned", "signed for another digest"
//! and "the registry failed half-way" (../shared/SIGSTORE-NOTES.md). Nor
//! its OCI client: see [`super::distribution`]. sigstore checks the
//! signatures; the registry calls are bounded in time, size and hosts.

use std::time::Duration;

use futures::future::BoxFuture;
use oci_client::manifest::OciImageManifest;
use sigstore::{
    cosign::payload::SimpleSigning,
    crypto::{CosignVerificationKey, Signature},
};

use super::{
    Auth, ImageName, PublicKey, Refusal,
    distribution::{self, Failure, Hosts},
};

/// The media type of a cosign simple-signing layer.
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a layer's signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Signature layers looked at, and the largest payload read: a signature
/// manifest nobody wrote by hand stays far below both.
const MAX_LAYERS: usize = 32;
const MAX_PAYLOAD: usize = 64 * 1024;

/// How the operator reaches registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP (and allowed).
    pub insecure: Vec<String>,
    /// The other registries (and token services, blob stores) the operator
    /// may call. No other is called, whatever a spec or a registry names.
    pub allowed: Vec<String>,
    /// Extra CA certificates (PEM) for intranet registries.
    pub ca_bundle: Option<Vec<u8>>,
    /// Bound on each registry operation (a resolve, a verification).
    pub timeout: Duration,
}

/// What [`super::cache::Cached`] asks a registry.
pub trait Source: Send + Sync {
    /// The digest `image`'s tag points to now.
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>>;

    /// Which of `keys` made a valid signature of `digest` in `image`'s
    /// repository (its PEM), or why none did.
    fn check<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
        keys: &'a [PublicKey],
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>>;
}

/// The registries the operator may call.
pub struct Registry {
    hosts: Hosts,
    http: reqwest::Client,
    timeout: Duration,
}

impl Registry {
    /// Fails on settings no HTTP client can be built from (a CA file that
    /// is not PEM): better at startup than as an outage.
    pub fn new(config: RegistryConfig) -> Result<Self, reqwest::Error> {
        let hosts = Hosts {
            allowed: config.allowed,
            insecure: config.insecure,
        };
        let http = distribution::http_client(&hosts, config.ca_bundle.as_deref(), config.timeout)?;
        Ok(Self {
            hosts,
            http,
            timeout: config.timeout,
        })
    }

    /// A client of `image`'s registry, if the operator may call it.
    fn registry(&self, image: &ImageName, auth: &Auth) -> Result<distribution::Registry, Refusal> {
        let hosts = &self.hosts;
        if !hosts.allows(&image.registry) {
            let known: Vec<&str> = hosts
                .allowed
                .iter()
                .chain(&hosts.insecure)
                .map(String::as_str)
                .collect();
            return Err(Refusal::PolicyInvalid(format!(
                "registry {} is not one the operator may call (--allowed-registries: {}): nothing was called",
                image.registry,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(distribution::Registry::new(
            self.http.clone(),
            hosts.clone(),
            &image.registry,
            auth.clone(),
        ))
    }

    /// Bounds `work` by the configured timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::RegistryUnavailable(format!(
                    "{what}: no answer within {}s",
                    self.timeout.as_secs_f32()
                )))
            })
    }
}

/// How a failed read of the image `shown` reads in a refusal.
fn image_failure(what: &str, shown: &str, failure: Failure) -> Refusal {
    match failure {
        Failure::NotFound(detail) | Failure::Invalid(detail) => Refusal::ImageNotFound {
            image: shown.to_owned(),
            detail,
        },
        Failure::Denied(detail) => Refusal::PolicyInvalid(format!("{what}: {detail}")),
        Failure::Unavailable(detail) => Refusal::RegistryUnavailable(format!("{what}: {detail}")),
    }
}

impl Source for Registry {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            let mut registry = self.registry(image, auth)?;
            let tag = image.tag.as_deref().unwrap_or_default();
            let shown = format!("{}:{tag}", image.repository_path());
            let what = format!("resolving {shown}");
            self.bounded(&what, async {
                let digest = registry
                    .manifest_digest(&image.repository, image.digest.as_deref().unwrap_or(tag))
                    .await
                    .map_err(|f| image_failure(&what, &shown, f))?;
                if !valid_digest(&digest) {
                    return Err(Refusal::RegistryUnavailable(format!(
                        "{what}: the registry answered a digest that is not sha256:<64 hex>"
                    )));
                }
                Ok(digest)
            })
            .await
        })
    }

    fn check<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
        keys: &'a [PublicKey],
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            let registry = self.registry(image, auth)?;
            let shown = image.pinned(digest);
            self.bounded(&format!("verifying {shown}"), async {
                let layers = signature_layers(registry, image, digest).await?;
                decide(image, digest, keys, &layers)
            })
            .await
        })
    }
}

pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// One cosign signature layer as read: its signature annotation and its
/// payload, or why the payload could not be used.
#[derive(Clone, Debug)]
pub struct SignatureLayer {
    pub signature: Option<String>,
    pub payload: Result<Vec<u8>, String>,
}

/// Reads the image (it must exist at `digest`) and its signature layers.
/// `Ok(empty)`: no signature manifest, or one without signature layers.
async fn signature_layers(
    mut registry: distribution::Registry,
    image: &ImageName,
    digest: &str,
) -> Result<Vec<SignatureLayer>, Refusal> {
    let shown = image.pinned(digest);
    registry
        .manifest_digest(&image.repository, digest)
        .await
        .map_err(|f| image_failure(&format!("reading {shown}"), &shown, f))?;
    // cosign's tag scheme: `sha256-<hex>.sig` in the same repository.
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let what = format!("reading the signatures of {shown}");
    let raw = match registry.manifest(&image.repository, &tag).await {
        Ok(raw) => raw,
        Err(Failure::NotFound(_)) => return Ok(Vec::new()),
        Err(Failure::Invalid(detail)) => {
            return Ok(vec![SignatureLayer {
                signature: None,
                payload: Err(detail),
            }]);
        }
        Err(Failure::Denied(detail)) => {
            return Err(Refusal::PolicyInvalid(format!("{what}: {detail}")));
        }
        Err(Failure::Unavailable(detail)) => {
            return Err(Refusal::RegistryUnavailable(format!("{what}: {detail}")));
        }
    };
    let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&raw) else {
        return Ok(vec![SignatureLayer {
            signature: None,
            payload: Err("the signature manifest is not an image manifest".into()),
        }]);
    };
    let mut layers = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING)
        .take(MAX_LAYERS)
    {
        let signature = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .cloned();
        let payload = if !(0..=MAX_PAYLOAD as i64).contains(&layer.size) {
            Err(format!("a signature payload of {} bytes", layer.size))
        } else {
            match registry
                .blob(&image.repository, &layer.digest, MAX_PAYLOAD)
                .await
            {
                Ok(payload) => Ok(payload),
                // Missing, over its bound, or not its digest: no signature.
                Err(Failure::NotFound(detail) | Failure::Invalid(detail)) => Err(detail),
                Err(Failure::Denied(detail)) => {
                    return Err(Refusal::PolicyInvalid(format!("{what}: {detail}")));
                }
                Err(Failure::Unavailable(detail)) => {
                    return Err(Refusal::RegistryUnavailable(format!("{what}: {detail}")));
                }
            }
        };
        layers.push(SignatureLayer { signature, payload });
    }
    Ok(layers)
}

/// Which of `keys` made a valid signature of `digest` in `image`'s
/// repository among `layers` (its PEM), or why none did (pure).
pub fn decide(
    image: &ImageName,
    digest: &str,
    keys: &[PublicKey],
    layers: &[SignatureLayer],
) -> Result<String, Refusal> {
    if layers.is_empty() {
        return Err(Refusal::SignatureMissing {
            image: image.repository_path(),
            digest: digest.to_owned(),
        });
    }
    let invalid = |detail: String| Refusal::SignatureInvalid {
        image: image.repository_path(),
        digest: digest.to_owned(),
        detail,
    };
    let verifiers: Vec<(&PublicKey, CosignVerificationKey)> = keys
        .iter()
        .filter_map(|k| {
            Some((
                k,
                CosignVerificationKey::try_from_pem(k.pem.as_bytes()).ok()?,
            ))
        })
        .collect();
    // The most telling refusal among the layers, if none verifies.
    let mut refusal = invalid("signed with a key that is not listed".into());
    for layer in layers {
        let (Some(signature), Ok(payload)) = (&layer.signature, &layer.payload) else {
            refusal = invalid(match &layer.payload {
                Err(why) => why.clone(),
                Ok(_) => "a signature layer has no signature annotation".into(),
            });
            continue;
        };
        // The bytes as stored are what was signed, never re-serialized JSON.
        let Some((key, _)) = verifiers.iter().find(|(_, v)| {
            v.verify_signature(Signature::Base64Encoded(signature.as_bytes()), payload)
                .is_ok()
        }) else {
            continue;
        };
        // Signed by a listed key: now what it says must be this image.
        let Ok(signed) = serde_json::from_slice::<SimpleSigning>(payload) else {
            refusal =
                invalid("a signed payload that is not a cosign simple-signing document".into());
            continue;
        };
        let critical = &signed.critical;
        if critical.type_name != "cosign container image signature" {
            refusal = invalid(format!("a signed payload of type {:?}", critical.type_name));
        } else if critical.image.docker_manifest_digest != digest {
            refusal = Refusal::DigestMismatch {
                image: image.repository_path(),
                digest: digest.to_owned(),
                signed: critical.image.docker_manifest_digest.clone(),
            };
        } else if !same_repository(&critical.identity.docker_reference, image) {
            refusal = Refusal::IdentityMismatch {
                image: image.repository_path(),
                digest: digest.to_owned(),
                signed: critical.identity.docker_reference.clone(),
            };
        } else {
            return Ok(key.pem.clone());
        }
    }
    Err(refusal)
}

/// Whether a signature's `docker-reference` names `image`'s repository
/// (cosign writes it without tag or digest; Docker Hub has two names).
fn same_repository(signed: &str, image: &ImageName) -> bool {
    let bare = signed.split_once('@').map_or(signed, |(r, _)| r);
    let bare = match bare.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => bare,
    };
    let hub = |s: &str| {
        s.strip_prefix("index.docker.io/")
            .map(|rest| format!("docker.io/{rest}"))
            .unwrap_or_else(|| s.to_owned())
    };
    hub(&bare.to_ascii_lowercase()) == hub(&image.repository_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ImageName {
        ImageName::parse(s).unwrap()
    }

    #[test]
    fn identity_is_the_repository_whatever_tag_or_digest_it_carries() {
        let image = name("127.0.0.1:5000/cellule/pool:1");
        assert!(same_repository("127.0.0.1:5000/cellule/pool", &image));
        assert!(same_repository("127.0.0.1:5000/cellule/pool:2", &image));
        assert!(same_repository(
            &format!("127.0.0.1:5000/cellule/pool@sha256:{}", "a".repeat(64)),
            &image
        ));
        assert!(!same_repository("127.0.0.1:5000/cellule/other", &image));
        assert!(!same_repository("127.0.0.1:5001/cellule/pool", &image));
        assert!(!same_repository("127.0.0.1:5000/cellule/pool/x", &image));
        assert!(same_repository(
            "index.docker.io/library/nginx",
            &name("docker.io/library/nginx:1")
        ));
    }

    #[test]
    fn only_lowercase_sha256_digests_are_accepted_from_a_registry() {
        assert!(valid_digest(&format!("sha256:{}", "0f".repeat(32))));
        assert!(!valid_digest(&format!("sha256:{}", "0F".repeat(32))));
        assert!(!valid_digest(&format!("sha512:{}", "0f".repeat(64))));
        assert!(!valid_digest("sha256:abc"));
    }
}
