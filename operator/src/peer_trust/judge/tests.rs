//! The effective level, every refusal reason, downgrade and Paranoid, from
//! one two-site fixture signed as the real flow signs.

use ed25519_dalek::SigningKey;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{
    common::LocalObjectRef,
    peer_trust::{Countersignature, PeerEndpoint, PeerPoolRef},
};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Paris (this site) and Lyon, their admins (1, 2) and pools (3, 4).
struct Fixture {
    paris_admin: SigningKey,
    lyon_admin: SigningKey,
    paris_pool: SigningKey,
    lyon_pool: SigningKey,
    paris_endpoint: PeerEndpoint,
    admin_keys: Vec<String>,
    policy: ReputationPolicy,
    nonces: Nonces,
}

fn endpoint(site: &str, cidr: &str) -> PeerEndpoint {
    PeerEndpoint {
        host: Some(format!("pool.{site}.example.com")),
        cidr: Some(cidr.into()),
        port: 8443,
    }
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

impl Fixture {
    fn new() -> Self {
        let paris_admin = key(1);
        Self {
            admin_keys: vec![handshake::encode(&paris_admin.verifying_key())],
            paris_admin,
            lyon_admin: key(2),
            paris_pool: key(3),
            lyon_pool: key(4),
            paris_endpoint: endpoint("paris", "10.20.0.0/24"),
            policy: ReputationPolicy::default(),
            nonces: Nonces::default(),
        }
    }

    /// Lyon's PeerTrust at Paris, at `level`, without a handshake.
    fn spec(&self, level: i32) -> PeerTrustSpec {
        PeerTrustSpec {
            pool_ref: LocalObjectRef {
                name: "paris".into(),
            },
            site: "lyon".into(),
            endpoint: endpoint("lyon", "10.30.0.0/24"),
            public_key: handshake::encode(&self.lyon_pool.verifying_key()),
            trust_level: level,
            peer_pool: Some(PeerPoolRef {
                namespace: "lyon-ns".into(),
                name: "lyon".into(),
            }),
            handshake: None,
            requested_by: None,
            approved_by: None,
        }
    }

    fn local(&self) -> Local<'_> {
        Local {
            site: "paris",
            namespace: "paris-ns",
            name: "paris",
            endpoint: &self.paris_endpoint,
            key: self.paris_pool.verifying_key(),
        }
    }

    /// The complete handshake both sites made for `spec`, valid a day
    /// either side of NOW.
    fn signed(&self, spec: &PeerTrustSpec, nonce: &str) -> Handshake {
        self.signed_in(spec, nonce, at(NOW - DAY), at(NOW + DAY))
    }

    /// The complete handshake both sites made for `spec`, for this window.
    fn signed_in(
        &self,
        spec: &PeerTrustSpec,
        nonce: &str,
        not_before: Time,
        not_after: Time,
    ) -> Handshake {
        let mut h = Handshake {
            nonce: nonce.into(),
            not_before,
            not_after,
            local_signature: None,
            peer_signature: None,
            peer_countersignature: None,
        };
        let statement = statement(&self.local(), spec, self.lyon_pool.verifying_key(), &h);
        h.local_signature = Some(handshake::sign(&self.paris_admin, &statement).unwrap());
        h.peer_signature = Some(handshake::sign(&self.lyon_admin, &statement).unwrap());
        h.peer_countersignature = Some(Countersignature {
            pool_public_key: handshake::encode(&self.lyon_pool.verifying_key()),
            admin_public_key: handshake::encode(&self.lyon_admin.verifying_key()),
            signature: handshake::countersign(
                &self.lyon_pool,
                &self.lyon_admin.verifying_key(),
                &statement,
            )
            .unwrap(),
        });
        h
    }

    /// `spec`'s handshake with its window and nonce as they are, signed
    /// again by everyone.
    fn resign(&self, spec: &PeerTrustSpec) -> Handshake {
        let h = spec.handshake.clone().unwrap();
        self.signed_in(spec, &h.nonce, h.not_before, h.not_after)
    }

    fn level3(&self) -> PeerTrustSpec {
        let mut spec = self.spec(3);
        spec.handshake = Some(self.signed(&spec, "nonce-0123456789abcdef"));
        spec
    }

    fn facts<'a>(&'a self, spec: &'a PeerTrustSpec) -> Facts<'a> {
        Facts {
            spec,
            pool: LocalPool {
                site: Some("paris"),
                namespace: "paris-ns",
                name: "paris",
                endpoint: Some(&self.paris_endpoint),
                admin_keys: &self.admin_keys,
                own_keys: vec![self.paris_pool.verifying_key()],
                paranoid: false,
                reputation: &self.policy,
            },
            pinned_by: None,
            nonces: &self.nonces,
            report: None,
            previous: None,
            reset: None,
        }
    }
}

