//! The one place where status conditions are written.
//!
//! Conditions follow `metav1.Condition` and kstatus: `Ready` is True when
//! the object is fully reconciled; `Reconciling` (True while work is in
//! progress) and `Stalled` (True when it cannot progress without a change)
//! are abnormal-true and are removed once they no longer apply, which is
//! what Argo CD and kstatus expect. `lastTransitionTime` moves only when a
//! condition's status changes, so rewriting the same state is a no-op and
//! never re-triggers a reconcile.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition types shared by every kind.
pub mod types {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

/// A condition to write, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    /// A stable PascalCase reason, e.g. `DatabaseSecretMissing`.
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Sets `desired` in `conditions`, keeping `lastTransitionTime` when the
/// status did not change. Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: Desired,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = status_str(desired.status);
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = desired.reason.to_owned();
            existing.message = desired.message;
            existing.observed_generation = generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_owned(),
                status: status.to_owned(),
                reason: desired.reason.to_owned(),
                message: desired.message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Removes the condition of type `type_`. Returns whether it was there.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// Looks up a condition.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The overall state of a reconcile, mapped onto `Ready`, `Reconciling` and
/// `Stalled` by [`set_summary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Summary {
    /// Everything the spec asks for exists and is healthy.
    Ready {
        reason: &'static str,
        message: String,
    },
    /// Work is under way (e.g. pods starting); it should finish by itself.
    Progressing {
        reason: &'static str,
        message: String,
    },
    /// It cannot progress until someone changes something (an invalid spec,
    /// a missing Secret, a bad signature).
    Stalled {
        reason: &'static str,
        message: String,
    },
}

/// Writes the kstatus triple from `summary`. Returns whether anything changed.
pub fn set_summary(
    conditions: &mut Vec<Condition>,
    summary: Summary,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let (ready, reconciling, stalled, reason, message) = match summary {
        Summary::Ready { reason, message } => (true, false, false, reason, message),
        Summary::Progressing { reason, message } => (false, true, false, reason, message),
        Summary::Stalled { reason, message } => (false, false, true, reason, message),
    };
    let mut changed = set(
        conditions,
        Desired::new(types::READY, ready, reason, message.clone()),
        generation,
        now,
    );
    for (type_, on) in [(types::RECONCILING, reconciling), (types::STALLED, stalled)] {
        changed |= if on {
            set(
                conditions,
                Desired::new(type_, true, reason, message.clone()),
                generation,
                now,
            )
        } else {
            remove(conditions, type_)
        };
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn adding_a_condition_stamps_the_transition_time() {
        let mut conditions = vec![];
        assert!(set(
            &mut conditions,
            Desired::new("Ready", false, "Starting", "pods starting"),
            Some(1),
            at(10)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
        assert_eq!(conditions[0].observed_generation, Some(1));
    }

    #[test]
    fn same_state_again_changes_nothing() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::new("Ready", true, "Ready", "all good"),
            Some(2),
            at(10),
        );
        let snapshot = conditions.clone();
        assert!(!set(
            &mut conditions,
            Desired::new("Ready", true, "Ready", "all good"),
            Some(2),
            at(99)
        ));
        assert_eq!(conditions, snapshot);
    }

    #[test]
    fn new_reason_keeps_transition_time_while_status_holds() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::new("Ready", false, "Starting", "a"),
            Some(1),
            at(10),
        );
        assert!(set(
            &mut conditions,
            Desired::new("Ready", false, "DatabaseSecretMissing", "b"),
            Some(2),
            at(20)
        ));
        assert_eq!(conditions[0].reason, "DatabaseSecretMissing");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
    }

    #[test]
    fn status_flip_moves_transition_time() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::new("Ready", false, "Starting", "a"),
            Some(1),
            at(10),
        );
        set(
            &mut conditions,
            Desired::new("Ready", true, "Ready", "b"),
            Some(1),
            at(30),
        );
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, Time(at(30)));
    }

    #[test]
    fn summary_keeps_kstatus_conditions_consistent() {
        let mut conditions = vec![];
        set_summary(
            &mut conditions,
            Summary::Stalled {
                reason: "InvalidSpec",
                message: "bad".into(),
            },
            Some(3),
            at(1),
        );
        assert_eq!(get(&conditions, "Ready").unwrap().status, "False");
        assert_eq!(get(&conditions, "Stalled").unwrap().reason, "InvalidSpec");
        assert!(get(&conditions, "Reconciling").is_none());

        set_summary(
            &mut conditions,
            Summary::Progressing {
                reason: "Deploying",
                message: "1/2".into(),
            },
            Some(4),
            at(2),
        );
        assert!(get(&conditions, "Stalled").is_none());
        assert_eq!(get(&conditions, "Reconciling").unwrap().status, "True");

        set_summary(
            &mut conditions,
            Summary::Ready {
                reason: "Ready",
                message: "ok".into(),
            },
            Some(4),
            at(3),
        );
        assert_eq!(get(&conditions, "Ready").unwrap().status, "True");
        assert_eq!(
            get(&conditions, "Ready").unwrap().last_transition_time,
            Time(at(3))
        );
        assert!(get(&conditions, "Reconciling").is_none());
        assert_eq!(conditions.len(), 1);
        assert!(!set_summary(
            &mut conditions,
            Summary::Ready {
                reason: "Ready",
                message: "ok".into()
            },
            Some(4),
            at(9)
        ));
    }
}
