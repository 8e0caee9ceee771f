//! The bilateral handshake of a level-3 PeerTrust: its canonical statement,
//! the admins' signatures and the pools' countersignatures.
//!
//! One statement per pair of pools, the same bytes at both sites: it names
//! both sites, both pools, both pools' federation keys (by fingerprint),
//! both endpoints, the level, the validity window and a nonce. The two
//! parties are written in a fixed order (sorted by site, namespace, pool),
//! so each site rebuilds it from its own Pool and PeerTrust. It is plain
//! text, one `key=value` a line, so that an admin can read what they sign
//! (`cellule-operator handshake statement`) and any language can rebuild
//! it byte for byte; the vectors in `vectors.json` pin it.
//!
//! A pool's operator countersigns the statement with the pool's federation
//! key once an admin key of its own site signed it; the countersignature
//! names that admin key. Both messages carry their own first line, so an
//! admin signature is never a countersignature and the other way round.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// First line of every statement; bumped if the format ever changes.
pub const STATEMENT_VERSION: &str = "cellule.ai/peer-trust-handshake/v2";
/// First line of every countersignature message.
pub const COUNTERSIGNATURE_VERSION: &str = "cellule.ai/peer-trust-countersignature/v1";

/// One side of a federation: a pool, where it is and its federation key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub site: String,
    pub namespace: String,
    pub pool: String,
    pub pool_key: VerifyingKey,
    /// DNS name or IP address peers dial.
    pub host: Option<String>,
    /// IP range egress to it is allowed to.
    pub cidr: Option<String>,
    pub port: i32,
}

impl Party {
    /// The canonical order; the key breaks a tie (two pools named alike
    /// at two sites named alike), so both sites still agree.
    fn order(&self) -> (&str, &str, &str, [u8; 32]) {
        (
            &self.site,
            &self.namespace,
            &self.pool,
            self.pool_key.to_bytes(),
        )
    }
}

/// What both sites' admins sign, and both pools countersign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The two parties, in any order.
    pub parties: [Party; 2],
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub nonce: String,
}

impl Statement {
    /// The exact bytes that are signed. Refuses a value that would break
    /// the one-value-a-line form (admission allows none).
    pub fn canonical(&self) -> Result<String, HandshakeError> {
        let [first, second] = &self.parties;
        let (a, b) = if first.order() <= second.order() {
            (first, second)
        } else {
            (second, first)
        };
        let mut out = format!("{STATEMENT_VERSION}\nlevel=3\n");
        for (tag, party) in [("a", a), ("b", b)] {
            let lines = [
                ("site", party.site.clone()),
                ("pool", format!("{}/{}", party.namespace, party.pool)),
                ("pool-key", fingerprint(&party.pool_key)),
                ("host", party.host.clone().unwrap_or_default()),
                ("cidr", party.cidr.clone().unwrap_or_default()),
                ("port", party.port.to_string()),
            ];
            for (key, value) in lines {
                line(&mut out, &format!("{tag}.{key}"), &value)?;
            }
        }
        line(&mut out, "not-before", &rfc3339(self.not_before))?;
        line(&mut out, "not-after", &rfc3339(self.not_after))?;
        line(&mut out, "nonce", &self.nonce)?;
        Ok(out)
    }

    /// What a ledger of used nonces records for this statement.
    pub fn digest(&self) -> Result<String, HandshakeError> {
        Ok(hex::encode(Sha256::digest(self.canonical()?.as_bytes())))
    }

    /// The message a pool countersigns: the admin key it vouches for, then
    /// the statement.
    fn countersigned(&self, admin: &VerifyingKey) -> Result<String, HandshakeError> {
        Ok(format!(
            "{COUNTERSIGNATURE_VERSION}\nadmin-key={}\n{}",
            STANDARD.encode(admin.as_bytes()),
            self.canonical()?
        ))
    }
}

fn line(out: &mut String, key: &str, value: &str) -> Result<(), HandshakeError> {
    if value.chars().any(char::is_control) {
        return Err(HandshakeError::Unprintable(key.to_owned()));
    }
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    out.push('\n');
    Ok(())
}

