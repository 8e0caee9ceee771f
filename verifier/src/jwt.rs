//! Worker tokens: EdDSA JWTs (RFC 8037) signed with the pool's Ed25519
//! key, and the verification any pool or worker implementation can reuse.
//! Signing and the claim checks (pinned algorithm, `exp`, `nbf`, `aud`,
//! `iss`, leeway) are the `jsonwebtoken` crate's; what is ours is the key
//! lookup by `kid` in the pool's JWKS and the revocation list.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// What a verifier needs besides the JWKS: published next to it (key
/// `policy.json` of the `<pool>-jwks` ConfigMap), so that a pool, or anyone
/// holding a token, applies the same limits as the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifierPolicy {
    /// `iss` and `aud` of every token of the pool: `<namespace>/<pool>`.
    pub audience: String,
    /// Longest lifetime (`exp - iat`) a token of the pool may have: a
    /// token forged with a leaked key and a far `exp` is refused.
    pub max_ttl_seconds: i64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_seconds: i64,
}

/// The claims of a worker token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The pool that issued it: `<namespace>/<pool>`.
    pub iss: String,
    /// The worker (`spec.workerId`).
    pub sub: String,
    /// The pool it is for: same as `iss`.
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// 128 random bits, hex: what revocation lists name.
    pub jti: String,
    /// Tiers the worker may serve.
    pub tiers: Vec<String>,
}

/// A signing key of a pool, with its key id.
#[derive(Clone)]
pub struct PoolKey {
    pub kid: String,
    pub key: SigningKey,
}

impl std::fmt::Debug for PoolKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PoolKey {
    /// A key from a 32-byte seed; the kid is derived from the public key
    /// (RFC 7638-style thumbprint, truncated), so it is stable.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let thumbprint = Sha256::digest(key.verifying_key().as_bytes());
        Self {
            kid: URL_SAFE_NO_PAD.encode(&thumbprint[..12]),
            key,
        }
    }

    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source");
        Self::from_seed(seed)
    }

    /// The public half as a JWK (OKP, Ed25519, RFC 8037).
    pub fn jwk(&self) -> Jwk {
        public_jwk(
            &self.kid,
            &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        )
    }

    /// PKCS#8 v1 DER of an Ed25519 private key: a fixed 16-byte prefix
    /// (RFC 8410 §7) and the seed.
    fn pkcs8_der(&self) -> Vec<u8> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        der
    }
}

/// The JWK (OKP, Ed25519, RFC 8037) of public key `x` (base64url).
pub fn public_jwk(kid: &str, x: &str) -> Jwk {
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(kid.to_owned()),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: x.to_owned(),
        }),
    }
}

/// A fresh random `jti`: 128 bits, hex.
/// Whether `jti` could be put on a revocation list (the RevocationList
/// schema's pattern: 1–253 of `A-Za-z0-9._-`). A token whose `jti` could
/// not be listed could not be revoked, so it is refused.
pub fn listable_jti(jti: &str) -> bool {
    (1..=253).contains(&jti.len())
        && jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

/// Signs `claims` into a compact JWT with header `alg: EdDSA`, `kid`, `typ: JWT`.
pub fn sign(key: &PoolKey, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&key.pkcs8_der()))
        .expect("an Ed25519 key always signs")
}

/// The claims of a token, read without checking anything: only for the
/// operator's own bookkeeping of a token it issued (which jti a Secret
/// holds), never to accept a token.
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// SHA-256 of the token, hex: what the audit trail keeps instead of it.
pub fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a token was refused. Carries no token material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} is not accepted (EdDSA only)")]
    Algorithm(String),
    #[error("no key {0:?} in the pool's JWKS")]
    UnknownKey(String),
    #[error("token has no kid")]
    MissingKeyId,
    #[error("signature or claims invalid: {0}")]
    Invalid(String),
    #[error("token {jti} is revoked")]
    Revoked { jti: String },
    #[error("token lifetime {lifetime}s exceeds the pool's maxTtl of {max}s")]
    LifetimeAboveMaxTtl { lifetime: i64, max: i64 },
    #[error("token issued in the future")]
    IssuedInTheFuture,
    #[error("revocation list unreadable ({0}): refusing every token until it is repaired")]
    RevocationsUnreadable(String),
    #[error("verification data unavailable ({0}): refusing every token until it is current")]
    Unavailable(String),
}

