//! `/metrics` in the OpenMetrics text format (`prometheus-client`).
//!
//! Two kinds of figures:
//! - counters and histograms of what happened (reconciles, errors,
//!   durations, image verifications, revocations, routing transitions),
//!   incremented where it happens, labelled by kind or outcome only, so
//!   their number of series is bounded whatever the objects;
//! - gauges of state (a grant's token expiry, a tier's backend, a peer's
//!   effective level, leadership), computed at each scrape from the
//!   controllers' caches, so a deleted object's series goes with it and
//!   nothing is kept per object between scrapes.
//!
//! One registry per process, like the Prometheus clients' default one:
//! every module reaches it without a handle threaded through.

use std::sync::{
    LazyLock, Mutex,
    atomic::{AtomicBool, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    api::{PeerTrust, Pool, WorkerGrant, pool::TierServing},
    reconcile::context::Stores,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub transition: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub reconciles_running: Family<KindLabels, Gauge>,
    pub image_verifications: Family<OutcomeLabels, Counter>,
    pub token_revocations: Counter,
    pub tier_transitions: Family<TransitionLabels, Counter>,
    state: std::sync::Arc<State>,
}

/// What the scrape-time gauges are computed from.
#[derive(Debug, Default)]
struct State {
    leading: AtomicBool,
    caches: Mutex<Vec<Caches>>,
}

struct Caches {
    pools: kube::runtime::reflector::Store<Pool>,
    grants: kube::runtime::reflector::Store<WorkerGrant>,
    peer_trusts: kube::runtime::reflector::Store<PeerTrust>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cellule_reconcile",
            "Reconciles, by kind and result (success or error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "cellule_reconcile_errors",
            "Failed reconciles, by kind and reason (the reason a Stalled or Reconciling condition would carry)",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        registry.register_with_unit(
            "cellule_reconcile_duration",
            "Time one reconcile took, by kind",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconciles_running = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cellule_reconciles_running",
            "Reconciles running now, by kind (at most the concurrency setting)",
            reconciles_running.clone(),
        );
        let image_verifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cellule_image_verifications",
            "Signature verifications against a registry (cached decisions not counted), by outcome: Verified or the refusal reason",
            image_verifications.clone(),
        );
        let token_revocations = Counter::default();
        registry.register(
            "cellule_token_revocations",
            "Worker tokens written to revocation lists",
            token_revocations.clone(),
        );
        let tier_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "cellule_tier_transitions",
            "Routing changes of Pool tiers: FailedOver, FailedBack, TierUnavailable",
            tier_transitions.clone(),
        );
        let state = std::sync::Arc::new(State::default());
        registry.register_collector(Box::new(StateCollector(state.clone())));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            reconciles_running,
            image_verifications,
            token_revocations,
            tier_transitions,
            state,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The same in the Prometheus text format 0.0.4, for a scraper (or
    /// `promtool check metrics`) that does not ask for OpenMetrics.
    pub fn encode_text(&self) -> String {
        text_format(&self.encode())
    }

    pub fn set_leading(&self, leading: bool) {
        self.state.leading.store(leading, Ordering::Relaxed);
    }

    /// The caches of one watch scope, read at each scrape.
    pub fn watch(&self, stores: &Stores) {
        if let Ok(mut caches) = self.state.caches.lock() {
            caches.push(Caches {
                pools: stores.pools.clone(),
                grants: stores.grants.clone(),
                peer_trusts: stores.peer_trusts.clone(),
            });
        }
    }

    pub fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_owned(),
        }
    }
}

/// OpenMetrics text to Prometheus text 0.0.4: a counter family is named
/// with its `_total` suffix there, and `# UNIT` and `# EOF` do not exist.
fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[derive(Debug)]
struct StateCollector(std::sync::Arc<State>);

