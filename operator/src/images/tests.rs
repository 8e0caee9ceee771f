use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;

use super::{
    cache::Cached,
    policy::{public_key, registry_auth},
    registry::Source,
    *,
};

const PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEB5jqUKERnQW0ZJEVN23n4iS6cPSa
8j9GKeazNa/p0RxGUVhV1LCkEWzZGVVKzB1AZH8d8jEi5DXoKGwRjdjiaQ==
-----END PUBLIC KEY-----
";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

#[test]
fn references_parse_into_registry_repository_tag_and_digest() {
    let name = ImageName::parse("registry.intra:5000/team/pool:1.4.2").unwrap();
    assert_eq!(name.registry, "registry.intra:5000");
    assert_eq!(name.repository, "team/pool");
    assert_eq!(name.tag.as_deref(), Some("1.4.2"));
    assert_eq!(name.digest, None);
    assert_eq!(
        name.pinned(&digest(1)),
        format!("registry.intra:5000/team/pool@{}", digest(1))
    );

    let pinned = format!("127.0.0.1:5000/a/b@{}", digest(2));
    let name = ImageName::parse(&pinned).unwrap();
    assert_eq!((name.tag, name.digest), (None, Some(digest(2))));
    let both = ImageName::parse(&format!("r.example/a:1@{}", digest(3))).unwrap();
    assert_eq!(
        (both.tag.as_deref(), both.digest),
        (Some("1"), Some(digest(3)))
    );
    assert_eq!(
        ImageName::parse("localhost/x:1").unwrap().registry,
        "localhost"
    );
}

#[test]
fn references_that_would_call_an_implied_registry_or_say_nothing_are_refused() {
    for bad in [
        "nginx:1",
        "library/nginx:1",
        "r.example/a",
        "r.example/a:",
        "r.example/:1",
        "r.example/a@sha256:abc",
        "r.example/a@md5:0123",
        &format!("r.example/a@sha256:{}", "g".repeat(64)),
        "",
    ] {
        let refusal = ImageName::parse(bad).unwrap_err();
        assert_eq!(refusal.reason(), "PolicyInvalid", "{bad:?}");
    }
}

fn checked(name: &str, decision: Decision) -> Checked {
    Checked {
        name: name.into(),
        reference: "r.example/team/pool:1".into(),
        decision,
    }
}

fn verified(n: u8) -> Verified {
    Verified {
        digest: digest(n),
        key: "ConfigMap keys[cosign.pub]".into(),
        at: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        stale: None,
    }
}

#[test]
fn a_verified_image_runs_pinned_and_is_recorded_with_its_key() {
    let settled = settle(&checked(POOL, Ok(verified(7))), None);
    let run = settled.run.unwrap();
    assert_eq!(run.reference, format!("r.example/team/pool@{}", digest(7)));
    let status = settled.status.unwrap();
    assert_eq!(status.name.as_deref(), Some(POOL));
    assert_eq!(status.reference, "r.example/team/pool:1");
    assert_eq!(status.short_digest, "070707070707");
    assert_eq!(
        status.verified_by.as_deref(),
        Some("ConfigMap keys[cosign.pub]")
    );
}

#[test]
fn a_refusal_renders_nothing_and_keeps_what_ran_in_status() {
    let before = settle(&checked(POOL, Ok(verified(1))), None)
        .status
        .unwrap();
    let refusal = Refusal::SignatureMissing {
        image: "r.example/team/pool".into(),
        digest: digest(2),
    };
    let settled = settle(&checked(POOL, Err(refusal.clone())), Some(&before));
    assert_eq!(settled.run, None);
    assert_eq!(settled.status.as_ref(), Some(&before));
    // Never run: nothing recorded.
    assert_eq!(settle(&checked(POOL, Err(refusal)), None).status, None);
}

#[test]
fn settle_all_matches_previous_statuses_by_name() {
    let old_worker = settle(&checked("cpuWorkers[a]", Ok(verified(1))), None)
        .status
        .unwrap();
    let old_pool = settle(&checked(POOL, Ok(verified(2))), None)
        .status
        .unwrap();
    let now = [
        checked(POOL, Ok(verified(3))),
        checked(
            "cpuWorkers[a]",
            Err(Refusal::RegistryUnavailable("down".into())),
        ),
        checked("cpuWorkers[b]", Err(Refusal::PolicyInvalid("x".into()))),
    ];
    let (running, statuses) = settle_all(&now, [&old_worker, &old_pool]);
    assert_eq!(running.0.keys().collect::<Vec<_>>(), [POOL]);
    assert_eq!(running.0[POOL].digest, digest(3));
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].digest, digest(3));
    assert_eq!(statuses[1], old_worker);
}

