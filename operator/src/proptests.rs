//! Property tests (proptest): no panic from any input, and the promises of
//! the pure code, over arbitrary specs — including the specs the CEL rules
//! refuse, which an object stored before a rule existed keeps (CEL
//! ratcheting).
//!
//! The strategies are built field by field from "realistic" and "garbage"
//! values, so that the interesting combinations (a Pool name with `--`, a
//! tier pointing at nothing, a CIDR with host bits, …) come up often; one
//! property also mutates serialized specs with arbitrary JSON.
//!
//! Cases: `PROPTEST_CASES` when set (for every property), otherwise each
//! property's default below: 100,000 for the Pool pipeline (about 50 s in
//! a debug build), 20,000 for the cheap properties, 5,000 for the JSON
//! one and for the key ring's sequences, so `cargo test -p cellule-operator --lib proptests` takes about
//! 70 s on 2 cores. Longer runs: `PROPTEST_CASES=1000000` (for every
//! property). Failures are not
//! persisted into the source tree; shrinking stops after 10,000 steps
//! (`PROPTEST_MAX_SHRINK_ITERS` overrides).

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
    sync::{Arc, LazyLock},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        core::v1::{ResourceRequirements, Toleration},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, LabelSelector, LabelSelectorRequirement, Time},
    },
};
use kube::api::ObjectMeta;
use proptest::{prelude::*, test_runner::RngAlgorithm};
use serde_json::{Value, json};

use crate::{
    api::{
        NpuServer, NpuServerSpec, NpuServerStatus, Pool, PoolSpec, WorkerGrant, WorkerGrantSpec,
        WorkerGrantStatus,
        common::{
            CommonStatus, CosignKeyRef, Duration, ImageVerification, KeyRef, LocalObjectRef,
            NetworkEndpoint, SignedImage,
        },
        npu_server::AcceleratorSpec,
        pool::{
            CpuWorkerSet, DatabaseSpec, DnsSpec, EgressRule, FailoverSpec, FederationSpec,
            ModelTier, PrivacyMode, PrivacySpec, RateLimitSpec, TierBackend, TokenPolicy,
            VerificationMode, VerificationSpec, WorkerNetworkSpec,
        },
        worker_grant::TokenStatus,
    },
    names,
    pool::{
        build, routing,
        validate::{self, Blocked, References},
    },
    reconcile::{MANAGER, labels, quantity},
    worker_grant::{Decision, decide},
};

// ------------------------------------------------------------------ config

/// Default cases of the main property (validate → route → build).
const POOL_CASES: u32 = 100_000;
/// Default cases of the cheaper properties.
const CHEAP_CASES: u32 = 20_000;
/// Default cases of the JSON mutation property (the costliest per case).
const JSON_CASES: u32 = 5_000;
/// Sequences of up to 40 ring reconciles (about 2.5 ms each in debug).
const RING_CASES: u32 = 5_000;

/// `PROPTEST_CASES` if set, else `default_cases`; no regression files are
/// written into the source tree.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let default = ProptestConfig::default();
    ProptestConfig {
        cases,
        failure_persistence: None,
        // ChaCha, the default, costs most of the time of a debug build:
        // the strategies fork an RNG for every branch not taken.
        rng_algorithm: RngAlgorithm::XorShift,
        // Automatic is 4 × cases: at most 10,000 unless
        // PROPTEST_MAX_SHRINK_ITERS says.
        max_shrink_iters: match default.max_shrink_iters {
            u32::MAX => cases.saturating_mul(4).min(10_000),
            set => set,
        },
        ..default
    }
}

const NS: &str = "site";
const UID: &str = "0000-uid";

// ----------------------------------------------------------- building blocks

fn strings(values: &[&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(values.to_vec())
        .prop_map(str::to_owned)
        .boxed()
}

const LOWER: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
const DIGITS: &str = "0123456789";

/// Strings of `len` characters of `alphabet`, drawn from a seed: two
/// value trees per string rather than one per character, which a debug
/// build needs to keep the case counts up. Seed 0 (where shrinking goes)
/// gives the first character repeated.
fn word(alphabet: &'static str, len: RangeInclusive<usize>) -> BoxedStrategy<String> {
    let chars: Vec<char> = alphabet.chars().collect();
    (len, any::<u64>())
        .prop_map(move |(n, seed)| {
            (0..n)
                .map(|i| chars[(mix(seed, i) % chars.len() as u64) as usize])
                .collect()
        })
        .boxed()
}

/// Any characters: ASCII, control characters, the rest of the BMP and
/// beyond (seeded as [`word`]).
fn unicode(len: RangeInclusive<usize>) -> BoxedStrategy<String> {
    (len, any::<u64>())
        .prop_map(|(n, seed)| {
            (0..n)
                .map(|i| {
                    let x = mix(seed, i);
                    let code = match x % 4 {
                        0 => 0x20 + (x >> 8) % 0x5f,
                        1 => (x >> 8) % 0x20,
                        2 => (x >> 8) % 0x1_0000,
                        _ => (x >> 8) % 0x11_0000,
                    };
                    char::from_u32(code as u32).unwrap_or('\u{fffd}')
                })
                .collect()
        })
        .boxed()
}

/// A deterministic mix of a seed and a position (splitmix64); 0 for seed 0.
fn mix(seed: u64, i: usize) -> u64 {
    if seed == 0 {
        return 0;
    }
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `first`, then `more` times a separator of `seps` and a `part`.
fn joined(
    first: BoxedStrategy<String>,
    seps: &'static [&'static str],
    part: BoxedStrategy<String>,
    more: RangeInclusive<usize>,
) -> BoxedStrategy<String> {
    (
        first,
        prop::collection::vec((prop::sample::select(seps), part), more),
    )
        .prop_map(|(first, rest)| {
            rest.into_iter()
                .fold(first, |name, (sep, part)| name + sep + &part)
        })
        .boxed()
}

/// Names the API server would refuse for most objects, or that the CEL
/// name rule refuses: empty, `--`, too long, upper case, dots, leading or
/// trailing `-`, unicode.
fn garbage_name() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        joined(word(LOWER, 1..=5), &["--"], word(LOWER, 1..=5), 1..=1),
        word(LOWER, 41..=70),
        word("ABCXYZabcxyz019", 1..=10),
        joined(word(LOWER, 1..=5), &["."], word(LOWER, 1..=5), 1..=2),
        word(LOWER, 0..=5).prop_map(|w| format!("-{w}")),
        word(LOWER, 0..=5).prop_map(|w| format!("{w}-")),
        unicode(0..=12),
    ]
    .boxed()
}

/// A Pool name the CEL rule accepts: a DNS label of at most 40 characters
/// without `--`.
fn valid_pool_name() -> BoxedStrategy<String> {
    let tag = || {
        strings(&[
            "paris", "pool", "npu", "token", "config", "deny", "keys", "a",
        ])
    };
    prop_oneof![
        4 => joined(word(LOWER, 1..=8), &["-"], word(LOWER, 1..=8), 0..=3),
        1 => (word(LOWER, 19..=19), word(LOWER, 20..=20)).prop_map(|(a, b)| format!("{a}-{b}")),
        1 => joined(tag(), &["-"], tag(), 0..=3),
    ]
    .boxed()
}

fn pool_name() -> BoxedStrategy<String> {
    prop_oneof![3 => valid_pool_name(), 1 => garbage_name()].boxed()
}

/// A CPU worker set name: the CRD's DNS label of at most 21 characters
/// (which may contain `--`), tag-like names, or garbage.
fn set_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => joined(word(LOWER, 1..=5), &["-", "--"], word(LOWER, 1..=5), 0..=2),
        1 => word(LOWER, 21..=21),
        1 => strings(&["pool", "npu", "token", "config", "light-workers", "default-deny"]),
        1 => garbage_name(),
    ]
    .boxed()
}

fn tier_name() -> BoxedStrategy<String> {
    prop_oneof![4 => strings(&["light", "heavy", "mid", "x"]), 1 => garbage_name()].boxed()
}

