//! Unit tests of the grant decisions, without a cluster.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Decision, decide};
use crate::api::{
    Pool, WorkerGrant, WorkerGrantStatus, common::Duration, worker_grant::TokenStatus,
};

const NOW: i64 = 1_800_000_000;
const HOUR: i64 = 3600;

fn pool() -> Pool {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/pool.yaml"
    ))
    .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn grant() -> WorkerGrant {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/workergrants.yaml"
    ))
    .unwrap();
    let first = text.split("\n---\n").next().unwrap();
    serde_yaml::from_str(first).unwrap()
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn token(issued: i64, expires: i64) -> TokenStatus {
    TokenStatus {
        secret_name: "laptop-alice-token".into(),
        jti: "j".into(),
        key_id: "k".into(),
        sha256: "s".into(),
        issued_at: at(issued),
        expires_at: at(expires),
        tiers: Some(vec!["light".into()]),
    }
}

#[test]
fn an_approved_grant_gets_a_token_of_its_ttl() {
    assert_eq!(
        decide(&grant(), &pool(), None, true, NOW),
        Decision::Issue {
            exp: NOW + 720 * HOUR,
            why: "TokenIssued"
        }
    );
}

#[test]
fn approval_is_required_when_the_pool_says_so() {
    let mut g = grant();
    g.spec.approved_by = None;
    assert_eq!(
        decide(&g, &pool(), None, true, NOW),
        Decision::PendingApproval
    );
    let mut p = pool();
    p.spec.tokens.approval_required = false;
    assert!(matches!(
        decide(&g, &p, None, true, NOW),
        Decision::Issue { .. }
    ));
}

#[test]
fn a_token_is_kept_until_a_third_of_its_life_remains_then_renewed() {
    let t = token(NOW, NOW + 30 * HOUR);
    assert_eq!(
        decide(&grant(), &pool(), Some(&t), true, NOW + HOUR),
        Decision::Keep {
            renew_at: NOW + 20 * HOUR
        }
    );
    assert!(matches!(
        decide(&grant(), &pool(), Some(&t), true, NOW + 20 * HOUR),
        Decision::Issue {
            why: "TokenRenewed",
            ..
        }
    ));
}

#[test]
fn no_token_outlives_expires_at_and_the_grant_then_expires() {
    let mut g = grant();
    g.spec.ttl = None;
    g.spec.expires_at = Some(at(NOW + 2 * HOUR));
    assert_eq!(
        decide(&g, &pool(), None, true, NOW),
        Decision::Issue {
            exp: NOW + 2 * HOUR,
            why: "TokenIssued"
        }
    );
    let t = token(NOW, NOW + 2 * HOUR);
    assert_eq!(
        decide(&g, &pool(), Some(&t), true, NOW + 10),
        Decision::Keep {
            renew_at: NOW + 2 * HOUR - (2 * HOUR) / 3
        }
    );
    assert_eq!(
        decide(&g, &pool(), Some(&t), true, NOW + 2 * HOUR),
        Decision::Expired
    );
}

#[test]
fn revoked_wins_over_everything_and_suspended_over_issuing() {
    let mut g = grant();
    g.spec.suspended = true;
    assert_eq!(decide(&g, &pool(), None, true, NOW), Decision::Suspended);
    g.spec.revoked = true;
    assert_eq!(decide(&g, &pool(), None, true, NOW), Decision::Revoked);
}

#[test]
fn a_rotation_request_issues_a_new_token() {
    let mut g = grant();
    g.spec.rotation = 1;
    g.status = Some(WorkerGrantStatus {
        observed_rotation: Some(0),
        ..Default::default()
    });
    let t = token(NOW, NOW + 30 * HOUR);
    assert!(matches!(
        decide(&g, &pool(), Some(&t), true, NOW + 60),
        Decision::Issue {
            why: "TokenRotated",
            ..
        }
    ));
}

#[test]
fn what_the_pool_cannot_honour_is_invalid() {
    let mut g = grant();
    g.spec.tiers = vec!["huge".into()];
    assert!(matches!(
        decide(&g, &pool(), None, true, NOW),
        Decision::Invalid {
            reason: "UnknownTier",
            ..
        }
    ));
    let mut g = grant();
    g.spec.ttl = Some(Duration::from_secs(5000 * HOUR as u64));
    assert!(matches!(
        decide(&g, &pool(), None, true, NOW),
        Decision::Invalid {
            reason: "TtlAboveMaximum",
            ..
        }
    ));
}