fn handshake_reason(verdict: &Verdict) -> Option<&'static str> {
    verdict
        .conditions
        .iter()
        .find(|c| c.type_ == types::HANDSHAKE_VERIFIED)
        .map(|c| c.reason)
}

fn summary_reason(verdict: &Verdict) -> &'static str {
    match &verdict.summary {
        Summary::Ready { reason, .. }
        | Summary::Progressing { reason, .. }
        | Summary::Stalled { reason, .. } => reason,
    }
}

#[test]
fn levels_1_and_2_are_granted_once_the_key_is_valid() {
    let f = Fixture::new();
    for level in [1, 2] {
        let spec = f.spec(level);
        let v = judge(&f.facts(&spec), NOW);
        assert_eq!(v.level, level);
        assert_eq!(summary_reason(&v), "Trusted");
        assert_eq!(handshake_reason(&v), None);
        assert_eq!(v.wake, None);
    }
}

#[test]
fn the_full_handshake_grants_3_until_not_after_and_records_its_nonce() {
    let f = Fixture::new();
    let spec = f.level3();
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 3);
    assert_eq!(handshake_reason(&v), Some(reasons::VERIFIED));
    assert_eq!(v.level3_until, Some(NOW + DAY));
    assert_eq!(
        v.wake,
        Some(NOW + DAY),
        "looked at again exactly at notAfter"
    );
    let (nonce, used) = v.record_nonce.clone().unwrap();
    assert_eq!(nonce, "nonce-0123456789abcdef");
    assert_eq!(used.not_after, NOW + DAY);
    // Paris countersigns with its pool key, vouching for its own admin.
    let c = v.countersign.unwrap();
    assert_eq!(c.own_key, f.paris_pool.verifying_key());
    assert_eq!(c.admin, f.paris_admin.verifying_key());
}

#[test]
fn at_not_after_the_level_drops_to_2() {
    let f = Fixture::new();
    let spec = f.level3();
    assert_eq!(judge(&f.facts(&spec), NOW + DAY - 1).level, 3);
    let v = judge(&f.facts(&spec), NOW + DAY);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::EXPIRED));
    assert_eq!(summary_reason(&v), reasons::EXPIRED);
    assert!(
        v.countersign.is_none(),
        "an expired statement is not countersigned"
    );
}

#[test]
fn before_not_before_it_waits_for_it_countersigned() {
    let f = Fixture::new();
    let mut spec = f.spec(3);
    let mut h = f.signed(&spec, "nonce-0123456789abcdef");
    h.not_before = at(NOW + 60);
    spec.handshake = Some(h);
    // The window is signed: sign again with the later start.
    spec.handshake = Some(f.resign(&spec));
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::NOT_YET_VALID));
    assert_eq!(v.wake, Some(NOW + 60));
    assert!(matches!(v.summary, Summary::Progressing { .. }));
    assert!(
        v.countersign.is_some(),
        "the exchange can finish ahead of the window"
    );
    assert!(
        v.record_nonce.is_none(),
        "the nonce is taken when 3 is granted"
    );
    let v = judge(&f.facts(&spec), NOW + 60);
    assert_eq!(v.level, 3);
    // A flaw still shows before the window.
    spec.handshake.as_mut().unwrap().peer_signature =
        spec.handshake.as_ref().unwrap().local_signature.clone();
    assert_eq!(
        handshake_reason(&judge(&f.facts(&spec), NOW)),
        Some(reasons::INVALID)
    );
}

#[test]
fn one_byte_changed_in_any_signature_is_invalid() {
    let f = Fixture::new();
    let flip = |s: &mut String| {
        let mut bytes = STANDARD_DECODE(s);
        bytes[10] ^= 1;
        *s = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
    };
    let edits: [fn(&mut Handshake) -> &mut String; 3] = [
        |h| h.local_signature.as_mut().unwrap(),
        |h| h.peer_signature.as_mut().unwrap(),
        |h| &mut h.peer_countersignature.as_mut().unwrap().signature,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut spec = f.level3();
        flip(edit(spec.handshake.as_mut().unwrap()));
        let v = judge(&f.facts(&spec), NOW);
        assert_eq!(v.level, 2, "signature {i}");
        assert_eq!(
            handshake_reason(&v),
            Some(reasons::INVALID),
            "signature {i}"
        );
        assert!(v.record_nonce.is_none());
        assert!(matches!(v.summary, Summary::Stalled { .. }));
    }
}

