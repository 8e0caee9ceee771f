//! Helpers for the PeerTrust federation tests (issue 14), shared by
//! `tests/federation.rs`, `tests/four_eyes.rs` and `tests/restart.rs`.
//!
//! Two sites are two namespaces of the one API server, each with its own
//! Pool (named after its site: `paris`, `lyon`), its own federation
//! endpoint and its own administrator key. A level-3 handshake is made as
//! the admins make it (docs/federation.md): with the `cellule-operator
//! handshake` commands, on the Pool and the PeerTrust as `kubectl get -o
//! yaml` prints them; the countersignatures are copied from one site's
//! PeerTrust status into the other site's spec.
//!
//! What the operator shows is read as a client does: the PeerTrust's
//! status and Events, the Pool's status, the peers its config points it to
//! (`<pool>-config`, then `<pool>-peers`), the egress of the
//! NetworkPolicies it owns and its `<pool>-federation` Secret.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret},
    events::v1::Event,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{Env, apply_signing_key, cellule_api, create_secret, eventually, install_crds};

pub const WAIT: Duration = Duration::from_secs(60);

/// One site: its namespace and Pool (named after the site), where peers
/// reach it, its administrator's key and its pool's federation key.
#[derive(Clone, Debug)]
pub struct Site {
    pub ns: String,
    /// The Pool's name, which is also the site's name.
    pub pool: String,
    /// `spec.federation.endpoint`: `{host, cidr, port}`.
    pub endpoint: Value,
    /// The admin's private seed, as `handshake keygen` wrote it.
    pub admin_seed: PathBuf,
    /// The admin's public key, in the Pool's `federation.adminPublicKeys`.
    pub admin_key: String,
    /// The pool's federation key (`status.federation.publicKey`).
    pub pool_key: String,
}