#[test]
fn the_condition_names_every_refused_image_with_the_first_reason() {
    let all_good = condition(&[checked(POOL, Ok(verified(1)))]);
    assert!(all_good.status);
    assert_eq!(all_good.reason, "Verified");
    assert!(all_good.message.contains(&digest(1)));
    assert!(refused(&all_good).is_none());

    let mixed = condition(&[
        checked(POOL, Ok(verified(1))),
        checked(
            "cpuWorkers[a]",
            Err(Refusal::DigestMismatch {
                image: "r/a".into(),
                digest: digest(2),
                signed: digest(3),
            }),
        ),
        checked(
            "cpuWorkers[b]",
            Err(Refusal::RegistryUnavailable("timeout".into())),
        ),
    ]);
    assert!(!mixed.status);
    assert_eq!(mixed.reason, "DigestMismatch");
    assert!(mixed.message.contains("cpuWorkers[a]") && mixed.message.contains("cpuWorkers[b]"));
    let error = refused(&mixed).unwrap();
    assert_eq!(error.reason(), "DigestMismatch");
    assert!(matches!(summary(&error), Summary::Stalled { .. }));

    let outage = condition(&[checked(
        POOL,
        Err(Refusal::RegistryUnavailable("down".into())),
    )]);
    assert!(matches!(
        summary(&refused(&outage).unwrap()),
        Summary::Progressing {
            reason: "RegistryUnavailable",
            ..
        }
    ));

    let stale = condition(&[checked(
        POOL,
        Ok(Verified {
            stale: Some("connection refused".into()),
            ..verified(1)
        }),
    )]);
    assert!(stale.status);
    assert!(stale.message.contains("connection refused"));
}

#[test]
fn a_huge_condition_message_stays_within_the_api_limits() {
    let many: Vec<_> = (0..200)
        .map(|i| {
            checked(
                &format!("cpuWorkers[set-{i}]"),
                Err(Refusal::PolicyInvalid("x".repeat(100))),
            )
        })
        .collect();
    assert!(condition(&many).message.len() <= crate::reconcile::MESSAGE_MAX);
}

#[test]
fn only_public_keys_are_accepted_as_cosign_keys() {
    assert!(public_key("k".into(), PEM.as_bytes()).is_ok());
    for bad in [
        &b"not a key"[..],
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        &[0xff, 0xfe, 0x00],
    ] {
        let why = public_key("ConfigMap k[cosign.pub]".into(), bad).unwrap_err();
        assert!(why.starts_with("ConfigMap k[cosign.pub]"), "{why}");
    }
}

fn docker_secret(key: &str, json: &str) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        data: Some(
            [(
                key.to_owned(),
                k8s_openapi::ByteString(json.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

#[test]
fn pull_secrets_give_the_credentials_of_the_image_registry() {
    let secret = docker_secret(
        ".dockerconfigjson",
        r#"{"auths": {"https://r.example:5000/v1/": {"auth": "dTpw"}, "other.example": {"username": "o", "password": "q"}}}"#,
    );
    assert_eq!(
        registry_auth(&secret, "r.example:5000").unwrap(),
        Some(Auth::Basic {
            username: "u".into(),
            password: "p".into()
        })
    );
    assert_eq!(
        registry_auth(&secret, "other.example").unwrap(),
        Some(Auth::Basic {
            username: "o".into(),
            password: "q".into()
        })
    );
    assert_eq!(registry_auth(&secret, "third.example").unwrap(), None);
    let legacy = docker_secret(".dockercfg", r#"{"r.example": {"auth": "dTpw"}}"#);
    assert!(registry_auth(&legacy, "r.example").unwrap().is_some());
    for (key, bad) in [
        (".dockerconfigjson", "not json"),
        (
            ".dockerconfigjson",
            r#"{"auths": {"r.example": {"auth": "%%%"}}}"#,
        ),
        (".dockerconfigjson", r#"{"auths": {"r.example": {}}}"#),
        ("token", "{}"),
    ] {
        let why = registry_auth(&docker_secret(key, bad), "r.example").unwrap_err();
        assert!(!why.contains("dTpw"), "{why}");
    }
    // Credentials never show in Debug output.
    let shown = format!(
        "{:?}",
        Auth::Basic {
            username: "u".into(),
            password: "secret-password".into()
        }
    );
    assert!(!shown.contains("secret-password"));
}

/// A registry in memory: tags, verdicts, an outage switch, call counts.
#[derive(Default)]
struct Fake {
    tags: Mutex<std::collections::HashMap<String, String>>,
    verdicts: Mutex<std::collections::HashMap<String, Result<String, Refusal>>>,
    down: std::sync::atomic::AtomicBool,
    resolves: AtomicU64,
    checks: AtomicU64,
    delay: Duration,
}

impl Fake {
    fn tag(&self, tag: &str, digest: &str) {
        self.tags.lock().unwrap().insert(tag.into(), digest.into());
    }
    fn verdict(&self, digest: &str, verdict: Result<&str, Refusal>) {
        self.verdicts
            .lock()
            .unwrap()
            .insert(digest.into(), verdict.map(str::to_owned));
    }
}

impl Source for Arc<Fake> {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        _: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            self.resolves.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Refusal::RegistryUnavailable("connection refused".into()));
            }
            let tag = image.tag.clone().unwrap_or_default();
            self.tags
                .lock()
                .unwrap()
                .get(&tag)
                .cloned()
                .ok_or(Refusal::ImageNotFound {
                    image: tag,
                    detail: "unknown".into(),
                })
        })
    }

    fn check<'a>(
        &'a self,
        _: &'a ImageName,
        digest: &'a str,
        _: &'a [PublicKey],
        _: &'a Auth,
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            self.checks.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Refusal::RegistryUnavailable("connection refused".into()));
            }
            self.verdicts.lock().unwrap()[digest].clone()
        })
    }
}