type Labels = Vec<(&'static str, String)>;

/// One gauge family, filled then encoded.
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).set(value);
    }
    family.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let leading = self.0.leading.load(Ordering::Relaxed);
        gauge_family(
            &mut encoder,
            "cellule_leader",
            "1 when this replica holds the leader Lease and reconciles, 0 on a standby",
            [(Vec::new(), if leading { 1.0 } else { 0.0 })],
        )?;
        let caches = self.0.caches.lock().map(|c| {
            c.iter()
                .map(|c| (c.pools.state(), c.grants.state(), c.peer_trusts.state()))
                .collect::<Vec<_>>()
        });
        let caches = caches.unwrap_or_default();
        gauge_family(
            &mut encoder,
            "cellule_worker_grant_token_expiration_timestamp_seconds",
            "When the token of a WorkerGrant expires (seconds since the epoch), like cert-manager's certificate expiration",
            caches
                .iter()
                .flat_map(|(_, grants, _)| grants.iter())
                .filter_map(|grant| {
                    let token = grant.status.as_ref()?.token.as_ref()?;
                    Some((
                        object_labels(grant.as_ref(), [("pool", grant.spec.pool_ref.name.clone())]),
                        token.expires_at.0.as_second() as f64,
                    ))
                }),
        )?;
        gauge_family(
            &mut encoder,
            "cellule_pool_tier_served_by",
            "The backend serving each tier of a Pool: 1 for the current one (npu, cpu, cpu-failover, unavailable), 0 for the others",
            caches
                .iter()
                .flat_map(|(pools, _, _)| pools.iter())
                .flat_map(|pool| {
                    let tiers = pool
                        .status
                        .as_ref()
                        .map(|s| s.tiers.clone())
                        .unwrap_or_default();
                    let pool = pool.clone();
                    tiers.into_iter().flat_map(move |tier| {
                        let pool = pool.clone();
                        SERVED_BY.iter().map(move |(serving, name)| {
                            let labels = object_labels(
                                pool.as_ref(),
                                [
                                    ("tier", tier.name.clone()),
                                    ("served_by", (*name).to_owned()),
                                ],
                            );
                            (labels, if *serving == tier.served_by { 1.0 } else { 0.0 })
                        })
                    })
                }),
        )?;
        gauge_family(
            &mut encoder,
            "cellule_peer_trust_effective_level",
            "The trust level a PeerTrust grants now (0 to 3), after expiry, downgrades and Paranoid",
            caches
                .iter()
                .flat_map(|(_, _, peers)| peers.iter())
                .filter_map(|peer| {
                    let level = peer.status.as_ref()?.effective_trust_level?;
                    Some((
                        object_labels(peer.as_ref(), [("site", peer.spec.site.clone())]),
                        f64::from(level),
                    ))
                }),
        )?;
        Ok(())
    }
}

const SERVED_BY: [(TierServing, &str); 4] = [
    (TierServing::Npu, "npu"),
    (TierServing::Cpu, "cpu"),
    (TierServing::CpuFailover, "cpu-failover"),
    (TierServing::Unavailable, "unavailable"),
];

fn object_labels<K: kube::ResourceExt, const N: usize>(
    object: &K,
    extra: [(&'static str, String); N],
) -> Labels {
    let mut labels = vec![
        ("namespace", object.namespace().unwrap_or_default()),
        ("name", object.name_any()),
    ];
    labels.extend(extra);
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_their_suffix_and_drops_openmetrics_lines() {
        let openmetrics = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{kind=\"x\"} 2\n\
            # HELP b_seconds Time.\n# TYPE b_seconds histogram\n# UNIT b_seconds seconds\nb_seconds_count 1\n\
            # HELP c_level Level.\n# TYPE c_level gauge\nc_level 1.0\n# EOF\n";
        assert_eq!(
            text_format(openmetrics),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{kind=\"x\"} 2\n\
             # HELP b_seconds Time.\n# TYPE b_seconds histogram\nb_seconds_count 1\n\
             # HELP c_level Level.\n# TYPE c_level gauge\nc_level 1.0\n"
        );
    }

    #[test]
    fn every_family_is_in_both_formats() {
        let metrics = global();
        // A family shows once it has a series.
        let kind = Metrics::kind("Pool");
        metrics
            .reconciles
            .get_or_create(&ResultLabels {
                kind: "Pool".into(),
                result: "success".into(),
            })
            .inc();
        metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: "Pool".into(),
                reason: "ApiError".into(),
            })
            .inc();
        metrics.reconcile_duration.get_or_create(&kind).observe(0.1);
        metrics.reconciles_running.get_or_create(&kind).set(0);
        metrics
            .image_verifications
            .get_or_create(&OutcomeLabels {
                outcome: "Verified".into(),
            })
            .inc();
        metrics
            .tier_transitions
            .get_or_create(&TransitionLabels {
                transition: "FailedOver".into(),
            })
            .inc();
        metrics.token_revocations.inc();
        let openmetrics = metrics.encode();
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let text = metrics.encode_text();
        for family in [
            "cellule_reconcile_total",
            "cellule_reconcile_errors_total",
            "cellule_reconcile_duration_seconds",
            "cellule_reconciles_running",
            "cellule_image_verifications_total",
            "cellule_token_revocations_total",
            "cellule_tier_transitions_total",
            "cellule_leader",
            "cellule_worker_grant_token_expiration_timestamp_seconds",
            "cellule_pool_tier_served_by",
            "cellule_peer_trust_effective_level",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
    }
}
