//! The fail-over decision over timelines, second by second, its status fed
//! back through JSON as the API server stores it (so every step is also
//! a restart: nothing but the status and the pods carries over).

use crate::api::pool::{TierServing, TierStatus};

use super::{
    Decision, Fallback, NpuInput, TierInput, Timers, Transition, decide,
    endpoints::{self, Backend},
    health::{self, Member},
};

const T0: i64 = 1_800_000_000;

fn pod(i: usize, ready: bool, since: i64) -> Member {
    Member {
        pod: format!("npu-{i}"),
        ready,
        since,
        ip: Some(format!("10.0.0.{i}")),
        node: Some("npu-1".into()),
    }
}

fn tier(health: health::Health, fallback: Option<Option<usize>>) -> TierInput {
    TierInput {
        name: "heavy".into(),
        model: "qwen-30b".into(),
        service: "paris--heavy".into(),
        npu: Some(NpuInput {
            server: "heavy".into(),
            health,
        }),
        fallback: fallback.map(|ready| Fallback {
            tier: "light".into(),
            model: "mistral-7b".into(),
            ready,
        }),
    }
}

/// What the API server gives back: whole seconds, unknown fields dropped.
fn stored(status: &TierStatus) -> TierStatus {
    serde_json::from_value(serde_json::to_value(status).unwrap()).unwrap()
}

/// A timeline: `pods` NPU pods, all ready since long before; at each
/// `(second, pod, ready)` a pod changes. Runs the decision every second
/// from `T0` to `T0 + seconds` and returns the transitions, checking that
/// each happens when a pod changed or when an earlier decision said to
/// wake up.
fn run(
    pods: usize,
    required: usize,
    timers: Timers,
    changes: &[(i64, usize, bool)],
    seconds: i64,
) -> (Vec<(i64, Transition)>, TierStatus) {
    let mut members: Vec<Member> = (0..pods).map(|i| pod(i, true, T0 - 3600)).collect();
    let mut status: Option<TierStatus> = None;
    let mut wakes = Vec::new();
    let mut transitions = Vec::new();
    for now in T0..=T0 + seconds {
        let mut changed = false;
        for &(at, i, ready) in changes {
            if T0 + at == now && members[i].ready != ready {
                members[i] = pod(i, ready, now);
                changed = true;
            }
        }
        let input = tier(health::health(&members, required), Some(Some(2)));
        let Decision {
            status: next,
            wake,
            transition,
        } = decide(&input, status.as_ref(), timers, now);
        if let Some(transition) = transition {
            assert!(
                changed || wakes.contains(&now),
                "{transition:?} at +{} without a pod change or a wake-up",
                now - T0
            );
            transitions.push((now - T0, transition));
        }
        if let Some(wake) = wake {
            assert!(wake > now, "a wake-up in the past");
            wakes.push(wake);
        }
        status = Some(stored(&next));
    }
    (transitions, status.unwrap())
}

/// What, pods, required, timers, (second, pod, ready) changes, seconds
/// run, and the transitions expected.
type Timeline = (
    &'static str,
    usize,
    usize,
    Timers,
    &'static [(i64, usize, bool)],
    i64,
    &'static [(i64, Transition)],
);

const FAST: Timers = Timers {
    fail_over_after: 0,
    fail_back_after: 30,
};

