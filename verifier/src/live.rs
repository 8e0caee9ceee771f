//! A pool's live view of what verifies its workers' tokens: the JWKS and
//! verifier policy (`<pool>-jwks`) and the revocation list
//! (`<pool>-revocations`), watched on the API server with the pool's own
//! credentials, which may `get`, `list` and `watch` exactly those two
//! ConfigMaps.
//!
//! A watch pushes every change (a revocation reaches [`Live::verify`] as
//! soon as the API server has it). A watch can also die quietly, so each
//! object is confirmed by a read every third of the staleness bound, and a
//! token is refused (fail closed) while either object is missing,
//! unreadable, or has not been confirmed within the bound.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};

use crate::jwt::{self, Claims, VerifierPolicy, VerifyError};

/// Keys of the `<pool>-jwks` ConfigMap.
pub const JWKS_KEY: &str = "jwks.json";
pub const POLICY_KEY: &str = "policy.json";

/// What verification needs, parsed from the two ConfigMaps.
#[derive(Clone, Debug)]
struct Keys {
    jwks: JwkSet,
    policy: VerifierPolicy,
}

/// One watched object: its parsed value (or why it is unusable), the
/// resourceVersion it came from, and when it was last confirmed current.
#[derive(Debug)]
struct Source<T> {
    value: Result<T, String>,
    resource_version: Option<String>,
    confirmed: Option<Instant>,
}

impl<T> Default for Source<T> {
    fn default() -> Self {
        Self {
            value: Err("not read yet".into()),
            resource_version: None,
            confirmed: None,
        }
    }
}

impl<T> Source<T> {
    fn usable(&self, what: &str, stale_after: Duration) -> Result<&T, VerifyError> {
        let fresh = self.confirmed.is_some_and(|at| at.elapsed() <= stale_after);
        if !fresh {
            return Err(VerifyError::Unavailable(format!(
                "{what} not confirmed within {stale_after:?}"
            )));
        }
        self.value
            .as_ref()
            .map_err(|why| VerifyError::Unavailable(format!("{what}: {why}")))
    }
}

#[derive(Debug, Default)]
struct State {
    keys: Source<Keys>,
    revoked: Source<BTreeMap<String, i64>>,
}

/// A pool's verifier, kept current by background tasks that run as long
/// as the runtime does.
#[derive(Clone)]
pub struct Live {
    state: Arc<RwLock<State>>,
    stale_after: Duration,
}

impl Live {
    /// Starts watching `pool`'s objects in `namespace` with `client`'s
    /// credentials.
    pub fn start(client: Client, namespace: &str, pool: &str, stale_after: Duration) -> Self {
        let live = Self {
            state: Arc::default(),
            stale_after,
        };
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        for which in [Which::Keys, Which::Revoked] {
            let name = which.name(pool);
            tokio::spawn(watch(api.clone(), name.clone(), which, live.state.clone()));
            let period = stale_after / 3;
            tokio::spawn(confirm(
                api.clone(),
                name,
                which,
                live.state.clone(),
                period,
            ));
        }
        live
    }

    /// The verdict on `token` at `now` (Unix seconds), from what the
    /// watches have delivered.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let state = self
            .state
            .read()
            .expect("no writer panics while holding it");
        let keys = state.keys.usable("the JWKS", self.stale_after)?;
        let revoked = state
            .revoked
            .usable("the revocation list", self.stale_after)?;
        jwt::verify(token, &keys.jwks, revoked, &keys.policy, now)
    }

    /// Why verification would refuse every token now, if it would.
    pub fn unavailable(&self) -> Option<String> {
        let state = self
            .state
            .read()
            .expect("no writer panics while holding it");
        let keys = state.keys.usable("the JWKS", self.stale_after).err();
        let revoked = state
            .revoked
            .usable("the revocation list", self.stale_after)
            .err();
        keys.or(revoked).map(|e| e.to_string())
    }
}

/// The two watched objects.
#[derive(Clone, Copy, Debug)]
enum Which {
    Keys,
    Revoked,
}

impl Which {
    fn name(self, pool: &str) -> String {
        match self {
            Which::Keys => format!("{pool}-jwks"),
            Which::Revoked => format!("{pool}-revocations"),
        }
    }

    fn apply(self, cm: &ConfigMap, state: &mut State) {
        let data = cm.data.clone().unwrap_or_default();
        match self {
            Which::Keys => state.keys.set(cm, parse_keys(&data)),
            Which::Revoked => {
                let parsed = jwt::parse_revocations(&data).map_err(|e| e.to_string());
                state.revoked.set(cm, parsed)
            }
        }
    }

    fn deleted(self, state: &mut State, why: String) {
        match self {
            Which::Keys => state.keys.value = Err(why),
            Which::Revoked => state.revoked.value = Err(why),
        }
    }