#[test]
fn a_ttl_not_longer_than_renew_before_is_replaced_only_at_expiry() {
    // renewBefore 2h, ttl 1h: renewing "when 2h are left" would be at once.
    let mut p = pool();
    p.spec.tokens.renew_before = Some(Duration::from_secs(2 * HOUR as u64));
    let mut g = grant();
    g.spec.ttl = Some(Duration::from_secs(HOUR as u64));
    let t = token(NOW, NOW + HOUR);
    for now in [NOW, NOW + 1, NOW + HOUR / 2, NOW + HOUR - 1] {
        assert_eq!(
            decide(&g, &p, Some(&t), true, now),
            Decision::Keep {
                renew_at: NOW + HOUR
            },
            "at {now}"
        );
    }
    assert!(matches!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Issue {
            why: "TokenRenewed",
            ..
        }
    ));
}

#[test]
fn a_grant_ending_within_renew_before_keeps_its_one_token() {
    // expiresAt 100 s away, the pool renews 2h before expiry: the token
    // already runs to expiresAt, no successor could outlive it.
    let mut p = pool();
    p.spec.tokens.renew_before = Some(Duration::from_secs(2 * HOUR as u64));
    let mut g = grant();
    g.spec.ttl = None;
    g.spec.expires_at = Some(at(NOW + 100));
    let t = token(NOW, NOW + 100);
    for now in [NOW, NOW + 50, NOW + 99] {
        assert_eq!(
            decide(&g, &p, Some(&t), true, now),
            Decision::Keep {
                renew_at: NOW + 100
            }
        );
    }
    assert_eq!(decide(&g, &p, Some(&t), true, NOW + 100), Decision::Expired);
}

#[test]
fn a_tier_change_re_issues_and_so_does_a_legacy_token() {
    let mut p = pool();
    p.spec.tokens.renew_before = None;
    let mut g = grant();
    g.spec.tiers = vec!["light".into(), "heavy".into()];
    let t = token(NOW, NOW + 30 * HOUR);
    assert!(matches!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Issue {
            why: "TokenTiersChanged",
            ..
        }
    ));
    // Same tiers in another order: nothing to do.
    let mut same = t.clone();
    same.tiers = Some(vec!["heavy".into(), "light".into()]);
    assert!(matches!(
        decide(&g, &p, Some(&same), true, NOW + HOUR),
        Decision::Keep { .. }
    ));
    // A token from before tiers were recorded is replaced once.
    let mut legacy = t;
    legacy.tiers = None;
    assert!(matches!(
        decide(&grant(), &p, Some(&legacy), true, NOW + HOUR),
        Decision::Issue {
            why: "TokenTiersChanged",
            ..
        }
    ));
}

#[test]
fn a_lowered_max_ttl_re_issues_longer_tokens() {
    let mut p = pool();
    p.spec.tokens.max_ttl = Duration::from_secs(24 * HOUR as u64);
    p.spec.tokens.default_ttl = Duration::from_secs(24 * HOUR as u64);
    let mut g = grant();
    g.spec.ttl = Some(Duration::from_secs(24 * HOUR as u64));
    let t = token(NOW, NOW + 720 * HOUR);
    assert_eq!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Issue {
            exp: NOW + 25 * HOUR,
            why: "MaxTtlLowered"
        }
    );
}