#[test]
fn the_timelines() {
    use Transition::{FailedBack, FailedOver};
    let slow = Timers {
        fail_over_after: 30,
        fail_back_after: 300,
    };
    // (what, pods, required, timers, changes, seconds, transitions)
    let table: &[Timeline] = &[
        ("healthy all along", 2, 2, FAST, &[], 100, &[]),
        (
            "at once with failOverAfter 0s, back after the hold",
            2,
            2,
            FAST,
            &[(10, 0, false), (20, 0, true)],
            100,
            &[(10, FailedOver), (50, FailedBack)],
        ),
        (
            "the hold counts from the last recovery",
            1,
            1,
            FAST,
            &[(10, 0, false), (20, 0, true), (30, 0, false), (35, 0, true)],
            100,
            &[(10, FailedOver), (65, FailedBack)],
        ),
        (
            "down for less than failOverAfter: nothing",
            2,
            2,
            slow,
            &[(10, 0, false), (39, 0, true)],
            200,
            &[],
        ),
        (
            "down for exactly failOverAfter: fails over then",
            2,
            2,
            slow,
            &[(10, 0, false)],
            200,
            &[(40, FailedOver)],
        ),
        (
            "a hot spare lost: nothing",
            3,
            2,
            FAST,
            &[(10, 2, false)],
            100,
            &[],
        ),
        (
            "the spare, then one more",
            3,
            2,
            FAST,
            &[(10, 2, false), (20, 1, false), (30, 1, true)],
            100,
            &[(20, FailedOver), (60, FailedBack)],
        ),
        (
            "recovered before failOverAfter, down again: the timer restarts",
            1,
            1,
            slow,
            &[(10, 0, false), (30, 0, true), (31, 0, false)],
            200,
            &[(61, FailedOver)],
        ),
    ];
    for (what, pods, required, timers, changes, seconds, expected) in table {
        let (got, _) = run(*pods, *required, *timers, changes, *seconds);
        assert_eq!(&got, expected, "{what}");
    }
}

#[test]
fn flapping_every_two_seconds_for_a_minute_switches_once_each_way() {
    let changes: Vec<(i64, usize, bool)> = (0..30).map(|i| (10 + 2 * i, 0, i % 2 == 1)).collect();
    // The last change (i = 29) makes the pod ready at +68.
    let (got, status) = run(1, 1, FAST, &changes, 200);
    assert_eq!(
        got,
        [(10, Transition::FailedOver), (98, Transition::FailedBack)]
    );
    assert_eq!(status.served_by, TierServing::Npu);
    // With a fail-over hold longer than the flaps: never.
    let slow = Timers {
        fail_over_after: 5,
        fail_back_after: 30,
    };
    assert_eq!(run(1, 1, slow, &changes, 200).0, []);
}

#[test]
fn the_clock_edges() {
    let timers = Timers {
        fail_over_after: 30,
        fail_back_after: 60,
    };
    let down = |since| health::Health {
        ready: 0,
        required: 1,
        since: Some(since),
        earliest: Some(since),
    };
    let on_npu = decide(&tier(down(T0), Some(Some(2))), None, timers, T0).status;
    // One second before the end of the hold: not yet, and wake at its end.
    let before = decide(
        &tier(down(T0), Some(Some(2))),
        Some(&on_npu),
        timers,
        T0 + 29,
    );
    assert_eq!(before.status.served_by, TierServing::Npu);
    assert_eq!(before.status.reason, super::reason::FAIL_OVER_PENDING);
    assert_eq!(before.wake, Some(T0 + 30));
    let at = decide(
        &tier(down(T0), Some(Some(2))),
        Some(&on_npu),
        timers,
        T0 + 30,
    );
    assert_eq!(at.status.served_by, TierServing::CpuFailover);
    assert_eq!(at.transition, Some(Transition::FailedOver));
    assert_eq!(at.wake, None);
    // A node clock ahead of ours: the transition time is taken as now, so
    // the hold runs its full length from here, not from the future.
    let ahead = decide(
        &tier(down(T0 + 3600), Some(Some(2))),
        Some(&on_npu),
        timers,
        T0,
    );
    assert_eq!(ahead.wake, Some(T0 + 30));
    // Times far from now never overflow.
    let far = Timers {
        fail_over_after: i64::MAX,
        fail_back_after: i64::MAX,
    };
    let never = decide(&tier(down(T0), Some(Some(2))), Some(&on_npu), far, T0 + 10);
    assert_eq!(never.status.served_by, TierServing::Npu);
    assert_eq!(never.wake, Some(i64::MAX));
}

