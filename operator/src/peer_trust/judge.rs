//! How far a peer is trusted: one pure function of (the PeerTrust, its
//! Pool, the nonce ledger, the pool's reports, now) → [`Verdict`]: the
//! effective level, its conditions, what to countersign, which nonce to
//! record, and when to look again (a handshake's start or end).

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;

use super::{
    handshake::{self, HandshakeError, Party, Statement},
    identity::{Admission, Nonces, UsedNonce},
};
use crate::{
    api::{
        peer_trust::{Downgrade, Handshake, PeerTrustSpec, ReputationStatus},
        pool::ReputationPolicy,
    },
    conditions::{Desired, Summary},
};

/// Condition types of a PeerTrust, beside `Ready`/`Reconciling`/`Stalled`.
pub mod types {
    pub const HANDSHAKE_VERIFIED: &str = "HandshakeVerified";
    pub const DOWNGRADED: &str = "Downgraded";
    pub const SUSPENDED: &str = "Suspended";
}

/// Why a handshake does not grant level 3.
pub mod reasons {
    pub const VERIFIED: &str = "Verified";
    pub const INVALID: &str = "HandshakeInvalid";
    pub const EXPIRED: &str = "HandshakeExpired";
    pub const NOT_YET_VALID: &str = "HandshakeNotYetValid";
    pub const KEY_MISMATCH: &str = "HandshakeKeyMismatch";
    pub const NONCE_REUSED: &str = "HandshakeNonceReused";
    pub const INCOMPLETE: &str = "HandshakeIncomplete";
}

/// The local pool, as a handshake needs it.
pub struct LocalPool<'a> {
    pub site: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub endpoint: Option<&'a crate::api::peer_trust::PeerEndpoint>,
    /// `federation.adminPublicKeys`, as written.
    pub admin_keys: &'a [String],
    /// The pool's valid federation keys, the current one first.
    pub own_keys: Vec<VerifyingKey>,
    pub paranoid: bool,
    pub reputation: &'a ReputationPolicy,
}

/// Everything the verdict depends on.
pub struct Facts<'a> {
    pub spec: &'a PeerTrustSpec,
    pub pool: LocalPool<'a>,
    /// Another PeerTrust of this pool that pinned the same key first.
    pub pinned_by: Option<&'a str>,
    pub nonces: &'a Nonces,
    /// (mismatches, samples) the pool reports for this peer, if it does.
    pub report: Option<(i64, i64)>,
    pub previous: Option<&'a ReputationStatus>,
    /// The `cellule.ai/reputation-reset` annotation.
    pub reset: Option<&'a str>,
}

/// What to countersign, with which of the pool's keys, vouching for which
/// admin key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Countersign {
    pub own_key: VerifyingKey,
    pub admin: VerifyingKey,
    pub statement: Statement,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub level: i32,
    pub summary: Summary,
    /// Conditions to set; the other specific types are removed.
    pub conditions: Vec<Desired>,
    pub countersign: Option<Countersign>,
    /// A nonce to record before any status grants level 3.
    pub record_nonce: Option<(String, UsedNonce)>,
    pub level3_until: Option<i64>,
    pub reputation: Option<ReputationStatus>,
    pub wake: Option<i64>,
}

