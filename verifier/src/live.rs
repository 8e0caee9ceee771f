//! A pool's live view of what verifies its workers' tokens: the JWKS and
//! verifier policy (the `<pool>-jwks` ConfigMap) and the revocation store
//! (the pool's `RevocationList` objects), watched on the API server with
//! the pool's own credentials, which may read exactly that ConfigMap and
//! the namespace's revocation lists.
//!
//! A watch pushes every change (a revocation reaches [`Live::verify`] as
//! soon as the API server has it). A watch can also die quietly, so both
//! sources are confirmed by a read every third of the staleness bound, and
//! a token is refused (fail closed) while either is missing, unreadable,
//! or has not been confirmed within the bound.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use jsonwebtoken::jwk::JwkSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt as _, watcher},
};

use crate::{
    jwt::{self, Claims, VerifierPolicy, VerifyError},
    revocations::{POOL_LABEL, RevocationList, Revoked, list_key},
};

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

#[derive(Debug)]
struct State {
    keys: Source<Keys>,
    /// Always a value: the union of the lists seen, usable once a full
    /// read has confirmed it.
    revoked: Source<Revoked>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            keys: Source::default(),
            revoked: Source {
                value: Ok(Revoked::default()),
                resource_version: None,
                confirmed: None,
            },
        }
    }
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
        let period = (stale_after / 3).max(Duration::from_millis(100));
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let name = format!("{pool}-jwks");
        tokio::spawn(watch_keys(
            config_maps.clone(),
            name.clone(),
            live.state.clone(),
        ));
        tokio::spawn(confirm_keys(config_maps, name, live.state.clone(), period));
        let lists: Api<RevocationList> = Api::namespaced(client, namespace);
        tokio::spawn(watch_lists(
            lists.clone(),
            pool.to_owned(),
            live.state.clone(),
        ));
        tokio::spawn(confirm_lists(
            lists,
            pool.to_owned(),
            live.state.clone(),
            period,
        ));
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
            .usable("the revocation lists", self.stale_after)?;
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
            .usable("the revocation lists", self.stale_after)
            .err();
        keys.or(revoked).map(|e| e.to_string())
    }
}

fn parse_keys(cm: &ConfigMap) -> Result<Keys, String> {
    // The operator's JWKS is owned by its Pool. One that no Pool owns is
    // left over (the Pool deleted with its dependents orphaned: its
    // revocations are no longer written) or made by someone else.
    let owned = cm.metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "Pool" && o.api_version.starts_with("cellule.ai/") && o.controller == Some(true)
    });
    if !owned {
        return Err("no Pool owns it".into());
    }
    let data = cm.data.clone().unwrap_or_default();
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

fn write(state: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    state.write().expect("no writer panics while holding it")
}

/// Pushes every change of the JWKS ConfigMap into `state`. A deleted or
/// unreadable one makes every token refused until it is back.
async fn watch_keys(api: Api<ConfigMap>, name: String, state: Arc<RwLock<State>>) {
    // A (re)list from etcd, never from a lagging cache: an older copy
    // would count as freshly confirmed.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                write(&state).keys.set(&cm, parse_keys(&cm))
            }
            Ok(watcher::Event::Delete(_)) => {
                write(&state).keys.value = Err(format!("ConfigMap {name} was deleted"))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(error) => tracing::warn!(%name, %error, "watch failed; retrying"),
        }
    }
}

/// Confirms every `period` that the watched JWKS is current (see
/// [`Source::confirm`]); if the watch is dead, the copy goes stale and
/// tokens are refused.
async fn confirm_keys(
    api: Api<ConfigMap>,
    name: String,
    state: Arc<RwLock<State>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match api.get_opt(&name).await {
            Ok(Some(cm)) => write(&state).keys.confirm(cm.resource_version()),
            Ok(None) => {}
            Err(error) => tracing::warn!(%name, %error, "confirming read failed"),
        }
    }
}

fn of_pool(pool: &str) -> String {
    format!("{POOL_LABEL}={pool}")
}

/// Pushes every version of the pool's revocation lists into the union.
/// Lists only grow until deleted once expired, so versions may arrive in
/// any order and none un-revokes anything.
async fn watch_lists(api: Api<RevocationList>, pool: String, state: Arc<RwLock<State>>) {
    let config = watcher::Config::default()
        .labels(&of_pool(&pool))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = watcher(api, config).default_backoff().boxed();
    // A (re)list: its snapshot is whole, so a list it lacks was deleted
    // meanwhile; the union is current as of when it was asked for.
    let mut relist: Option<(Instant, u64, HashSet<String>)> = None;
    while let Some(event) = events.next().await {
        let mut state = write(&state);
        match event {
            Ok(watcher::Event::Init) => {
                let mark = revoked(&mut state).mark();
                relist = Some((Instant::now(), mark, HashSet::new()))
            }
            Ok(watcher::Event::InitApply(list)) => {
                if let Some((_, _, seen)) = relist.as_mut() {
                    seen.insert(list_key(&list.metadata));
                }
                apply_list(&mut state, &pool, &list)
            }
            Ok(watcher::Event::InitDone) => {
                if let Some((asked, mark, seen)) = relist.take() {
                    revoked(&mut state).retain(&seen, mark);
                    state.revoked.confirmed = Some(asked);
                }
            }
            Ok(watcher::Event::Apply(list)) => apply_list(&mut state, &pool, &list),
            Ok(watcher::Event::Delete(list)) => {
                revoked(&mut state).remove(&list_key(&list.metadata))
            }
            Err(error) => tracing::warn!(%pool, %error, "revocation list watch failed; retrying"),
        }
    }
}