/// A directory for a test's files (keys, manifests), by namespace.
pub fn scratch(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellule-federation-{ns}"));
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// `cellule-operator ARGS...` (the binary under test), its stdout.
pub async fn operator_cli(args: &[&str]) -> anyhow::Result<String> {
    let binary = Env::var("CELLULE_E2E_OPERATOR_BIN");
    let output = tokio::process::Command::new(&binary)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {binary}"))?;
    if !output.status.success() {
        bail!(
            "cellule-operator {} exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// `handshake keygen --out FILE`: the public key it prints.
pub async fn keygen(out: &Path) -> anyhow::Result<String> {
    let path = out.to_str().context("utf-8 path")?;
    let public = operator_cli(&["handshake", "keygen", "--out", path])
        .await?
        .trim()
        .to_owned();
    ensure!(
        STANDARD.decode(&public).map(|b| b.len()) == Ok(32),
        "keygen printed {public:?}, not a base64 public key"
    );
    Ok(public)
}

/// `handshake nonce`.
pub async fn fresh_nonce() -> anyhow::Result<String> {
    Ok(operator_cli(&["handshake", "nonce"])
        .await?
        .trim()
        .to_owned())
}

/// A public key nobody holds the private half of (another pool's key in
/// all but name), base64.
pub fn random_key() -> String {
    cellule_operator::peer_trust::handshake::generate_key().1
}

/// The sample Pool as `name` (also its site) at `endpoint`, with
/// `admin_keys`: one replica, one CPU tier, no in-cluster workers, its own
/// `<name>-db` and `<name>-tls` Secrets.
pub fn pool_document(name: &str, endpoint: &Value, admin_keys: &[String]) -> Value {
    let mut pool = crate::sample_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Pool")
        .map(|(_, d)| d)
        .expect("a sample Pool");
    pool["metadata"] = json!({"name": name});
    let spec = &mut pool["spec"];
    spec["replicas"] = json!(1);
    spec["database"]["dsnSecretRef"]["name"] = json!(format!("{name}-db"));
    spec["tls"]["name"] = json!(format!("{name}-tls"));
    let light: Vec<Value> = spec["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .filter(|t| t["name"] == "light")
        .cloned()
        .collect();
    spec["tiers"] = json!(light);
    spec.as_object_mut().expect("spec").remove("cpuWorkers");
    spec["federation"]["site"] = json!(name);
    spec["federation"]["endpoint"] = endpoint.clone();
    spec["federation"]["adminPublicKeys"] = json!(admin_keys);
    pool
}

/// Server-side applies `object` (a `cellule.ai` kind).
pub async fn apply(client: &Client, ns: &str, object: &Value) -> anyhow::Result<Value> {
    let applied = crate::images::apply(client, ns, object).await?;
    Ok(serde_json::to_value(applied)?)
}

/// Site `name` in `ns`: the CRDs, the Pool's Secrets and signing key, an
/// admin key (made with `handshake keygen`), the Pool; once its
/// federation key is published.
pub async fn start_site(
    client: &Client,
    ns: &str,
    name: &str,
    endpoint: Value,
) -> anyhow::Result<Site> {
    install_crds(client).await;
    create_secret(
        client,
        ns,
        &format!("{name}-db"),
        &[("dsn", "postgres://cellule@db:5432/cellule")],
    )
    .await?;
    create_secret(
        client,
        ns,
        &format!("{name}-tls"),
        &[("tls.crt", "cert"), ("tls.key", "key")],
    )
    .await?;
    apply_signing_key(client, ns).await?;
    let admin_seed = scratch(ns).join(format!("{name}-admin.key"));
    let admin_key = keygen(&admin_seed).await?;
    apply(
        client,
        ns,
        &pool_document(name, &endpoint, std::slice::from_ref(&admin_key)),
    )
    .await?;
    let pool_key = pool_key(client, ns, name).await?;
    Ok(Site {
        ns: ns.to_owned(),
        pool: name.to_owned(),
        endpoint,
        admin_seed,
        admin_key,
        pool_key,
    })
}

/// `{host, cidr, port}`.
pub fn endpoint(host: Option<&str>, cidr: Option<&str>, port: i32) -> Value {
    let mut e = json!({"port": port});
    if let Some(host) = host {
        e["host"] = json!(host);
    }
    if let Some(cidr) = cidr {
        e["cidr"] = json!(cidr);
    }
    e
}

/// Site `paris` (10.20.0.0/24) in `a` and site `lyon` (10.30.0.0/24) in
/// `b`, both on 8443.
pub async fn paris_and_lyon(client: &Client, a: &str, b: &str) -> anyhow::Result<(Site, Site)> {
    let (paris, lyon) = tokio::try_join!(
        start_site(
            client,
            a,
            "paris",
            endpoint(
                Some("pool.paris.intra.example.com"),
                Some("10.20.0.0/24"),
                8443
            )
        ),
        start_site(
            client,
            b,
            "lyon",
            endpoint(
                Some("pool.lyon.intra.example.com"),
                Some("10.30.0.0/24"),
                8443
            )
        ),
    )?;
    Ok((paris, lyon))
}

/// The Pool's `status.federation.publicKey`, once there is one.
pub async fn pool_key(client: &Client, ns: &str, pool: &str) -> anyhow::Result<String> {
    let api = cellule_api(client, ns, "Pool");
    eventually(&format!("Pool {pool}'s federation key"), WAIT, || async {
        let p = api.get(pool).await.map_err(|e| e.to_string())?;
        p.data["status"]["federation"]["publicKey"]
            .as_str()
            .map(str::to_owned)
            .ok_or(p.data["status"].to_string())
    })
    .await
}

/// A PeerTrust manifest.
pub fn peer_trust(
    name: &str,
    pool: &str,
    site: &str,
    peer_pool: Option<(&str, &str)>,
    endpoint: &Value,
    public_key: &str,
    level: i32,
) -> Value {
    let mut spec = json!({
        "poolRef": {"name": pool}, "site": site, "endpoint": endpoint,
        "publicKey": public_key, "trustLevel": level,
    });
    if let Some((namespace, name)) = peer_pool {
        spec["peerPool"] = json!({"namespace": namespace, "name": name});
    }
    json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// `local`'s PeerTrust of `peer` (named after the peer's site) at `level`.
pub fn trust_of(local: &Site, peer: &Site, level: i32) -> Value {
    peer_trust(
        &peer.pool,
        &local.pool,
        &peer.pool,
        Some((&peer.ns, &peer.pool)),
        &peer.endpoint,
        &peer.pool_key,
        level,
    )
}

/// A handshake's nonce and window.
#[derive(Clone, Debug)]
pub struct Window {
    pub nonce: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
}

impl Window {
    /// A fresh nonce (from `handshake nonce`), valid from a minute ago for
    /// `seconds` from now (whole seconds, as a `metav1.Time` keeps them).
    pub async fn fresh(seconds: i64) -> anyhow::Result<Self> {
        let now = jiff::Timestamp::now().as_second();
        Ok(Self {
            nonce: fresh_nonce().await?,
            not_before: jiff::Timestamp::from_second(now - 60)?,
            not_after: jiff::Timestamp::from_second(now + seconds)?,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "nonce": self.nonce,
            "notBefore": rfc3339(self.not_before),
            "notAfter": rfc3339(self.not_after),
        })
    }
}

pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A number no other call of this process got (file names of concurrent
/// handshakes).
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `kind`/`name` of `site` as `kubectl get -o yaml` prints it: what an
/// admin feeds `cellule-operator handshake`.
async fn kubectl_yaml(site: &Site, kind: &str, name: &str) -> anyhow::Result<String> {
    let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
    crate::run_tool(
        "kubectl",
        &[
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &site.ns,
            "get",
            kind,
            name,
            "-o",
            "yaml",
        ],
        &[],
    )
    .await
}

/// The Pool as `kubectl get pool -o yaml` prints it, in a file.
async fn pool_file(site: &Site) -> anyhow::Result<PathBuf> {
    let yaml = kubectl_yaml(site, "pool", &site.pool).await?;
    let path = scratch(&site.ns).join(format!("pool-{}-{}.yaml", site.pool, unique()));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The PeerTrust (a manifest, or the object as `kubectl get -o yaml`
/// prints it) in a file.
fn manifest_file(site: &Site, trust: &Value) -> anyhow::Result<PathBuf> {
    let name = trust["metadata"]["name"].as_str().context("a name")?;
    let path = scratch(&site.ns).join(format!("peertrust-{name}-{}.yaml", unique()));
    std::fs::write(&path, serde_yaml::to_string(trust)?)?;
    Ok(path)
}

/// The PeerTrust `name` of `site` as `kubectl get peertrust -o yaml`
/// prints it (metadata, spec and status).
pub async fn stored_trust(site: &Site, name: &str) -> anyhow::Result<Value> {
    Ok(serde_yaml::from_str(
        &kubectl_yaml(site, "peertrust", name).await?,
    )?)
}

/// `handshake statement` at `site` for its PeerTrust `trust`.
pub async fn statement(site: &Site, trust: &Value) -> anyhow::Result<String> {
    let pool = pool_file(site).await?;
    let manifest = manifest_file(site, trust)?;
    operator_cli(&[
        "handshake",
        "statement",
        "--pool",
        pool.to_str().context("utf-8")?,
        "--peer-trust",
        manifest.to_str().context("utf-8")?,
    ])
    .await
}

/// `handshake sign --key key` at `site` for its PeerTrust `trust`.
pub async fn sign(site: &Site, trust: &Value, key: &Path) -> anyhow::Result<String> {
    let pool = pool_file(site).await?;
    let manifest = manifest_file(site, trust)?;
    Ok(operator_cli(&[
        "handshake",
        "sign",
        "--pool",
        pool.to_str().context("utf-8")?,
        "--peer-trust",
        manifest.to_str().context("utf-8")?,
        "--key",
        key.to_str().context("utf-8")?,
    ])
    .await?
    .trim()
    .to_owned())
}

/// The two PeerTrusts of a federation as last applied, and the window.
#[derive(Clone, Debug)]
pub struct Federation {
    pub a: Site,
    pub b: Site,
    pub window: Window,
    /// A's PeerTrust of B (named B's pool), as applied.
    pub a_trust: Value,
    /// B's PeerTrust of A.
    pub b_trust: Value,
    /// The statement both sites signed.
    pub statement: String,
}

impl Federation {
    /// A's PeerTrust's name.
    pub fn a_name(&self) -> &str {
        &self.b.pool
    }
    pub fn b_name(&self) -> &str {
        &self.a.pool
    }
}

/// The whole handshake between `a` and `b` at `level` (2 or 3) in
/// `window`, as two sites' admins make it: [`sign_both`], then
/// [`exchange_countersignatures`]; once both verify.
pub async fn federate(
    client: &Client,
    a: &Site,
    b: &Site,
    window: &Window,
    level: i32,
) -> anyhow::Result<Federation> {
    let signed = sign_both(client, a, b, window).await?;
    exchange_countersignatures(client, signed, level).await
}

/// The admins' part of a handshake, as docs/federation.md has it:
/// 1. each writes its PeerTrust of the other at level 2, with the
///    handshake's nonce and window only (the same at both sites): the
///    operator waits for `localSignature`;
/// 2. each prints the statement from its Pool and its stored PeerTrust
///    (`kubectl get -o yaml`; both sites get the same bytes) and signs it
///    with `handshake sign`;
/// 3. each sets `localSignature` (its own) and `peerSignature` (the
///    other's): each operator then countersigns in its PeerTrust's status.
///
/// The manifests returned are at level 2; [`exchange_countersignatures`]
/// raises them.
pub async fn sign_both(
    client: &Client,
    a: &Site,
    b: &Site,
    window: &Window,
) -> anyhow::Result<Federation> {
    let mut a_trust = trust_of(a, b, 2);
    let mut b_trust = trust_of(b, a, 2);
    a_trust["spec"]["handshake"] = window.json();
    b_trust["spec"]["handshake"] = window.json();
    tokio::try_join!(
        apply(client, &a.ns, &a_trust),
        apply(client, &b.ns, &b_trust)
    )?;
    let unsigned = |obj: &Value| {
        observed(obj)
            && condition(obj, "HandshakeVerified").is_some_and(|c| {
                c["reason"] == "HandshakeIncomplete"
                    && c["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("localSignature")
            })
    };
    tokio::try_join!(
        wait_peer(client, &a.ns, &b.pool, "A waits for its admin", unsigned),
        wait_peer(client, &b.ns, &a.pool, "B waits for its admin", unsigned),
    )?;
    let (a_stored, b_stored) =
        tokio::try_join!(stored_trust(a, &b.pool), stored_trust(b, &a.pool))?;
    let (a_statement, b_statement) =
        tokio::try_join!(statement(a, &a_stored), statement(b, &b_stored))?;
    ensure!(
        a_statement == b_statement,
        "the two sites make different statements:\n{a_statement}\n---\n{b_statement}"
    );
    let (a_signature, b_signature) = tokio::try_join!(
        sign(a, &a_stored, &a.admin_seed),
        sign(b, &b_stored, &b.admin_seed)
    )?;
    a_trust["spec"]["handshake"]["localSignature"] = json!(a_signature);
    a_trust["spec"]["handshake"]["peerSignature"] = json!(b_signature);
    b_trust["spec"]["handshake"]["localSignature"] = json!(b_signature);
    b_trust["spec"]["handshake"]["peerSignature"] = json!(a_signature);
    tokio::try_join!(
        apply(client, &a.ns, &a_trust),
        apply(client, &b.ns, &b_trust)
    )?;
    Ok(Federation {
        a: a.clone(),
        b: b.clone(),
        window: window.clone(),
        a_trust,
        b_trust,
        statement: a_statement,
    })
}

/// 4. Once each operator countersigned (`status.countersignature`, the
///    PeerTrust at level 2, `HandshakeIncomplete`), each admin copies the
///    other side's into `peerCountersignature`: both verify, at level 2;
/// 5. then (the approver) raises `trustLevel` to `level`: both at `level`.
pub async fn exchange_countersignatures(
    client: &Client,
    signed: Federation,
    level: i32,
) -> anyhow::Result<Federation> {
    let Federation {
        a,
        b,
        mut a_trust,
        mut b_trust,
        ..
    } = signed.clone();
    let countersigned = |obj: &Value| {
        observed(obj)
            && obj["status"]["countersignature"]["signature"].is_string()
            && condition(obj, "HandshakeVerified")
                .is_some_and(|c| c["reason"] == "HandshakeIncomplete")
    };
    let (a_half, b_half) = tokio::try_join!(
        wait_peer(client, &a.ns, &b.pool, "A countersigned", countersigned),
        wait_peer(client, &b.ns, &a.pool, "B countersigned", countersigned),
    )?;
    for (side, half) in [("A", &a_half), ("B", &b_half)] {
        ensure!(
            half["status"]["effectiveTrustLevel"] == 2,
            "{side}: level while only half the handshake is there: {}",
            summary(half)
        );
    }
    a_trust["spec"]["handshake"]["peerCountersignature"] =
        b_half["status"]["countersignature"].clone();
    b_trust["spec"]["handshake"]["peerCountersignature"] =
        a_half["status"]["countersignature"].clone();
    let verified_at = |level: i32| {
        move |obj: &Value| {
            obj["status"]["effectiveTrustLevel"] == level
                && observed(obj)
                && condition(obj, "HandshakeVerified").is_some_and(|c| c["status"] == "True")
        }
    };
    let mut levels = vec![2];
    if level != 2 {
        levels.push(level);
    }
    for level in levels {
        a_trust["spec"]["trustLevel"] = json!(level);
        b_trust["spec"]["trustLevel"] = json!(level);
        tokio::try_join!(
            apply(client, &a.ns, &a_trust),
            apply(client, &b.ns, &b_trust)
        )?;
        let (what_a, what_b) = (
            format!("A verified at {level}"),
            format!("B verified at {level}"),
        );
        tokio::try_join!(
            wait_peer(client, &a.ns, &b.pool, &what_a, verified_at(level)),
            wait_peer(client, &b.ns, &a.pool, &what_b, verified_at(level)),
        )?;
    }
    Ok(Federation {
        a_trust,
        b_trust,
        ..signed
    })
}

/// The object's condition of `type_`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether the status is about the current spec.
pub fn observed(obj: &Value) -> bool {
    obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
}

/// A one-line view of a PeerTrust's status, for failure messages.
pub fn summary(obj: &Value) -> String {
    let cond = |t: &str| {
        condition(obj, t)
            .map(|c| format!("{t}={}/{}: {}", c["status"], c["reason"], c["message"]))
            .unwrap_or_default()
    };
    format!(
        "generation {} observed {} level {} {} {} {} {} reputation {}",
        obj["metadata"]["generation"],
        obj["status"]["observedGeneration"],
        obj["status"]["effectiveTrustLevel"],
        cond("Ready"),
        cond("HandshakeVerified"),
        cond("Downgraded"),
        cond("Suspended"),
        obj["status"]["reputation"]
    )
}

/// PeerTrust `name` (as JSON), once `check` holds.
pub async fn wait_peer(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let api = cellule_api(client, ns, "PeerTrust");
    eventually(&format!("PeerTrust {name}: {what}"), WAIT, || async {
        let obj = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if check(&obj) {
            Ok(obj)
        } else {
            Err(summary(&obj))
        }
    })
    .await
}

/// PeerTrust `name` once judged (its current generation) at `level`.
pub async fn wait_level(
    client: &Client,
    ns: &str,
    name: &str,
    level: i32,
) -> anyhow::Result<Value> {
    wait_peer(client, ns, name, &format!("effective level {level}"), |o| {
        observed(o) && o["status"]["effectiveTrustLevel"] == level
    })
    .await
}

/// PeerTrust `name` once judged with `HandshakeVerified` = `status` and
/// `reason`.
pub async fn wait_handshake(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    wait_peer(
        client,
        ns,
        name,
        &format!("HandshakeVerified {status}/{reason}"),
        |o| {
            observed(o)
                && condition(o, "HandshakeVerified")
                    .is_some_and(|c| c["status"] == status && c["reason"] == reason)
        },
    )
    .await
}

/// The peers the Pool's config gives it: `federation.peers` of
/// `<pool>-config` (`pool.yaml`), or, where the config points the pool to
/// a ConfigMap it reads live (`federation.peersConfigMap`, key
/// `federation.peersKey`), that one's `peers`; `None` while there is no
/// config (or no such ConfigMap) yet.
pub async fn config_peers(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<Option<Vec<Value>>> {
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let read = |map: ConfigMap, key: &str| -> anyhow::Result<Value> {
        let text = map
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| {
                format!(
                    "{key} in ConfigMap {}",
                    map.metadata.name.unwrap_or_default()
                )
            })?;
        Ok(serde_yaml::from_str(text)?)
    };
    let Some(map) = maps.get_opt(&cellule_operator::names::config(pool)).await? else {
        return Ok(None);
    };
    let federation = read(map, "pool.yaml")?["federation"].clone();
    let peers = match federation["peersConfigMap"].as_str() {
        None => federation["peers"].clone(),
        Some(live) => {
            let Some(map) = maps.get_opt(live).await? else {
                return Ok(None);
            };
            let key = federation["peersKey"].as_str().unwrap_or("peers.yaml");
            read(map, key)?["peers"].clone()
        }
    };
    Ok(Some(peers.as_array().cloned().unwrap_or_default()))
}

/// The config's peers, once `check` holds.
pub async fn wait_config_peers(
    client: &Client,
    ns: &str,
    pool: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    eventually(&format!("{pool}'s config: {what}"), WAIT, || async {
        let peers = config_peers(client, ns, pool)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no config yet")?;
        if check(&peers) {
            Ok(peers)
        } else {
            Err(serde_json::to_string(&peers).unwrap_or_default())
        }
    })
    .await
}

/// The config's peer `name`.
pub fn config_peer<'a>(peers: &'a [Value], name: &str) -> Option<&'a Value> {
    peers.iter().find(|p| p["name"] == name)
}

/// Every `(ipBlock.cidr, TCP port)` the egress rules of `policy` allow.
pub fn policy_ip_egress(policy: &NetworkPolicy) -> anyhow::Result<BTreeSet<(String, i32)>> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut found = BTreeSet::new();
    for rule in policy
        .spec
        .as_ref()
        .and_then(|s| s.egress.clone())
        .unwrap_or_default()
    {
        let ports: Vec<i32> = rule
            .ports
            .iter()
            .flatten()
            .filter_map(|p| match &p.port {
                Some(IntOrString::Int(n)) => Some(*n),
                _ => None,
            })
            .collect();
        for to in rule.to.iter().flatten() {
            if let Some(block) = &to.ip_block {
                ensure!(
                    block.except.as_ref().is_none_or(Vec::is_empty),
                    "an ipBlock with exceptions: {block:?}"
                );
                ensure!(!ports.is_empty(), "an ipBlock on every port: {block:?}");
                for port in &ports {
                    found.insert((block.cidr.clone(), *port));
                }
            }
        }
    }
    Ok(found)
}

/// The NetworkPolicies the Pool owns, by name.
pub async fn pool_policies(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, NetworkPolicy>> {
    Ok(Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Pool" && o.name == pool)
        })
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect())
}

/// Every `(ipBlock.cidr, TCP port)` the Pool's NetworkPolicies (those it
/// owns: `<pool>-pool`, `<pool>-peers`) allow as egress: the API server's
/// address, the peers, extra egress; `None` while there is no
/// `<pool>-pool` policy yet.
pub async fn ip_egress(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<Option<BTreeSet<(String, i32)>>> {
    let owned = pool_policies(client, ns, pool).await?;
    if !owned.contains_key(&cellule_operator::names::pool(pool)) {
        return Ok(None);
    }
    let mut found = BTreeSet::new();
    for policy in owned.values() {
        found.extend(policy_ip_egress(policy)?);
    }
    Ok(Some(found))
}

/// The Pool's IP egress, once `check` holds.
pub async fn wait_ip_egress(
    client: &Client,
    ns: &str,
    pool: &str,
    what: &str,
    check: impl Fn(&BTreeSet<(String, i32)>) -> bool,
) -> anyhow::Result<BTreeSet<(String, i32)>> {
    eventually(&format!("{pool}'s egress: {what}"), WAIT, || async {
        let found = ip_egress(client, ns, pool)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no egress policy yet")?;
        if check(&found) {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await
}

/// The Pool's IP egress before any peer: its config and policy rendered
/// (the API server's address is in it).
pub async fn baseline_egress(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<BTreeSet<(String, i32)>> {
    wait_config_peers(client, ns, pool, "rendered", |_| true).await?;
    wait_ip_egress(client, ns, pool, "the API server's address", |e| {
        !e.is_empty()
    })
    .await
}

pub fn rule(cidr: &str, port: i32) -> (String, i32) {
    (cidr.to_owned(), port)
}

/// `base64` with one bit of byte `index` flipped: one byte changed.
pub fn flip_byte(b64: &str, index: usize) -> String {
    let mut bytes = STANDARD.decode(b64).expect("base64");
    bytes[index] ^= 0x01;
    STANDARD.encode(bytes)
}

/// A client with the credentials of the Pool's own ServiceAccount
/// (`<pool>-pool`), once it exists.
pub async fn pool_client(client: &Client, ns: &str, pool: &str) -> anyhow::Result<Client> {
    let sa = cellule_operator::names::pool(pool);
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns);
    eventually(&format!("ServiceAccount {sa}"), WAIT, || async {
        accounts
            .get_opt(&sa)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_owned())
    })
    .await?;
    let kubeconfig = crate::service_account_kubeconfig(client, ns, &sa).await?;
    crate::client_from(&kubeconfig).await
}

/// Writes the pool's report on peer `peer` (a value of
/// `<pool>-peer-reports`) with `as_pool`, the pool's credentials.
pub async fn report(
    as_pool: &Client,
    ns: &str,
    pool: &str,
    peer: &str,
    value: &str,
) -> anyhow::Result<()> {
    let name = cellule_operator::names::peer_reports(pool);
    let reports = Api::<ConfigMap>::namespaced(as_pool.clone(), ns);
    eventually(&format!("{name} patched"), WAIT, || async {
        reports
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {peer: value}})),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

/// The Events about PeerTrust `name`, oldest first.
pub async fn peer_events(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    let mut events: Vec<Event> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("PeerTrust") && r.name.as_deref() == Some(name)
            })
        })
        .collect();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(events)
}

/// The first Event about PeerTrust `name` with `reason` whose note
/// contains `note`, once there is one.
pub async fn peer_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    note: &str,
) -> anyhow::Result<Event> {
    eventually(
        &format!("a {reason} Event about {name} saying {note:?}"),
        WAIT,
        || async {
            let events = peer_events(client, ns, name)
                .await
                .map_err(|e| e.to_string())?;
            events
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.note.as_deref().is_some_and(|n| n.contains(note))
                })
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        events
                            .iter()
                            .map(|e| (e.reason.clone(), e.note.clone()))
                            .collect::<Vec<_>>()
                    )
                })
        },
    )
    .await
}