    fn confirm(self, state: &mut State, resource_version: Option<String>) {
        match self {
            Which::Keys => state.keys.confirm(resource_version),
            Which::Revoked => state.revoked.confirm(resource_version),
        }
    }
}

fn parse_keys(data: &BTreeMap<String, String>) -> Result<Keys, String> {
    let jwks = data.get(JWKS_KEY).ok_or("no jwks.json")?;
    let policy = data.get(POLICY_KEY).ok_or("no policy.json")?;
    Ok(Keys {
        jwks: serde_json::from_str(jwks).map_err(|e| format!("jwks.json: {e}"))?,
        policy: serde_json::from_str(policy).map_err(|e| format!("policy.json: {e}"))?,
    })
}

impl<T> Source<T> {
    fn set(&mut self, cm: &ConfigMap, value: Result<T, String>) {
        self.value = value;
        self.resource_version = cm.resource_version();
        self.confirmed = Some(Instant::now());
    }

    /// A read returned `resource_version`: the copy is current if it is
    /// the one held (a newer one is the watch's to deliver).
    fn confirm(&mut self, resource_version: Option<String>) {
        if resource_version.is_some() && resource_version == self.resource_version {
            self.confirmed = Some(Instant::now());
        }
    }
}

/// Pushes every change of the object into `state`. A deleted object makes
/// every token refused until it is back (a list deleted must not
/// un-revoke anything).
async fn watch(api: Api<ConfigMap>, name: String, which: Which, state: Arc<RwLock<State>>) {
    // A (re)list from etcd, never from a lagging cache: an older copy
    // would count as freshly confirmed.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let mut state = state.write().expect("no writer panics while holding it");
        match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                which.apply(&cm, &mut state)
            }
            Ok(watcher::Event::Delete(_)) => {
                which.deleted(&mut state, format!("ConfigMap {name} was deleted"))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(error) => tracing::warn!(%name, %error, "watch failed; retrying"),
        }
    }
}

/// Confirms every `period` that the watched copy is current (see
/// [`Source::confirm`]); if the watch is dead, the copy goes stale and
/// tokens are refused.
async fn confirm(
    api: Api<ConfigMap>,
    name: String,
    which: Which,
    state: Arc<RwLock<State>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        match api.get_opt(&name).await {
            Ok(Some(cm)) => which.confirm(
                &mut state.write().expect("no writer panics while holding it"),
                cm.resource_version(),
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(%name, %error, "confirming read failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(rv: &str, data: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some(rv.into());
        cm.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        cm
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[test]
    fn nothing_read_yet_refuses() {
        let state = State::default();
        assert!(matches!(
            state.revoked.usable("the revocation list", BOUND),
            Err(VerifyError::Unavailable(_))
        ));
    }

    #[test]
    fn a_garbled_or_deleted_list_refuses_and_a_good_one_is_used() {
        let mut state = State::default();
        Which::Revoked.apply(&config_map("1", &[("j", "revoked")]), &mut state);
        assert!(state.revoked.usable("list", BOUND).is_err(), "garbled");
        Which::Revoked.apply(&config_map("2", &[("j", "1800000000")]), &mut state);
        assert_eq!(
            state.revoked.usable("list", BOUND).unwrap()["j"],
            1_800_000_000
        );
        Which::Revoked.deleted(&mut state, "deleted".into());
        assert!(state.revoked.usable("list", BOUND).is_err(), "deleted");
    }

    #[test]
    fn a_copy_not_confirmed_within_the_bound_refuses() {
        let mut state = State::default();
        Which::Revoked.apply(&config_map("7", &[]), &mut state);
        assert!(state.revoked.usable("list", BOUND).is_ok());
        state.revoked.confirmed = Some(Instant::now() - 2 * BOUND);
        assert!(state.revoked.usable("list", BOUND).is_err(), "stale");
        // A read of another version does not vouch for the copy held...
        Which::Revoked.confirm(&mut state, Some("8".into()));
        assert!(state.revoked.usable("list", BOUND).is_err());
        // ...a read of the same one does.
        Which::Revoked.confirm(&mut state, Some("7".into()));
        assert!(state.revoked.usable("list", BOUND).is_ok());
    }

    #[test]
    fn keys_need_both_the_jwks_and_the_policy() {
        let mut state = State::default();
        Which::Keys.apply(
            &config_map("1", &[(JWKS_KEY, r#"{"keys":[]}"#)]),
            &mut state,
        );
        assert!(state.keys.usable("keys", BOUND).is_err());
        let policy = r#"{"audience":"ns/p","maxTtlSeconds":3600,"leewaySeconds":30}"#;
        Which::Keys.apply(
            &config_map("2", &[(JWKS_KEY, r#"{"keys":[]}"#), (POLICY_KEY, policy)]),
            &mut state,
        );
        assert_eq!(
            state.keys.usable("keys", BOUND).unwrap().policy.audience,
            "ns/p"
        );
    }
}