#[test]
fn what_serves_a_tier_that_failed_over() {
    let down = health::Health {
        ready: 0,
        required: 2,
        since: Some(T0 - 100),
        earliest: Some(T0 - 100),
    };
    let served = |fallback| {
        let d = decide(&tier(down, fallback), None, FAST, T0);
        (
            d.status.served_by,
            d.status.reason,
            d.status.via,
            d.status.model,
        )
    };
    assert_eq!(
        served(Some(Some(2))),
        (
            TierServing::CpuFailover,
            "NpuUnavailable".into(),
            Some("light".into()),
            Some("mistral-7b".into())
        )
    );
    // Laptops only: the pool dispatches to them; the operator cannot see them.
    assert_eq!(served(Some(None)).0, TierServing::CpuFailover);
    assert_eq!(
        served(Some(Some(0))),
        (
            TierServing::Unavailable,
            "FallbackUnavailable".into(),
            None,
            None
        )
    );
    assert_eq!(
        served(None),
        (TierServing::Unavailable, "NoFallback".into(), None, None)
    );
}

#[test]
fn a_server_without_pods_fails_over_from_when_it_was_first_seen_so() {
    let timers = Timers {
        fail_over_after: 30,
        fail_back_after: 60,
    };
    let none = health::health(&[], 1);
    assert_eq!(none.since, None);
    let first = decide(&tier(none, Some(Some(1))), None, timers, T0);
    assert_eq!(first.status.served_by, TierServing::Npu);
    assert_eq!(first.wake, Some(T0 + 30));
    // The time it was first seen is in the status: a restart keeps it.
    let later = decide(
        &tier(none, Some(Some(1))),
        Some(&stored(&first.status)),
        timers,
        T0 + 29,
    );
    assert_eq!(later.wake, Some(T0 + 30));
    let then = decide(
        &tier(none, Some(Some(1))),
        Some(&stored(&later.status)),
        timers,
        T0 + 30,
    );
    assert_eq!(then.transition, Some(Transition::FailedOver));
}

#[test]
fn a_tier_that_becomes_an_npu_tier_starts_on_its_server() {
    let cpu = TierInput {
        npu: None,
        fallback: None,
        ..tier(health::health(&[], 1), None)
    };
    let was_cpu = decide(&cpu, None, FAST, T0).status;
    assert_eq!(was_cpu.served_by, TierServing::Cpu);
    let up = health::health(&[pod(0, true, T0 - 10)], 1);
    let now_npu = decide(&tier(up, Some(Some(1))), Some(&was_cpu), FAST, T0 + 1);
    assert_eq!(now_npu.status.served_by, TierServing::Npu);
    assert_eq!(now_npu.transition, None);
}

#[test]
fn health_is_dated_by_the_crossing_of_the_minimum() {
    let h = |members: &[Member], required| health::health(members, required);
    // Two of three needed; the second loss, at T0+20, made it unhealthy.
    let members = [
        pod(0, true, T0 - 100),
        pod(1, false, T0 + 10),
        pod(2, false, T0 + 20),
    ];
    assert_eq!(h(&members, 2).since, Some(T0 + 20));
    assert!(!h(&members, 2).healthy());
    // One needed: no crossing shown, healthy at least since the oldest.
    assert_eq!(h(&members, 1).since, None);
    assert_eq!(h(&members, 1).earliest, Some(T0 - 100));
    // Healthy again when the second pod came back.
    let members = [
        pod(0, true, T0 - 100),
        pod(1, true, T0 + 30),
        pod(2, false, T0 + 20),
    ];
    assert_eq!(h(&members, 2).since, Some(T0 + 30));
    // Never ready since created: unhealthy since then.
    assert_eq!(h(&[pod(0, false, T0)], 1).since, Some(T0));
}

fn k8s_pod(
    ready: &str,
    since: &str,
    node: Option<&str>,
    deleting: bool,
) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "heavy-npu-abc12-xyz", "namespace": "site",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "deletionTimestamp": deleting.then_some("2026-01-01T00:10:30Z"),
            "deletionGracePeriodSeconds": deleting.then_some(30),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "heavy-npu-abc12", "uid": "u", "controller": true}],
        },
        "spec": {"containers": [], "nodeName": node},
        "status": {"podIP": "10.244.0.7", "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]},
    }))
    .unwrap()
}