fn npu_name() -> BoxedStrategy<String> {
    prop_oneof![3 => strings(&["heavy", "npu-a", "npu-b"]), 1 => garbage_name()].boxed()
}

fn secret_name() -> BoxedStrategy<String> {
    prop_oneof![3 => strings(&["paris-db", "paris-tls", "other"]), 1 => garbage_name()].boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![3 => word("abcxyz019-", 1..=20), 1 => unicode(0..=20)].boxed()
}

fn label_map() -> BoxedStrategy<BTreeMap<String, String>> {
    let key = prop_oneof![
        3 => strings(&["app", "k8s-app", "kubernetes.io/metadata.name", "app.kubernetes.io/name"]),
        1 => unicode(0..=10),
    ];
    let value = prop_oneof![
        3 => strings(&["kube-dns", "kube-system", "postgresql", ""]),
        1 => unicode(0..=10),
    ];
    prop::collection::btree_map(key, value, 0..3).boxed()
}

fn label_selector() -> BoxedStrategy<LabelSelector> {
    let requirement = (
        unicode(0..=8),
        strings(&["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]),
        prop::option::of(prop::collection::vec(unicode(0..=5), 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        });
    (
        prop::option::of(label_map()),
        prop::option::of(prop::collection::vec(requirement, 0..2)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
        .boxed()
}

fn cidr() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("10.{a}.{b}.0/24")),
        1 => strings(&["169.254.20.10/32", "fd00:10::/64", "10.50.0.0/16"]),
        2 => strings(&[
            "0.0.0.0/0", "::/0", "10.20.0.1/16", "10.0.0.0/33", "300.1.1.1/8", "",
            "10.0.0.0", "not-a-cidr", "10.0.0.0/-1", "fd00::1/64",
        ]),
        1 => unicode(0..=20),
    ]
    .boxed()
}

fn port() -> BoxedStrategy<i32> {
    prop_oneof![
        4 => 1..=65535i32,
        1 => prop::sample::select(vec![0, -1, 65536, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
    .boxed()
}

/// Replicas and other counts: in range, at the edges, or anything.
fn count() -> BoxedStrategy<i32> {
    prop_oneof![
        4 => 0..=10i32,
        1 => prop::sample::select(vec![-1, 0, 64, 100, 101, i32::MAX, i32::MIN]),
        1 => any::<i32>(),
    ]
    .boxed()
}

/// Any value a `Duration` can hold once parsed: realistic, at the CEL
/// bounds, sub-second, and as large as kube's parser can make
/// (`5124095576030431h` is about `u64::MAX` seconds).
fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u64, 1, 30, 60, 300, 600, 1800, 3600, 86_400, 720 * 3600, 2160 * 3600, 8760 * 3600,
        ])
        .prop_map(Duration::from_secs),
        2 => (0u64..=10 * 8760 * 3600).prop_map(Duration::from_secs),
        1 => (0u64..10_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| Duration(std::time::Duration::new(s, n))),
        1 => prop::sample::select(vec![i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX])
            .prop_map(Duration::from_secs),
        1 => any::<u64>().prop_map(Duration::from_secs),
    ]
    .boxed()
}

/// Quantities the API server writes: `500m`, `2`, `1.5Gi`, `-3k`.
fn well_formed_quantity() -> BoxedStrategy<String> {
    (
        strings(&["", "", "+", "-"]),
        word(DIGITS, 1..=4),
        prop::option::of(word(DIGITS, 1..=3)),
        strings(&["", "m", "k", "M", "G", "Ki", "Mi", "Gi"]),
    )
        .prop_map(|(sign, whole, fraction, suffix)| {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{sign}{whole}{fraction}{suffix}")
        })
        .boxed()
}

/// Strings for quantities: well formed, out of the parser's range,
/// malformed.
fn quantity_string() -> BoxedStrategy<String> {
    let suffix = prop_oneof![
        3 => strings(&[
            "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]),
        1 => (
            strings(&["e", "E"]),
            prop_oneof![-20..=20i64, any::<i32>().prop_map(i64::from), any::<i64>()],
        )
            .prop_map(|(e, n)| format!("{e}{n}")),
    ];
    let long = (
        strings(&["", "+", "-"]),
        word(DIGITS, 0..=35),
        prop::option::of(word(DIGITS, 0..=35)),
        suffix,
    )
        .prop_map(|(sign, whole, fraction, suffix)| {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{sign}{whole}{fraction}{suffix}")
        });
    prop_oneof![
        3 => well_formed_quantity(),
        2 => long,
        1 => strings(&[
            "4GB", "1e2147483647", "10e2147483647", "1e-2147483648", "0.1e-2147483648",
            "", "-", ".", "1Ei", "99999999999999999999999999999Ei",
        ]),
        1 => unicode(0..=12),
    ]
    .boxed()
}

fn resource_list() -> BoxedStrategy<Option<BTreeMap<String, Quantity>>> {
    let name = prop_oneof![
        3 => strings(&["cpu", "memory", "ephemeral-storage", "cellule.ai/npu"]),
        1 => unicode(0..=8),
    ];
    prop::option::of(prop::collection::btree_map(
        name,
        quantity_string().prop_map(Quantity),
        0..3,
    ))
    .boxed()
}

fn resources() -> BoxedStrategy<Option<ResourceRequirements>> {
    prop::option::of(
        (resource_list(), resource_list()).prop_map(|(limits, requests)| ResourceRequirements {
            limits,
            requests,
            ..Default::default()
        }),
    )
    .boxed()
}

fn key_ref() -> BoxedStrategy<KeyRef> {
    (
        secret_name(),
        prop_oneof![3 => strings(&["dsn", "cosign.pub"]), 1 => text()],
    )
        .prop_map(|(name, key)| KeyRef { name, key })
        .boxed()
}

fn signed_image() -> BoxedStrategy<SignedImage> {
    let reference = prop_oneof![
        3 => strings(&[
            "registry.intra.example.com/cellule/pool:1.4.2",
            "registry.local/npu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ]),
        1 => text(),
    ];
    let key = (prop::option::of(key_ref()), prop::option::of(key_ref())).prop_map(
        |(secret_key_ref, config_map_key_ref)| CosignKeyRef {
            secret_key_ref,
            config_map_key_ref,
        },
    );
    (
        reference,
        prop::collection::vec(key, 0..3),
        prop::collection::vec(
            garbage_or(secret_name()).prop_map(|name| LocalObjectRef { name }),
            0..2,
        ),
    )
        .prop_map(|(reference, keys, pull_secrets)| SignedImage {
            reference,
            verification: ImageVerification { keys },
            pull_secrets,
            refresh_interval: Duration::from_secs(300),
        })
        .boxed()
}

fn garbage_or(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![3 => s, 1 => garbage_name()].boxed()
}

fn endpoint() -> BoxedStrategy<NetworkEndpoint> {
    (
        prop::option::of(label_selector()),
        prop::option::of(label_selector()),
        prop::option::of(cidr()),
        port(),
    )
        .prop_map(
            |(pod_selector, namespace_selector, cidr, port)| NetworkEndpoint {
                pod_selector,
                namespace_selector,
                cidr,
                port,
            },
        )
        .boxed()
}

fn model_tier() -> BoxedStrategy<ModelTier> {
    (
        tier_name(),
        text(),
        prop_oneof![Just(TierBackend::Cpu), Just(TierBackend::Npu)],
        prop::option::of(npu_name().prop_map(|name| LocalObjectRef { name })),
        prop::option::of(tier_name()),
    )
        .prop_map(
            |(name, model, backend, npu_server_ref, fallback_tier)| ModelTier {
                name,
                model,
                backend,
                npu_server_ref,
                fallback_tier,
            },
        )
        .boxed()
}

fn cpu_worker_set() -> BoxedStrategy<CpuWorkerSet> {
    (
        set_name(),
        tier_name(),
        signed_image(),
        count(),
        resources(),
    )
        .prop_map(|(name, tier, image, replicas, resources)| CpuWorkerSet {
            name,
            tier,
            image,
            replicas,
            resources,
        })
        .boxed()
}

fn dns() -> BoxedStrategy<DnsSpec> {
    let any_dns = (
        label_map(),
        label_map(),
        prop::collection::vec(cidr(), 0..3),
        prop::collection::vec(port(), 0..4),
    )
        .prop_map(|(namespace_labels, pod_labels, cidrs, ports)| DnsSpec {
            namespace_labels,
            pod_labels,
            cidrs,
            ports,
        });
    prop_oneof![1 => Just(DnsSpec::default()), 3 => any_dns].boxed()
}

fn egress_rule() -> BoxedStrategy<EgressRule> {
    (
        prop_oneof![3 => strings(&["siem", "backup", "x"]), 1 => garbage_name()],
        cidr(),
        port(),
    )
        .prop_map(|(name, cidr, port)| EgressRule { name, cidr, port })
        .boxed()
}

fn percent() -> BoxedStrategy<i32> {
    prop_oneof![4 => 0..=100i32, 1 => any::<i32>()].boxed()
}

fn settings() -> BoxedStrategy<(
    VerificationSpec,
    PrivacySpec,
    RateLimitSpec,
    FederationSpec,
    WorkerNetworkSpec,
)> {
    let verification = (
        percent(),
        percent(),
        prop_oneof![
            Just(VerificationMode::Sampled),
            Just(VerificationMode::Required)
        ],
        count(),
        any::<bool>(),
    )
        .prop_map(
            |(
                spot_check_percent,
                cheat_threshold_percent,
                mode,
                workers_per_request,
                deterministic,
            )| {
                VerificationSpec {
                    spot_check_percent,
                    cheat_threshold_percent,
                    mode,
                    workers_per_request,
                    deterministic,
                }
            },
        );
    let privacy = prop_oneof![Just(PrivacyMode::Balanced), Just(PrivacyMode::Paranoid)]
        .prop_map(|mode| PrivacySpec { mode });
    let rate_limit = count().prop_map(|requests_per_minute_per_signer| RateLimitSpec {
        requests_per_minute_per_signer,
    });
    let federation = (
        prop::option::of(garbage_or(strings(&["paris", "lyon"]))),
        duration(),
        prop::collection::vec(text(), 0..2),
    )
        .prop_map(
            |(site, anti_replay_window, admin_public_keys)| FederationSpec {
                site,
                anti_replay_window,
                admin_public_keys,
                ..FederationSpec::default()
            },
        );
    let workers = (prop::collection::vec(cidr(), 0..4), port(), duration()).prop_map(
        |(allowed_cidrs, port, heartbeat_interval)| WorkerNetworkSpec {
            allowed_cidrs,
            port,
            heartbeat_interval,
        },
    );
    (verification, privacy, rate_limit, federation, workers).boxed()
}

fn token_policy() -> BoxedStrategy<TokenPolicy> {
    (
        duration(),
        duration(),
        prop::option::of(duration()),
        any::<bool>(),
        duration(),
        any::<i64>(),
    )
        .prop_map(
            |(
                default_ttl,
                max_ttl,
                renew_before,
                approval_required,
                signing_key_rotation,
                signing_key_generation,
            )| TokenPolicy {
                default_ttl,
                max_ttl,
                renew_before,
                approval_required,
                signing_key_rotation,
                signing_key_generation,
                signing_key_pre_publication: Duration::from_secs(300),
                compromised_keys: Vec::new(),
            },
        )
        .boxed()
}

fn pool_spec() -> BoxedStrategy<PoolSpec> {
    let core = (
        signed_image(),
        count(),
        (key_ref(), endpoint()),
        secret_name(),
        prop::collection::vec(model_tier(), 0..5),
        prop::collection::vec(cpu_worker_set(), 0..4),
    );
    let rest = (
        settings(),
        token_policy(),
        (duration(), duration()),
        dns(),
        prop::collection::vec(egress_rule(), 0..4),
    );
    (core, rest)
        .prop_map(
            |(
                (image, replicas, (dsn_secret_ref, endpoint), tls, tiers, cpu_workers),
                (
                    (verification, privacy, rate_limit, federation, workers),
                    tokens,
                    (fail_over_after, fail_back_after),
                    dns,
                    extra_egress,
                ),
            )| PoolSpec {
                image,
                replicas,
                database: DatabaseSpec {
                    dsn_secret_ref,
                    endpoint,
                },
                tls: LocalObjectRef { name: tls },
                tiers,
                cpu_workers,
                verification,
                privacy,
                rate_limit,
                federation,
                workers,
                tokens,
                failover: FailoverSpec {
                    fail_over_after,
                    fail_back_after,
                },
                dns,
                extra_egress,
            },
        )
        .boxed()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        uid: Some(UID.into()),
        ..Default::default()
    }
}

fn pool_object(name: &str, spec: PoolSpec) -> Pool {
    Pool {
        metadata: meta(name),
        spec,
        status: None,
    }
}

// ------------------------------------------------------------- references

/// An NpuServer the fake caches hold.
#[derive(Clone, Debug)]
struct FakeNpu {
    /// Belongs to the pool under test (else to Pool `other`).
    own_pool: bool,
    /// Its `Healthy` condition's status, if it has one.
    healthy: Option<&'static str>,
    port: i32,
}

/// The caches as a property wants them.
#[derive(Clone, Debug)]
struct Refs {
    /// `None`: every Secret exists.
    secrets: Option<BTreeSet<String>>,
    npus: BTreeMap<String, FakeNpu>,
    pool: String,
}

impl References for Refs {
    fn secret_exists(&self, name: &str) -> bool {
        self.secrets.as_ref().is_none_or(|s| s.contains(name))
    }

    fn npu_server(&self, name: &str) -> Option<Arc<NpuServer>> {
        let fake = self.npus.get(name)?;
        let pool = if fake.own_pool { &self.pool } else { "other" };
        Some(Arc::new(npu_object(name, pool, fake.healthy, fake.port)))
    }
}

fn npu_object(name: &str, pool: &str, healthy: Option<&str>, port: i32) -> NpuServer {
    let conditions = healthy
        .map(|status| Condition {
            type_: crate::npu_server::HEALTHY.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        })
        .into_iter()
        .collect();
    NpuServer {
        metadata: meta(name),
        spec: NpuServerSpec {
            pool_ref: LocalObjectRef { name: pool.into() },
            image: SignedImage::default(),
            model: "m".into(),
            accelerator: AcceleratorSpec::default(),
            replicas: 1,
            hot_spares: 0,
            min_healthy_replicas: 1,
            port,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            resources: None,
        },
        status: Some(NpuServerStatus {
            common: CommonStatus {
                observed_generation: None,
                conditions,
            },
            ..Default::default()
        }),
    }
}

/// The caches, for a pool whose name is filled in later.
fn refs() -> BoxedStrategy<Refs> {
    let secrets = prop_oneof![
        3 => Just(None),
        1 => prop::collection::btree_set(strings(&["paris-db", "paris-tls", "other"]), 0..3)
            .prop_map(Some),
    ];
    let npu = (
        prop::bool::weighted(0.8),
        prop::sample::select(vec![None, Some("True"), Some("False"), Some("Unknown")]),
        port(),
    )
        .prop_map(|(own_pool, healthy, port)| FakeNpu {
            own_pool,
            healthy,
            port,
        });
    (secrets, prop::collection::btree_map(npu_name(), npu, 0..4))
        .prop_map(|(secrets, npus)| Refs {
            secrets,
            npus,
            pool: String::new(),
        })
        .boxed()
}

fn pool_and_refs() -> BoxedStrategy<(Pool, Refs)> {
    (pool_name(), pool_spec(), refs())
        .prop_map(|(name, spec, refs)| {
            let refs = Refs {
                pool: name.clone(),
                ..refs
            };
            (pool_object(&name, spec), refs)
        })
        .boxed()
}

// --------------------------------------------------------------- checks

/// What the CEL rule on `metadata.name` of a Pool or an NpuServer accepts.
fn cel_name_ok(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.contains("--")
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn cel_pool_name_ok(name: &str) -> bool {
    cel_name_ok(name, names::POOL_NAME_MAX)
}

fn pascal_case(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn check_blocked(blocked: &Blocked) -> Result<(), TestCaseError> {
    prop_assert!(
        pascal_case(blocked.reason()),
        "reason {:?} is not PascalCase",
        blocked.reason()
    );
    prop_assert!(
        !blocked.message().is_empty(),
        "empty message for {blocked:?}"
    );
    Ok(())
}

/// A peer that is neither pods nor an IP range would select far more than
/// meant (a namespace selector alone: every pod of those namespaces).
fn check_peers(policy: &str, peers: Option<&Vec<NetworkPolicyPeer>>) -> Result<(), TestCaseError> {
    let peers = peers.map(Vec::as_slice).unwrap_or_default();
    prop_assert!(
        !peers.is_empty(),
        "{policy}: a rule without peers allows every peer"
    );
    for peer in peers {
        prop_assert!(
            peer.pod_selector.is_some() || peer.ip_block.is_some(),
            "{policy}: a peer with neither pods nor an IP range: {peer:?}"
        );
    }
    Ok(())
}

fn check_policy(policy: &NetworkPolicy) -> Result<(), TestCaseError> {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = policy.spec.as_ref() else {
        return Err(TestCaseError::fail(format!("{name}: no spec")));
    };
    prop_assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..]),
        "{}: policyTypes",
        name
    );
    prop_assert!(
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .is_some_and(|l| !l.is_empty()),
        "{name}: the policy must select pods by label, not every pod"
    );
    for rule in spec.egress.iter().flatten() {
        check_peers(name, rule.to.as_ref())?;
        prop_assert!(
            rule.ports.as_ref().is_some_and(|p| !p.is_empty()),
            "{name}: an egress rule without ports allows every port"
        );
    }
    for rule in spec.ingress.iter().flatten() {
        check_peers(name, rule.from.as_ref())?;
        prop_assert!(
            rule.ports.as_ref().is_some_and(|p| !p.is_empty()),
            "{name}: an ingress rule without ports allows every port"
        );
    }
    Ok(())
}

/// Ownership labels, namespace, owner reference, and one name per kind.
fn check_owned(
    kind: &str,
    meta: &ObjectMeta,
    seen: &mut BTreeSet<(String, String)>,
    max_len: Option<usize>,
) -> Result<(), TestCaseError> {
    let name = meta.name.clone().unwrap_or_default();
    prop_assert!(!name.is_empty(), "{kind} without a name");
    if let Some(max) = max_len {
        prop_assert!(
            name.len() <= max,
            "{kind} {name:?} is longer than {max} characters"
        );
    }
    prop_assert!(
        seen.insert((kind.to_owned(), name.clone())),
        "two {kind}s named {name:?}"
    );
    let labels = meta.labels.clone().unwrap_or_default();
    prop_assert_eq!(
        labels.get(labels::OWNER_UID).map(String::as_str),
        Some(UID),
        "{} {}: owner-uid label",
        kind,
        name
    );
    prop_assert_eq!(
        labels.get(labels::MANAGED_BY).map(String::as_str),
        Some(MANAGER),
        "{} {}: managed-by label",
        kind,
        name
    );
    prop_assert_eq!(meta.namespace.as_deref(), Some(NS));
    prop_assert!(
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == UID && r.controller == Some(true)),
        "{kind} {name}: no controller owner reference"
    );
    Ok(())
}

/// Property 1: validate, then (when valid) route and build, and check the
/// desired objects.
fn check_pool_pipeline(pool: &Pool, refs: &Refs) -> Result<(), TestCaseError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let spec = &pool.spec;
    match validate::validate(pool, refs) {
        Err(blocked) => {
            check_blocked(&blocked)?;
            if !cel_pool_name_ok(&name) {
                prop_assert_eq!(blocked.reason(), "InvalidName");
            }
            if let Blocked::SecretMissing { name, .. } = &blocked {
                prop_assert!(!refs.secret_exists(name), "Secret {name:?} exists");
            }
        }
        Ok(valid) => {
            prop_assert!(
                cel_pool_name_ok(&name),
                "invalid Pool name {name:?} accepted"
            );
            for set in &spec.cpu_workers {
                prop_assert!(
                    !set.name.is_empty() && set.name.len() <= names::CPU_WORKER_SET_MAX,
                    "invalid set name {:?} accepted",
                    set.name
                );
            }
            let endpoint = &spec.database.endpoint;
            prop_assert!(endpoint.pod_selector.is_some() || endpoint.cidr.is_some());
            prop_assert!(refs.secret_exists(&spec.tls.name));
            prop_assert!(refs.secret_exists(&spec.database.dsn_secret_ref.name));

            let routing = routing::route(
                routing::Scope::of(&valid),
                &routing::Observed::default(),
                &[],
                1_800_000_000,
            );
            prop_assert_eq!(
                routing
                    .tiers()
                    .into_iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>(),
                spec.tiers
                    .iter()
                    .map(|t| t.name.clone())
                    .collect::<Vec<_>>()
            );
            // Some images refused (which ones depends on the generated
            // names): their Deployments are neither rendered nor pruned.
            let mut running = crate::pool::all_verified(pool);
            let refused: Vec<String> = running
                .0
                .keys()
                .filter(|name| name.len() % 3 == 0)
                .cloned()
                .collect();
            for name in &refused {
                running.0.remove(name);
            }
            let desired = build::desired(&valid, &routing, &running);
            prop_assert_eq!(
                desired.kept.len() + desired.deployments.len(),
                1 + spec.cpu_workers.len()
            );
            for deployment in &desired.deployments {
                prop_assert!(
                    !desired
                        .kept
                        .contains(deployment.metadata.name.as_ref().unwrap())
                );
                let pod = deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .unwrap();
                for container in &pod.containers {
                    let image = container.image.as_deref().unwrap_or_default();
                    prop_assert!(
                        image.contains("@sha256:"),
                        "a tag reached a pod spec: {image}"
                    );
                }
            }
            let mut seen = BTreeSet::new();
            // The pool name passed validation, so every name is a DNS label.
            let max = Some(63);
            for (kind, meta) in desired.metadata() {
                check_owned(kind, meta, &mut seen, max)?;
            }
            for p in &desired.network_policies {
                check_policy(p)?;
            }
        }
    }
    Ok(())
}

fn npu_spec() -> BoxedStrategy<NpuServerSpec> {
    let accelerator = (
        prop_oneof![3 => strings(&["cellule.ai/npu", "amd.com/gpu"]), 1 => text()],
        count(),
    )
        .prop_map(|(resource_name, count)| AcceleratorSpec {
            resource_name,
            count,
        });
    let toleration = (
        prop::option::of(text()),
        prop::option::of(strings(&["Exists", "Equal", "Bogus"])),
        prop::option::of(text()),
        prop::option::of(strings(&["NoSchedule", "NoExecute", "Bogus"])),
        prop::option::of(any::<i64>()),
    )
        .prop_map(
            |(key, operator, value, effect, toleration_seconds)| Toleration {
                key,
                operator,
                value,
                effect,
                toleration_seconds,
            },
        );
    (
        (pool_name(), signed_image(), text(), accelerator),
        (count(), count(), count(), port()),
        (
            label_map(),
            prop::collection::vec(toleration, 0..2),
            resources(),
        ),
    )
        .prop_map(
            |(
                (pool, image, model, accelerator),
                (replicas, hot_spares, min_healthy_replicas, port),
                (node_selector, tolerations, resources),
            )| NpuServerSpec {
                pool_ref: LocalObjectRef { name: pool },
                image,
                model,
                accelerator,
                replicas,
                hot_spares,
                min_healthy_replicas,
                port,
                node_selector,
                tolerations,
                resources,
            },
        )
        .boxed()
}

fn npu_server() -> BoxedStrategy<NpuServer> {
    (garbage_or(npu_name()), npu_spec())
        .prop_map(|(name, spec)| NpuServer {
            metadata: meta(&name),
            spec,
            status: None,
        })
        .boxed()
}

/// Property 3: the NpuServer's objects.
fn check_npu(npu: &NpuServer, dns: &DnsSpec) -> Result<(), TestCaseError> {
    let image = crate::images::test_image(&npu.spec.image.reference);
    let desired = crate::npu_server::desired(npu, dns, Some(&image));
    prop_assert!(
        crate::npu_server::desired(npu, dns, None)
            .deployment
            .is_none()
    );
    let deployment = desired
        .deployment
        .as_ref()
        .expect("a verified image renders a Deployment");
    let name = npu.metadata.name.as_deref().unwrap_or_default();
    // A name the CEL rule accepts makes names that are DNS labels.
    let max = (cel_name_ok(name, names::NPU_SERVER_NAME_MAX)).then_some(63);
    let mut seen = BTreeSet::new();
    check_owned("Deployment", &deployment.metadata, &mut seen, max)?;
    check_owned("Service", &desired.service.metadata, &mut seen, max)?;
    check_owned(
        "NetworkPolicy",
        &desired.network_policy.metadata,
        &mut seen,
        max,
    )?;
    check_policy(&desired.network_policy)?;
    let spec = &npu.spec;
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
    // Serving replicas plus hot spares (saturating: a stored object may
    // hold values admission refuses).
    prop_assert_eq!(
        replicas,
        Some(spec.replicas.saturating_add(spec.hot_spares))
    );
    let limits = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers[0].resources.as_ref())
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    prop_assert_eq!(
        limits.get(&spec.accelerator.resource_name),
        Some(&Quantity(spec.accelerator.count.to_string()))
    );
    Ok(())
}

