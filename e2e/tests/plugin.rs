//! The kubectl plugin `kubectl-cellule` (plugin/), run as a user runs it
//! against the shared operator: status of the sample site, revoke, rotate,
//! suspend and undo checked end to end with its own `verify-token`,
//! four-eyes approval by two real users, a compromised key, the handshake
//! statement read from the cluster, and errors that say what to do.

use std::{path::PathBuf, process::Output, time::Duration};

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    Env, cellule_api, eventually, federation::operator_cli, in_namespace, merge_patch, run_tool,
    sample_site_ready, token_of, user_client,
};
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn plugin_bin() -> PathBuf {
    std::env::var("CELLULE_E2E_PLUGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cellule_e2e::repo_path("target/debug/kubectl-cellule"))
}

/// What a run of the plugin gave: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

impl Run {
    fn ok(self) -> anyhow::Result<String> {
        ensure!(
            self.code == Some(0),
            "exit {:?}: {}{}",
            self.code,
            self.out,
            self.err
        );
        Ok(self.out)
    }

    fn failed(self) -> anyhow::Result<String> {
        ensure!(
            self.code.is_some_and(|c| c != 0),
            "expected a failure, got exit {:?}: {}",
            self.code,
            self.out
        );
        Ok(self.err)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            out: String::from_utf8_lossy(&o.stdout).into_owned(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// `kubectl-cellule --kubeconfig K -n NS ARGS` with `stdin`.
async fn plugin_as(kubeconfig: &str, ns: &str, args: &[&str], stdin: &str) -> anyhow::Result<Run> {
    let mut all = vec!["--kubeconfig", kubeconfig, "-n", ns];
    all.extend_from_slice(args);
    Ok(cellule_e2e::run_with_stdin(&plugin_bin(), &all, stdin)
        .await?
        .into())
}

/// As the cluster admin.
async fn plugin(ns: &str, args: &[&str]) -> anyhow::Result<Run> {
    plugin_as(&Env::var("CELLULE_E2E_KUBECONFIG"), ns, args, "").await
}

/// `verify-token --pool paris` on `token`.
async fn verify(ns: &str, token: &str) -> anyhow::Result<Run> {
    let run = plugin_as(
        &Env::var("CELLULE_E2E_KUBECONFIG"),
        ns,
        &["verify-token", "--pool", "paris"],
        token,
    )
    .await?;
    // Whatever the verdict, the token itself is never printed.
    ensure!(
        !run.out.contains(token.trim()) && !run.err.contains(token.trim()),
        "verify-token printed the token"
    );
    Ok(run)
}

/// The line of `text` that starts (after indentation) with `first`.
fn line<'a>(text: &'a str, first: &str) -> anyhow::Result<&'a str> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .with_context(|| format!("no line for {first} in:\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

async fn grant_status(
    client: &Client,
    ns: &str,
    grant: &str,
    phase: &str,
) -> anyhow::Result<Value> {
    let api = cellule_api(client, ns, "WorkerGrant");
    eventually(&format!("{grant} {phase}"), WAIT, || async {
        let g = api.get(grant).await.map_err(|e| e.to_string())?;
        if g.data["status"]["phase"] == phase {
            Ok(g.data["status"].clone())
        } else {
            Err(g.data["status"].to_string())
        }
    })
    .await
}

/// The value after `key` in the plugin's output (`token jti X`).
fn after<'a>(text: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let at = text
        .find(key)
        .with_context(|| format!("no {key:?} in {text}"))?;
    text[at + key.len()..]
        .split_whitespace()
        .next()
        .map(|w| w.trim_end_matches([',', ')']))
        .with_context(|| format!("nothing after {key:?}"))
}

#[tokio::test]
async fn status_revoke_rotate_suspend_and_errors() {
    in_namespace("plugin", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let alice = grant_status(&client, &ns, "laptop-alice", "Active").await?;
        grant_status(&client, &ns, "laptop-contractor", "PendingApproval").await?;
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let digest = pool.data["status"]["image"]["digest"].as_str().context("digest")?.to_owned();
        // The tiers' routing is in status once the NPU server is counted.
        let screen = eventually("status with both tiers routed", WAIT, || async {
            let out = plugin(&ns, &["status", "paris"]).await.map_err(|e| e.to_string())?.ok().map_err(|e| e.to_string())?;
            if out.contains("NpuHealthy") { Ok(out) } else { Err(out) }
        })
        .await?;
        println!("{screen}");
        ensure!(screen.starts_with(&format!("Pool paris (namespace {ns})")), "{screen}");
        ensure!(words(line(&screen, "Ready")?)[1] == "True", "{screen}");
        ensure!(words(line(&screen, "Stalled")?)[1] == "False", "{screen}");
        let light = words(line(&screen, "light")?);
        ensure!(light[1] == "CPU" && light.contains(&"CpuTier"), "{light:?}");
        let heavy = line(&screen, "heavy")?;
        ensure!(heavy.contains(" NPU ") && heavy.contains("healthy") && heavy.contains("qwen-30b-instruct"), "{heavy}");
        ensure!(line(&screen, "pool")?.contains(&digest), "the verified digest: {screen}");
        ensure!(words(line(&screen, "ImageVerified")?)[1] == "True", "{screen}");
        let kid = alice["token"]["keyId"].as_str().context("kid")?;
        ensure!(words(line(&screen, kid)?)[1] == "Signing", "{screen}");
        ensure!(line(&screen, "laptop-contractor")?.contains("PendingApproval"), "{screen}");
        ensure!(!screen.contains("laptop-alice"), "an active grant far from expiry needs no attention: {screen}");
        ensure!(screen.contains("Grants: 2 of this pool, 1 active"), "{screen}");
        let lyon = words(line(&screen, "lyon")?);
        ensure!(lyon[..4] == ["lyon", "lyon", "2", "2"] && lyon.contains(&"True"), "{lyon:?}");
        ensure!(words(line(&screen, "marseille")?)[..4] == ["marseille", "marseille", "1", "1"], "{screen}");
        // A window of 800 days takes in the 30-day token too.
        let wide = plugin(&ns, &["status", "--expiring-within", "19200h"]).await?.ok()?;
        ensure!(line(&wide, "laptop-alice")?.contains("token expires soon"), "{wide}");

        // The token verifies; rotated, it is refused and the new one verifies.
        let first = token_of(&client, &ns, "laptop-alice").await?;
        let claims: Value = serde_json::from_str(&verify(&ns, &first).await?.ok()?)?;
        ensure!(claims["jti"] == alice["token"]["jti"] && claims["sub"] == "pc-0042", "{claims}");
        let rotated = plugin(&ns, &["rotate", "laptop-alice"]).await?.ok()?;
        let new_jti = after(&rotated, "Active: token jti ")?.to_owned();
        ensure!(claims["jti"] != new_jti.as_str(), "{rotated}");
        // A rotation revokes the old token at once (no renewal grace).
        let old_jti = claims["jti"].as_str().context("jti")?.to_owned();
        ensure!(rotated.contains(&format!("token jti {old_jti} revoked (RevocationList paris-revoked-")), "{rotated}");
        let refused = verify(&ns, &first).await?.failed()?;
        ensure!(refused.contains(&format!("token {old_jti} is revoked")), "{refused}");
        let second = eventually("the rotated token in its Secret", WAIT, || async {
            let t = token_of(&client, &ns, "laptop-alice").await.map_err(|e| e.to_string())?;
            if t != first { Ok(t) } else { Err("old token".into()) }
        })
        .await?;
        let claims: Value = serde_json::from_str(&verify(&ns, &second).await?.ok()?)?;
        ensure!(claims["jti"] == new_jti.as_str(), "{claims}");

        // Suspended: refused; back: a new token that verifies.
        let suspended = plugin(&ns, &["suspend", "laptop-alice"]).await?.ok()?;
        ensure!(suspended.contains("is Suspended") && suspended.contains(&format!("token jti {new_jti} revoked")), "{suspended}");
        ensure!(verify(&ns, &second).await?.failed()?.contains("is revoked"));
        let resumed = plugin(&ns, &["suspend", "--undo", "laptop-alice"]).await?.ok()?;
        let third_jti = after(&resumed, "Active: token jti ")?.to_owned();
        ensure!(third_jti != new_jti, "{resumed}");
        let third = eventually("the resumed token", WAIT, || async {
            let t = token_of(&client, &ns, "laptop-alice").await.map_err(|e| e.to_string())?;
            if t != second { Ok(t) } else { Err("old token".into()) }
        })
        .await?;
        verify(&ns, &third).await?.ok()?;

        // Revoked: refused, for good, and on-call sees it.
        let revoked = plugin(&ns, &["revoke", "laptop-alice"]).await?.ok()?;
        ensure!(revoked.contains("is Revoked") && revoked.contains(&format!("token jti {third_jti} revoked (RevocationList paris-revoked-")), "{revoked}");
        ensure!(verify(&ns, &third).await?.failed()?.contains(&format!("token {third_jti} is revoked")));
        let screen = plugin(&ns, &["status"]).await?.ok()?;
        ensure!(line(&screen, "laptop-alice")?.contains("Revoked"), "{screen}");
        let again = plugin(&ns, &["suspend", "--undo", "laptop-alice"]).await?.failed()?;
        ensure!(again.contains("revoked for good"), "{again}");

        // Missing objects: a non-zero exit naming the object and what to do.
        let missing = plugin(&ns, &["revoke", "laptop-nobody"]).await?.failed()?;
        ensure!(missing.contains(&format!("WorkerGrant laptop-nobody not found in namespace {ns}: list them with `kubectl get workergrants -n {ns}`")), "{missing}");
        for args in [&["rotate", "laptop-nobody"][..], &["approve", "laptop-nobody"], &["suspend", "laptop-nobody"]] {
            let err = plugin(&ns, args).await?.failed()?;
            ensure!(err.contains("WorkerGrant laptop-nobody not found"), "{args:?}: {err}");
        }
        let missing = plugin(&ns, &["status", "lille"]).await?.failed()?;
        ensure!(missing.contains(&format!("Pool lille not found in namespace {ns}: list them with `kubectl get pools -n {ns}`")), "{missing}");
        let missing = plugin(&ns, &["compromise-key", "lille", "k1", "--yes"]).await?.failed()?;
        ensure!(missing.contains("Pool lille not found"), "{missing}");
        let missing = plugin_as(&Env::var("CELLULE_E2E_KUBECONFIG"), &ns, &["verify-token", "--pool", "lille"], &first).await?.failed()?;
        ensure!(missing.contains("Pool lille has no ConfigMap lille-jwks") && missing.contains("kubectl cellule status lille"), "{missing}");
        let missing = plugin(&ns, &["approve", "peertrust", "lille", "--level", "3"]).await?.failed()?;
        ensure!(missing.contains("PeerTrust lille not found") && missing.contains("kubectl get peertrusts"), "{missing}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_compromised_key_is_declared_and_its_tokens_replaced() {
    in_namespace("plugin-key", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        merge_patch(
            &client,
            &ns,
            "Pool",
            "paris",
            json!({"spec": {"tokens": {"approvalRequired": false}}}),
        )
        .await?;
        let names = ["laptop-alice", "laptop-contractor"];
        let mut old = Vec::new();
        for name in names {
            let status = grant_status(&client, &ns, name, "Active").await?;
            old.push((
                name,
                status["token"]["jti"].as_str().context("jti")?.to_owned(),
                token_of(&client, &ns, name).await?,
            ));
        }
        let kid = jsonwebtoken::decode_header(&old[0].2)?.kid.context("kid")?;
        // Without --yes nothing happens.
        let unconfirmed = plugin(&ns, &["compromise-key", "paris", &kid])
            .await?
            .failed()?;
        ensure!(unconfirmed.contains("--yes"), "{unconfirmed}");
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        ensure!(
            pool.data["spec"]["tokens"]["compromisedKeys"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{}",
            pool.data["spec"]["tokens"]
        );
        let unknown = plugin(&ns, &["compromise-key", "paris", "no-such-kid", "--yes"])
            .await?
            .failed()?;
        ensure!(
            unknown.contains("publishes no signing key no-such-kid") && unknown.contains(&kid),
            "{unknown}"
        );

        let started = std::time::Instant::now();
        let out = plugin(&ns, &["compromise-key", "paris", &kid, "--yes"])
            .await?
            .ok()?;
        println!("compromise-key settled in {:?}:\n{out}", started.elapsed());
        let signer = after(&out, "now signing with ")?.to_owned();
        ensure!(
            signer != kid && out.contains(&format!("key {kid} withdrawn")),
            "{out}"
        );
        ensure!(out.contains("tokens re-issued (2)"), "{out}");
        for (name, jti, token) in &old {
            ensure!(
                line(&out, &format!("{name}:"))?.contains(&format!("{jti} -> "))
                    && line(&out, &format!("{name}:"))?.contains(&format!("(key {signer})")),
                "{out}"
            );
            let refused = verify(&ns, token).await?.failed()?;
            ensure!(
                refused.contains(&format!("no key \"{kid}\"")),
                "{name}: {refused}"
            );
            let fresh = eventually(&format!("{name}'s new token"), WAIT, || async {
                let t = token_of(&client, &ns, name)
                    .await
                    .map_err(|e| e.to_string())?;
                if t != *token {
                    Ok(t)
                } else {
                    Err("old".into())
                }
            })
            .await?;
            verify(&ns, &fresh).await?.ok()?;
        }
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        ensure!(
            pool.data["spec"]["tokens"]["compromisedKeys"] == json!([kid]),
            "{}",
            pool.data["spec"]["tokens"]
        );
        // Declared twice: said so, nothing changes.
        let twice = plugin(
            &ns,
            &["compromise-key", "paris", &kid, "--yes", "--wait=false"],
        )
        .await?
        .ok()?;
        ensure!(twice.contains("already in"), "{twice}");
        Ok(())
    })
    .await;
}

/// A kubeconfig for one of `up.sh`'s token users, next to the admin's.
fn user_kubeconfig(user: &str, ns: &str) -> anyhow::Result<String> {
    let tokens = std::fs::read_to_string(Env::var("CELLULE_E2E_TOKENS"))?;
    let token = tokens
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(1) == Some(&user)).then(|| f[0].to_owned())
        })
        .context("the user's token")?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(Env::var(
        "CELLULE_E2E_KUBECONFIG",
    ))?)?;
    for entry in config["users"].as_sequence_mut().context("users")? {
        entry["user"] = serde_yaml::to_value(json!({"token": token}))?;
    }
    let path = PathBuf::from(Env::var("CELLULE_E2E_STATE")).join(format!("{ns}-{user}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path.to_str().context("utf-8")?.to_owned())
}

#[tokio::test]
async fn approval_needs_a_second_person_for_grants_and_level_3() {
    in_namespace("plugin-4eyes", |client: Client, ns: String| async move {
        // The site first: its sample grant is created approved, which
        // four-eyes refuses.
        sample_site_ready(&client, &ns).await?;
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let admission = cellule_e2e::repo_path("config/admission");
        run_tool("kubectl", &["--kubeconfig", &kubeconfig, "apply", "--server-side", "--force-conflicts", "-k", admission.to_str().unwrap()], &[]).await?;
        Api::<Namespace>::all(client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"cellule.ai/four-eyes": "enforced"}}})))
            .await?;
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "grant-editor"},
            "rules": [{"apiGroups": ["cellule.ai"], "resources": ["workergrants", "peertrusts"], "verbs": ["get", "list", "create", "patch", "update"]}]
        }))?;
        Api::<Role>::namespaced(client.clone(), &ns).create(&PostParams::default(), &role).await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "grant-editors"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "grant-editor"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]
        }))?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&PostParams::default(), &binding).await?;
        let (alice, bob) = (user_kubeconfig("alice", &ns)?, user_kubeconfig("bob", &ns)?);
        let grants = cellule_api(&user_client("alice").await, &ns, "WorkerGrant");
        let grant = |name: &str| -> anyhow::Result<kube::api::DynamicObject> {
            Ok(serde_json::from_value(json!({
                "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
                "metadata": {"name": name},
                "spec": {"poolRef": {"name": "paris"}, "workerId": "pc-0099", "owner": "alice@example.com",
                         "tiers": ["light"], "ttl": "24h", "requestedBy": "alice"},
            }))?)
        };
        // The policy is in force once the API server has loaded it.
        eventually("the four-eyes policy in force", WAIT, || async {
            let mut other = grant("probe").map_err(|e| e.to_string())?;
            other.data["spec"]["requestedBy"] = json!("bob");
            match grants.create(&PostParams { dry_run: true, ..Default::default() }, &other).await {
                Err(kube::Error::Api(s)) if s.message.contains("must be alice") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        grants.create(&PostParams::default(), &grant("laptop-new")?).await?;
        grant_status(&client, &ns, "laptop-new", "PendingApproval").await?;

        let refused = plugin_as(&alice, &ns, &["approve", "laptop-new"], "").await?.failed()?;
        // The CRD's own rule answers before the admission policy does.
        ensure!(refused.contains("approvedBy must be a different person than requestedBy (four-eyes)") && refused.contains("you (alice) requested this grant"), "{refused}");
        let spec = cellule_api(&client, &ns, "WorkerGrant").get("laptop-new").await?.data["spec"].clone();
        ensure!(spec.get("approvedBy").is_none(), "{spec}");
        // An approval is bound to what the approver reviewed: bob reads the
        // grant, alice widens it before he approves, and his approval of
        // the version he read is refused.
        let wg = cellule_api(&client, &ns, "WorkerGrant");
        let read = wg.get("laptop-new").await?.metadata.resource_version.context("resourceVersion")?;
        cellule_api(&user_client("alice").await, &ns, "WorkerGrant")
            .patch("laptop-new", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tiers": ["light", "heavy"], "ttl": "48h"}})))
            .await?;
        let run = plugin_as(&bob, &ns, &["approve", "laptop-new", "--resource-version", &read], "").await?;
        let shown = run.out.clone();
        let stale = run.failed()?;
        ensure!(stale.contains(&format!("WorkerGrant laptop-new changed since it was read/reviewed at resourceVersion {read}: nothing was approved")) && stale.contains("Review it again"), "{stale}");
        ensure!(shown.contains("Approving WorkerGrant laptop-new") && shown.contains(&format!("the approval is bound to {read}")), "{shown}");
        let spec = wg.get("laptop-new").await?.data["spec"].clone();
        ensure!(spec.get("approvedBy").is_none() && spec["ttl"] == "48h", "{spec}");
        grant_status(&client, &ns, "laptop-new", "PendingApproval").await?;
        // The current version, once the operator has seen it (so its status
        // write does not move it on), is approved, and bob saw what it is.
        let current = eventually("the widened grant's status written", WAIT, || async {
            let g = wg.get("laptop-new").await.map_err(|e| e.to_string())?;
            let seen = g.data["status"]["observedGeneration"].as_i64();
            if seen.is_none() || seen != g.metadata.generation {
                return Err(format!("observedGeneration {seen:?}, generation {:?}", g.metadata.generation));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = wg.get("laptop-new").await.map_err(|e| e.to_string())?;
            match (g.metadata.resource_version, again.metadata.resource_version) {
                (Some(a), Some(b)) if a == b => Ok(a),
                other => Err(format!("resourceVersion moving: {other:?}")),
            }
        })
        .await?;
        ensure!(current != read);
        let approved = plugin_as(&bob, &ns, &["approve", "laptop-new", "--resource-version", &current], "").await?.ok()?;
        ensure!(approved.contains("approved by bob") && approved.contains("is Active: token jti "), "{approved}");
        for want in [format!("Approving WorkerGrant laptop-new (resourceVersion {current}, uid "), "workerId:    pc-0099".into(), "owner:       alice@example.com".into(), "pool:        paris".into(), "tiers:       light, heavy".into(), "expiry:      ttl 48h".into(), "requestedBy: alice".into()] {
            ensure!(approved.contains(&want), "{want}: {approved}");
        }
        let status = grant_status(&client, &ns, "laptop-new", "Active").await?;
        ensure!(status["audit"]["approvedBy"] == "bob" && approved.contains(status["token"]["jti"].as_str().unwrap_or("?")), "{status}");

        // Level 3 of a PeerTrust: alice made it (level 2, with a handshake),
        // only bob raises it.
        let nonce = plugin(&ns, &["handshake", "nonce"]).await?.ok()?.trim().to_owned();
        let now = jiff::Timestamp::now();
        let at = |secs: i64| jiff::Timestamp::from_second(now.as_second() + secs).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let peer: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
            "metadata": {"name": "nantes"},
            "spec": {"poolRef": {"name": "paris"}, "site": "nantes", "peerPool": {"namespace": "cellule-nantes", "name": "nantes"},
                     "endpoint": {"host": "10.60.0.1", "port": 8443},
                     "publicKey": cellule_operator::peer_trust::handshake::generate_key().1,
                     "trustLevel": 2, "requestedBy": "alice",
                     "handshake": {"nonce": nonce, "notBefore": at(-60), "notAfter": at(3600)}},
        }))?;
        cellule_api(&user_client("alice").await, &ns, "PeerTrust").create(&PostParams::default(), &peer).await?;
        let refused = plugin_as(&alice, &ns, &["approve", "peertrust", "nantes", "--level", "3"], "").await?.failed()?;
        ensure!(refused.contains("raising a PeerTrust to trustLevel 3 needs a second person") && refused.contains("you (alice) last changed"), "{refused}");
        let raised = plugin_as(&bob, &ns, &["approve", "peertrust", "nantes", "--level", "3"], "").await?.ok()?;
        // Before writing, bob sees what he raises: the key's fingerprint as
        // the operator names it, the handshake, who asked.
        let fingerprint = cellule_operator::peer_trust::handshake::fingerprint(&cellule_operator::peer_trust::handshake::public_key("", peer.data["spec"]["publicKey"].as_str().context("key")?)?);
        for want in ["Approving PeerTrust nantes (resourceVersion ".to_owned(), "site:        nantes (pool cellule-nantes/nantes)".into(), "endpoint:    10.60.0.1:8443".into(), format!("publicKey:   {fingerprint}"), format!("handshake:   nonce {nonce}, valid {} to {}", at(-60), at(3600)), "requestedBy: alice".into(), "trustLevel:  3 (now 2)".into()] {
            ensure!(raised.contains(&want), "{want}: {raised}");
        }
        // Unsigned, the handshake grants no level 3: the effective level says so.
        ensure!(raised.contains("approved by bob") && raised.contains("requested level 3, effective level 2"), "{raised}");
        let spec = cellule_api(&client, &ns, "PeerTrust").get("nantes").await?.data["spec"].clone();
        ensure!(spec["trustLevel"] == 3 && spec["approvedBy"] == "bob", "{spec}");
        let level = plugin(&ns, &["approve", "peertrust", "nantes", "--level", "2"]).await?.failed()?;
        ensure!(level.contains("needs no approval"), "{level}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_statement_from_the_cluster_is_the_file_based_one() {
    in_namespace("plugin-hs", |client: Client, ns: String| async move {
        sample_site_ready(&client, &ns).await?;
        let nonce = plugin(&ns, &["handshake", "nonce"]).await?.ok()?.trim().to_owned();
        ensure!(nonce.len() == 32 && nonce.chars().all(|c| c.is_ascii_hexdigit()), "{nonce}");
        // Before the handshake is in the PeerTrust: what is missing.
        let missing = plugin(&ns, &["handshake", "statement", "--pool", "paris", "--peer-trust", "lyon"]).await?.failed()?;
        ensure!(missing.contains("the PeerTrust has no spec.handshake"), "{missing}");
        let now = jiff::Timestamp::now().as_second();
        let at = |s: i64| jiff::Timestamp::from_second(now + s).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        merge_patch(&client, &ns, "PeerTrust", "lyon", json!({"spec": {"handshake": {"nonce": nonce, "notBefore": at(-60), "notAfter": at(3600)}}})).await?;
        // The pool's federation key is in status once the operator made it.
        eventually("the pool's federation key", WAIT, || async {
            let p = cellule_api(&client, &ns, "Pool").get("paris").await.map_err(|e| e.to_string())?;
            p.data["status"]["federation"]["publicKey"].as_str().map(|_| ()).ok_or("none".to_owned())
        })
        .await?;
        let from_cluster = plugin(&ns, &["handshake", "statement", "--pool", "paris", "--peer-trust", "lyon"]).await?.ok()?;
        ensure!(from_cluster.starts_with("cellule.ai/peer-trust-handshake/v2\n") && from_cluster.contains(&format!("nonce={nonce}\n")), "{from_cluster}");
        ensure!(from_cluster.contains(&format!("pool={ns}/paris")) && from_cluster.contains("pool=cellule-lyon/lyon"), "{from_cluster}");

        let dir = PathBuf::from(Env::var("CELLULE_E2E_STATE")).join(&ns);
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let (pool_file, peer_file) = (dir.join("paris.yaml"), dir.join("lyon.yaml"));
        for (kind, name, file) in [("pool", "paris", &pool_file), ("peertrust", "lyon", &peer_file)] {
            std::fs::write(file, run_tool("kubectl", &["--kubeconfig", &kubeconfig, "-n", &ns, "get", kind, name, "-o", "yaml"], &[]).await?)?;
        }
        let (pool_file, peer_file) = (pool_file.to_str().context("utf-8")?, peer_file.to_str().context("utf-8")?);
        let operator = operator_cli(&["handshake", "statement", "--pool", pool_file, "--peer-trust", peer_file]).await?;
        ensure!(from_cluster == operator, "plugin:\n{from_cluster}\noperator:\n{operator}");
        let offline = plugin(&ns, &["handshake", "statement", "--pool-file", pool_file, "--peer-trust-file", peer_file]).await?.ok()?;
        ensure!(offline == operator, "{offline}");

        // An admin key, then the same signature both ways (Ed25519 is
        // deterministic); an existing key file is never overwritten.
        let key = dir.join("admin.key");
        let key = key.to_str().context("utf-8")?;
        let public = plugin(&ns, &["handshake", "keygen", "--out", key]).await?.ok()?;
        cellule_operator::peer_trust::handshake::public_key("the printed key", public.trim())?;
        use std::os::unix::fs::PermissionsExt as _;
        ensure!(std::fs::metadata(key)?.permissions().mode() & 0o777 == 0o600);
        let again = plugin(&ns, &["handshake", "keygen", "--out", key]).await?.failed()?;
        ensure!(again.contains("never overwritten"), "{again}");
        let signed = plugin(&ns, &["handshake", "sign", "--pool", "paris", "--peer-trust", "lyon", "--key", key]).await?.ok()?;
        let by_operator = operator_cli(&["handshake", "sign", "--pool", pool_file, "--peer-trust", peer_file, "--key", key]).await?;
        ensure!(signed == by_operator && signed.trim().len() == 88, "{signed} vs {by_operator}");
        ensure!(!signed.contains(std::fs::read_to_string(key)?.trim()), "the private key is never printed");
        Ok(())
    })
    .await;
}

/// Every command's `--help` works and shows an example.
#[tokio::test]
async fn every_help_has_an_example() -> anyhow::Result<()> {
    let commands: &[&[&str]] = &[
        &[],
        &["status"],
        &["revoke"],
        &["suspend"],
        &["rotate"],
        &["approve"],
        &["approve", "peertrust"],
        &["approve", "grant"],
        &["compromise-key"],
        &["handshake"],
        &["handshake", "keygen"],
        &["handshake", "nonce"],
        &["handshake", "statement"],
        &["handshake", "sign"],
        &["verify-token"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run: Run = cellule_e2e::run_with_stdin(&plugin_bin(), &args, "")
            .await?
            .into();
        let out = run.ok()?;
        ensure!(
            out.contains("Examples:\n  kubectl cellule"),
            "{command:?}: {out}"
        );
    }
    Ok(())
}