fn revoked(state: &mut State) -> &mut Revoked {
    state
        .revoked
        .value
        .as_mut()
        .expect("the revocation union is always a value")
}

fn apply_list(state: &mut State, pool: &str, list: &RevocationList) {
    // The label is what selects; the spec is what counts.
    if list.spec.pool != pool {
        return;
    }
    revoked(state).apply(list);
}

/// Confirms every `period` that the union is current: reads the lists'
/// metadata from etcd, fetches the few whose version was not applied last,
/// and forgets those seen before the read that it lacks (deleted). The
/// union then holds at least everything on the API server when the read
/// was sent, so it counts as confirmed at that instant.
async fn confirm_lists(
    api: Api<RevocationList>,
    pool: String,
    state: Arc<RwLock<State>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(error) = confirm_once(&api, &pool, &state).await {
            tracing::warn!(%pool, %error, "reading the revocation lists failed");
        }
    }
}

async fn confirm_once(
    api: &Api<RevocationList>,
    pool: &str,
    state: &RwLock<State>,
) -> kube::Result<()> {
    let started = Instant::now();
    let mark = revoked(&mut write(state)).mark();
    let metas = api
        .list_metadata(&ListParams::default().labels(&of_pool(pool)))
        .await?;
    let mut keys = HashSet::new();
    for meta in &metas.items {
        let key = list_key(&meta.metadata);
        let current =
            revoked(&mut write(state)).holds(&key, meta.metadata.resource_version.as_deref());
        if !current && let Some(list) = api.get_opt(&meta.name_any()).await? {
            apply_list(&mut write(state), pool, &list);
        }
        keys.insert(key);
    }
    let mut state = write(state);
    revoked(&mut state).retain(&keys, mark);
    state.revoked.confirmed = Some(started);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocations::{RevocationListSpec, RevokedToken};

    fn config_map(rv: &str, data: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some(rv.into());
        cm.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "cellule.ai/v1alpha1".into(),
                kind: "Pool".into(),
                name: "p".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        cm.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        cm
    }

    fn list(name: &str, pool: &str, jtis: &[&str]) -> RevocationList {
        let mut list = RevocationList::new(
            name,
            RevocationListSpec {
                pool: pool.into(),
                expires_at: 2_000_000_000,
                entries: jtis
                    .iter()
                    .map(|jti| RevokedToken {
                        jti: (*jti).into(),
                        exp: 1_900_000_000,
                    })
                    .collect(),
            },
        );
        list.metadata.labels = Some([(POOL_LABEL.to_owned(), pool.to_owned())].into());
        list
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[test]
    fn nothing_confirmed_yet_refuses() {
        let state = State::default();
        for unusable in [
            state.revoked.usable("the revocation lists", BOUND).err(),
            state.keys.usable("the JWKS", BOUND).err(),
        ] {
            assert!(matches!(unusable, Some(VerifyError::Unavailable(_))));
        }
    }

    #[test]
    fn only_the_pools_own_lists_count_and_unconfirmed_ones_go_stale() {
        let mut state = State::default();
        apply_list(&mut state, "paris", &list("paris-1", "paris", &["a"]));
        // Labelled for paris but written for lyon: not paris's.
        apply_list(&mut state, "paris", &list("lyon-1", "lyon", &["b"]));
        state.revoked.confirmed = Some(Instant::now());
        let revoked = state.revoked.usable("lists", BOUND).unwrap();
        assert_eq!((revoked.get("a").is_some(), revoked.get("b")), (true, None));
        state.revoked.confirmed = Some(Instant::now() - 2 * BOUND);
        assert!(state.revoked.usable("lists", BOUND).is_err(), "stale");
    }

    #[test]
    fn a_keys_copy_not_confirmed_within_the_bound_refuses() {
        let mut state = State::default();
        let policy = r#"{"audience":"ns/p","maxTtlSeconds":3600,"leewaySeconds":30}"#;
        let cm = config_map("7", &[(JWKS_KEY, r#"{"keys":[]}"#), (POLICY_KEY, policy)]);
        state.keys.set(&cm, parse_keys(&cm));
        assert!(state.keys.usable("keys", BOUND).is_ok());
        state.keys.confirmed = Some(Instant::now() - 2 * BOUND);
        assert!(state.keys.usable("keys", BOUND).is_err(), "stale");
        // A read of another version does not vouch for the copy held...
        state.keys.confirm(Some("8".into()));
        assert!(state.keys.usable("keys", BOUND).is_err());
        // ...a read of the same one does.
        state.keys.confirm(Some("7".into()));
        assert!(state.keys.usable("keys", BOUND).is_ok());
    }

    #[test]
    fn a_jwks_no_pool_owns_is_not_used() {
        let policy = r#"{"audience":"ns/p","maxTtlSeconds":3600,"leewaySeconds":30}"#;
        let mut orphan = config_map("1", &[(JWKS_KEY, r#"{"keys":[]}"#), (POLICY_KEY, policy)]);
        assert!(parse_keys(&orphan).is_ok());
        orphan.metadata.owner_references = None;
        assert!(parse_keys(&orphan).is_err());
    }

    #[test]
    fn keys_need_both_the_jwks_and_the_policy() {
        let jwks_only = config_map("1", &[(JWKS_KEY, r#"{"keys":[]}"#)]);
        assert!(parse_keys(&jwks_only).is_err());
        let policy = r#"{"audience":"ns/p","maxTtlSeconds":3600,"leewaySeconds":30}"#;
        let both = config_map("2", &[(JWKS_KEY, r#"{"keys":[]}"#), (POLICY_KEY, policy)]);
        assert_eq!(parse_keys(&both).unwrap().policy.audience, "ns/p");
    }
}