// ------------------------------------------------------------- grants

/// Seconds in the range a `Timestamp` (and so `Time`) can hold.
fn seconds() -> BoxedStrategy<i64> {
    let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    prop_oneof![
        3 => 1_700_000_000i64..2_100_000_000,
        1 => min..=max,
        1 => prop::sample::select(vec![min, max, 0, -1]),
    ]
    .boxed()
}

fn time() -> BoxedStrategy<Time> {
    seconds()
        .prop_map(|s| Time(Timestamp::from_second(s).unwrap()))
        .boxed()
}

fn token_status() -> BoxedStrategy<TokenStatus> {
    (
        time(),
        time(),
        prop::option::of(prop::collection::vec(tier_name(), 0..3)),
    )
        .prop_map(|(issued_at, expires_at, tiers)| TokenStatus {
            secret_name: "g-token".into(),
            jti: "j".into(),
            key_id: "k".into(),
            sha256: "s".into(),
            issued_at,
            expires_at,
            tiers,
        })
        .boxed()
}

fn grant_spec() -> BoxedStrategy<WorkerGrantSpec> {
    (
        (
            pool_name(),
            text(),
            text(),
            prop::collection::vec(tier_name(), 0..4),
        ),
        (prop::option::of(duration()), prop::option::of(time())),
        (text(), prop::option::of(text())),
        (any::<bool>(), any::<bool>(), any::<i64>()),
    )
        .prop_map(
            |(
                (pool, worker_id, owner, tiers),
                (ttl, expires_at),
                (requested_by, approved_by),
                (suspended, revoked, rotation),
            )| WorkerGrantSpec {
                pool_ref: LocalObjectRef { name: pool },
                worker_id,
                owner,
                tiers,
                ttl,
                expires_at,
                requested_by,
                approved_by,
                suspended,
                revoked,
                rotation,
            },
        )
        .boxed()
}