/// The Pool's federation Secret: `(keys.json, nonces.json)` as JSON, and
/// its resourceVersion.
pub async fn federation_secret(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<(Value, Value, String)> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&cellule_operator::names::federation(pool))
        .await?;
    let data = secret.data.clone().context("the Secret's data")?;
    let read = |key: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(
            &data
                .get(key)
                .with_context(|| format!("{key} in the Secret"))?
                .0,
        )?)
    };
    Ok((
        read("keys.json")?,
        read("nonces.json")?,
        secret.metadata.resource_version.unwrap_or_default(),
    ))
}

/// The hex SHA-256 of `text` (`sha256sum`): what the nonce ledger records
/// for a statement.
pub async fn sha256_hex(text: &str) -> anyhow::Result<String> {
    let output = crate::run_with_stdin(Path::new("sha256sum"), &[], text).await?;
    ensure!(output.status.success(), "sha256sum failed");
    Ok(String::from_utf8(output.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// [`crate::in_namespace`] for a site: its scratch directory (admin
/// keys, manifests) goes with the namespace.
pub async fn in_site_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::in_namespace(prefix, |client, ns| async move {
        let dir = std::env::temp_dir().join(format!("cellule-federation-{ns}"));
        // Boxed: nested sites make futures too large for a test thread's
        // stack in a debug build.
        let outcome = Box::pin(body(client, ns)).await;
        let _ = std::fs::remove_dir_all(dir);
        outcome
    })
    .await;
}

/// Runs `body` in two fresh namespaces (two sites), deleted afterwards
/// (with their scratch directories) whether `body` passed or not.
pub async fn in_two_namespaces<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    in_site_namespace(&format!("{prefix}-a"), |_, a| async move {
        in_site_namespace(&format!("{prefix}-b"), move |client, b| body(client, a, b)).await;
        Ok(())
    })
    .await;
}

/// A typed watch of PeerTrust `name`'s effective level (what the status
/// says, `None` before it says anything), with the instant of each change.
pub fn watch_level(
    client: &Client,
    ns: &str,
    name: &str,
) -> crate::failover::Timeline<Option<i32>> {
    use cellule_operator::api::PeerTrust;
    let name = name.to_owned();
    crate::failover::Timeline::watch(
        Api::<PeerTrust>::namespaced(client.clone(), ns),
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}")),
        move |objects| {
            objects
                .get(&name)
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.effective_trust_level)
        },
    )
}