#[test]
fn a_pod_counts_only_when_it_and_its_node_are_ready() {
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_second();
    let node = |ready, since: &str| {
        let since = at(since);
        move |_: &str| Some(health::NodeReady { ready, since })
    };
    let ready = k8s_pod("True", "2026-01-01T00:01:00Z", Some("npu-1"), false);
    let m = health::member(&ready, node(true, "2026-01-01T00:00:30Z"));
    assert!(m.ready);
    assert_eq!(m.since, at("2026-01-01T00:01:00Z"));
    // The node went NotReady later: the pod is out from then.
    let m = health::member(&ready, node(false, "2026-01-01T00:05:00Z"));
    assert_eq!((m.ready, m.since), (false, at("2026-01-01T00:05:00Z")));
    // A node the cache does not have counts as not ready.
    assert!(!health::member(&ready, |_: &str| None).ready);
    // Terminating: out since the deletion was asked for.
    let deleting = k8s_pod("True", "2026-01-01T00:01:00Z", Some("npu-1"), true);
    let m = health::member(&deleting, node(true, "2026-01-01T00:00:30Z"));
    assert_eq!((m.ready, m.since), (false, at("2026-01-01T00:10:00Z")));
    // Made by the Deployment's ReplicaSet, and by nothing else.
    assert!(health::made_by(&ready, "heavy-npu"));
    assert!(!health::made_by(&ready, "heavy"));
    assert!(!health::made_by(&ready, "heavy-npu-abc12"));
}

#[test]
fn a_tier_service_is_never_empty_while_a_backend_has_a_ready_pod() {
    let down = [pod(0, false, T0)];
    let up = [pod(1, true, T0)];
    let backend = |kind, members| Backend {
        kind,
        port: 8000,
        members,
    };
    let chosen = endpoints::choose(Some(backend("npu", &down)), Some(backend("cpu", &up)));
    assert_eq!(chosen.map(|b| b.kind), Some("cpu"));
    let chosen = endpoints::choose(Some(backend("npu", &up)), Some(backend("cpu", &up)));
    assert_eq!(chosen.map(|b| b.kind), Some("npu"));
    let chosen = endpoints::choose(Some(backend("npu", &down)), Some(backend("cpu", &down)));
    assert_eq!(chosen.map(|b| b.kind), Some("npu"));
}

#[test]
fn slices_hold_the_ready_pods_by_address_family() {
    let mut owner = crate::api::Pool::new("paris", serde_json::from_value(serde_json::json!({
        "image": {"reference": "r.local/p:1", "verification": {"keys": [{"name": "k", "publicKey": "x"}]}},
        "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.1.0.0/16", "port": 5432}},
        "tls": {"name": "tls"},
        "tiers": [{"name": "light", "model": "m", "backend": "Cpu"}],
    })).unwrap());
    owner.metadata.namespace = Some("site".into());
    owner.metadata.uid = Some("uid".into());
    let mut v6 = pod(2, true, T0);
    v6.ip = Some("fd00::2".into());
    let members = [pod(0, true, T0), pod(1, false, T0), v6];
    let slices = endpoints::slices(
        &owner,
        "paris",
        "paris--light",
        Some(Backend {
            kind: "cpu",
            port: 8080,
            members: &members,
        }),
    );
    let summary: Vec<_> = slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap(),
                s.address_type.clone(),
                s.endpoints
                    .iter()
                    .flatten()
                    .map(|e| e.addresses[0].clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "paris--light-ipv4".into(),
                "IPv4".into(),
                vec!["10.0.0.0".to_owned()]
            ),
            (
                "paris--light-ipv6".into(),
                "IPv6".into(),
                vec!["fd00::2".to_owned()]
            ),
        ]
    );
    let labels = slices[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "paris--light");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        endpoints::SLICE_MANAGER
    );
    // Nothing ready anywhere: one empty IPv4 slice, labelled so.
    let empty = endpoints::slices(&owner, "paris", "paris--light", None);
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].endpoints.as_ref().map(Vec::len), Some(0));
    assert_eq!(
        empty[0].metadata.labels.as_ref().unwrap()[endpoints::BACKEND_LABEL],
        "none"
    );
}

