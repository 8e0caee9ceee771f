//! Leader election: of the operator's replicas, only the holder of one
//! Lease reconciles and writes.
//!
//! `kube-lease-manager` speaks the Lease protocol (acquire, renew ahead of
//! expiry, release, take over an expired Lease). Two things are added here,
//! both from a watch of the Lease itself:
//! - a standby takes a released Lease at once (a leader's SIGTERM hands
//!   over), instead of sleeping until the expiry it last saw;
//! - a leader steps down when the Lease, as the API server has it, is no
//!   longer its own or is about to run out unrenewed: the manager retries a
//!   failing renewal forever and would otherwise go on leading past expiry,
//!   beside the standby that took over.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::Mutex;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    /// Unique per process (the pod's name and a random part): a restarted
    /// container must not take back a Lease its predecessor held.
    pub identity: String,
    /// How long a Lease holds without renewal: the longest takeover after
    /// a leader dies without releasing it.
    pub duration: Duration,
    /// How long before expiry the leader renews; also the clock skew
    /// tolerated between replicas.
    pub renew_before: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease settings: {0}")]
    Settings(String),
    #[error("the Lease {0}: {1}")]
    Lease(String, #[source] kube_lease_manager::LeaseManagerError),
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Another replica holds the Lease.
    TakenBy(String),
    /// The Lease was not renewed in time (the API server unreachable, or the
    /// renewal refused): by the time it expires a standby may lead.
    NotRenewed,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::TakenBy(holder) => write!(f, "the Lease is held by {holder}"),
            Lost::NotRenewed => f.write_str("the Lease could not be renewed in time"),
        }
    }
}

pub struct Election {
    manager: Mutex<LeaseManager>,
    client: Client,
    settings: Settings,
}

impl Election {
    /// Creates the Lease when it does not exist; never takes it.
    pub async fn new(client: Client, settings: Settings) -> Result<Arc<Self>, Error> {
        let secs = |d: Duration| d.as_secs();
        if secs(settings.renew_before) == 0
            || secs(settings.renew_before) >= secs(settings.duration)
        {
            return Err(Error::Settings(format!(
                "the renewal ({}s before expiry) must be at least 1s and shorter than the lease ({}s)",
                secs(settings.renew_before),
                secs(settings.duration)
            )));
        }
        let manager = manager_of(&client, &settings).await?;
        Ok(Arc::new(Self {
            manager: Mutex::new(manager),
            client,
            settings,
        }))
    }

