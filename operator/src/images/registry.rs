//! The registry side of verification, offline: resolve a tag, fetch the
//! cosign signatures of a digest (the `sha256-<hex>.sig` tag), verify them
//! with sigstore's keys.
//!
//! Why not sigstore's own `cosign::Client`: it cannot time out, and it
//! returns the same empty list for "unsigned", "signed for another digest"
//! and "the registry failed half-way" (../shared/SIGSTORE-NOTES.md). Its
//! OCI client (`oci-client`, the same crate and version) does the calls
//! here, with timeouts and typed errors; sigstore checks the signatures.

use std::time::Duration;

use futures::future::BoxFuture;
use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    manifest::{OciDescriptor, OciImageManifest},
    secrets::RegistryAuth,
};
use sigstore::{
    cosign::payload::SimpleSigning,
    crypto::{CosignVerificationKey, Signature},
};

use super::{Auth, ImageName, PublicKey, Refusal};

/// The media type of a cosign simple-signing layer.
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a layer's signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Signature layers looked at, and the largest payload read: a signature
/// manifest nobody wrote by hand stays far below both.
const MAX_LAYERS: usize = 32;
const MAX_PAYLOAD: i64 = 64 * 1024;
/// Manifest media types a signature manifest may have.
const MANIFEST_TYPES: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
];

/// How the operator reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Only these registries are called (empty: any the specs name).
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
    /// repository (its [`PublicKey::source`]), or why none did.
    fn check<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
        keys: &'a [PublicKey],
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>>;
}

/// A real registry, through `oci-client`.
pub struct Registry {
    config: RegistryConfig,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        Self { config }
    }

    fn allowed(&self, image: &ImageName) -> Result<(), Refusal> {
        if self.config.allowed.is_empty() || self.config.allowed.contains(&image.registry) {
            Ok(())
        } else {
            Err(Refusal::PolicyInvalid(format!(
                "registry {} is not one the operator may call (--allowed-registry: {})",
                image.registry,
                self.config.allowed.join(", ")
            )))
        }
    }

    /// A client per operation: credentials differ per namespace, and
    /// oci-client keeps the first it sees per registry.
    fn client(&self) -> Client {
        let timeout = Some(self.config.timeout);
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.config.insecure.clone()),
            extra_root_certificates: self
                .config
                .ca_bundle
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: timeout,
            read_timeout: timeout,
            // A multi-platform index is what the tag names and what cosign
            // signs: its digest is verified, never one platform's.
            platform_resolver: None,
            ..Default::default()
        })
    }

    /// Bounds `work` by the configured timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        tokio::time::timeout(self.config.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::RegistryUnavailable(format!(
                    "{what}: no answer within {}s",
                    self.config.timeout.as_secs_f32()
                )))
            })
    }
}

fn oci_auth(auth: &Auth) -> RegistryAuth {
    match auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
    }
}

/// Whether the registry answered "no such manifest or repository".
fn not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// An error that is not "not found", as a refusal: the registry failed.
fn unavailable(what: &str, error: &OciDistributionError) -> Refusal {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    if matches!(error, OciDistributionError::UnauthorizedError { .. }) {
        text.push_str(" (check the image's pullSecrets)");
    }
    Refusal::RegistryUnavailable(format!("{what}: {text}"))
}

fn reference(image: &ImageName, digest: Option<&str>) -> Reference {
    match digest {
        Some(digest) => Reference::with_digest(
            image.registry.clone(),
            image.repository.clone(),
            digest.to_owned(),
        ),
        None => Reference::with_tag(
            image.registry.clone(),
            image.repository.clone(),
            image.tag.clone().unwrap_or_default(),
        ),
    }
}

impl Source for Registry {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        auth: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            self.allowed(image)?;
            let shown = format!(
                "{}:{}",
                image.repository_path(),
                image.tag.as_deref().unwrap_or("")
            );
            self.bounded(&format!("resolving {shown}"), async {
                let digest = self
                    .client()
                    .fetch_manifest_digest(&reference(image, image.digest.as_deref()), &oci_auth(auth))
                    .await
                    .map_err(|e| {
                        if not_found(&e) {
                            Refusal::ImageNotFound {
                                image: shown.clone(),
                                detail: e.to_string(),
                            }
                        } else {
                            unavailable(&format!("resolving {shown}"), &e)
                        }
                    })?;
                if !valid_digest(&digest) {
                    return Err(Refusal::RegistryUnavailable(format!(
                        "resolving {shown}: the registry answered a digest that is not sha256:<64 hex>"
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
            self.allowed(image)?;
            let shown = image.pinned(digest);
            self.bounded(
                &format!("verifying {shown}"),
                check(self.client(), image, digest, keys, auth),
            )
            .await
        })
    }
}

pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

async fn check(
    client: Client,
    image: &ImageName,
    digest: &str,
    keys: &[PublicKey],
    auth: &Auth,
) -> Result<String, Refusal> {
    let shown = image.pinned(digest);
    let auth = oci_auth(auth);
    // The image itself: a digest reference must exist where it says.
    client
        .fetch_manifest_digest(&reference(image, Some(digest)), &auth)
        .await
        .map_err(|e| {
            if not_found(&e) {
                Refusal::ImageNotFound {
                    image: shown.clone(),
                    detail: e.to_string(),
                }
            } else {
                unavailable(&format!("reading {shown}"), &e)
            }
        })?;
    // Its signatures: cosign's tag scheme.
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let signatures = Reference::with_tag(image.registry.clone(), image.repository.clone(), tag);
    let missing = || Refusal::SignatureMissing {
        image: image.repository_path(),
        digest: digest.to_owned(),
    };
    let (raw, _) = match client
        .pull_manifest_raw(&signatures, &auth, MANIFEST_TYPES)
        .await
    {
        Ok(found) => found,
        Err(e) if not_found(&e) => return Err(missing()),
        Err(e) => {
            return Err(unavailable(
                &format!("reading the signatures of {shown}"),
                &e,
            ));
        }
    };
    let invalid = |detail: String| Refusal::SignatureInvalid {
        image: image.repository_path(),
        digest: digest.to_owned(),
        detail,
    };
    let manifest: OciImageManifest = serde_json::from_slice(&raw)
        .map_err(|_| invalid("the signature manifest is not an image manifest".into()))?;
    let layers: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING)
        .take(MAX_LAYERS)
        .collect();
    if layers.is_empty() {
        return Err(missing());
    }
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
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            refusal = invalid("a signature layer has no signature annotation".into());
            continue;
        };
        if layer.size > MAX_PAYLOAD || layer.size < 0 {
            refusal = invalid(format!("a signature payload of {} bytes", layer.size));
            continue;
        }
        let mut payload = Vec::new();
        if let Err(e) = client.pull_blob(&signatures, layer, &mut payload).await {
            return Err(unavailable(&format!("reading a signature of {shown}"), &e));
        }
        // The bytes as stored are what was signed, never re-serialized JSON.
        let Some((key, _)) = verifiers.iter().find(|(_, v)| {
            v.verify_signature(Signature::Base64Encoded(signature.as_bytes()), &payload)
                .is_ok()
        }) else {
            continue;
        };
        // Signed by a listed key: now what it says must be this image.
        let Ok(signed) = serde_json::from_slice::<SimpleSigning>(&payload) else {
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
            return Ok(key.source.clone());
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
