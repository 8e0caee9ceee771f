//! A backend's pods as routing sees them (pure): which are ready, where
//! they answer, and since when the backend has been healthy or not.
//!
//! A pod counts as ready when its `Ready` condition is True, its node's is
//! True, and it is not terminating: a node that stops reporting does not
//! make its pods NotReady before the node lifecycle controller gets to
//! them (50 s by default), so the node is read directly.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

/// One pod of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pod: String,
    pub ready: bool,
    /// When `ready` last changed (seconds), as far as the pod and its node
    /// show it.
    pub since: i64,
    pub ip: Option<String>,
    pub node: Option<String>,
}

/// A node's readiness and since when (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeReady {
    pub ready: bool,
    pub since: i64,
}

pub fn node_ready(node: &Node) -> NodeReady {
    let condition = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    NodeReady {
        ready: condition.is_some_and(|c| c.status == "True"),
        since: condition
            .and_then(|c| c.last_transition_time.as_ref())
            .map_or(0, |t| t.0.as_second()),
    }
}

/// Whether `pod` was made by Deployment `deployment` (through one of its
/// ReplicaSets): a pod someone else made with the same labels is never
/// routed to.
pub fn made_by(pod: &Pod, deployment: &str) -> bool {
    pod.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "ReplicaSet"
            && o.name
                .strip_prefix(deployment)
                .is_some_and(|rest| rest.starts_with('-') && !rest[1..].contains('-'))
    })
}

/// `pod` as routing sees it, its node read through `node`.
pub fn member(pod: &Pod, node: impl Fn(&str) -> Option<NodeReady>) -> Member {
    let status = pod.status.as_ref();
    let created = pod.creation_timestamp().map_or(0, |t| t.0.as_second());
    let condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let pod_ready = condition.is_some_and(|c| c.status == "True");
    let pod_since = condition
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(created, |t| t.0.as_second());
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    // A pod not yet scheduled has no node to fail.
    let node_state = node_name.as_deref().map(|n| {
        node(n).unwrap_or(NodeReady {
            ready: false,
            since: pod_since,
        })
    });
    // Terminating since the deletion was asked for (the timestamp is when
    // the grace period ends).
    let terminating = pod
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second() - pod.metadata.deletion_grace_period_seconds.unwrap_or(0));
    let node_ok = node_state.is_none_or(|n| n.ready);
    let (ready, since) = match (pod_ready && node_ok, terminating) {
        (_, Some(at)) => (false, at),
        // Ready since both were.
        (true, None) => (true, pod_since.max(node_state.map_or(0, |n| n.since))),
        // Not ready since the first of them failed.
        (false, None) => {
            let failed = [
                (!pod_ready).then_some(pod_since),
                node_state.filter(|n| !n.ready).map(|n| n.since),
            ];
            (
                false,
                failed.into_iter().flatten().min().unwrap_or(pod_since),
            )
        }
    };
    Member {
        pod: pod.name_any(),
        ready,
        since,
        ip: status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty()),
        node: node_name,
    }
}

/// A backend's health against the ready pods it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub ready: usize,
    pub required: usize,
    /// When (seconds) `ready` last crossed `required`, as the pods show
    /// it; `None` when no pod's transition shows a crossing.
    pub since: Option<i64>,
    /// The oldest transition of any pod: without a crossing, the state is
    /// at least that old.
    pub earliest: Option<i64>,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.ready >= self.required
    }
}

/// The health of a backend of `members` that needs `required` ready pods.
///
/// Walking back through the pods' transitions, newest first, each one
/// undone (a pod ready since `t` was not ready before `t`, and the other
/// way round) until the count crosses `required`: that transition is when
/// the current state began. A deleted pod leaves no transition; its
/// replacement's creation stands for it.
pub fn health(members: &[Member], required: usize) -> Health {
    let ready = members.iter().filter(|m| m.ready).count();
    let healthy = ready >= required;
    let mut transitions: Vec<(i64, bool)> = members.iter().map(|m| (m.since, m.ready)).collect();
    transitions.sort_unstable_by(|a, b| b.cmp(a));
    let mut count = ready;
    let earliest = transitions.last().map(|t| t.0);
    let mut since = None;
    for (at, became_ready) in transitions {
        count = if became_ready {
            count.saturating_sub(1)
        } else {
            count + 1
        };
        if (count >= required) != healthy {
            since = Some(at);
            break;
        }
    }
    Health {
        ready,
        required,
        since,
        earliest,
    }
}