/// The operator killed between writing the routing (slices, ConfigMap)
/// and writing the status: the next decision, from the status as it was,
/// is the same switch, told then; nothing flips back.
#[test]
fn a_status_write_lost_after_the_switch_decides_the_same_again() {
    let up = health::health(&[pod(0, true, T0 - 100)], 1);
    let before = decide(&tier(up, Some(Some(1))), None, FAST, T0 - 1).status;
    assert_eq!(before.served_by, TierServing::Npu);
    let down = health::health(&[pod(0, false, T0)], 1);
    let first = decide(&tier(down, Some(Some(1))), Some(&before), FAST, T0);
    assert_eq!(first.transition, Some(Transition::FailedOver));
    // `first.status` never reached the API server.
    let again = decide(
        &tier(down, Some(Some(1))),
        Some(&stored(&before)),
        FAST,
        T0 + 5,
    );
    assert_eq!(again.status.served_by, first.status.served_by);
    assert_eq!(again.transition, Some(Transition::FailedOver));
    // Once it is stored, no further transition.
    let settled = decide(
        &tier(down, Some(Some(1))),
        Some(&stored(&again.status)),
        FAST,
        T0 + 6,
    );
    assert_eq!(settled.transition, None);
}

/// The fail-back hold keeps routing from flapping between two backends
/// that serve; with nothing else serving, a healthy server takes over at
/// once.
#[test]
fn with_nothing_else_serving_a_healthy_server_is_used_at_once() {
    let timers = Timers {
        fail_over_after: 0,
        fail_back_after: 300,
    };
    let down = health::health(&[pod(0, false, T0)], 1);
    let up = health::health(&[pod(0, true, T0 + 10)], 1);
    // No fallback: Unavailable, then back the moment the pod is Ready.
    let unavailable = decide(&tier(down, None), None, timers, T0).status;
    assert_eq!(unavailable.served_by, TierServing::Unavailable);
    let back = decide(
        &tier(up, None),
        Some(&stored(&unavailable)),
        timers,
        T0 + 10,
    );
    assert_eq!(back.status.served_by, TierServing::Npu);
    assert_eq!(back.transition, Some(Transition::FailedBack));
    // In the hold on CPU, the CPU workers go: back on the NPU server.
    let failed_over = decide(&tier(down, Some(Some(2))), None, timers, T0).status;
    let holding = decide(
        &tier(up, Some(Some(2))),
        Some(&stored(&failed_over)),
        timers,
        T0 + 20,
    );
    assert_eq!(holding.status.reason, "FailBackPending");
    let lost = decide(
        &tier(up, Some(Some(0))),
        Some(&stored(&holding.status)),
        timers,
        T0 + 21,
    );
    assert_eq!(lost.status.served_by, TierServing::Npu);
}

/// Pods that change without the count crossing the minimum (a rolling
/// update) leave the recorded time as it is.
#[test]
fn pods_that_change_without_crossing_the_minimum_keep_the_recorded_time() {
    let timers = Timers {
        fail_over_after: 0,
        fail_back_after: 300,
    };
    let down = health::health(&[pod(0, false, T0)], 1);
    let failed_over = decide(&tier(down, Some(Some(2))), None, timers, T0).status;
    let up = health::health(&[pod(0, true, T0 + 100)], 1);
    let holding = decide(
        &tier(up, Some(Some(2))),
        Some(&stored(&failed_over)),
        timers,
        T0 + 150,
    );
    assert_eq!(holding.wake, Some(T0 + 400));
    // Pod 1 comes up, then pod 0 goes: one ready all along.
    let rolled = health::health(&[pod(0, false, T0 + 220), pod(1, true, T0 + 210)], 1);
    assert_eq!(rolled.since, None);
    let still = decide(
        &tier(rolled, Some(Some(2))),
        Some(&stored(&holding.status)),
        timers,
        T0 + 230,
    );
    assert_eq!(still.wake, Some(T0 + 400), "the hold did not restart");
}