pub fn judge(facts: &Facts<'_>, now: i64) -> Verdict {
    let spec = facts.spec;
    // The reputation (and a downgrade: sticky) is kept on every path.
    let reputation = reputation(facts, now);
    let kept = (facts.report.is_some() || facts.previous.is_some()).then(|| reputation.clone());
    // A refusal of the peer's key: the peer gets nothing.
    let refused = |reason, message| Verdict {
        level: 0,
        summary: Summary::Stalled { reason, message },
        conditions: vec![],
        countersign: None,
        record_nonce: None,
        level3_until: None,
        reputation: kept.clone(),
        wake: None,
    };
    let peer_key = match handshake::public_key("spec.publicKey", &spec.public_key) {
        Ok(key) => key,
        Err(error) => return refused("PeerKeyInvalid", error.to_string()),
    };
    if facts.pool.own_keys.contains(&peer_key) {
        return refused(
            "PeerKeyIsOwnKey",
            "spec.publicKey is this pool's own federation key: pin the peer pool's key".into(),
        );
    }
    if let Some(other) = facts.pinned_by {
        return refused(
            "PeerKeyPinnedTwice",
            format!(
                "PeerTrust {other:?} already pins this key for this pool: one PeerTrust per peer"
            ),
        );
    }

    // What admission checks, again (an object stored before a rule
    // existed keeps its value): egress goes to one sound range.
    match super::egress_cidr(&spec.endpoint) {
        None => {
            return refused(
                "InvalidEndpoint",
                "spec.endpoint: host is a DNS name; give cidr, the range egress to the peer is allowed to".into(),
            );
        }
        Some(range) => {
            if let Some(problem) = crate::pool::validate::cidr_problem(&range) {
                return refused(
                    "InvalidEndpoint",
                    format!(
                        "spec.endpoint {:?}: {problem}",
                        crate::reconcile::bounded(&range)
                    ),
                );
            }
        }
    }
    let mut verdict = Verdict {
        level: spec.trust_level.min(2),
        summary: Summary::Ready {
            reason: "Trusted",
            message: String::new(),
        },
        conditions: vec![],
        countersign: None,
        record_nonce: None,
        level3_until: None,
        reputation: None,
        wake: None,
    };
    // A handshake is checked (and countersigned) at any requested level:
    // it can be completed at level 2, then raised to 3 with one approval.
    let mut refusal = None;
    let outcome = match &spec.handshake {
        Some(h) => Some(check_handshake(facts, h, peer_key, now)),
        None if spec.trust_level >= 3 => Some(Outcome::refused(
            reasons::INCOMPLETE,
            "trustLevel 3 needs spec.handshake",
        )),
        None => None,
    };
    if let Some(outcome) = outcome {
        verdict.countersign = outcome.countersign;
        verdict.wake = outcome.wake;
        match outcome.result {
            Ok((until, record)) => {
                let granted = spec.trust_level >= 3;
                if granted {
                    verdict.level = 3;
                    verdict.level3_until = Some(until);
                    verdict.record_nonce = record;
                }
                verdict.conditions.push(Desired::new(
                    types::HANDSHAKE_VERIFIED,
                    true,
                    reasons::VERIFIED,
                    if granted {
                        format!(
                            "signed by both sites' admins and countersigned by the peer pool; level 3 until {}",
                            iso(until)
                        )
                    } else {
                        format!(
                            "signed by both sites' admins and countersigned by the peer pool, valid until {}: trustLevel 3 would be granted",
                            iso(until)
                        )
                    },
                ));
            }
            Err((reason, message)) => {
                verdict.conditions.push(Desired::new(
                    types::HANDSHAKE_VERIFIED,
                    false,
                    reason,
                    message.clone(),
                ));
                if spec.trust_level >= 3 {
                    refusal = Some((reason, message));
                }
            }
        }
    }

    if let Some(downgrade) = &reputation.downgrade {
        verdict.level = (verdict.level - 1).max(1);
        verdict.conditions.push(Desired::new(
            types::DOWNGRADED,
            true,
            "MismatchThreshold",
            format!(
                "{} mismatches in {} samples since {} exceed {}%: effective level lowered to {} (annotate cellule.ai/reputation-reset to clear)",
                downgrade.mismatches,
                downgrade.samples,
                iso(downgrade.at.0.as_second()),
                facts.pool.reputation.mismatch_percent,
                verdict.level
            ),
        ));
    }
    let downgraded = reputation.downgrade.clone();
    verdict.reputation = kept;
    if facts.pool.paranoid {
        verdict.level = 0;
    }
    if verdict.level < 3 {
        verdict.level3_until = None;
    }

    verdict.summary = if facts.pool.paranoid {
        verdict.conditions.push(Desired::new(
            types::SUSPENDED,
            true,
            "Paranoid",
            "the pool's privacy mode is Paranoid: it never fans out, no peer is in its config or egress",
        ));
        Summary::Ready {
            reason: "Suspended",
            message: "suspended while the pool is Paranoid".into(),
        }
    } else if let Some(downgrade) = downgraded {
        Summary::Stalled {
            reason: "Downgraded",
            message: format!(
                "effective level {} of {} requested after {} mismatches in {} samples; an admin clears it (docs/federation.md)",
                verdict.level, spec.trust_level, downgrade.mismatches, downgrade.samples
            ),
        }
    } else if let Some((reason, message)) = refusal {
        let message = format!("effective level 2 of 3 requested: {message}");
        if reason == reasons::INCOMPLETE || reason == reasons::NOT_YET_VALID {
            Summary::Progressing { reason, message }
        } else {
            Summary::Stalled { reason, message }
        }
    } else {
        Summary::Ready {
            reason: "Trusted",
            message: format!("trusted at level {}", verdict.level),
        }
    };
    verdict
}

type Checked = Result<(i64, Option<(String, UsedNonce)>), (&'static str, String)>;

struct Outcome {
    result: Checked,
    countersign: Option<Countersign>,
    wake: Option<i64>,
}

impl Outcome {
    fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            result: Err((reason, message.into())),
            countersign: None,
            wake: None,
        }
    }
}