#[allow(non_snake_case)]
fn STANDARD_DECODE(s: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
}

#[test]
fn a_peer_admin_key_the_peer_pool_never_vouched_for_is_refused() {
    let f = Fixture::new();
    let mut spec = f.level3();
    // Paris's admin makes a "Lyon admin" key and signs with it.
    let forged = key(9);
    let statement = statement(
        &f.local(),
        &spec,
        f.lyon_pool.verifying_key(),
        spec.handshake.as_ref().unwrap(),
    );
    let h = spec.handshake.as_mut().unwrap();
    h.peer_signature = Some(handshake::sign(&forged, &statement).unwrap());
    h.peer_countersignature.as_mut().unwrap().admin_public_key =
        handshake::encode(&forged.verifying_key());
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::INVALID));
}

#[test]
fn one_site_cannot_sign_for_both() {
    let f = Fixture::new();
    let mut spec = f.level3();
    let statement = statement(
        &f.local(),
        &spec,
        f.lyon_pool.verifying_key(),
        spec.handshake.as_ref().unwrap(),
    );
    // Paris's admin signs as the peer too, and the "countersignature" is
    // made with a pool key Paris holds: it is not the pinned one.
    let h = spec.handshake.as_mut().unwrap();
    h.peer_signature = Some(handshake::sign(&f.paris_admin, &statement).unwrap());
    h.peer_countersignature = Some(Countersignature {
        pool_public_key: handshake::encode(&f.paris_pool.verifying_key()),
        admin_public_key: handshake::encode(&f.paris_admin.verifying_key()),
        signature: handshake::countersign(
            &f.paris_pool,
            &f.paris_admin.verifying_key(),
            &statement,
        )
        .unwrap(),
    });
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::KEY_MISMATCH));
}

#[test]
fn a_handshake_for_another_key_or_endpoint_is_refused() {
    let f = Fixture::new();
    // Pinned key changed: the countersignature names another key.
    let mut spec = f.level3();
    spec.public_key = handshake::encode(&key(8).verifying_key());
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(
        handshake_reason(&v),
        Some(reasons::KEY_MISMATCH),
        "made for the key that countersigned"
    );
    // And without a countersignature to tell which key it was made for.
    spec.handshake.as_mut().unwrap().peer_countersignature = None;
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(handshake_reason(&v), Some(reasons::INVALID));
    // Endpoint changed (port, or range).
    for change in [
        |s: &mut PeerTrustSpec| s.endpoint.port = 9443,
        |s: &mut PeerTrustSpec| s.endpoint.cidr = Some("10.31.0.0/24".into()),
    ] {
        let mut spec = f.level3();
        change(&mut spec);
        let v = judge(&f.facts(&spec), NOW);
        assert_eq!(v.level, 2);
        assert_eq!(handshake_reason(&v), Some(reasons::INVALID));
    }
    // This site's own pool key is no longer the one signed for.
    let spec = f.level3();
    let mut facts = f.facts(&spec);
    facts.pool.own_keys = vec![key(7).verifying_key()];
    assert_eq!(
        handshake_reason(&judge(&facts, NOW)),
        Some(reasons::INVALID)
    );
}

#[test]
fn a_handshake_copied_to_another_peer_trust_is_refused() {
    let f = Fixture::new();
    let original = f.level3();
    // Same handshake, another peer site (with its own key and pool).
    let mut copy = f.spec(3);
    copy.site = "marseille".into();
    copy.handshake = original.handshake.clone();
    let v = judge(&f.facts(&copy), NOW);
    assert_eq!(v.level, 2);
    assert_ne!(handshake_reason(&v), Some(reasons::VERIFIED));
}

#[test]
fn a_reused_nonce_is_refused_and_a_recorded_one_is_not_recorded_again() {
    let mut f = Fixture::new();
    let spec = f.level3();
    let (nonce, used) = judge(&f.facts(&spec), NOW).record_nonce.unwrap();
    f.nonces.0.insert(nonce.clone(), used);
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 3, "the same statement again");
    assert!(v.record_nonce.is_none());
    // A new window, both sites signing again, with the same nonce.
    let mut again = f.spec(3);
    again.handshake = Some(f.signed_in(&again, &nonce, at(NOW - DAY), at(NOW + 2 * DAY)));
    let v = judge(&f.facts(&again), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::NONCE_REUSED));
}