fn grant() -> BoxedStrategy<WorkerGrant> {
    (
        garbage_or(strings(&["laptop-alice", "g"])),
        grant_spec(),
        prop::option::of(prop::option::of(any::<i64>())),
    )
        .prop_map(|(name, spec, observed)| WorkerGrant {
            metadata: meta(&name),
            spec,
            status: observed.map(|observed_rotation| WorkerGrantStatus {
                observed_rotation,
                ..Default::default()
            }),
        })
        .boxed()
}

/// A Pool as `decide` reads it: its tiers and its token policy (the rest
/// is the sample's, since `decide` does not look at it).
fn decide_pool() -> BoxedStrategy<Pool> {
    static SAMPLE: LazyLock<Pool> = LazyLock::new(sample_pool);
    let tier = tier_name().prop_map(|name| ModelTier {
        name,
        ..ModelTier::default()
    });
    (
        pool_name(),
        prop::collection::vec(tier, 0..4),
        token_policy(),
    )
        .prop_map(|(name, tiers, tokens)| {
            let mut pool = SAMPLE.clone();
            pool.metadata.name = Some(name);
            pool.spec.tiers = tiers;
            pool.spec.tokens = tokens;
            pool
        })
        .boxed()
}

fn decide_inputs() -> BoxedStrategy<(WorkerGrant, Pool, Option<TokenStatus>, i64)> {
    (
        grant(),
        decide_pool(),
        prop::option::of(token_status()),
        seconds(),
    )
        .boxed()
}