fn iso(secs: i64) -> String {
    Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// The checks in order: what is missing, the end of the window, this
/// site's admin (then this pool countersigns, even before the window
/// starts), the nonce, the peer's parts, the start of the window.
fn check_handshake(facts: &Facts<'_>, h: &Handshake, peer_key: VerifyingKey, now: i64) -> Outcome {
    let (spec, pool) = (facts.spec, &facts.pool);
    let missing: Vec<&str> = [
        (pool.site.is_none(), "the Pool's spec.federation.site"),
        (
            pool.endpoint.is_none(),
            "the Pool's spec.federation.endpoint",
        ),
        (
            pool.admin_keys.is_empty(),
            "the Pool's spec.federation.adminPublicKeys",
        ),
        (spec.peer_pool.is_none(), "spec.peerPool"),
        (
            pool.own_keys.is_empty(),
            "the pool's federation key (being minted)",
        ),
    ]
    .into_iter()
    .filter_map(|(missing, what)| missing.then_some(what))
    .collect();
    if !missing.is_empty() {
        return Outcome::refused(
            reasons::INCOMPLETE,
            format!("a handshake needs {}", missing.join(", ")),
        );
    }
    let (not_before, not_after) = (h.not_before.0.as_second(), h.not_after.0.as_second());
    if now >= not_after {
        return Outcome::refused(
            reasons::EXPIRED,
            format!(
                "the handshake expired at {}: both sites sign a new one",
                iso(not_after)
            ),
        );
    }
    let admins: Vec<VerifyingKey> = pool
        .admin_keys
        .iter()
        .filter_map(|k| handshake::public_key("admin key", k).ok())
        .collect();
    let (Some(site), Some(endpoint)) = (pool.site, pool.endpoint) else {
        unreachable!("checked as missing above")
    };
    let Some(local_signature) = &h.local_signature else {
        return Outcome::refused(
            reasons::INCOMPLETE,
            "waiting for localSignature: this site's admin signs the statement `cellule-operator handshake statement` prints from this PeerTrust and its Pool",
        );
    };
    let local = |own_key| Local {
        site,
        namespace: pool.namespace,
        name: pool.name,
        endpoint,
        key: own_key,
    };
    // This site's admin signed the statement naming one of this pool's
    // valid keys (the current one, or one still in its overlap).
    let signed_for = |peer_key| {
        pool.own_keys.iter().find_map(|own| {
            let statement = statement(&local(*own), spec, peer_key, h);
            admins
                .iter()
                .find(|admin| handshake::verify("", admin, local_signature, &statement).is_ok())
                .map(|admin| (*own, *admin, statement))
        })
    };
    let Some((own_key, admin, statement)) = signed_for(peer_key) else {
        // Made for the key that countersigned, not the pinned one: say so.
        let other = h
            .peer_countersignature
            .as_ref()
            .and_then(|c| handshake::public_key("", &c.pool_public_key).ok())
            .filter(|k| *k != peer_key);
        if other.is_some_and(|k| signed_for(k).is_some()) {
            return Outcome::refused(
                reasons::KEY_MISMATCH,
                "the handshake was made for another peer pool key than spec.publicKey pins (the one that countersigned it): pin the key the peer publishes, or sign a new handshake",
            );
        }
        return Outcome::refused(
            reasons::INVALID,
            "localSignature does not verify with any of the Pool's federation.adminPublicKeys over the statement this PeerTrust and its Pool make (sites, pools, keys, endpoints, window, nonce): check each field against the one signed",
        );
    };
    let wake = Some(not_after);
    let countersign = Some(Countersign {
        own_key,
        admin,
        statement: statement.clone(),
    });
    let outcome = |result| Outcome {
        result,
        countersign: countersign.clone(),
        wake,
    };
    let digest = match statement.digest() {
        Ok(digest) => digest,
        Err(error) => return outcome(Err((reasons::INVALID, error.to_string()))),
    };
    let record = match facts.nonces.admit(&h.nonce, &digest) {
        Admission::Reused => {
            return outcome(Err((
                reasons::NONCE_REUSED,
                "this nonce was already accepted by this pool for another statement: sign a new handshake with a fresh nonce".into(),
            )));
        }
        Admission::Recorded => None,
        Admission::Fresh => Some((h.nonce.clone(), UsedNonce { digest, not_after })),
    };
    let (Some(peer_signature), Some(counter)) = (&h.peer_signature, &h.peer_countersignature)
    else {
        let wanted: Vec<&str> = [
            (
                h.peer_signature.is_none(),
                "peerSignature (the peer site admin's)",
            ),
            (
                h.peer_countersignature.is_none(),
                "peerCountersignature (from the status of the peer site's PeerTrust)",
            ),
        ]
        .into_iter()
        .filter_map(|(missing, what)| missing.then_some(what))
        .collect();
        return outcome(Err((
            reasons::INCOMPLETE,
            format!(
                "this site's admin signed; waiting for {} (this pool's countersignature is in status.countersignature)",
                wanted.join(" and ")
            ),
        )));
    };
    let countersigner = handshake::public_key(
        "peerCountersignature.poolPublicKey",
        &counter.pool_public_key,
    );
    if countersigner.as_ref().ok() != Some(&peer_key) {
        return outcome(Err((
            reasons::KEY_MISMATCH,
            "peerCountersignature was made by another pool key than spec.publicKey pins: the handshake was made for another key".into(),
        )));
    }
    let checks = handshake::public_key(
        "peerCountersignature.adminPublicKey",
        &counter.admin_public_key,
    )
    .and_then(|peer_admin| {
        if admins.contains(&peer_admin) {
            // The peer's admin key is one of ours: one site signing twice.
            return Err(HandshakeError::BadSignature {
                what: "peerSignature (made with this site's own admin key)",
            });
        }
        handshake::verify_countersignature(&peer_key, &peer_admin, &counter.signature, &statement)?;
        handshake::verify("peerSignature", &peer_admin, peer_signature, &statement)
    });
    match checks {
        // Complete and sound, before its window: granted at notBefore (the
        // exchange can be finished ahead of it; the nonce is taken then).
        Ok(()) if now < not_before => Outcome {
            wake: Some(not_before),
            ..outcome(Err((
                reasons::NOT_YET_VALID,
                format!("verified; the handshake is valid from {}", iso(not_before)),
            )))
        },
        Ok(()) => outcome(Ok((not_after, record))),
        Err(error) => outcome(Err((reasons::INVALID, error.to_string()))),
    }
}

/// This site's side of a handshake.
pub struct Local<'a> {
    pub site: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub endpoint: &'a crate::api::peer_trust::PeerEndpoint,
    pub key: VerifyingKey,
}