#[test]
fn what_is_missing_is_named() {
    let f = Fixture::new();
    // Only this site's admin has signed: countersigned, waiting for Lyon.
    let mut spec = f.level3();
    let h = spec.handshake.as_mut().unwrap();
    h.peer_signature = None;
    h.peer_countersignature = None;
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::INCOMPLETE));
    assert!(matches!(v.summary, Summary::Progressing { .. }));
    assert!(
        v.countersign.is_some(),
        "published for Lyon's admin to copy"
    );
    // The Pool lacks what a statement names.
    let spec = f.level3();
    let mut facts = f.facts(&spec);
    facts.pool.endpoint = None;
    let v = judge(&facts, NOW);
    assert_eq!(handshake_reason(&v), Some(reasons::INCOMPLETE));
    let Summary::Progressing { message, .. } = &v.summary else {
        panic!("{:?}", v.summary)
    };
    assert!(message.contains("spec.federation.endpoint"), "{message}");
    assert!(v.countersign.is_none());
    // Nobody signed yet: the nonce and window alone.
    let mut spec = f.level3();
    let h = spec.handshake.as_mut().unwrap();
    (h.local_signature, h.peer_signature, h.peer_countersignature) = (None, None, None);
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(handshake_reason(&v), Some(reasons::INCOMPLETE));
    assert!(
        v.countersign.is_none(),
        "nothing of this site's to vouch for yet"
    );
    // Level 3 without a handshake (stored before admission required one).
    let spec = f.spec(3);
    assert_eq!(
        handshake_reason(&judge(&f.facts(&spec), NOW)),
        Some(reasons::INCOMPLETE)
    );
}

#[test]
fn a_complete_handshake_at_level_2_is_verified_but_grants_2() {
    let f = Fixture::new();
    let mut spec = f.level3();
    spec.trust_level = 2;
    let v = judge(&f.facts(&spec), NOW);
    assert_eq!(v.level, 2);
    assert_eq!(handshake_reason(&v), Some(reasons::VERIFIED));
    assert!(
        v.record_nonce.is_none(),
        "the nonce is taken when level 3 is granted"
    );
    assert_eq!(summary_reason(&v), "Trusted");
}

#[test]
fn a_previous_own_key_still_in_its_overlap_is_accepted() {
    let f = Fixture::new();
    let spec = f.level3();
    let mut facts = f.facts(&spec);
    facts.pool.own_keys = vec![key(7).verifying_key(), f.paris_pool.verifying_key()];
    let v = judge(&facts, NOW);
    assert_eq!(v.level, 3);
    assert_eq!(
        v.countersign.unwrap().own_key,
        f.paris_pool.verifying_key(),
        "countersigned by the key the statement names"
    );
}

#[test]
fn refused_keys_get_nothing() {
    let f = Fixture::new();
    type Change = Box<dyn Fn(&mut PeerTrustSpec)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|s| s.public_key = STANDARD_ENCODE(&[0u8; 32])),
            "PeerKeyInvalid",
        ),
        (
            Box::new(|s| s.public_key = handshake::encode(&key(3).verifying_key())),
            "PeerKeyIsOwnKey",
        ),
        (
            Box::new(|s| {
                s.endpoint = PeerEndpoint {
                    host: Some("pool.lyon.example.com".into()),
                    cidr: None,
                    port: 8443,
                }
            }),
            "InvalidEndpoint",
        ),
        (
            Box::new(|s| s.endpoint.cidr = Some("0.0.0.0/0".into())),
            "InvalidEndpoint",
        ),
    ];
    for (change, reason) in cases {
        let mut spec = f.level3();
        change(&mut spec);
        let v = judge(&f.facts(&spec), NOW);
        assert_eq!(v.level, 0, "{reason}");
        assert_eq!(summary_reason(&v), reason);
        assert!(v.countersign.is_none() && v.record_nonce.is_none());
    }
    let spec = f.level3();
    let mut facts = f.facts(&spec);
    facts.pinned_by = Some("lyon-first");
    let v = judge(&facts, NOW);
    assert_eq!((v.level, summary_reason(&v)), (0, "PeerKeyPinnedTwice"));
}