/// Property 5 (first part): `decide` gives a decision that keeps its promises.
fn check_decide(
    grant: &WorkerGrant,
    pool: &Pool,
    token: Option<&TokenStatus>,
    key_published: bool,
    now: i64,
) -> Result<(), TestCaseError> {
    let decision = decide(grant, pool, token, key_published, now);
    let end = grant.spec.expires_at.as_ref().map(|t| t.0.as_second());
    match &decision {
        Decision::Invalid { reason, message } => {
            prop_assert!(pascal_case(reason), "reason {reason:?}");
            prop_assert!(!message.is_empty());
        }
        Decision::Issue { exp, why } => {
            prop_assert!(pascal_case(why));
            prop_assert!(!grant.spec.revoked && !grant.spec.suspended);
            if let Some(end) = end {
                prop_assert!(*exp <= end, "exp {exp} past expiresAt {end}");
            }
        }
        Decision::Keep { renew_at } => {
            prop_assert!(token.is_some(), "Keep without a token");
            prop_assert!(key_published, "Keep a token whose key is unpublished");
            prop_assert!(*renew_at > now, "Keep until {renew_at}, now is {now}");
        }
        Decision::Revoked => prop_assert!(grant.spec.revoked),
        Decision::Expired => prop_assert!(end.is_some_and(|end| end <= now)),
        Decision::Suspended => prop_assert!(grant.spec.suspended),
        Decision::PendingApproval => prop_assert!(grant.spec.approved_by.is_none()),
    }
    Ok(())
}

// --------------------------------------------------------------- names

/// Owner names made of few letters and the fixed tags, so that derived
/// names have every chance to collide: DNS labels without `--`.
fn tag_name() -> BoxedStrategy<String> {
    joined(
        strings(&["a", "b", "ab", "ba"]),
        &["-"],
        strings(&[
            "pool",
            "npu",
            "token",
            "config",
            "routing",
            "jwks",
            "revocations",
            "signing",
            "keys",
            "default",
            "deny",
            "a",
            "b",
            "ab",
        ]),
        0..=3,
    )
}

/// A set name: a DNS label that may contain `--` (the CRD allows it), or
/// what `validate` lets through (a leading `-`).
fn tag_set_name() -> BoxedStrategy<String> {
    (
        any::<bool>(),
        joined(
            strings(&["a", "b", "ab"]),
            &["-", "--"],
            strings(&[
                "pool", "npu", "token", "config", "routing", "deny", "keys", "a", "b",
            ]),
            0..=3,
        ),
    )
        .prop_map(|(dash, name)| if dash { format!("-{name}") } else { name })
        .boxed()
}

/// A WorkerGrant name: any DNS subdomain (dots, `--`).
fn subdomain_name() -> BoxedStrategy<String> {
    joined(
        strings(&["a", "b", "ab"]),
        &["-", ".", "--", "-.", ".-"],
        strings(&["pool", "signing", "keys", "token", "a", "b"]),
        0..=3,
    )
}