/// The statement of `handshake` between `local` and the peer `spec` pins
/// with `peer_key`: what both sites' admins sign. The same bytes at both
/// sites (parties are ordered in the canonical form). Without `peerPool`
/// the peer's pool is empty (and admission requires it with a handshake).
pub fn statement(
    local: &Local<'_>,
    spec: &PeerTrustSpec,
    peer_key: VerifyingKey,
    handshake: &Handshake,
) -> Statement {
    let peer_pool = spec.peer_pool.clone().unwrap_or_default();
    Statement {
        parties: [
            Party {
                site: local.site.to_owned(),
                namespace: local.namespace.to_owned(),
                pool: local.name.to_owned(),
                pool_key: local.key,
                host: local.endpoint.host.clone(),
                cidr: local.endpoint.cidr.clone(),
                port: local.endpoint.port,
            },
            Party {
                site: spec.site.clone(),
                namespace: peer_pool.namespace,
                pool: peer_pool.name,
                pool_key: peer_key,
                host: spec.endpoint.host.clone(),
                cidr: spec.endpoint.cidr.clone(),
                port: spec.endpoint.port,
            },
        ],
        not_before: handshake.not_before.0,
        not_after: handshake.not_after.0,
        nonce: handshake.nonce.clone(),
    }
}

/// The reputation status after this report: counts since the baseline,
/// a downgrade once past the threshold (kept until reset).
fn reputation(facts: &Facts<'_>, now: i64) -> ReputationStatus {
    let mut next = facts.previous.cloned().unwrap_or_default();
    if let Some((mismatches, samples)) = facts.report {
        next.mismatches = mismatches.max(0);
        next.samples = samples.max(0);
    }
    // Counts that went back: the pool started counting again.
    if next.mismatches < next.baseline_mismatches || next.samples < next.baseline_samples {
        next.baseline_mismatches = 0;
        next.baseline_samples = 0;
    }
    if let Some(token) = facts.reset
        && next.reset.as_deref() != Some(token)
    {
        next.reset = Some(token.to_owned());
        next.baseline_mismatches = next.mismatches;
        next.baseline_samples = next.samples;
        next.downgrade = None;
    }
    let mismatches = next.mismatches - next.baseline_mismatches;
    let samples = next.samples - next.baseline_samples;
    let policy = facts.pool.reputation;
    let past = samples >= policy.min_samples
        && i128::from(mismatches) * 100 > i128::from(policy.mismatch_percent) * i128::from(samples);
    if next.downgrade.is_none()
        && past
        && let Ok(at) = Timestamp::from_second(now)
    {
        next.downgrade = Some(Downgrade {
            at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at),
            mismatches,
            samples,
        });
    }
    next
}

#[cfg(test)]
mod tests;
