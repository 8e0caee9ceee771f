//! Which image a workload runs: only a digest that carries a valid cosign
//! signature, by one of the keys its spec lists, for that exact digest and
//! repository.
//!
//! The pipeline: the dereference step of a reconcile reads the keys and
//! pull secrets the spec names ([`policy`]) and asks the context's
//! [`Verify`] for a decision; [`settle`] (pure) turns the decision and what
//! ran before into what the builders render, the status and the
//! condition. The builders only ever see [`ResolvedImage`]s, which exist
//! only for verified digests. [`cache::Cached`] keeps decisions and tag
//! resolutions; [`registry::Registry`] reads the image and its signatures
//! and [`registry::decide`] (pure, sigstore's keys) verifies them, offline
//! (no TUF, Rekor or Fulcio); [`distribution`] makes the bounded HTTP
//! calls, to the allowed hosts only.

pub mod cache;
pub mod distribution;
pub mod policy;
pub mod registry;

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;

use crate::{
    api::common::ImageStatus,
    conditions::{Desired, Summary},
};

/// Condition type: every image of the object is verified.
pub const IMAGE_VERIFIED: &str = "ImageVerified";

/// The names of an object's images, in status and messages.
pub const POOL: &str = "pool";
pub const NPU_SERVER: &str = "npuServer";
pub fn cpu_workers(set: &str) -> String {
    format!("cpuWorkers[{set}]")
}

/// The verified image of each workload of an object, by name. A workload
/// without one is left exactly as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running(pub std::collections::BTreeMap<String, ResolvedImage>);

/// One image of an object's spec: its name, its field path, the spec.
pub struct Named<'a> {
    pub name: String,
    pub field: String,
    pub image: &'a crate::api::common::SignedImage,
}

/// Checks every named image of an object in `namespace`, concurrently:
/// reads its policy, then asks `verifier`. `Err`: the API server failed.
pub async fn check(
    client: &kube::Client,
    verifier: &dyn Verify,
    namespace: &str,
    images: &[Named<'_>],
) -> kube::Result<Vec<Checked>> {
    futures::future::try_join_all(
        images
            .iter()
            .map(|named| check_one(client, verifier, namespace, named)),
    )
    .await
}

async fn check_one(
    client: &kube::Client,
    verifier: &dyn Verify,
    namespace: &str,
    Named { name, field, image }: &Named<'_>,
) -> kube::Result<Checked> {
    let decision = match policy::request(client, namespace, field, image).await? {
        Ok(request) => verifier.verify(&request).await,
        Err(refusal) => Err(refusal),
    };
    Ok(Checked {
        name: name.clone(),
        reference: image.reference.clone(),
        decision,
    })
}

/// An image whose signature was verified: what goes into a pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `repository@sha256:…`, never a tag.
    pub reference: String,
    /// `sha256:…`
    pub digest: String,
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// `host[:port]`, as written (never implied).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses `reference`. The registry must be named: an implied Docker Hub
    /// would be a call outside the configured registries.
    pub fn parse(reference: &str) -> Result<Self, Refusal> {
        let invalid = |why: &str| Refusal::PolicyInvalid(format!("image {reference:?}: {why}"));
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.to_ascii_lowercase();
                if !registry::valid_digest(&digest) {
                    return Err(invalid("the digest must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .filter(|(host, _)| host.contains(['.', ':']) || *host == "localhost")
            .ok_or_else(|| {
                invalid("name the registry host (like registry.intra/team/image:tag); an implied Docker Hub is not called")
            })?;
        // A ':' after the last '/' starts the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag.to_owned())),
            _ => (path, None),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return Err(invalid("empty repository or tag"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid("give a tag or a digest"));
        }
        Ok(Self {
            registry: registry.to_ascii_lowercase(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// `registry/repository`: what a signature's `docker-reference` names.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The image pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository_path())
    }
}

/// A cosign public key and where it came from (named in status, never its
/// bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey {
    /// e.g. `ConfigMap cellule-signing key cosign.pub`.
    pub source: String,
    pub pem: String,
}

/// Credentials for a registry (from a dockerconfigjson pull secret).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// One image to verify.
#[derive(Clone, Debug)]
pub struct Request {
    pub image: ImageName,
    /// At least one; any of them may have signed.
    pub keys: Vec<PublicKey>,
    pub auth: Auth,
    /// How long a tag → digest resolution is trusted before asking again.
    pub refresh: Duration,
}

/// A positive decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    /// The [`PublicKey::source`] of the key that verified it.
    pub key: String,
    /// When the registry was read for this decision.
    pub at: Timestamp,
    /// Set when the registry could not be reached and a cached decision
    /// stood in: why, for the condition's message.
    pub stale: Option<String>,
}

/// Why an image is refused. Every variant fails closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{image} ({digest}) has no cosign signature")]
    SignatureMissing { image: String, digest: String },
    #[error("{image} ({digest}): no signature verifies with the listed keys ({detail})")]
    SignatureInvalid {
        image: String,
        digest: String,
        detail: String,
    },
    #[error(
        "{image} ({digest}): the signature is valid but was made for {signed}, another digest (a signature copied from another image)"
    )]
    DigestMismatch {
        image: String,
        digest: String,
        signed: String,
    },
    #[error(
        "{image} ({digest}): the signature is valid but names the repository {signed} (an image copied with its signature from another repository)"
    )]
    IdentityMismatch {
        image: String,
        digest: String,
        signed: String,
    },
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("verification policy: {0}")]
    PolicyInvalid(String),
    #[error("{image} does not exist on its registry ({detail})")]
    ImageNotFound { image: String, detail: String },
}