fn request(reference: &str, keys: &[&str], refresh: Duration) -> Request {
    Request {
        image: ImageName::parse(reference).unwrap(),
        keys: keys
            .iter()
            .map(|k| PublicKey {
                source: format!("key {k}"),
                pem: (*k).into(),
            })
            .collect(),
        auth: Auth::Anonymous,
        refresh,
    }
}

fn fake() -> Arc<Fake> {
    let fake = Arc::new(Fake::default());
    fake.tag("1", &digest(1));
    fake.verdict(&digest(1), Ok("a"));
    fake
}

#[tokio::test]
async fn five_hundred_pools_on_one_image_cost_one_resolve_and_one_verification() {
    let source = Arc::new(Fake {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    source.tag("1", &digest(1));
    source.verdict(&digest(1), Ok("a"));
    let cached = Cached::new(source.clone(), Duration::from_secs(3600), 100);
    let request = request("r.example/pool:1", &["a", "b"], Duration::from_secs(300));
    let all = futures::future::join_all((0..500).map(|_| cached.verify(&request))).await;
    assert!(all.iter().all(|d| d.as_ref().unwrap().digest == digest(1)));
    assert_eq!(source.resolves.load(Ordering::SeqCst), 1);
    assert_eq!(source.checks.load(Ordering::SeqCst), 1);
    // The same keys in another order are the same key set.
    let reordered = self::request(
        "r.example/pool:1",
        &["b", "a", "a"],
        Duration::from_secs(300),
    );
    cached.verify(&reordered).await.unwrap();
    assert_eq!(source.checks.load(Ordering::SeqCst), 1);
    // Another key set is another decision.
    let other = self::request("r.example/pool:1", &["a", "c"], Duration::from_secs(300));
    assert_eq!(cached.verify(&other).await.unwrap().key, "key a");
    assert_eq!(source.checks.load(Ordering::SeqCst), 2);
    // The same key under another name (another namespace's ConfigMap):
    // the decision is reused, named as this request names it.
    let mut renamed = self::request("r.example/pool:1", &["a", "b"], Duration::from_secs(300));
    renamed.keys[0].source = "ConfigMap other-ns-keys[cosign.pub]".into();
    assert_eq!(
        cached.verify(&renamed).await.unwrap().key,
        "ConfigMap other-ns-keys[cosign.pub]"
    );
    // Other credentials: their own resolution and decision.
    let mut credentialed = self::request("r.example/pool:1", &["a", "b"], Duration::from_secs(300));
    credentialed.auth = Auth::Basic {
        username: "u".into(),
        password: "p".into(),
    };
    cached.verify(&credentialed).await.unwrap();
    assert_eq!(source.resolves.load(Ordering::SeqCst), 2);
    assert_eq!(source.checks.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn refusals_are_kept_briefly_so_a_signature_pushed_later_is_seen() {
    let source = fake();
    source.tag("2", &digest(2));
    source.verdict(
        &digest(2),
        Err(Refusal::SignatureMissing {
            image: "r".into(),
            digest: digest(2),
        }),
    );
    // A TTL under REFUSAL_TTL bounds the refusals' too.
    let cached = Cached::new(source.clone(), Duration::from_millis(300), 100);
    let request = request("r.example/pool:2", &["a"], Duration::from_secs(300));
    for _ in 0..3 {
        assert_eq!(
            cached.verify(&request).await.unwrap_err().reason(),
            "SignatureMissing"
        );
    }
    assert_eq!(source.checks.load(Ordering::SeqCst), 1);
    source.verdict(&digest(2), Ok("a"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cached.verify(&request).await.unwrap().digest, digest(2));
    assert_eq!(source.checks.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_outage_is_never_cached_as_a_refusal() {
    let source = fake();
    source.down.store(true, Ordering::SeqCst);
    let cached = Cached::new(source.clone(), Duration::from_secs(3600), 100);
    let request = request(
        &format!("r.example/pool@{}", digest(1)),
        &["a"],
        Duration::from_secs(300),
    );
    assert_eq!(
        cached.verify(&request).await.unwrap_err().reason(),
        "RegistryUnavailable"
    );
    source.down.store(false, Ordering::SeqCst);
    assert_eq!(cached.verify(&request).await.unwrap().key, "key a");
}

#[tokio::test]
async fn a_tag_is_resolved_again_after_its_refresh_interval_and_a_move_is_verified() {
    let source = fake();
    let cached = Cached::new(source.clone(), Duration::from_secs(3600), 100);
    let request = request("r.example/pool:1", &["a"], Duration::from_millis(50));
    assert_eq!(cached.verify(&request).await.unwrap().digest, digest(1));
    // Moved to an unsigned digest: refused once the refresh has passed.
    source.tag("1", &digest(9));
    source.verdict(
        &digest(9),
        Err(Refusal::SignatureMissing {
            image: "r".into(),
            digest: digest(9),
        }),
    );
    assert_eq!(cached.verify(&request).await.unwrap().digest, digest(1));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        cached.verify(&request).await.unwrap_err().reason(),
        "SignatureMissing"
    );
    assert_eq!(source.resolves.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_outage_keeps_a_cached_decision_and_refuses_what_was_never_verified() {
    let source = fake();
    source.tag("2", &digest(2));
    source.verdict(&digest(2), Ok("a"));
    let cached = Cached::new(source.clone(), Duration::from_secs(3600), 100);
    let known = request("r.example/pool:1", &["a"], Duration::from_millis(30));
    cached.verify(&known).await.unwrap();
    let pinned = request(
        &format!("r.example/pool@{}", digest(1)),
        &["a"],
        Duration::from_secs(300),
    );
    cached.verify(&pinned).await.unwrap();

    source.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let during = cached.verify(&known).await.unwrap();
    assert_eq!(during.digest, digest(1));
    assert!(during.stale.unwrap().contains("connection refused"));
    // A digest reference needs no resolve: its decision stands.
    assert_eq!(cached.verify(&pinned).await.unwrap().stale, None);
    // Never verified: refused, reason RegistryUnavailable.
    let unknown = request("r.example/pool:2", &["a"], Duration::from_secs(300));
    assert_eq!(
        cached.verify(&unknown).await.unwrap_err().reason(),
        "RegistryUnavailable"
    );
    // Verified with other keys only: not this decision.
    let other_keys = request("r.example/pool:1", &["z"], Duration::from_millis(30));
    assert_eq!(
        cached.verify(&other_keys).await.unwrap_err().reason(),
        "RegistryUnavailable"
    );
}

#[tokio::test]
async fn decisions_expire_after_their_ttl_and_the_cache_stays_bounded() {
    let source = fake();
    let cached = Cached::new(source.clone(), Duration::from_millis(50), 10);
    let request = request(
        &format!("r.example/pool@{}", digest(1)),
        &["a"],
        Duration::from_secs(300),
    );
    cached.verify(&request).await.unwrap();
    cached.verify(&request).await.unwrap();
    assert_eq!(source.checks.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cached.verify(&request).await.unwrap();
    assert_eq!(source.checks.load(Ordering::SeqCst), 2);

    // Ten thousand distinct digests through a cache of ten.
    for n in 0..=255u8 {
        source.verdict(&digest(n), Ok("a"));
    }
    for i in 0..10_000u32 {
        let r = self::request(
            &format!("r.example/pool-{}@{}", i % 97, digest((i % 256) as u8)),
            &["a"],
            Duration::from_secs(300),
        );
        cached.verify(&r).await.unwrap();
    }
    let entries = cached.entries().await;
    assert!(entries <= 4 * 10, "{entries} entries");
}

mod decide {
    use sigstore::crypto::SigningScheme;

    use super::super::registry::{SignatureLayer, decide};
    use super::*;

    struct Signer {
        signer: sigstore::crypto::SigStoreSigner,
        key: PublicKey,
    }

    fn signer(name: &str) -> Signer {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .unwrap();
        let pem = signer
            .to_sigstore_keypair()
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        Signer {
            signer,
            key: PublicKey {
                source: name.into(),
                pem,
            },
        }
    }

    fn payload(reference: &str, digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn layer(signer: &Signer, payload: Vec<u8>) -> SignatureLayer {
        use base64::Engine as _;
        let signature = signer.signer.sign(&payload).unwrap();
        SignatureLayer {
            signature: Some(base64::engine::general_purpose::STANDARD.encode(signature)),
            payload: Ok(payload),
        }
    }

    fn image() -> ImageName {
        ImageName::parse("r.example:5000/team/pool:1").unwrap()
    }

    #[test]
    fn a_signature_of_this_digest_and_repository_by_a_listed_key_verifies() {
        let (old, new) = (signer("old"), signer("new"));
        let layers = [layer(&new, payload("r.example:5000/team/pool", &digest(1)))];
        let keys = [old.key.clone(), new.key.clone()];
        assert_eq!(
            decide(&image(), &digest(1), &keys, &layers).unwrap(),
            new.key.pem
        );
        // Listed alone, the other key does not.
        let refusal = decide(&image(), &digest(1), &[old.key], &layers).unwrap_err();
        assert_eq!(refusal.reason(), "SignatureInvalid");
    }

    #[test]
    fn every_way_a_signature_can_be_wrong_is_refused_with_its_reason() {
        let key = signer("k");
        let keys = [key.key.clone()];
        let repo = "r.example:5000/team/pool";
        let cases: Vec<(Vec<SignatureLayer>, &str)> = vec![
            (vec![], "SignatureMissing"),
            (
                vec![layer(&key, payload(repo, &digest(2)))],
                "DigestMismatch",
            ),
            (
                vec![layer(
                    &key,
                    payload("r.example:5000/team/other", &digest(1)),
                )],
                "IdentityMismatch",
            ),
            (vec![layer(&key, b"{not json".to_vec())], "SignatureInvalid"),
            (
                vec![layer(
                    &key,
                    payload(repo, &digest(1))
                        .into_iter()
                        .map(|b| if b == b'c' { b'k' } else { b })
                        .collect(),
                )],
                "SignatureInvalid",
            ),
            (
                vec![SignatureLayer {
                    signature: Some("bm90IGEgc2lnbmF0dXJl".into()),
                    payload: Ok(payload(repo, &digest(1))),
                }],
                "SignatureInvalid",
            ),
            (
                vec![SignatureLayer {
                    signature: None,
                    payload: Ok(payload(repo, &digest(1))),
                }],
                "SignatureInvalid",
            ),
            (
                vec![SignatureLayer {
                    signature: Some("%%%".into()),
                    payload: Err("too large".into()),
                }],
                "SignatureInvalid",
            ),
        ];
        for (layers, reason) in cases {
            let refusal = decide(&image(), &digest(1), &keys, &layers).unwrap_err();
            assert_eq!(refusal.reason(), reason, "{refusal}");
        }
        // A payload edited after signing: the signature no longer holds.
        let mut tampered = layer(&key, payload(repo, &digest(2)));
        tampered.payload = Ok(payload(repo, &digest(1)));
        assert_eq!(
            decide(&image(), &digest(1), &keys, &[tampered])
                .unwrap_err()
                .reason(),
            "SignatureInvalid"
        );
    }

    #[test]
    fn one_good_signature_among_bad_ones_verifies() {
        let (key, stranger) = (signer("k"), signer("s"));
        let repo = "r.example:5000/team/pool";
        let layers = [
            layer(&stranger, payload(repo, &digest(1))),
            layer(&key, payload(repo, &digest(9))),
            layer(&key, payload(repo, &digest(1))),
        ];
        assert_eq!(
            decide(
                &image(),
                &digest(1),
                std::slice::from_ref(&key.key),
                &layers
            )
            .unwrap(),
            key.key.pem
        );
    }
}
