//! Which image a workload runs.
//!
//! The seam for signature verification: today the reference is run as
//! written. The sigstore work replaces [`resolve`] with a lookup of the
//! digest that carries a valid cosign signature, and the builders already
//! take the [`ResolvedImage`] it returns.

use crate::api::common::SignedImage;

/// The image a container runs, and the verified digest once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// What goes into the pod spec.
    pub reference: String,
    /// `sha256:…` of a verified image, once verification exists.
    pub digest: Option<String>,
}

/// Resolves `image` for a pod spec. Not yet verified: see the module docs.
pub fn resolve(image: &SignedImage) -> ResolvedImage {
    ResolvedImage {
        reference: image.reference.clone(),
        digest: None,
    }
}