impl Refusal {
    /// The stable reason of conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::SignatureMissing { .. } => "SignatureMissing",
            Refusal::SignatureInvalid { .. } => "SignatureInvalid",
            Refusal::DigestMismatch { .. } => "DigestMismatch",
            Refusal::IdentityMismatch { .. } => "IdentityMismatch",
            Refusal::RegistryUnavailable(_) => "RegistryUnavailable",
            Refusal::PolicyInvalid(_) => "PolicyInvalid",
            Refusal::ImageNotFound { .. } => "ImageNotFound",
        }
    }
}

pub type Decision = Result<Verified, Refusal>;

/// What the reconcile context verifies images with: the registry behind a
/// cache in the operator, a fake in unit tests.
pub trait Verify: Send + Sync {
    fn verify<'a>(&'a self, request: &'a Request) -> BoxFuture<'a, Decision>;
}

/// One image of an object, checked: `name` says which (`pool`,
/// `cpuWorkers[light]`, `npuServer`).
#[derive(Clone, Debug)]
pub struct Checked {
    pub name: String,
    /// The reference as the spec writes it.
    pub reference: String,
    pub decision: Decision,
}

/// What a checked image becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    /// What to render; `None`: leave the workload exactly as it is (not
    /// created, or not updated).
    pub run: Option<ResolvedImage>,
    /// The image that runs, for status: the new one, or the previous one
    /// while a refusal keeps it.
    pub status: Option<ImageStatus>,
}

/// Turns a decision into what to render and record (pure). A refusal
/// renders nothing: the running, previously verified workload stays.
pub fn settle(checked: &Checked, previous: Option<&ImageStatus>) -> Settled {
    let name = ImageName::parse(&checked.reference);
    match (&checked.decision, name) {
        (Ok(verified), Ok(name)) => {
            let pinned = name.pinned(&verified.digest);
            Settled {
                run: Some(ResolvedImage {
                    reference: pinned,
                    digest: verified.digest.clone(),
                }),
                status: Some(ImageStatus {
                    name: Some(checked.name.clone()),
                    reference: checked.reference.clone(),
                    digest: verified.digest.clone(),
                    short_digest: short(&verified.digest),
                    verified_by: Some(verified.key.clone()),
                    verified_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        verified.at,
                    )),
                }),
            }
        }
        // (A verified reference always parses: it was parsed to verify.)
        _ => Settled {
            run: None,
            status: previous.cloned(),
        },
    }
}