#[test]
fn the_oldest_live_grant_holds_a_worker_id() {
    use super::older_claimant;
    let named = |name: &str, created: i64| {
        let mut g = grant();
        g.metadata.name = Some(name.into());
        g.metadata.namespace = Some("site".into());
        g.metadata.uid = Some(format!("uid-{name}"));
        g.metadata.creation_timestamp = Some(at(created));
        g
    };
    let (first, second) = (named("a", NOW), named("b", NOW + 10));
    let all = [first.clone(), second.clone()];
    assert!(older_claimant(&first, all.iter(), NOW).is_none());
    assert_eq!(
        older_claimant(&second, all.iter(), NOW).map(|g| g.metadata.name.clone().unwrap()),
        Some("a".into())
    );
    // A pending request holds nothing.
    let mut pending = first.clone();
    pending.spec.approved_by = None;
    assert!(older_claimant(&second, [pending, second.clone()].iter(), NOW).is_none());
    // A pending request holds nothing.
    let mut pending = first.clone();
    pending.spec.approved_by = None;
    assert!(older_claimant(&second, [pending, second.clone()].iter(), NOW).is_none());
    // A revoked or expired older grant holds nothing.
    let mut revoked = first.clone();
    revoked.spec.revoked = true;
    assert!(older_claimant(&second, [revoked, second.clone()].iter(), NOW).is_none());
    let mut expired = first.clone();
    expired.spec.ttl = None;
    expired.spec.expires_at = Some(at(NOW - 1));
    assert!(older_claimant(&second, [expired, second.clone()].iter(), NOW).is_none());
    // Another pool's grant with the same worker id does not count.
    let mut elsewhere = first;
    elsewhere.spec.pool_ref.name = "lyon".into();
    assert!(older_claimant(&second, [elsewhere, second.clone()].iter(), NOW).is_none());
}

#[test]
fn narrowing_the_grant_re_issues_at_once() {
    let p = pool();
    // ttl shortened from 720h to 24h: the 720h token goes.
    let mut g = grant();
    g.spec.ttl = Some(Duration::from_secs(24 * HOUR as u64));
    let t = token(NOW, NOW + 720 * HOUR);
    assert_eq!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Issue {
            exp: NOW + 25 * HOUR,
            why: "TokenNarrowed"
        }
    );
    // expiresAt moved before the token's exp: re-issued to end there.
    let mut g = grant();
    g.spec.ttl = None;
    g.spec.expires_at = Some(at(NOW + 10 * HOUR));
    let t = token(NOW, NOW + 20 * HOUR);
    assert_eq!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Issue {
            exp: NOW + 10 * HOUR,
            why: "TokenNarrowed"
        }
    );
    // A token already within the narrowed terms is kept.
    let t = token(NOW, NOW + 10 * HOUR);
    assert!(matches!(
        decide(&g, &p, Some(&t), true, NOW + HOUR),
        Decision::Keep { .. }
    ));
}

#[test]
fn a_token_whose_key_is_no_longer_published_is_replaced_at_once() {
    let t = token(NOW, NOW + 30 * HOUR);
    assert_eq!(
        decide(&grant(), &pool(), Some(&t), false, NOW + HOUR),
        Decision::Issue {
            exp: NOW + HOUR + 720 * HOUR,
            why: "SigningKeyWithdrawn"
        }
    );
    // Not for a grant that should hold no token anyway.
    let mut g = grant();
    g.spec.suspended = true;
    assert_eq!(
        decide(&g, &pool(), Some(&t), false, NOW + HOUR),
        Decision::Suspended
    );
}

#[test]
fn a_key_or_list_change_wakes_only_the_grants_it_concerns() {
    use super::{SIGNING_KEY_PENDING, concerned_by_keys};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    let condition = |reason: &str| Condition {
        type_: "Ready".into(),
        status: "False".into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: at(NOW),
        observed_generation: None,
    };
    let with = |token: Option<TokenStatus>, reason: &str| {
        let mut g = grant();
        let mut status = WorkerGrantStatus {
            token,
            ..Default::default()
        };
        status.common.conditions.push(condition(reason));
        g.status = Some(status);
        g
    };
    let ring: crate::tokens::KeyRing = serde_json::from_value(
        serde_json::json!({"keys": [{"kid": "k", "x": "", "createdAt": 0}]}),
    )
    .unwrap();
    let active = with(Some(token(NOW, NOW + HOUR)), "TokenValid");
    assert!(!concerned_by_keys(&active, None), "a list change");
    assert!(
        !concerned_by_keys(&active, Some(&ring)),
        "its key is published"
    );
    assert!(
        concerned_by_keys(&active, Some(&crate::tokens::KeyRing::default())),
        "its key is gone"
    );
    let waiting = with(None, SIGNING_KEY_PENDING);
    assert!(concerned_by_keys(&waiting, None));
    let revoked = with(None, "Revoked");
    assert!(!concerned_by_keys(&revoked, None));
    assert!(
        !concerned_by_keys(&grant(), None),
        "never reconciled: its own creation wakes it"
    );
}