/// Every name the owners derive, with who wants it and for which kinds.
fn derived_names(
    pools: &BTreeMap<String, BTreeSet<String>>,
    npus: &BTreeSet<String>,
    grants: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (pool, sets) in pools {
        for (role, f) in [
            ("pool", names::pool as fn(&str) -> String),
            ("default-deny", names::default_deny),
            ("config", names::config),
            ("routing", names::routing),
            ("jwks", names::jwks),
            ("signing-keys", names::signing_keys),
        ] {
            out.push((f(pool), format!("Pool {pool} {role}")));
        }
        // Sets and tiers of one pool never share a name (admission): the
        // distinct names generated are dealt to one or the other.
        for (i, name) in sets.iter().enumerate() {
            out.push(if i % 2 == 0 {
                (
                    names::cpu_workers(pool, name),
                    format!("Pool {pool} set {name}"),
                )
            } else {
                (names::tier(pool, name), format!("Pool {pool} tier {name}"))
            });
        }
    }
    for npu in npus {
        out.push((names::npu_server(npu), format!("NpuServer {npu}")));
    }
    for grant in grants {
        out.push((names::token(grant), format!("WorkerGrant {grant}")));
    }
    out
}

fn check_distinct(names: Vec<(String, String)>) -> Result<(), TestCaseError> {
    let mut seen = BTreeMap::new();
    for (name, owner) in names {
        if let Some(other) = seen.insert(name.clone(), owner.clone()) {
            prop_assert!(false, "{name:?} is wanted by {other} and by {owner}");
        }
    }
    Ok(())
}

// ----------------------------------------------------------- JSON mutation

/// Arbitrary JSON, with strings that look like durations and quantities.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        unicode(0..=12).prop_map(Value::from),
        duration_string().prop_map(Value::from),
        quantity_string().prop_map(Value::from),
        cidr().prop_map(Value::from),
        garbage_name().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(word("abcXYZ", 1..=10), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Strings for a `Duration` field: Go-style durations, well formed or not.
fn duration_string() -> BoxedStrategy<String> {
    let simple = (
        word(DIGITS, 1..=4),
        strings(&["h", "m", "s", "ms"]),
        prop::option::of((word(DIGITS, 1..=2), strings(&["m", "s"]))),
    )
        .prop_map(|(n, unit, more)| {
            let more = more
                .map(|(n, unit)| format!("{n}{unit}"))
                .unwrap_or_default();
            format!("{n}{unit}{more}")
        });
    let part = (
        strings(&["", "", "+", "-"]),
        word(DIGITS, 1..=22),
        prop::option::of(word(DIGITS, 1..=3)),
        strings(&["ns", "us", "\u{b5}s", "ms", "s", "m", "h", "d", ""]),
    )
        .prop_map(|(sign, whole, fraction, unit)| {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{sign}{whole}{fraction}{unit}")
        });
    prop_oneof![
        3 => simple,
        1 => prop::collection::vec(part, 1..=3).prop_map(|parts| parts.concat()),
        1 => unicode(0..=32),
    ]
    .boxed()
}

const POOL_PATHS: &[&str] = &[
    "image",
    "image.reference",
    "image.verification.keys",
    "replicas",
    "database",
    "database.endpoint",
    "database.endpoint.cidr",
    "database.endpoint.podSelector",
    "database.endpoint.namespaceSelector",
    "database.endpoint.port",
    "database.dsnSecretRef",
    "tls.name",
    "tiers",
    "tiers.0",
    "tiers.0.name",
    "tiers.0.backend",
    "tiers.0.npuServerRef",
    "tiers.0.fallbackTier",
    "tiers.1.name",
    "cpuWorkers",
    "cpuWorkers.0.name",
    "cpuWorkers.0.tier",
    "cpuWorkers.0.replicas",
    "cpuWorkers.0.resources",
    "cpuWorkers.0.resources.limits.cpu",
    "verification",
    "verification.mode",
    "verification.workersPerRequest",
    "privacy.mode",
    "rateLimit",
    "federation.site",
    "federation.antiReplayWindow",
    "workers.allowedCidrs",
    "workers.port",
    "workers.heartbeatInterval",
    "tokens",
    "tokens.defaultTtl",
    "tokens.maxTtl",
    "tokens.renewBefore",
    "tokens.signingKeyRotation",
    "failover.failOverAfter",
    "failover.failBackAfter",
    "dns",
    "dns.cidrs",
    "dns.ports",
    "dns.podLabels",
    "dns.namespaceLabels",
    "extraEgress",
    "extraEgress.0.cidr",
    "unknownField",
];

const NPU_PATHS: &[&str] = &[
    "poolRef",
    "poolRef.name",
    "image",
    "model",
    "accelerator",
    "accelerator.resourceName",
    "accelerator.count",
    "replicas",
    "hotSpares",
    "minHealthyReplicas",
    "port",
    "nodeSelector",
    "tolerations",
    "tolerations.0.tolerationSeconds",
    "resources",
    "resources.limits",
    "resources.requests.memory",
];

const GRANT_PATHS: &[&str] = &[
    "poolRef",
    "workerId",
    "owner",
    "tiers",
    "tiers.0",
    "ttl",
    "expiresAt",
    "requestedBy",
    "approvedBy",
    "suspended",
    "revoked",
    "rotation",
];

/// Sets (or, with `None`, removes) the value at a dotted path, creating
/// missing objects on the way; array indices must exist.
fn mutate(target: &mut Value, path: &str, value: Option<Value>) {
    let mut here = target;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        here = match here {
            Value::Object(map) if last => {
                match value {
                    Some(v) => map.insert(part.to_owned(), v),
                    None => map.remove(part),
                };
                return;
            }
            Value::Object(map) => map.entry(part).or_insert_with(|| json!({})),
            Value::Array(items) => match part.parse::<usize>().ok().filter(|&i| i < items.len()) {
                Some(i) if last => {
                    match value {
                        Some(v) => items[i] = v,
                        None => {
                            items.remove(i);
                        }
                    }
                    return;
                }
                Some(i) => &mut items[i],
                None => return,
            },
            _ => return,
        };
    }
}

fn mutations(paths: &'static [&'static str]) -> BoxedStrategy<Vec<(&'static str, Option<Value>)>> {
    prop::collection::vec(
        (prop::sample::select(paths), prop::option::of(json_value())),
        0..5,
    )
    .boxed()
}

fn mutated<T: serde::Serialize>(spec: &T, mutations: Vec<(&str, Option<Value>)>) -> Value {
    let mut value = serde_json::to_value(spec).unwrap();
    for (path, v) in mutations {
        mutate(&mut value, path, v);
    }
    value
}

// ----------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(POOL_CASES))]

    /// Property 1: validate never panics; a valid pool routes and builds
    /// without panic into objects that keep the invariants; a blocked one
    /// says why.
    #[test]
    fn pool_pipeline_keeps_its_invariants((pool, refs) in pool_and_refs()) {
        check_pool_pipeline(&pool, &refs)?;
    }
}