#[allow(non_snake_case)]
fn STANDARD_ENCODE(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

#[test]
fn paranoid_suspends_every_peer() {
    let f = Fixture::new();
    let spec = f.level3();
    let mut facts = f.facts(&spec);
    facts.pool.paranoid = true;
    let v = judge(&facts, NOW);
    assert_eq!(v.level, 0);
    assert_eq!(v.level3_until, None);
    assert_eq!(summary_reason(&v), "Suspended");
    assert!(
        v.conditions
            .iter()
            .any(|c| c.type_ == types::SUSPENDED && c.status)
    );
}

#[test]
fn past_the_threshold_the_level_goes_down_a_step_and_stays_down() {
    let f = Fixture::new();
    let spec = f.level3();
    // 10 of 50 is 20%: not past it. 11 of 50 is.
    let mut facts = f.facts(&spec);
    facts.report = Some((10, 50));
    let v = judge(&facts, NOW);
    assert_eq!(v.level, 3);
    assert!(v.reputation.as_ref().unwrap().downgrade.is_none());
    // Over the share, but too few samples.
    facts.report = Some((40, 49));
    assert_eq!(judge(&facts, NOW).level, 3);
    facts.report = Some((11, 50));
    let v = judge(&facts, NOW);
    assert_eq!(v.level, 2);
    assert_eq!(v.level3_until, None, "level 3 is not what it has");
    assert_eq!(summary_reason(&v), "Downgraded");
    let downgraded = v.reputation.unwrap();
    assert_eq!(
        downgraded
            .downgrade
            .as_ref()
            .map(|d| (d.mismatches, d.samples)),
        Some((11, 50))
    );
    // Back under the threshold: still down.
    let mut later = f.facts(&spec);
    later.previous = Some(&downgraded);
    later.report = Some((11, 5_000));
    let v = judge(&later, NOW + 10);
    assert_eq!(v.level, 2);
    let still = v.reputation.unwrap();
    assert_eq!(still.downgrade, downgraded.downgrade, "evidence kept");
    // An admin resets: the counts so far become the baseline.
    later.previous = Some(&still);
    later.reset = Some("2026-11-26T10:00:00Z");
    let v = judge(&later, NOW + 20);
    assert_eq!(v.level, 3);
    let reset = v.reputation.unwrap();
    assert_eq!(
        (reset.baseline_mismatches, reset.baseline_samples),
        (11, 5_000)
    );
    // The same annotation again does nothing more; new mismatches count
    // from the baseline.
    let mut after = f.facts(&spec);
    after.previous = Some(&reset);
    after.reset = Some("2026-11-26T10:00:00Z");
    after.report = Some((11 + 30, 5_000 + 100));
    let v = judge(&after, NOW + 30);
    assert_eq!(v.level, 2);
    assert_eq!(
        v.reputation
            .unwrap()
            .downgrade
            .map(|d| (d.mismatches, d.samples)),
        Some((30, 100))
    );
}

#[test]
fn a_level_2_peer_goes_to_1_and_no_lower() {
    let f = Fixture::new();
    for (level, expected) in [(2, 1), (1, 1)] {
        let spec = f.spec(level);
        let mut facts = f.facts(&spec);
        facts.report = Some((100, 100));
        assert_eq!(judge(&facts, NOW).level, expected);
    }
}

#[test]
fn reports_nobody_would_write_do_not_break_the_verdict() {
    let f = Fixture::new();
    let spec = f.level3();
    for report in [
        (i64::MAX, i64::MAX),
        (-5, -5),
        (i64::MAX, 50),
        (0, i64::MAX),
        (-1, 100),
    ] {
        let mut facts = f.facts(&spec);
        facts.report = Some(report);
        let v = judge(&facts, NOW);
        assert!((2..=3).contains(&v.level), "{report:?}");
        let r = v.reputation.unwrap();
        assert!(r.mismatches >= 0 && r.samples >= 0, "{report:?}");
    }
    // Counts that went back (the pool restarted counting) reset the
    // baseline instead of going negative.
    let previous = ReputationStatus {
        mismatches: 500,
        samples: 1_000,
        baseline_mismatches: 400,
        baseline_samples: 900,
        ..Default::default()
    };
    let mut facts = f.facts(&spec);
    facts.previous = Some(&previous);
    facts.report = Some((1, 10));
    let r = judge(&facts, NOW).reputation.unwrap();
    assert_eq!((r.baseline_mismatches, r.baseline_samples), (0, 0));
}