    /// The Lease as the API server has it, each time it changes.
    fn lease(&self) -> impl Stream<Item = Lease> + Send + use<> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.name));
        watcher(
            Api::namespaced(self.client.clone(), &self.settings.namespace),
            config,
        )
        .default_backoff()
        .applied_objects()
        .filter_map(|lease| async move {
            lease
                .inspect_err(|e| tracing::debug!(error = %e, "watching the Lease"))
                .ok()
        })
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut manager = self.manager.lock().await;
        let released = self
            .lease()
            .filter(|lease| std::future::ready(holder(lease).is_none()));
        let mut released = std::pin::pin!(released);
        loop {
            tokio::select! {
                changed = manager.changed() => match changed {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "could not take part in leader election; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                // Released: try now rather than at the expiry last seen. The
                // manager re-reads a Lease only once its cached copy has
                // expired: a new one reads it now (and writes nothing).
                Some(_) = released.next() => match manager_of(&self.client, &self.settings).await {
                    Ok(fresh) => *manager = fresh,
                    Err(error) => tracing::debug!(%error, "re-reading the released Lease"),
                },
            }
        }
    }

    /// Keeps the Lease renewed; returns when this replica is no longer
    /// sure it leads: at once when the Lease names another holder, and
    /// `renew_before / 2` before it would expire unrenewed.
    pub async fn hold(&self) -> Lost {
        let manager = self.manager.lock().await;
        let renew = async {
            loop {
                match manager.changed().await {
                    Ok(true) => {}
                    Ok(false) => return Lost::TakenBy("another replica".to_owned()),
                    Err(error) => {
                        tracing::warn!(%error, "renewing the leader Lease failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        };
        let watch = async {
            let mut lease = std::pin::pin!(self.lease());
            // Until the watch shows the Lease: it was just written with this
            // replica's name (an identity is one process's only), so it
            // holds at least this long.
            let mut deadline =
                tokio::time::Instant::now() + self.settings.duration - self.settings.renew_before;
            loop {
                tokio::select! {
                    Some(seen) = lease.next() => {
                        match step_down_at(&seen, &self.settings, jiff::Timestamp::now()) {
                            Ok(left) => deadline = tokio::time::Instant::now() + left,
                            Err(lost) => return lost,
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => return Lost::NotRenewed,
                }
            }
        };
        tokio::select! {
            lost = renew => lost,
            lost = watch => lost,
        }
    }

    /// Hands the Lease over (a standby watching it takes it at once).
    pub async fn release(&self) {
        if let Err(error) = self.manager.lock().await.release().await {
            tracing::warn!(%error, "releasing the leader Lease failed; a standby takes over when it expires");
        }
    }
}

/// A manager of the Lease, its state read now. Its field manager is the
/// identity's: taking a free Lease is a server-side apply without force, and
/// a conflict between two field managers is what keeps two standbys from
/// both taking it.
async fn manager_of(client: &Client, settings: &Settings) -> Result<LeaseManager, Error> {
    LeaseManagerBuilder::new(client.clone(), &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration.as_secs())
        .with_grace(settings.renew_before.as_secs())
        .with_field_manager(format!("cellule-operator-lease/{}", settings.identity))
        .build()
        .await
        .map_err(|e| Error::Lease(settings.name.clone(), e))
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// How long from `now` this replica may go on leading on what `lease`
/// shows: until half the renewal margin before it expires unrenewed (the
/// other half is for the clock skew a standby's view may have). An error
/// when someone else holds it.
pub fn step_down_at(
    lease: &Lease,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Result<Duration, Lost> {
    match holder(lease) {
        Some(h) if h == settings.identity => {}
        Some(h) => return Err(Lost::TakenBy(h.to_owned())),
        None => return Err(Lost::TakenBy("nobody".to_owned())),
    }
    let spec = lease.spec.as_ref().expect("holder implies spec");
    let (Some(renewed), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return Err(Lost::NotRenewed);
    };
    let expiry = renewed.0 + jiff::SignedDuration::from_secs(i64::from(secs));
    let margin = jiff::SignedDuration::try_from(settings.renew_before / 2).unwrap_or_default();
    let left = expiry.duration_since(now) - margin;
    if left.is_negative() {
        return Err(Lost::NotRenewed);
    }
    Ok(left.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime,
    };

    use super::*;

    fn settings() -> Settings {
        Settings {
            namespace: "cellule-system".into(),
            name: "cellule-operator".into(),
            identity: "pod-a".into(),
            duration: Duration::from_secs(10),
            renew_before: Duration::from_secs(4),
        }
    }

    fn lease(holder: Option<&str>, renewed: jiff::Timestamp, secs: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: secs,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn leads_until_half_the_renewal_margin_before_expiry() {
        let t0: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let held = lease(Some("pod-a"), t0, Some(10));
        // Expires at t0+10s; steps down at t0+8s.
        assert_eq!(
            step_down_at(&held, &settings(), t0),
            Ok(Duration::from_secs(8))
        );
        let later = t0 + jiff::SignedDuration::from_millis(7_500);
        assert_eq!(
            step_down_at(&held, &settings(), later),
            Ok(Duration::from_millis(500))
        );
        let too_late = t0 + jiff::SignedDuration::from_millis(8_001);
        assert_eq!(
            step_down_at(&held, &settings(), too_late),
            Err(Lost::NotRenewed)
        );
        // The Lease's own duration counts, not ours.
        let short = lease(Some("pod-a"), t0, Some(3));
        assert_eq!(
            step_down_at(&short, &settings(), t0),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn steps_down_at_once_when_not_the_holder() {
        let t0 = jiff::Timestamp::now();
        assert_eq!(
            step_down_at(&lease(Some("pod-b"), t0, Some(10)), &settings(), t0),
            Err(Lost::TakenBy("pod-b".into()))
        );
        assert_eq!(
            step_down_at(&lease(None, t0, Some(10)), &settings(), t0),
            Err(Lost::TakenBy("nobody".into()))
        );
        assert_eq!(
            step_down_at(&lease(Some(""), t0, Some(10)), &settings(), t0),
            Err(Lost::TakenBy("nobody".into()))
        );
        assert_eq!(
            step_down_at(&lease(Some("pod-a"), t0, None), &settings(), t0),
            Err(Lost::NotRenewed)
        );
        assert_eq!(
            step_down_at(&Lease::default(), &settings(), t0),
            Err(Lost::TakenBy("nobody".into()))
        );
    }
}
