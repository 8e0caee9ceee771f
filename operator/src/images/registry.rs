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
    manifest::OciImageManifest,
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
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP (and allowed).
    pub insecure: Vec<String>,
    /// The other registries the operator may call. No other is called,
    /// whatever a spec names.
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

/// A real registry, through `oci-client`.
pub struct Registry {
    config: RegistryConfig,
}

impl Registry {
    /// Fails on a configuration no client can be built from (a CA file
    /// that is not PEM): better at startup than as an outage.
    pub fn new(config: RegistryConfig) -> Result<Self, OciDistributionError> {
        let registry = Self { config };
        Client::try_from(registry.client_config())?;
        Ok(registry)
    }

    fn allowed(&self, image: &ImageName) -> Result<(), Refusal> {
        let config = &self.config;
        if config.allowed.contains(&image.registry) || config.insecure.contains(&image.registry) {
            return Ok(());
        }
        let known: Vec<&str> = config
            .allowed
            .iter()
            .chain(&config.insecure)
            .map(String::as_str)
            .collect();
        Err(Refusal::PolicyInvalid(format!(
            "registry {} is not one the operator may call (--allowed-registries: {}): nothing was called",
            image.registry,
            if known.is_empty() { "none" } else { "" }.to_owned() + &known.join(", ")
        )))
    }

    /// A client per operation: credentials differ per namespace, and
    /// oci-client keeps the first it sees per registry.
    fn client(&self) -> Result<Client, Refusal> {
        Client::try_from(self.client_config())
            .map_err(|e| Refusal::PolicyInvalid(format!("the operator's registry settings: {e}")))
    }

    fn client_config(&self) -> ClientConfig {
        let timeout = Some(self.config.timeout);
        ClientConfig {
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
            ..Default::default()
        }
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

/// An error that is not "not found", as a refusal: the credentials were
/// refused (a person must act), or the registry failed (it may come back).
fn unavailable(what: &str, error: &OciDistributionError) -> Refusal {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    let denied =
        |code: &OciErrorCode| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied);
    match error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Refusal::PolicyInvalid(format!("{what}: {text} (check the image's pullSecrets)")),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| denied(&e.code)) =>
        {
            Refusal::PolicyInvalid(format!("{what}: {text} (check the image's pullSecrets)"))
        }
        _ => Refusal::RegistryUnavailable(format!("{what}: {text}")),
    }
}

/// How a failed read of `image` reads in a refusal.
fn read_failed(what: &str, image: &str, error: &OciDistributionError) -> Refusal {
    match error {
        e if not_found(e) => Refusal::ImageNotFound {
            image: image.to_owned(),
            detail: e.to_string(),
        },
        // The registry answered another digest than the one asked for.
        OciDistributionError::DigestError(e) => Refusal::ImageNotFound {
            image: image.to_owned(),
            detail: format!("the registry answered another digest: {e}"),
        },
        e => unavailable(what, e),
    }
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
            let what = format!("resolving {shown}");
            self.bounded(&what, async {
                let digest = self
                    .client()?
                    .fetch_manifest_digest(
                        &reference(image, image.digest.as_deref()),
                        &oci_auth(auth),
                    )
                    .await
                    .map_err(|e| read_failed(&what, &shown, &e))?;
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
            self.allowed(image)?;
            let shown = image.pinned(digest);
            let client = self.client()?;
            self.bounded(&format!("verifying {shown}"), async {
                let layers = signature_layers(client, image, digest, auth).await?;
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
    client: Client,
    image: &ImageName,
    digest: &str,
    auth: &Auth,
) -> Result<Vec<SignatureLayer>, Refusal> {
    let shown = image.pinned(digest);
    let auth = oci_auth(auth);
    client
        .fetch_manifest_digest(&reference(image, Some(digest)), &auth)
        .await
        .map_err(|e| read_failed(&format!("reading {shown}"), &shown, &e))?;
    // cosign's tag scheme: `sha256-<hex>.sig` in the same repository.
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let signatures = Reference::with_tag(image.registry.clone(), image.repository.clone(), tag);
    let raw = match client
        .pull_manifest_raw(&signatures, &auth, MANIFEST_TYPES)
        .await
    {
        Ok((raw, _)) => raw,
        Err(e) if not_found(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(unavailable(
                &format!("reading the signatures of {shown}"),
                &e,
            ));
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
        let payload = if !(0..=MAX_PAYLOAD).contains(&layer.size) {
            Err(format!("a signature payload of {} bytes", layer.size))
        } else {
            let mut payload = Capped::default();
            match client.pull_blob(&signatures, layer, &mut payload).await {
                Ok(()) => Ok(payload.0),
                // Not what its descriptor says (digest, size), or gone.
                Err(OciDistributionError::DigestError(_) | OciDistributionError::IoError(_)) => {
                    Err("a signature payload does not match its digest or size".into())
                }
                Err(e) if not_found(&e) => Err("a signature payload is missing".into()),
                Err(e) => return Err(unavailable(&format!("reading a signature of {shown}"), &e)),
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

/// A buffer that refuses to grow past [`MAX_PAYLOAD`]: a registry's
/// declared size is not trusted.
#[derive(Default)]
struct Capped(Vec<u8>);

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.0.len() + buf.len() > MAX_PAYLOAD as usize {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "signature payload too large",
            )));
        }
        self.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
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