/// What verification asks of a pool's revocation data.
pub trait Revocations {
    fn is_revoked(&self, jti: &str) -> bool;
}

impl Revocations for BTreeMap<String, i64> {
    fn is_revoked(&self, jti: &str) -> bool {
        self.contains_key(jti)
    }
}

impl Revocations for crate::revocations::Revoked {
    fn is_revoked(&self, jti: &str) -> bool {
        self.get(jti).is_some()
    }
}

/// Verifies a worker token under `policy`: EdDSA only, a `kid` from
/// `jwks`, a valid signature, `iss` = `aud` = the policy's audience, `exp`,
/// `nbf` and `iat` (not in the future) within the leeway, `exp - iat` at
/// most the pool's maxTtl, and a `jti` that is not in `revoked`. `now` is
/// seconds since the epoch.
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    revoked: &impl Revocations,
    policy: &VerifierPolicy,
    now: i64,
) -> Result<Claims, VerifyError> {
    let audience = policy.audience.as_str();
    let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(VerifyError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
    if !matches!(&jwk.algorithm, AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519)
    {
        return Err(VerifyError::UnknownKey(kid));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = policy.leeway_seconds.max(0) as u64;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub", "jti"]);
    // jsonwebtoken checks exp and nbf against the system clock; they are
    // checked below against `now` instead, so that a caller (and the tests)
    // can verify as of a given instant. The signature, algorithm, aud, iss
    // and required claims stay the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let claims = data.claims;
    let leeway = policy.leeway_seconds;
    if now + leeway < claims.iat {
        return Err(VerifyError::IssuedInTheFuture);
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    if lifetime > policy.max_ttl_seconds {
        return Err(VerifyError::LifetimeAboveMaxTtl {
            lifetime,
            max: policy.max_ttl_seconds,
        });
    }
    if now > claims.exp + leeway {
        return Err(VerifyError::Invalid("ExpiredSignature".into()));
    }
    if now + leeway < claims.nbf {
        return Err(VerifyError::Invalid("ImmatureSignature".into()));
    }
    if !listable_jti(&claims.jti) {
        return Err(VerifyError::Invalid(
            "a jti that no revocation list could hold".into(),
        ));
    }
    if revoked.is_revoked(&claims.jti) {
        return Err(VerifyError::Revoked { jti: claims.jti });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const NOW: i64 = 1_800_000_000;
    const AUD: &str = "site/paris";

    fn claims() -> Claims {
        Claims {
            iss: AUD.into(),
            sub: "pc-0042".into(),
            aud: AUD.into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 3600,
            jti: new_jti(),
            tiers: vec!["light".into()],
        }
    }

    fn setup() -> (PoolKey, JwkSet) {
        let key = PoolKey::generate();
        let jwks = JwkSet {
            keys: vec![key.jwk()],
        };
        (key, jwks)
    }

    fn policy(audience: &str) -> VerifierPolicy {
        VerifierPolicy {
            audience: audience.into(),
            max_ttl_seconds: 2 * 3600,
            leeway_seconds: LEEWAY_SECS as i64,
        }
    }

    #[test]
    fn the_operator_reads_back_which_token_a_secret_holds() {
        let (key, _) = setup();
        let c = claims();
        assert_eq!(unverified_claims(&sign(&key, &c)), Some(c));
        assert_eq!(unverified_claims("not.a-token"), None);
        assert_eq!(unverified_claims(""), None);
    }

    #[test]
    fn a_forged_long_lived_or_future_token_is_refused() {
        let (key, jwks) = setup();
        let ten_years = Claims {
            exp: NOW + 10 * 365 * 86400,
            ..claims()
        };
        assert!(matches!(
            verify(&sign(&key, &ten_years), &jwks, &none(), &policy(AUD), NOW),
            Err(VerifyError::LifetimeAboveMaxTtl { .. })
        ));
        let future = Claims {
            iat: NOW + 3600,
            nbf: NOW,
            exp: NOW + 5400,
            ..claims()
        };
        assert_eq!(
            verify(&sign(&key, &future), &jwks, &none(), &policy(AUD), NOW),
            Err(VerifyError::IssuedInTheFuture)
        );
        // Exactly maxTtl is fine.
        let longest = Claims {
            exp: NOW + 2 * 3600,
            ..claims()
        };
        assert!(verify(&sign(&key, &longest), &jwks, &none(), &policy(AUD), NOW).is_ok());
    }

    #[test]
    fn a_jti_no_list_could_hold_is_refused() {
        let (key, jwks) = setup();
        for jti in ["", "bad jti!/x", &"a".repeat(254)] {
            let token = sign(
                &key,
                &Claims {
                    jti: jti.into(),
                    ..claims()
                },
            );
            assert!(
                matches!(
                    verify(&token, &jwks, &none(), &policy(AUD), NOW),
                    Err(VerifyError::Invalid(_))
                ),
                "{jti:?}"
            );
        }
        assert!(listable_jti(&new_jti()));
    }

    fn none() -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    #[test]
    fn a_token_verifies_with_the_pool_jwks() {
        let (key, jwks) = setup();
        let token = sign(&key, &claims());
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref(), header.typ.as_deref()),
            (Algorithm::EdDSA, Some(key.kid.as_str()), Some("JWT"))
        );
        let verified = verify(&token, &jwks, &none(), &policy(AUD), NOW + 10).unwrap();
        assert_eq!(verified.sub, "pc-0042");
        assert_eq!(verified.jti.len(), 32);
    }

    #[test]
    fn alg_none_is_refused() {
        let (_, jwks) = setup();
        let header = B64.encode(r#"{"alg":"none","typ":"JWT","kid":"x"}"#);
        let payload = B64.encode(serde_json::to_vec(&claims()).unwrap());
        let token = format!("{header}.{payload}.");
        assert!(verify(&token, &jwks, &none(), &policy(AUD), NOW).is_err());
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let (key, jwks) = setup();
        let public = key.key.verifying_key();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(&token, &jwks, &none(), &policy(AUD), NOW),
            Err(VerifyError::Algorithm("HS256".into()))
        );
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let (key, jwks) = setup();
        let token = sign(&key, &claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = claims();
        forged.tiers = vec!["heavy".into()];
        parts[1] = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(matches!(
            verify(&parts.join("."), &jwks, &none(), &policy(AUD), NOW),
            Err(VerifyError::Invalid(_))
        ));
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let (key, jwks) = setup();
        let token = sign(&key, &claims());
        assert!(
            verify(
                &token,
                &jwks,
                &none(),
                &policy(AUD),
                NOW + 3600 + LEEWAY_SECS as i64 + 1
            )
            .is_err()
        );
        let mut later = claims();
        later.nbf = NOW + 600;
        assert!(verify(&sign(&key, &later), &jwks, &none(), &policy(AUD), NOW).is_err());
    }

    #[test]
    fn wrong_audience_unknown_key_and_other_pools_are_refused() {
        let (key, jwks) = setup();
        let token = sign(&key, &claims());
        assert!(verify(&token, &jwks, &none(), &policy("site/lyon"), NOW).is_err());
        let (other_key, other_jwks) = setup();
        assert!(matches!(
            verify(&token, &other_jwks, &none(), &policy(AUD), NOW),
            Err(VerifyError::UnknownKey(_))
        ));
        // A token of another pool, verified against this pool's keys.
        let mut lyon = claims();
        lyon.iss = "site/lyon".into();
        lyon.aud = "site/lyon".into();
        assert!(verify(&sign(&other_key, &lyon), &jwks, &none(), &policy(AUD), NOW).is_err());
    }

    #[test]
    fn a_revoked_jti_is_refused() {
        let (key, jwks) = setup();
        let c = claims();
        let token = sign(&key, &c);
        let revoked = BTreeMap::from([(c.jti.clone(), c.exp)]);
        assert_eq!(
            verify(&token, &jwks, &revoked, &policy(AUD), NOW),
            Err(VerifyError::Revoked { jti: c.jti })
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = PoolKey::from_seed([9u8; 32]);
        let printed = format!("{key:?}");
        assert!(
            !printed.contains(&hex::encode([9u8; 32])) && !printed.contains("9, 9"),
            "{printed}"
        );
    }
}