/// First 12 hex digits of a digest, for `kubectl get`.
pub fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// The `ImageVerified` condition for every image of an object (pure).
pub fn condition(checked: &[Checked]) -> Desired {
    let refused: Vec<_> = checked
        .iter()
        .filter_map(|c| c.decision.as_ref().err().map(|r| (c, r)))
        .collect();
    // What needs a person outranks an outage, which passes by itself.
    let first = refused
        .iter()
        .map(|(_, r)| r)
        .find(|r| !matches!(r, Refusal::RegistryUnavailable(_)))
        .or(refused.first().map(|(_, r)| r));
    if let Some(first) = first {
        let message = refused
            .iter()
            .map(|(c, r)| format!("{}: {r}", c.name))
            .collect::<Vec<_>>()
            .join("; ");
        return Desired::new(
            IMAGE_VERIFIED,
            false,
            first.reason(),
            crate::reconcile::bounded(&format!(
                "{message}; what runs is left as it is (nothing is created or updated from an unverified image)"
            )),
        );
    }
    let message = checked
        .iter()
        .filter_map(|c| {
            let v = c.decision.as_ref().ok()?;
            let stale = v
                .stale
                .as_ref()
                .map(|why| format!(" (cached decision, the registry is unreachable: {why})"))
                .unwrap_or_default();
            Some(format!(
                "{}: {} verified by {}{stale}",
                c.name, v.digest, v.key
            ))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Desired::new(
        IMAGE_VERIFIED,
        true,
        "Verified",
        crate::reconcile::bounded(&message),
    )
}

/// The error that ends a reconcile whose `ImageVerified` is False: the
/// error policy retries it with backoff and records a Warning Event.
pub fn refused(condition: &Desired) -> Option<crate::reconcile::Error> {
    (!condition.status).then(|| crate::reconcile::Error::ImageRefused {
        reason: condition.reason,
        message: condition.message.clone(),
        retry_by: None,
    })
}

/// The kstatus summary of an object whose image is refused: an outage
/// passes by itself (Reconciling), the rest needs a person (Stalled).
pub fn summary(refused: &crate::reconcile::Error) -> Summary {
    let (reason, message) = (refused.reason(), refused.to_string());
    if reason == "RegistryUnavailable" {
        Summary::Progressing { reason, message }
    } else {
        Summary::Stalled { reason, message }
    }
}

/// When the images should next be checked again, in seconds since the
/// epoch: the shortest refresh interval. A tag may have moved; for any
/// reference, the listed keys (a ConfigMap's content, not watched) may
/// have changed, which the status then shows.
pub fn next_refresh(images: &[Named<'_>], now: i64) -> Option<i64> {
    images
        .iter()
        .map(|n| {
            now.saturating_add(n.image.refresh_interval.0.as_secs().min(i64::MAX as u64) as i64)
        })
        .min()
}

/// Settles every checked image against the statuses recorded before
/// (matched by name): what to render, and the statuses to record.
pub fn settle_all<'a>(
    checked: &[Checked],
    previous: impl IntoIterator<Item = &'a ImageStatus> + Clone,
) -> (Running, Vec<ImageStatus>) {
    let mut running = Running::default();
    let mut statuses = Vec::new();
    for c in checked {
        let before = previous
            .clone()
            .into_iter()
            .find(|s| s.name.as_deref() == Some(c.name.as_str()));
        let settled = settle(c, before);
        if let Some(run) = settled.run {
            running.0.insert(c.name.clone(), run);
        }
        statuses.extend(settled.status);
    }
    (running, statuses)
}

/// `reference` as if verified, pinned to a made-up digest (unit tests).
#[cfg(test)]
pub fn test_image(reference: &str) -> ResolvedImage {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned = ImageName::parse(reference)
        .map(|name| name.pinned(&digest))
        // Generated references may name no registry: pinned all the same.
        .unwrap_or_else(|_| {
            format!(
                "{}@{digest}",
                reference.split(['@', ':']).next().unwrap_or_default()
            )
        });
    ResolvedImage {
        reference: pinned,
        digest,
    }
}

#[cfg(test)]
mod tests;