/// Seconds precision, UTC, `Z`: how Kubernetes writes a `metav1.Time`.
fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `sha256:` and the hex SHA-256 of a public key's 32 bytes: how the status
/// and the statement name a key.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
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
    #[error("{what} is a weak Ed25519 key (a point of small order), which any signature verifies")]
    WeakKey { what: &'static str },
    #[error("{what} does not verify against the statement")]
    BadSignature { what: &'static str },
    #[error("{0} holds a control character: a statement has one value a line")]
    Unprintable(String),
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

/// Parses a base64 Ed25519 public key: 32 bytes, a point on the curve, not
/// of small order.
pub fn public_key(what: &'static str, b64: &str) -> Result<VerifyingKey, HandshakeError> {
    let malformed = HandshakeError::Malformed {
        what,
        kind: "public key",
        len: 32,
    };
    let key =
        VerifyingKey::from_bytes(&decode::<32>(what, "public key", b64)?).map_err(|_| malformed)?;
    if key.is_weak() {
        return Err(HandshakeError::WeakKey { what });
    }
    Ok(key)
}

/// The base64 of a public key.
pub fn encode(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses a base64 Ed25519 private key seed (32 bytes).
pub fn signing_key(b64: &str) -> Result<SigningKey, HandshakeError> {
    Ok(SigningKey::from_bytes(&decode::<32>(
        "private key",
        "seed",
        b64,
    )?))
}

/// An admin's signature of `statement`, base64.
pub fn sign(key: &SigningKey, statement: &Statement) -> Result<String, HandshakeError> {
    Ok(STANDARD.encode(key.sign(statement.canonical()?.as_bytes()).to_bytes()))
}

/// Checks that `signature` (base64) is `key`'s signature of `statement`.
/// Strict verification: rejects non-canonical and small-order forms.
pub fn verify(
    what: &'static str,
    key: &VerifyingKey,
    signature: &str,
    statement: &Statement,
) -> Result<(), HandshakeError> {
    verify_message(what, key, signature, &statement.canonical()?)
}

fn verify_message(
    what: &'static str,
    key: &VerifyingKey,
    signature: &str,
    message: &str,
) -> Result<(), HandshakeError> {
    let signature =
        ed25519_dalek::Signature::from_bytes(&decode::<64>(what, "signature", signature)?);
    key.verify_strict(message.as_bytes(), &signature)
        .map_err(|_| HandshakeError::BadSignature { what })
}

/// A pool's countersignature of `statement`, vouching for `admin`'s
/// signature of it, base64.
pub fn countersign(
    pool_key: &SigningKey,
    admin: &VerifyingKey,
    statement: &Statement,
) -> Result<String, HandshakeError> {
    let message = statement.countersigned(admin)?;
    Ok(STANDARD.encode(pool_key.sign(message.as_bytes()).to_bytes()))
}

/// Checks that `signature` is `pool_key`'s countersignature of `statement`
/// vouching for `admin`.
pub fn verify_countersignature(
    pool_key: &VerifyingKey,
    admin: &VerifyingKey,
    signature: &str,
    statement: &Statement,
) -> Result<(), HandshakeError> {
    verify_message(
        "the peer pool's countersignature",
        pool_key,
        signature,
        &statement.countersigned(admin)?,
    )
}

/// Why the statement cannot be built from a Pool and a PeerTrust: what is
/// missing, named by its field, so the admin knows what to fill in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatementError {
    #[error("the Pool has no {0}")]
    Pool(&'static str),
    #[error("the PeerTrust has no {0}")]
    PeerTrust(&'static str),
    #[error(transparent)]
    Key(#[from] HandshakeError),
}

/// The statement both sites' admins sign, built from this site's Pool (its
/// federation site and endpoint, its key from status) and its PeerTrust
/// (the peer, the handshake's nonce and window) exactly as the operator
/// builds it: what `handshake statement` prints, from manifests or from
/// the cluster.
pub fn statement_of(
    pool: &crate::api::Pool,
    peer: &crate::api::PeerTrust,
) -> Result<Statement, StatementError> {
    use super::judge;
    let federation = &pool.spec.federation;
    let site = federation
        .site
        .as_deref()
        .ok_or(StatementError::Pool("spec.federation.site"))?;
    let endpoint = federation
        .endpoint
        .as_ref()
        .ok_or(StatementError::Pool("spec.federation.endpoint"))?;
    let key = pool
        .status
        .as_ref()
        .and_then(|s| s.federation.as_ref())
        .ok_or(StatementError::Pool(
            "status.federation: get it from the cluster (-o yaml)",
        ))?;
    let handshake = peer
        .spec
        .handshake
        .as_ref()
        .ok_or(StatementError::PeerTrust(
            "spec.handshake (nonce, notBefore, notAfter)",
        ))?;
    if peer.spec.peer_pool.is_none() {
        return Err(StatementError::PeerTrust("spec.peerPool"));
    }
    let namespace = pool
        .metadata
        .namespace
        .as_deref()
        .ok_or(StatementError::Pool("metadata.namespace"))?;
    let name = pool
        .metadata
        .name
        .as_deref()
        .ok_or(StatementError::Pool("metadata.name"))?;
    let local = judge::Local {
        site,
        namespace,
        name,
        endpoint,
        key: public_key("the Pool's status.federation.publicKey", &key.public_key)?,
    };
    let peer_key = public_key("the PeerTrust's spec.publicKey", &peer.spec.public_key)?;
    Ok(judge::statement(&local, &peer.spec, peer_key, handshake))
}

/// Writes an admin's private seed to a new file `path`, readable by its
/// owner only; never overwrites a key.
pub fn write_seed(path: &std::path::Path, seed: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{seed}")
}

/// 32 bytes from the operating system's randomness.
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random source");
    seed
}

/// A new key: (private seed, public key), both base64.
pub fn generate_key() -> (String, String) {
    let seed = random_seed();
    let key = SigningKey::from_bytes(&seed);
    (STANDARD.encode(seed), encode(&key.verifying_key()))
}

/// A fresh nonce: 32 hex characters (128 bits).
pub fn generate_nonce() -> String {
    hex::encode(&random_seed()[..16])
}

#[cfg(test)]
mod tests;