proptest! {
    #![proptest_config(config(CHEAP_CASES))]

    /// Property 2: no two derived names collide, whatever the owner names
    /// (DNS labels without `--`; set names may hold `--`).
    #[test]
    fn derived_names_never_collide(
        pools in prop::collection::btree_map(tag_name(), prop::collection::btree_set(tag_set_name(), 0..4), 0..5),
        npus in prop::collection::btree_set(tag_name(), 0..5),
        grants in prop::collection::btree_set(tag_name(), 0..5),
    ) {
        check_distinct(derived_names(&pools, &npus, &grants))?;
    }

    /// Property 2, per kind: a WorkerGrant name may be any DNS subdomain
    /// (dots, `--`); its token Secret still never takes a pool's Secret name.
    #[test]
    fn token_secrets_never_take_a_pool_secret_name(
        pools in prop::collection::btree_set(tag_name(), 0..5),
        grants in prop::collection::btree_set(
            subdomain_name(), 0..6),
    ) {
        let secrets = pools
            .iter()
            .map(|p| (names::signing_keys(p), format!("Pool {p}")))
            .chain(grants.iter().map(|g| (names::token(g), format!("WorkerGrant {g}"))))
            .collect();
        check_distinct(secrets)?;
    }

    /// Property 3: an NpuServer's objects, for any spec and any pool DNS.
    #[test]
    fn npu_server_objects_keep_their_invariants(npu in npu_server(), dns in dns()) {
        check_npu(&npu, &dns)?;
    }

    /// Property 4: quantities never panic and compare symmetrically.
    #[test]
    fn quantity_comparison_is_total_and_symmetric(a in quantity_string(), b in quantity_string()) {
        prop_assert_eq!(quantity::same(&a, &b), quantity::same(&b, &a));
    }

    /// Property 4: the canonical forms the API server writes are equal.
    #[test]
    fn quantity_canonical_forms_are_equal(
        n in -1_000_000_000_000_000i64..=1_000_000_000_000_000,
        q in well_formed_quantity(),
    ) {
        prop_assert!(quantity::same(&format!("{n}"), &format!("{}m", n * 1000)), "{}", n);
        prop_assert!(quantity::same(&format!("{n}Ki"), &format!("{}", n * 1024)), "{}", n);
        prop_assert!(quantity::same(&q, &q), "{:?} is a quantity", q);
    }

    /// Property 5: `decide` never panics and keeps its promises.
    #[test]
    fn grant_decisions_keep_their_promises(
        (grant, pool, token, now) in decide_inputs(),
        key_published in any::<bool>(),
    ) {
        check_decide(&grant, &pool, token.as_ref(), key_published, now)?;
    }

    /// Property 5: a token is never issued already expired.
    #[test]
    fn an_issued_token_expires_after_now(
        (grant, pool, token, now) in decide_inputs(),
        key_published in any::<bool>(),
    ) {
        if let Decision::Issue { exp, .. } = decide(&grant, &pool, token.as_ref(), key_published, now) {
            prop_assert!(exp > now, "Issue {{ exp: {} }} at now = {}", exp, now);
        }
    }

    /// Parsing a stored duration string never panics (it is what
    /// deserializing a Pool or WorkerGrant does).
    #[test]
    fn duration_parsing_never_panics(s in duration_string()) {
        if let Ok(d) = s.parse::<Duration>() {
            prop_assert!(!s.starts_with('-') || d.0.is_zero(), "{:?} read as {}", s, d);
        }
    }

    /// What the operator writes for a duration reads back the same.
    #[test]
    fn whole_second_durations_round_trip(secs in 0u64..=100 * 8760 * 3600) {
        let d = Duration::from_secs(secs);
        prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }

}

proptest! {
    #![proptest_config(config(JSON_CASES))]

    /// Arbitrary JSON grafted onto serialized specs: whatever deserializes
    /// runs the pipeline without panic (and a spec that does not
    /// deserialize is an error, not a panic).
    #[test]
    fn mutated_json_specs_run_the_pipeline(
        (pool, refs) in pool_and_refs(),
        pool_edits in mutations(POOL_PATHS),
        (npu, dns) in (npu_server(), dns()),
        npu_edits in mutations(NPU_PATHS),
        (grant, decide_pool, token, now) in decide_inputs(),
        grant_edits in mutations(GRANT_PATHS),
    ) {
        let value = mutated(&pool.spec, pool_edits);
        if let Ok(spec) = serde_json::from_value::<PoolSpec>(value) {
            check_pool_pipeline(&Pool { spec, ..pool }, &refs)?;
        }
        let value = mutated(&npu.spec, npu_edits);
        if let Ok(spec) = serde_json::from_value::<NpuServerSpec>(value) {
            check_npu(&NpuServer { spec, ..npu }, &dns)?;
        }
        let value = mutated(&grant.spec, grant_edits);
        if let Ok(spec) = serde_json::from_value::<WorkerGrantSpec>(value) {
            check_decide(&WorkerGrant { spec, ..grant }, &decide_pool, token.as_ref(), true, now)?;
        }
    }
}

// ------------------------------------------------------------ key ring

/// One reconcile of the ring: how long after the last, whether the
/// signingKeyGeneration was bumped, which key (by position) was declared
/// compromised, whether the cache had seen the last JWKS applied, and the
/// lifetime of a token the signer then signs.
#[derive(Clone, Debug)]
struct RingStep {
    after: i64,
    bump: bool,
    compromise: Option<usize>,
    cache_saw_jwks: bool,
    token_life: Option<i64>,
}

fn ring_steps() -> BoxedStrategy<Vec<RingStep>> {
    let step = (
        prop_oneof![0i64..=700, 0i64..=200 * 86_400],
        prop::bool::weighted(0.2),
        prop::option::weighted(0.1, 0usize..4),
        prop::bool::weighted(0.8),
        prop::option::of(60i64..=90 * 86_400),
    )
        .prop_map(
            |(after, bump, compromise, cache_saw_jwks, token_life)| RingStep {
                after,
                bump,
                compromise,
                cache_saw_jwks,
                token_life,
            },
        );
    prop::collection::vec(step, 1..40).boxed()
}

proptest! {
    #![proptest_config(config(RING_CASES))]

    /// Property 6: whatever the sequence of rotations, bumps, compromises
    /// and cache lags, a key signs only once published (for the
    /// pre-publication time when another key could sign), no retired key
    /// keeps its private half, no compromised key is published, and every
    /// token a key signed verifies (its key published) until it expires.
    #[test]
    fn the_key_ring_keeps_its_promises(steps in ring_steps()) {
        use crate::tokens::{LEEWAY_SECS, PoolKey, ring};
        const PRE: i64 = 300;
        let mut policy = ring::RingPolicy {
            rotation: 90 * 86_400,
            pre_publication: PRE,
            ..Default::default()
        };
        let (mut keys, mut now, mut minted) = (ring::KeyRing::default(), 1_800_000_000i64, 0u8);
        // Every token signed: (kid, exp), and the JWKS last applied.
        let mut signed: Vec<(String, i64)> = Vec::new();
        let mut applied = BTreeSet::new();
        let mut signer_before: Option<String> = None;
        for step in steps {
            now += step.after;
            policy.generation += i64::from(step.bump);
            if let Some(i) = step.compromise
                && let Some(key) = keys.keys.get(i)
            {
                policy.compromised.insert(key.kid.clone());
            }
            let published = if step.cache_saw_jwks { applied.clone() } else { BTreeSet::new() };
            let outstanding = ring::outstanding_of(signed.iter().filter(|(_, exp)| *exp > now).cloned());
            let (next, next_look) = ring::next(&keys, &policy, &published, &outstanding, now, || {
                minted += 1;
                PoolKey::from_seed([minted; 32])
            });
            keys = next;
            prop_assert!(next_look > now, "next look {} not after now {}", next_look, now);
            applied = keys.keys.iter().map(|k| k.kid.clone()).collect();
            for (kid, exp) in &signed {
                if *exp + LEEWAY_SECS as i64 >= now && !policy.compromised.contains(kid) {
                    prop_assert!(keys.publishes(kid), "{} unpublished before its token's exp {} (now {})", kid, exp, now);
                }
            }
            for kid in &policy.compromised {
                prop_assert!(!keys.publishes(kid), "compromised {} still published", kid);
            }
            if let Some(signer) = keys.signer(PRE, now) {
                let i = keys.keys.iter().position(|k| k.kid == signer.kid).unwrap();
                let key = &keys.keys[i];
                let published_at = key.published_at;
                prop_assert!(published_at.is_some(), "an unpublished key signs");
                let others_could = keys.keys.iter().any(|k| {
                    k.kid != key.kid && k.seed.is_some() && k.published_at.is_some_and(|p| p + PRE <= now)
                });
                prop_assert!(
                    published_at.is_some_and(|p| p + PRE <= now) || !others_could,
                    "a key signs before its pre-publication while another could"
                );
                prop_assert!(keys.keys[..i].iter().all(|k| k.seed.is_none()), "a retired key keeps its seed");
                // A key takes over from a signer still in the ring only
                // once it has been published for the pre-publication time.
                let before_kept = signer_before
                    .as_ref()
                    .is_some_and(|b| keys.keys.iter().any(|k| &k.kid == b));
                if before_kept && signer_before.as_deref() != Some(signer.kid.as_str()) {
                    prop_assert!(
                        published_at.is_some_and(|p| p + PRE <= now),
                        "{} took over from {:?} before its pre-publication ended", signer.kid, signer_before
                    );
                }
                signer_before = Some(signer.kid.clone());
                if let Some(life) = step.token_life {
                    signed.push((signer.kid, now + life));
                }
            }
        }
    }
}

