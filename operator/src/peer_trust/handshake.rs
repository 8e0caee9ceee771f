//! The bilateral administrator handshake of a level-3 PeerTrust.
//!
//! Both administrators sign the same canonical statement with Ed25519: the
//! local site, the peer site, the peer pool's pinned public key, the level,
//! the validity window and a nonce. The statement is plain text with one
//! `key=value` a line in a fixed order, so that an administrator can read
//! what they sign (`cellule-operator handshake statement`) and any language
//! can rebuild it byte for byte.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use jiff::Timestamp;

/// First line of every statement; bumped if the format ever changes.
pub const STATEMENT_VERSION: &str = "cellule.ai/peer-trust-handshake/v1";

/// What both administrators sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub local_site: String,
    pub peer_site: String,
    /// The peer pool's Ed25519 public key, base64.
    pub peer_public_key: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub nonce: String,
}

impl Statement {
    /// The exact bytes that are signed.
    pub fn canonical(&self) -> String {
        format!(
            "{STATEMENT_VERSION}\nlocal-site={}\npeer-site={}\npeer-public-key={}\nlevel=3\nnot-before={}\nnot-after={}\nnonce={}\n",
            self.local_site,
            self.peer_site,
            self.peer_public_key,
            rfc3339(self.not_before),
            rfc3339(self.not_after),
            self.nonce,
        )
    }
}

/// Seconds precision, UTC, `Z`: how Kubernetes writes a `metav1.Time`.
fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Why a key or signature was refused. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("{what} is not the base64 of a {len}-byte Ed25519 {kind}")]
    Malformed {
        what: &'static str,
        kind: &'static str,
        len: usize,
    },
    #[error("{what} does not verify against the statement")]
    BadSignature { what: &'static str },
}

fn decode<const N: usize>(
    what: &'static str,
    kind: &'static str,
    b64: &str,
) -> Result<[u8; N], HandshakeError> {
    STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or(HandshakeError::Malformed { what, kind, len: N })
}

/// Parses a base64 Ed25519 public key.
pub fn public_key(what: &'static str, b64: &str) -> Result<VerifyingKey, HandshakeError> {
    VerifyingKey::from_bytes(&decode::<32>(what, "public key", b64)?).map_err(|_| {
        HandshakeError::Malformed {
            what,
            kind: "public key",
            len: 32,
        }
    })
}

/// Parses a base64 Ed25519 private key seed (32 bytes).
pub fn signing_key(b64: &str) -> Result<SigningKey, HandshakeError> {
    Ok(SigningKey::from_bytes(&decode::<32>(
        "private key",
        "seed",
        b64,
    )?))
}

/// Signs `statement`; returns the base64 signature.
pub fn sign(key: &SigningKey, statement: &Statement) -> String {
    STANDARD.encode(key.sign(statement.canonical().as_bytes()).to_bytes())
}

/// Checks that `signature` (base64) is `key`'s signature of `statement`.
/// Strict verification: rejects non-canonical and small-order forms.
pub fn verify(
    what: &'static str,
    key: &VerifyingKey,
    signature: &str,
    statement: &Statement,
) -> Result<(), HandshakeError> {
    let signature =
        ed25519_dalek::Signature::from_bytes(&decode::<64>(what, "signature", signature)?);
    key.verify_strict(statement.canonical().as_bytes(), &signature)
        .map_err(|_| HandshakeError::BadSignature { what })
}

/// A new key from the operating system's randomness: (private seed, public
/// key), both base64.
pub fn generate_key() -> (String, String) {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random source");
    let key = SigningKey::from_bytes(&seed);
    (
        STANDARD.encode(seed),
        STANDARD.encode(key.verifying_key().to_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            local_site: "paris".into(),
            peer_site: "lyon".into(),
            peer_public_key: STANDARD.encode([7u8; 32]),
            not_before: "2026-11-01T00:00:00Z".parse().unwrap(),
            not_after: "2027-10-31T00:00:00Z".parse().unwrap(),
            nonce: "n0nce-0123456789abcdef".into(),
        }
    }

    #[test]
    fn canonical_form_is_stable() {
        assert_eq!(
            statement().canonical(),
            "cellule.ai/peer-trust-handshake/v1\nlocal-site=paris\npeer-site=lyon\n\
             peer-public-key=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nlevel=3\n\
             not-before=2026-11-01T00:00:00Z\nnot-after=2027-10-31T00:00:00Z\nnonce=n0nce-0123456789abcdef\n"
        );
    }

    #[test]
    fn signature_verifies_only_for_its_statement_and_key() {
        let (seed, public) = generate_key();
        let key = signing_key(&seed).unwrap();
        let public = public_key("admin key", &public).unwrap();
        let signature = sign(&key, &statement());
        assert_eq!(verify("sig", &public, &signature, &statement()), Ok(()));

        let mut later = statement();
        later.not_after = "2028-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            verify("sig", &public, &signature, &later),
            Err(HandshakeError::BadSignature { what: "sig" })
        );

        let (_, other) = generate_key();
        let other = public_key("other", &other).unwrap();
        assert!(verify("sig", &other, &signature, &statement()).is_err());
    }

    #[test]
    fn malformed_inputs_are_refused_without_echoing_them() {
        let err = public_key("peer key", "c2hvcnQ=").unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer key is not the base64 of a 32-byte Ed25519 public key"
        );
        let err = signing_key("not base64!").unwrap_err();
        assert!(!err.to_string().contains("not base64!"));
    }
}