// ------------------------------------------- what CEL refuses, by example

fn sample_pool() -> Pool {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/pool.yaml"
    ))
    .unwrap();
    let spec: Pool = serde_yaml::from_str(&text).unwrap();
    pool_object("paris", spec.spec)
}

/// Every Secret exists and the NpuServer `heavy` is the pool's, healthy.
fn all_present() -> Refs {
    Refs {
        secrets: None,
        npus: BTreeMap::from([(
            "heavy".to_owned(),
            FakeNpu {
                own_pool: true,
                healthy: Some("True"),
                port: 8000,
            },
        )]),
        pool: "paris".into(),
    }
}

#[test]
fn the_sample_pool_is_valid() {
    let pool = sample_pool();
    check_pool_pipeline(&pool, &all_present()).unwrap();
    assert!(validate::validate(&pool, &all_present()).is_ok());
}

#[test]
fn a_database_endpoint_without_selector_or_cidr_is_stalled() {
    let mut pool = sample_pool();
    pool.spec.database.endpoint.pod_selector = None;
    pool.spec.database.endpoint.namespace_selector = None;
    pool.spec.database.endpoint.cidr = None;
    let blocked = validate::validate(&pool, &all_present()).unwrap_err();
    assert_eq!(blocked.reason(), "DatabaseEndpointMissing");
}

#[test]
fn a_pool_name_the_cel_rule_refuses_is_stalled() {
    for name in [
        "a--b",
        "",
        "Paris",
        "pa.ris",
        "-paris",
        "paris-",
        "pàris",
        &"p".repeat(names::POOL_NAME_MAX + 1),
    ] {
        let mut pool = sample_pool();
        pool.metadata.name = Some(name.into());
        let blocked = validate::validate(&pool, &all_present()).unwrap_err();
        assert_eq!(blocked.reason(), "InvalidName", "Pool {name:?}");
    }
    for set in [
        "",
        "Light",
        "a.b",
        &"s".repeat(names::CPU_WORKER_SET_MAX + 1),
    ] {
        let mut pool = sample_pool();
        pool.spec.cpu_workers[0].name = set.into();
        let blocked = validate::validate(&pool, &all_present()).unwrap_err();
        assert_eq!(blocked.reason(), "InvalidName", "set {set:?}");
    }
}

/// Each spec below breaks a CEL rule of the CRD (an object stored before
/// the rule existed keeps it), and the objects built from it are ones the
/// API server accepts: nothing but the operator can stop them, so the pure
/// code must block each with a reason (the Pool becomes `Stalled`) rather
/// than render it. (Values the API server refuses in the built objects —
/// a port of 0, a negative replica count, a CIDR that is not one, `4GB` —
/// already end as `Stalled` with reason `ApplyFailed`.)
#[test]
fn every_accepted_spec_cel_refuses_is_stalled_with_a_reason() {
    type Edit = fn(&mut PoolSpec);
    let cases: &[(&str, Edit)] = &[
        ("database cidr 0.0.0.0/0 (egress to everything)", |s| {
            s.database.endpoint.pod_selector = None;
            s.database.endpoint.cidr = Some("0.0.0.0/0".into());
        }),
        ("extraEgress to 0.0.0.0/0 (egress to everything)", |s| {
            s.extra_egress.push(EgressRule {
                name: "all".into(),
                cidr: "0.0.0.0/0".into(),
                port: 443,
            })
        }),
        (
            "dns.cidrs ::/0 (egress to everything on the DNS ports)",
            |s| s.dns.cidrs = vec!["::/0".into()],
        ),
        (
            "workers.allowedCidrs 0.0.0.0/0 (ingress from everything)",
            |s| s.workers.allowed_cidrs = vec!["0.0.0.0/0".into()],
        ),
        ("database endpoint with both podSelector and cidr", |s| {
            s.database.endpoint.cidr = Some("10.9.0.0/24".into())
        }),
        ("database namespaceSelector without podSelector", |s| {
            s.database.endpoint.pod_selector = None;
            s.database.endpoint.cidr = Some("10.9.0.0/24".into());
            s.database.endpoint.namespace_selector = Some(LabelSelector::default());
        }),
        ("dns without podLabels, namespaceLabels or cidrs", |s| {
            s.dns.pod_labels.clear();
            s.dns.namespace_labels.clear();
            s.dns.cidrs.clear();
        }),
        ("dns.ports empty", |s| s.dns.ports.clear()),
        ("no tiers", |s| {
            s.tiers.clear();
            s.cpu_workers.clear();
        }),
        ("Npu tier without npuServerRef", |s| {
            s.tiers[1].npu_server_ref = None
        }),
        ("Cpu tier with npuServerRef", |s| {
            s.tiers[0].npu_server_ref = Some(LocalObjectRef {
                name: "heavy".into(),
            })
        }),
        ("fallbackTier naming no tier", |s| {
            s.tiers[1].fallback_tier = Some("nothing".into())
        }),
        ("fallbackTier naming its own tier", |s| {
            s.tiers[1].fallback_tier = Some("heavy".into())
        }),
        ("fallbackTier naming an Npu tier", |s| {
            let mut other = s.tiers[1].clone();
            other.name = "heavy2".into();
            other.fallback_tier = None;
            s.tiers.push(other);
            s.tiers[1].fallback_tier = Some("heavy2".into());
        }),
        ("fallbackTier on a Cpu tier", |s| {
            s.tiers[0].fallback_tier = Some("light".into())
        }),
        ("cpuWorkers for a missing tier", |s| {
            s.cpu_workers[0].tier = "nothing".into()
        }),
        ("cpuWorkers for an Npu tier", |s| {
            s.cpu_workers[0].tier = "heavy".into()
        }),
        ("two tiers of the same name", |s| {
            let copy = s.tiers[0].clone();
            s.tiers.push(copy);
        }),
        ("two cpuWorkers sets of the same name", |s| {
            let copy = s.cpu_workers[0].clone();
            s.cpu_workers.push(copy);
        }),
        ("two extraEgress rules of the same name", |s| {
            let rule = EgressRule {
                name: "siem".into(),
                cidr: "10.9.0.0/16".into(),
                port: 514,
            };
            s.extra_egress = vec![rule.clone(), rule];
        }),
        ("replicas 0", |s| s.replicas = 0),
        ("tokens.renewBefore not shorter than defaultTtl", |s| {
            s.tokens.renew_before = Some(s.tokens.default_ttl)
        }),
        ("tokens.defaultTtl 0s", |s| {
            s.tokens.default_ttl = Duration::from_secs(0)
        }),
        ("workers.heartbeatInterval 0s", |s| {
            s.workers.heartbeat_interval = Duration::from_secs(0)
        }),
        ("verification mode Required with workersPerRequest 1", |s| {
            s.verification.mode = VerificationMode::Required;
            s.verification.workers_per_request = 1;
        }),
    ];
    let mut rendered = Vec::new();
    for (what, edit) in cases {
        let mut pool = sample_pool();
        edit(&mut pool.spec);
        match validate::validate(&pool, &all_present()) {
            Err(blocked) => assert!(
                pascal_case(blocked.reason()) && !blocked.message().is_empty(),
                "{what}: {blocked:?}"
            ),
            Ok(_) => rendered.push(*what),
        }
    }
    assert!(
        rendered.is_empty(),
        "{} of {} specs that CEL refuses are rendered instead of stalled:\n  {}",
        rendered.len(),
        cases.len(),
        rendered.join("\n  ")
    );
}
