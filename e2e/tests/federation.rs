//! PeerTrust federation (issue 14) on the real API server: two sites are
//! two namespaces, each with its Pool, its admin and its federation key;
//! the level-3 handshake is made with the `cellule-operator handshake`
//! commands as admins make it (see `cellule_e2e::federation`). What the
//! operator decides is read where a pool reads it: the PeerTrust's status
//! and Events, the peers the Pool's config points it to (the live
//! `<pool>-peers` ConfigMap) and the egress of its NetworkPolicies (and,
//! once, the np-guard analyzer's reading of them).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cellule_e2e::{
    Env, allowed_connections, cellule_api, egress_allowed, eventually,
    federation::{
        Window, apply, baseline_egress, condition, config_peer, endpoint,
        exchange_countersignatures, federate, federation_secret, flip_byte, in_site_namespace,
        in_two_namespaces, ip_egress, keygen, observed, operator_cli, paris_and_lyon, peer_event,
        peer_trust, policy_ip_egress, pool_client, pool_document, pool_key, pool_policies,
        random_key, report, rfc3339, rule, scratch, sha256_hex, sign, sign_both, start_site,
        summary, trust_of, wait_config_peers, wait_handshake, wait_ip_egress, wait_level,
        wait_peer, watch_level,
    },
    merge_patch, run_tool,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn level(obj: &Value) -> &Value {
    &obj["status"]["effectiveTrustLevel"]
}

/// Ready's status and reason.
fn ready(obj: &Value) -> (String, String) {
    condition(obj, "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default()
}

/// `value` with the JSON pointer `path` set to `to`.
fn with(value: &Value, path: &str, to: Value) -> Value {
    let mut changed = value.clone();
    *changed
        .pointer_mut(path)
        .unwrap_or_else(|| panic!("{path} in {value}")) = to;
    changed
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    value
        .pointer(path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path} in {value}"))
}

/// The peer `name` is in the config at `level` (and, at 3, with its end).
fn config_has(peers: &[Value], name: &str, level: i64) -> bool {
    config_peer(peers, name)
        .is_some_and(|p| p["trustLevel"] == level && (level == 3) == p["level3Until"].is_string())
}

async fn annotate(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    merge_patch(
        client,
        ns,
        "PeerTrust",
        name,
        json!({"metadata": {"annotations": {key: value}}}),
    )
    .await
}

/// The Pool's `status.federation.fingerprint`.
async fn fingerprint(client: &Client, ns: &str, pool: &str) -> anyhow::Result<String> {
    let p = cellule_api(client, ns, "Pool").get(pool).await?;
    Ok(p.data["status"]["federation"]["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

async fn delete_peer(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    cellule_api(client, ns, "PeerTrust")
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_handshake_signed_by_both_sites_trusts_each_pool_at_level_3() {
    in_two_namespaces("fed-flow", |client: Client, a: String, b: String| async move {
        let started = Instant::now();
        let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
        // Each pool's key is minted once, in its Secret; the status
        // publishes its public half.
        for site in [&paris, &lyon] {
            let (keys, _, _) = federation_secret(&client, &site.ns, &site.pool).await?;
            let identity: cellule_operator::peer_trust::identity::Identity = serde_json::from_value(keys)?;
            ensure!(identity.keys.len() == 1, "{}: {} keys", site.pool, identity.keys.len());
            let current = identity.current().and_then(|k| k.public()).context("a current key")?;
            ensure!(
                cellule_operator::peer_trust::handshake::encode(&current) == site.pool_key,
                "{}: the status publishes another key than the Secret's",
                site.pool
            );
        }
        let (paris_fp, lyon_fp) = (fingerprint(&client, &a, "paris").await?, fingerprint(&client, &b, "lyon").await?);
        ensure!(paris_fp.starts_with("sha256:") && paris_fp.len() == 71, "{paris_fp}");
        let (base_a, base_b) = tokio::try_join!(baseline_egress(&client, &a, "paris"), baseline_egress(&client, &b, "lyon"))?;
        let sites_up = started.elapsed();

        let window = Window::fresh(3600).await?;
        let fed = federate(&client, &paris, &lyon, &window, 3).await?;
        let handshake_done = started.elapsed();
        // What both admins signed names both sites, pools, keys, endpoints,
        // the window and the nonce (the parties sorted: lyon first).
        for line in [
            "cellule.ai/peer-trust-handshake/v2".to_owned(),
            "level=3".to_owned(),
            "a.site=lyon".to_owned(),
            format!("a.pool={b}/lyon"),
            format!("a.pool-key={lyon_fp}"),
            "a.host=pool.lyon.intra.example.com".to_owned(),
            "a.cidr=10.30.0.0/24".to_owned(),
            "a.port=8443".to_owned(),
            "b.site=paris".to_owned(),
            format!("b.pool={a}/paris"),
            format!("b.pool-key={paris_fp}"),
            "b.cidr=10.20.0.0/24".to_owned(),
            format!("not-after={}", rfc3339(window.not_after)),
            format!("nonce={}", window.nonce),
        ] {
            ensure!(fed.statement.lines().any(|l| l == line), "{line:?} not in the statement:\n{}", fed.statement);
        }

        for (site, peer, ns, name, peer_fp) in [(&paris, &lyon, &a, "lyon", &lyon_fp), (&lyon, &paris, &b, "paris", &paris_fp)] {
            let obj = wait_level(&client, ns, name, 3).await?;
            let status = &obj["status"];
            ensure!(ready(&obj) == ("True".into(), "Trusted".into()), "{}", summary(&obj));
            ensure!(condition(&obj, "HandshakeVerified").is_some_and(|c| c["status"] == "True" && c["reason"] == "Verified"), "{}", summary(&obj));
            ensure!(status["level3Until"] == rfc3339(window.not_after), "level3Until {}", status["level3Until"]);
            ensure!(status["peerKeyFingerprint"] == peer_fp.as_str(), "fingerprint {}", status["peerKeyFingerprint"]);
            // Its own pool's countersignature, vouching for its own admin.
            ensure!(status["countersignature"]["poolPublicKey"] == site.pool_key.as_str(), "{}", status["countersignature"]);
            ensure!(status["countersignature"]["adminPublicKey"] == site.admin_key.as_str(), "{}", status["countersignature"]);
            ensure!(condition(&obj, "Downgraded").is_none() && condition(&obj, "Suspended").is_none(), "{}", summary(&obj));
            // Each pool recorded the nonce for this very statement.
            let (_, nonces, _) = federation_secret(&client, ns, &site.pool).await?;
            let digest = sha256_hex(&fed.statement).await?;
            ensure!(nonces[&window.nonce]["digest"] == digest.as_str(), "{}'s ledger {nonces}", site.pool);
            ensure!(nonces[&window.nonce]["notAfter"] == window.not_after.as_second(), "{nonces}");
            // In the config, with its key, endpoint, level and end.
            let peers = wait_config_peers(&client, ns, &site.pool, &format!("{name} at 3"), |p| config_has(p, name, 3)).await?;
            ensure!(peers.len() == 1, "{peers:?}");
            let p = &peers[0];
            ensure!(p["site"] == peer.pool.as_str() && p["publicKey"] == peer.pool_key.as_str(), "{p}");
            ensure!(p["host"] == peer.endpoint["host"] && p["cidr"] == peer.endpoint["cidr"] && p["port"] == 8443, "{p}");
            let until: jiff::Timestamp = p["level3Until"].as_str().context("level3Until")?.parse()?;
            ensure!(until == window.not_after, "config level3Until {until}");
            peer_event(&client, ns, name, "TrustLevelChanged", "2 → 3").await?;
        }
        // Egress: exactly one rule more at each side, to the peer's range
        // and port.
        wait_ip_egress(&client, &a, "paris", "lyon's range", |e| {
            *e == base_a.iter().cloned().chain([rule("10.30.0.0/24", 8443)]).collect()
        })
        .await?;
        wait_ip_egress(&client, &b, "lyon", "paris's range", |e| {
            *e == base_b.iter().cloned().chain([rule("10.20.0.0/24", 8443)]).collect()
        })
        .await?;
        // In the pool's peer policy, which selects the pool's pods only.
        let policies = pool_policies(&client, &a, "paris").await?;
        let peers = policies.get("paris-peers").context("NetworkPolicy paris-peers")?;
        ensure!(policy_ip_egress(peers)? == BTreeSet::from([rule("10.30.0.0/24", 8443)]), "paris-peers: {:?}", peers.spec);
        let selector = peers.spec.as_ref().map(|s| s.pod_selector.clone()).unwrap_or_default();
        let pool_selector = policies.get("paris-pool").and_then(|p| p.spec.as_ref()).map(|s| s.pod_selector.clone());
        ensure!(Some(&selector) == pool_selector.as_ref(), "paris-peers selects {selector:?}, paris-pool {pool_selector:?}");
        ensure!(peers.spec.as_ref().and_then(|s| s.ingress.as_ref()).is_none_or(Vec::is_empty), "paris-peers allows ingress: {:?}", peers.spec);
        println!(
            "federation: sites up in {sites_up:?}, handshake to level 3 in {:?}, config and egress in {:?}",
            handshake_done - sites_up,
            started.elapsed() - handshake_done
        );
        Ok(())
    })
    .await;
}

/// `handshake statement` is what an admin runs before anyone signed: it
/// takes the PeerTrust manifest without signatures (it once refused one
/// without `localSignature`, the signature of that very statement), and
/// `handshake sign` signs it.
#[tokio::test]
async fn the_statement_is_made_from_a_manifest_not_yet_signed() {
    in_site_namespace("fed-cli", |client: Client, a: String| async move {
        let paris = start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        let mut trust = peer_trust(
            "lyon",
            "paris",
            "lyon",
            Some(("lyon-site", "lyon")),
            &endpoint(Some("10.30.0.1"), None, 8443),
            &random_key(),
            3,
        );
        let window = Window::fresh(600).await?;
        trust["spec"]["handshake"] = window.json();
        let dir = scratch(&a);
        let manifest = dir.join("unsigned.yaml");
        std::fs::write(&manifest, serde_yaml::to_string(&trust)?)?;
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let pool = dir.join("paris.yaml");
        std::fs::write(
            &pool,
            run_tool(
                "kubectl",
                &[
                    "--kubeconfig",
                    &kubeconfig,
                    "-n",
                    &a,
                    "get",
                    "pool",
                    "paris",
                    "-o",
                    "yaml",
                ],
                &[],
            )
            .await?,
        )?;
        let (pool, manifest) = (
            pool.to_str().context("utf-8")?,
            manifest.to_str().context("utf-8")?,
        );
        let made = operator_cli(&[
            "handshake",
            "statement",
            "--pool",
            pool,
            "--peer-trust",
            manifest,
        ])
        .await;
        let statement = made.context("the statement of a manifest that no admin signed yet")?;
        ensure!(
            statement.contains(&format!("nonce={}", window.nonce)),
            "{statement}"
        );
        let signed = operator_cli(&[
            "handshake",
            "sign",
            "--pool",
            pool,
            "--peer-trust",
            manifest,
            "--key",
            paris.admin_seed.to_str().context("utf-8")?,
        ])
        .await?;
        // The signature verifies over the printed bytes with the admin's
        // public key, in another Ed25519 implementation (Python's
        // `cryptography`); one byte more and it does not.
        let verify = r#"
import base64, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[1]))
key.verify(base64.b64decode(sys.argv[2]), sys.stdin.buffer.read())
print("verified")
"#;
        let python = Env::bin("interop-python");
        let args = ["-c", verify, paris.admin_key.as_str(), signed.trim()];
        let out = cellule_e2e::run_with_stdin(&python, &args, &statement).await?;
        ensure!(
            out.status.success(),
            "the CLI's signature does not verify in Python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cellule_e2e::run_with_stdin(&python, &args, &format!("{statement}x")).await?;
        ensure!(
            !out.status.success(),
            "Python verified a signature over other bytes"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn one_byte_changed_in_any_signature_drops_the_peer_to_level_2() {
    in_two_namespaces(
        "fed-bytes",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let fed = federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            let started = Instant::now();
            for (i, field) in [
                "/spec/handshake/localSignature",
                "/spec/handshake/peerSignature",
                "/spec/handshake/peerCountersignature/signature",
            ]
            .into_iter()
            .enumerate()
            {
                let original = str_at(&fed.a_trust, field);
                let broken = with(&fed.a_trust, field, json!(flip_byte(original, 20 + i)));
                apply(&client, &a, &broken).await?;
                let refused =
                    wait_handshake(&client, &a, "lyon", "False", "HandshakeInvalid").await?;
                ensure!(level(&refused) == 2, "{field}: {}", summary(&refused));
                ensure!(
                    refused["status"]["level3Until"].is_null(),
                    "{field}: {}",
                    refused["status"]
                );
                ensure!(
                    ready(&refused) == ("False".into(), "HandshakeInvalid".into()),
                    "{field}: {}",
                    summary(&refused)
                );
                if field.ends_with("localSignature") {
                    // The pool never countersigns what its admin did not sign.
                    ensure!(
                        refused["status"]["countersignature"].is_null(),
                        "countersigned a statement its admin did not sign: {}",
                        refused["status"]
                    );
                }
                wait_config_peers(&client, &a, "paris", "lyon down to 2", |p| {
                    config_has(p, "lyon", 2)
                })
                .await?;
                if i == 0 {
                    peer_event(&client, &a, "lyon", "HandshakeInvalid", "").await?;
                    peer_event(&client, &a, "lyon", "TrustLevelChanged", "3 → 2").await?;
                }
                // Restored: the same statement, the same nonce: level 3 again.
                apply(&client, &a, &fed.a_trust).await?;
                wait_handshake(&client, &a, "lyon", "True", "Verified").await?;
                wait_level(&client, &a, "lyon", 3).await?;
                wait_config_peers(&client, &a, "paris", "lyon back at 3", |p| {
                    config_has(p, "lyon", 3)
                })
                .await?;
            }
            // The other side never moved.
            let theirs = wait_level(&client, &b, "paris", 3).await?;
            ensure!(
                condition(&theirs, "HandshakeVerified").is_some_and(|c| c["status"] == "True"),
                "{}",
                summary(&theirs)
            );
            println!(
                "three one-byte changes refused and restored in {:?}",
                started.elapsed()
            );
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_peer_signature_by_a_key_the_peer_site_never_published_is_refused() {
    in_two_namespaces(
        "fed-rogue",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let fed = federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            // Paris's admin makes a key of their own, signs the statement as
            // "lyon's admin" and names that key in lyon's countersignature.
            let rogue_seed = scratch(&a).join("rogue.key");
            let rogue = keygen(&rogue_seed).await?;
            let rogue_signature = sign(&paris, &fed.a_trust, &rogue_seed).await?;
            let forged = with(
                &with(
                    &fed.a_trust,
                    "/spec/handshake/peerSignature",
                    json!(rogue_signature),
                ),
                "/spec/handshake/peerCountersignature/adminPublicKey",
                json!(rogue),
            );
            apply(&client, &a, &forged).await?;
            let refused = wait_handshake(&client, &a, "lyon", "False", "HandshakeInvalid").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            let message = condition(&refused, "HandshakeVerified")
                .map(|c| c["message"].to_string())
                .unwrap_or_default();
            ensure!(
                message.contains("countersignature"),
                "refused for another reason: {message}"
            );
            wait_config_peers(&client, &a, "paris", "lyon at 2", |p| {
                config_has(p, "lyon", 2)
            })
            .await?;

            // Its own pool's countersignature passed off as lyon's: made by
            // another key than the one pinned.
            let own = wait_peer(&client, &a, "lyon", "countersigned", |o| {
                o["status"]["countersignature"].is_object()
            })
            .await?;
            let passed_off = with(
                &forged,
                "/spec/handshake/peerCountersignature",
                own["status"]["countersignature"].clone(),
            );
            let passed_off = with(
                &passed_off,
                "/spec/handshake/peerSignature",
                fed.a_trust["spec"]["handshake"]["peerSignature"].clone(),
            );
            apply(&client, &a, &passed_off).await?;
            let refused =
                wait_handshake(&client, &a, "lyon", "False", "HandshakeKeyMismatch").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));

            // Its admin signing as both sites: refused at admission.
            let twice = with(
                &fed.a_trust,
                "/spec/handshake/peerSignature",
                fed.a_trust["spec"]["handshake"]["localSignature"].clone(),
            );
            let outcome = apply(
                &client,
                &a,
                &with(
                    &twice,
                    "/spec/handshake/peerCountersignature/adminPublicKey",
                    json!(paris.admin_key),
                ),
            )
            .await;
            let message = format!("{:?}", outcome.err());
            ensure!(
                message.contains("two different administrators"),
                "one admin as both: {message}"
            );

            apply(&client, &a, &fed.a_trust).await?;
            wait_level(&client, &a, "lyon", 3).await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_handshake_made_for_another_key_or_endpoint_is_refused() {
    in_two_namespaces(
        "fed-other",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            // A third pool's key (its Pool is blocked without its Secrets: the
            // key is minted all the same).
            apply(
                &client,
                &a,
                &pool_document("nice", &endpoint(None, Some("10.60.0.0/24"), 8443), &[]),
            )
            .await?;
            let nice_key = pool_key(&client, &a, "nice").await?;
            let fed = federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            let lyon_fp = fingerprint(&client, &b, "lyon").await?;

            // The pinned key changed under the handshake: the handshake was
            // made (and countersigned) for lyon's key.
            let other_key = with(&fed.a_trust, "/spec/publicKey", json!(nice_key));
            apply(&client, &a, &other_key).await?;
            let refused =
                wait_handshake(&client, &a, "lyon", "False", "HandshakeKeyMismatch").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            ensure!(
                refused["status"]["peerKeyFingerprint"]
                    == fingerprint(&client, &a, "nice").await?.as_str(),
                "{}",
                refused["status"]
            );
            ensure!(
                refused["status"]["peerKeyFingerprint"] != lyon_fp.as_str(),
                "{}",
                refused["status"]
            );
            // Paris's admin signs a new handshake for that key, with lyon's
            // signatures of the old one: the peer pool's countersignature is
            // by another key than the one pinned.
            let window = Window::fresh(3600).await?;
            let mut resigned = other_key.clone();
            for (k, v) in window.json().as_object().context("window")? {
                resigned["spec"]["handshake"][k] = v.clone();
            }
            let signature = sign(&paris, &resigned, &paris.admin_seed).await?;
            resigned["spec"]["handshake"]["localSignature"] = json!(signature);
            apply(&client, &a, &resigned).await?;
            let refused =
                wait_handshake(&client, &a, "lyon", "False", "HandshakeKeyMismatch").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            peer_event(&client, &a, "lyon", "HandshakeKeyMismatch", "").await?;
            apply(&client, &a, &fed.a_trust).await?;
            wait_level(&client, &a, "lyon", 3).await?;

            // The endpoint moved (another port) under the handshake.
            // (Once the pool rendered lyon at 3 again: a PeerTrust not yet
            // judged since its change is left out meanwhile.)
            let base = wait_ip_egress(&client, &a, "paris", "lyon on 8443", |e| {
                e.contains(&rule("10.30.0.0/24", 8443))
            })
            .await?;
            let moved = with(&fed.a_trust, "/spec/endpoint/port", json!(9443));
            apply(&client, &a, &moved).await?;
            let refused = wait_handshake(&client, &a, "lyon", "False", "HandshakeInvalid").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            // Egress and config follow the endpoint, at level 2.
            wait_config_peers(&client, &a, "paris", "lyon on 9443 at 2", |p| {
                config_has(p, "lyon", 2)
                    && config_peer(p, "lyon").is_some_and(|l| l["port"] == 9443)
            })
            .await?;
            wait_ip_egress(&client, &a, "paris", "lyon on 9443 only", |e| {
                e.contains(&rule("10.30.0.0/24", 9443)) && !e.contains(&rule("10.30.0.0/24", 8443))
            })
            .await?;
            apply(&client, &a, &fed.a_trust).await?;
            wait_level(&client, &a, "lyon", 3).await?;
            wait_ip_egress(&client, &a, "paris", "back to 8443", |e| *e == base).await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_nonce_serves_one_statement_only() {
    in_two_namespaces(
        "fed-nonce",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let first = Window::fresh(3600).await?;
            let fed = federate(&client, &paris, &lyon, &first, 3).await?;
            let (_, ledger, _) = federation_secret(&client, &a, "paris").await?;
            let digest = sha256_hex(&fed.statement).await?;
            ensure!(
                ledger[&first.nonce]["digest"] == digest.as_str(),
                "{ledger}"
            );

            // The same nonce in a new window, signed by both admins.
            let second = Window {
                not_after: jiff::Timestamp::from_second(first.not_after.as_second() + 3600)?,
                ..first.clone()
            };
            let mut again_a = trust_of(&paris, &lyon, 3);
            let mut again_b = trust_of(&lyon, &paris, 3);
            again_a["spec"]["handshake"] = second.json();
            again_b["spec"]["handshake"] = second.json();
            let (sa, sb) = tokio::try_join!(
                sign(&paris, &again_a, &paris.admin_seed),
                sign(&lyon, &again_b, &lyon.admin_seed)
            )?;
            again_a["spec"]["handshake"]["localSignature"] = json!(sa);
            again_a["spec"]["handshake"]["peerSignature"] = json!(sb);
            again_a["spec"]["handshake"]["peerCountersignature"] =
                fed.a_trust["spec"]["handshake"]["peerCountersignature"].clone();
            apply(&client, &a, &again_a).await?;
            let refused =
                wait_handshake(&client, &a, "lyon", "False", "HandshakeNonceReused").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            ensure!(
                ready(&refused) == ("False".into(), "HandshakeNonceReused".into()),
                "{}",
                summary(&refused)
            );
            peer_event(&client, &a, "lyon", "HandshakeNonceReused", "").await?;
            // Another PeerTrust of the same pool, its own statement, that nonce.
            let nice = endpoint(None, Some("10.60.0.0/24"), 8443);
            let mut other = peer_trust(
                "nice",
                "paris",
                "nice",
                Some((&b, "nice")),
                &nice,
                &random_key(),
                3,
            );
            other["spec"]["handshake"] = first.json();
            let signature = sign(&paris, &other, &paris.admin_seed).await?;
            other["spec"]["handshake"]["localSignature"] = json!(signature);
            apply(&client, &a, &other).await?;
            let refused =
                wait_handshake(&client, &a, "nice", "False", "HandshakeNonceReused").await?;
            ensure!(level(&refused) == 2, "{}", summary(&refused));
            // The ledger still holds the first statement's digest.
            let (_, after, _) = federation_secret(&client, &a, "paris").await?;
            ensure!(after == ledger, "the ledger changed: {ledger} → {after}");
            // The very statement the nonce was taken for is still good: the
            // PeerTrust deleted and made again with it is at 3 again.
            delete_peer(&client, &a, "lyon").await?;
            eventually("lyon deleted", WAIT, || async {
                match cellule_api(&client, &a, "PeerTrust").get_opt("lyon").await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|o| o.map(|_| "present")))),
                }
            })
            .await?;
            apply(&client, &a, &fed.a_trust).await?;
            wait_level(&client, &a, "lyon", 3).await?;

            // A fresh nonce for the new window: level 3 again, both sides.
            let fresh = Window {
                nonce: cellule_e2e::federation::fresh_nonce().await?,
                ..second
            };
            federate(&client, &paris, &lyon, &fresh, 3).await?;
            let (_, after, _) = federation_secret(&client, &a, "paris").await?;
            ensure!(
                after[&fresh.nonce].is_object() && after[&first.nonce]["digest"] == digest.as_str(),
                "{after}"
            );
            Ok(())
        },
    )
    .await;
}

/// Three peer sites complete their handshakes with one pool at the same
/// moment: each nonce goes into the one ledger (written at the
/// resourceVersion read), none is lost, each peer is at 3.
#[tokio::test]
async fn three_handshakes_with_one_pool_at_once() {
    in_two_namespaces("fed-three", |_: Client, a: String, b: String| async move {
        in_site_namespace("fed-three-c", |_: Client, c: String| async move {
            in_site_namespace("fed-three-d", |client: Client, d: String| async move {
                let ep = |n: u8| endpoint(None, Some(&format!("10.{n}.0.0/24")), 8443);
                let (paris, lyon, lille, nice) = tokio::try_join!(
                    start_site(&client, &a, "paris", ep(20)),
                    start_site(&client, &b, "lyon", ep(30)),
                    start_site(&client, &c, "lille", ep(31)),
                    start_site(&client, &d, "nice", ep(32)),
                )?;
                let windows = [
                    Window::fresh(3600).await?,
                    Window::fresh(3600).await?,
                    Window::fresh(3600).await?,
                ];
                let started = Instant::now();
                let signed = futures::future::try_join_all(
                    [&lyon, &lille, &nice]
                        .into_iter()
                        .zip(&windows)
                        .map(|(peer, w)| sign_both(&client, &paris, peer, w)),
                )
                .await?;
                futures::future::try_join_all(
                    signed
                        .into_iter()
                        .map(|s| exchange_countersignatures(&client, s, 3)),
                )
                .await?;
                let took = started.elapsed();
                let (_, ledger, _) = federation_secret(&client, &a, "paris").await?;
                for w in &windows {
                    ensure!(
                        ledger[&w.nonce]["digest"].is_string(),
                        "nonce {} not in paris's ledger {ledger}",
                        w.nonce
                    );
                }
                ensure!(ledger.as_object().map(|l| l.len()) == Some(3), "{ledger}");
                let peers = wait_config_peers(&client, &a, "paris", "three peers at 3", |p| {
                    ["lyon", "lille", "nice"]
                        .iter()
                        .all(|n| config_has(p, n, 3))
                })
                .await?;
                ensure!(peers.len() == 3, "{peers:?}");
                println!("three handshakes with one pool at once: all at 3 in {took:?}");
                Ok(())
            })
            .await;
            Ok(())
        })
        .await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn level_3_ends_at_not_after() {
    in_two_namespaces(
        "fed-expiry",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let window = Window::fresh(20).await?;
            federate(&client, &paris, &lyon, &window, 3).await?;
            let not_after = window.not_after;
            let left = not_after.as_second() - jiff::Timestamp::now().as_second();
            ensure!(
                left >= 3,
                "the handshake took until {left} s before its end: the case is not exercised"
            );
            let (ours, theirs) = (
                watch_level(&client, &a, "lyon"),
                watch_level(&client, &b, "paris"),
            );
            ensure!(
                ours.current().await? == Some(3) && theirs.current().await? == Some(3),
                "not at 3 before the end"
            );
            wait_config_peers(&client, &a, "paris", "lyon at 3", |p| {
                config_has(p, "lyon", 3)
            })
            .await?;
            let until = Duration::from_secs(u64::try_from(left)? + 30);
            let dropped = ours
                .until("paris's trust in lyon at 2", until, |l| *l == Some(2))
                .await?;
            let dropped_b = theirs
                .until("lyon's trust in paris at 2", until, |l| *l == Some(2))
                .await?;
            let config = wait_config_peers(&client, &a, "paris", "lyon at 2", |p| {
                config_has(p, "lyon", 2)
            })
            .await;
            let config_at = jiff::Timestamp::now();
            config?;
            let late = |t: jiff::Timestamp| t.as_millisecond() - not_after.as_millisecond();
            println!(
                "level 3 → 2 after notAfter: paris {} ms, lyon {} ms; paris's config by {} ms",
                late(dropped.wall),
                late(dropped_b.wall),
                late(config_at)
            );
            for (side, at) in [("paris", dropped.wall), ("lyon", dropped_b.wall)] {
                ensure!(
                    late(at) >= 0,
                    "{side}: level 3 ended {} ms before notAfter",
                    -late(at)
                );
                ensure!(
                    late(at) <= 1_500,
                    "{side}: level 3 ended {} ms after notAfter",
                    late(at)
                );
            }
            // 3, then 2: no other value on the way.
            let seen: Vec<Option<i32>> = ours.all().into_iter().map(|s| s.value).collect();
            ensure!(seen == [Some(3), Some(2)], "levels seen: {seen:?}");
            let obj = wait_handshake(&client, &a, "lyon", "False", "HandshakeExpired").await?;
            ensure!(obj["status"]["level3Until"].is_null(), "{}", obj["status"]);
            let event = peer_event(&client, &a, "lyon", "TrustLevelChanged", "3 → 2").await?;
            ensure!(event.type_.as_deref() == Some("Warning"), "{event:?}");
            peer_event(&client, &a, "lyon", "HandshakeExpired", "").await?;
            // The ledger forgets the nonce once its statement is worthless.
            eventually("the nonce pruned", WAIT, || async {
                let (_, nonces, _) = federation_secret(&client, &a, "paris")
                    .await
                    .map_err(|e| e.to_string())?;
                nonces
                    .get(&window.nonce)
                    .is_none()
                    .then_some(())
                    .ok_or(nonces.to_string())
            })
            .await?;
            Ok(())
        },
    )
    .await;
}

/// A handshake signed and exchanged ahead of its window: countersigned
/// and verified before it, granted (and its nonce taken) at `notBefore`.
#[tokio::test]
async fn level_3_starts_at_not_before() {
    in_two_namespaces(
        "fed-start",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let now = jiff::Timestamp::now().as_second();
            let window = Window {
                nonce: cellule_e2e::federation::fresh_nonce().await?,
                not_before: jiff::Timestamp::from_second(now + 25)?,
                not_after: jiff::Timestamp::from_second(now + 3600)?,
            };
            let signed = sign_both(&client, &paris, &lyon, &window).await?;
            // Countersigned ahead of the window...
            let half = |ns: &str, name: &str| {
                let (client, ns, name) = (client.clone(), ns.to_owned(), name.to_owned());
                async move {
                    wait_peer(&client, &ns, &name, "countersigned", |o| {
                        observed(o) && o["status"]["countersignature"].is_object()
                    })
                    .await
                }
            };
            let (a_half, b_half) = tokio::try_join!(half(&a, "lyon"), half(&b, "paris"))?;
            // ...and exchanged, at level 3 at once.
            let complete = |trust: &Value, other: &Value| {
                let mut done = trust.clone();
                done["spec"]["handshake"]["peerCountersignature"] =
                    other["status"]["countersignature"].clone();
                done["spec"]["trustLevel"] = json!(3);
                done
            };
            // A flaw shows before the window as it would within it.
            let flawed = complete(&signed.a_trust, &b_half);
            let flawed = with(
                &flawed,
                "/spec/handshake/peerSignature",
                json!(flip_byte(
                    str_at(&flawed, "/spec/handshake/peerSignature"),
                    5
                )),
            );
            apply(&client, &a, &flawed).await?;
            let obj = wait_handshake(&client, &a, "lyon", "False", "HandshakeInvalid").await?;
            ensure!(level(&obj) == 2, "{}", summary(&obj));
            let levels = watch_level(&client, &a, "lyon");
            let (a_done, b_done) = (
                complete(&signed.a_trust, &b_half),
                complete(&signed.b_trust, &a_half),
            );
            tokio::try_join!(apply(&client, &a, &a_done), apply(&client, &b, &b_done))?;
            for (ns, name) in [(&a, "lyon"), (&b, "paris")] {
                let obj =
                    wait_handshake(&client, ns, name, "False", "HandshakeNotYetValid").await?;
                let left =
                    window.not_before.as_millisecond() - jiff::Timestamp::now().as_millisecond();
                ensure!(
                    left > 0,
                    "judged after notBefore: the case is not exercised"
                );
                ensure!(
                    level(&obj) == 2 && obj["status"]["level3Until"].is_null(),
                    "{}",
                    summary(&obj)
                );
                ensure!(
                    ready(&obj) == ("False".into(), "HandshakeNotYetValid".into()),
                    "{}",
                    summary(&obj)
                );
                ensure!(
                    condition(&obj, "Reconciling").is_some_and(|c| c["status"] == "True"),
                    "{}",
                    summary(&obj)
                );
            }
            // Nothing taken before the window opens.
            let (_, ledger, _) = federation_secret(&client, &a, "paris").await?;
            ensure!(
                ledger.get(&window.nonce).is_none(),
                "the nonce taken before notBefore: {ledger}"
            );
            let granted = levels
                .until("paris's trust in lyon at 3", WAIT, |l| *l == Some(3))
                .await?;
            let late = granted.wall.as_millisecond() - window.not_before.as_millisecond();
            println!("level 3 granted {late} ms after notBefore");
            ensure!(late >= 0, "granted {} ms before notBefore", -late);
            ensure!(late <= 1_500, "granted {late} ms after notBefore");
            let seen: Vec<Option<i32>> = levels.all().into_iter().map(|s| s.value).collect();
            ensure!(seen == [Some(2), Some(3)], "levels seen: {seen:?}");
            wait_level(&client, &b, "paris", 3).await?;
            let (_, ledger, _) = federation_secret(&client, &a, "paris").await?;
            ensure!(
                ledger[&window.nonce]["digest"] == sha256_hex(&signed.statement).await?.as_str(),
                "{ledger}"
            );
            wait_config_peers(&client, &a, "paris", "lyon at 3", |p| {
                config_has(p, "lyon", 3)
            })
            .await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_rotated_pool_key_keeps_the_handshake_for_its_overlap() {
    in_two_namespaces(
        "fed-rotate",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            let levels = watch_level(&client, &a, "lyon");
            levels.current().await?;
            merge_patch(
                &client,
                &a,
                "Pool",
                "paris",
                json!({"spec": {"federation": {"keyGeneration": 1, "keyOverlap": "15s"}}}),
            )
            .await?;
            let (new_key, valid_until) = eventually("paris's new key", WAIT, || async {
                let pool = cellule_api(&client, &a, "Pool")
                    .get("paris")
                    .await
                    .map_err(|e| e.to_string())?;
                let federation = &pool.data["status"]["federation"];
                let previous = &federation["previousKeys"][0];
                match (
                    federation["publicKey"].as_str(),
                    previous["validUntil"].as_str(),
                ) {
                    (Some(key), Some(until))
                        if key != paris.pool_key
                            && previous["publicKey"] == paris.pool_key.as_str() =>
                    {
                        Ok((
                            key.to_owned(),
                            until
                                .parse::<jiff::Timestamp>()
                                .map_err(|e| e.to_string())?,
                        ))
                    }
                    _ => Err(federation.to_string()),
                }
            })
            .await?;
            // Within the overlap the statement naming the old key still holds,
            // countersigned with that key.
            annotate(&client, &a, "lyon", "e2e.cellule.ai/touch", "1").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let obj = wait_level(&client, &a, "lyon", 3).await?;
            ensure!(
                obj["status"]["countersignature"]["poolPublicKey"] == paris.pool_key.as_str(),
                "{}",
                obj["status"]
            );
            ensure!(
                jiff::Timestamp::now() < valid_until,
                "the overlap ended before it was checked"
            );
            // Once it ends, the handshake names a key the pool no longer has.
            let dropped = levels
                .until("level 2 once the old key goes", WAIT, |l| *l == Some(2))
                .await?;
            let late = dropped.wall.as_millisecond() - valid_until.as_millisecond();
            println!("the old key's handshake dropped {late} ms after its validUntil");
            ensure!(
                late >= 0,
                "dropped {} ms before the old key's validUntil",
                -late
            );
            ensure!(
                late <= 1_500,
                "dropped {late} ms after the old key's validUntil"
            );
            let seen: Vec<Option<i32>> = levels.all().into_iter().map(|s| s.value).collect();
            ensure!(seen == [Some(3), Some(2)], "levels seen: {seen:?}");
            let obj = wait_handshake(&client, &a, "lyon", "False", "HandshakeInvalid").await?;
            ensure!(
                obj["status"]["countersignature"].is_null(),
                "countersigned with a key it no longer has: {}",
                obj["status"]
            );
            // The old key leaves the Secret and the Pool's status.
            eventually("the old key gone", WAIT, || async {
                let (keys, _, _) = federation_secret(&client, &a, "paris")
                    .await
                    .map_err(|e| e.to_string())?;
                let pool = cellule_api(&client, &a, "Pool")
                    .get("paris")
                    .await
                    .map_err(|e| e.to_string())?;
                let previous = &pool.data["status"]["federation"]["previousKeys"];
                let stored = keys["keys"].as_array().map_or(0, Vec::len);
                (stored == 1 && previous.as_array().is_none_or(Vec::is_empty))
                    .then_some(())
                    .ok_or(format!("{stored} keys stored, previousKeys {previous}"))
            })
            .await?;
            // Lyon re-pins paris's new key, both admins sign a new handshake.
            let paris = cellule_e2e::federation::Site {
                pool_key: new_key,
                ..paris
            };
            federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_pools_reports_downgrade_a_peer_until_an_admin_resets_it() {
    in_two_namespaces(
        "fed-reputation",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            let as_pool = pool_client(&client, &a, "paris").await?;
            let reports = cellule_operator::names::peer_reports("paris");
            let counts = |m: i64, s: i64| format!(r#"{{"mismatches": {m}, "samples": {s}}}"#);
            let reputation = |obj: &Value, m: i64, s: i64| {
                obj["status"]["reputation"]["mismatches"] == m
                    && obj["status"]["reputation"]["samples"] == s
            };

            // Under the threshold (20 % of at least 50): nothing happens.
            report(&as_pool, &a, "paris", "lyon", &counts(5, 100)).await?;
            let obj =
                wait_peer(&client, &a, "lyon", "5/100 read", |o| reputation(o, 5, 100)).await?;
            ensure!(
                level(&obj) == 3 && condition(&obj, "Downgraded").is_none(),
                "{}",
                summary(&obj)
            );
            // Over it: down one level, with the evidence.
            let started = Instant::now();
            report(&as_pool, &a, "paris", "lyon", &counts(30, 100)).await?;
            let obj = wait_peer(&client, &a, "lyon", "downgraded", |o| {
                condition(o, "Downgraded").is_some()
            })
            .await?;
            let downgrade_took = started.elapsed();
            ensure!(level(&obj) == 2, "{}", summary(&obj));
            ensure!(
                condition(&obj, "Downgraded")
                    .is_some_and(|c| c["status"] == "True" && c["reason"] == "MismatchThreshold"),
                "{}",
                summary(&obj)
            );
            ensure!(
                ready(&obj) == ("False".into(), "Downgraded".into()),
                "{}",
                summary(&obj)
            );
            let downgrade = &obj["status"]["reputation"]["downgrade"];
            ensure!(
                downgrade["mismatches"] == 30
                    && downgrade["samples"] == 100
                    && downgrade["at"].is_string(),
                "{downgrade}"
            );
            // The handshake itself still verifies.
            ensure!(
                condition(&obj, "HandshakeVerified").is_some_and(|c| c["status"] == "True"),
                "{}",
                summary(&obj)
            );
            let event = peer_event(
                &client,
                &a,
                "lyon",
                "Downgraded",
                "30 mismatches in 100 samples",
            )
            .await?;
            ensure!(event.type_.as_deref() == Some("Warning"), "{event:?}");
            peer_event(&client, &a, "lyon", "TrustLevelChanged", "3 → 2").await?;
            wait_config_peers(&client, &a, "paris", "lyon at 2", |p| {
                config_has(p, "lyon", 2)
            })
            .await?;
            let egress = ip_egress(&client, &a, "paris").await?.context("egress")?;
            ensure!(
                egress.contains(&rule("10.30.0.0/24", 8443)),
                "a level-2 peer keeps its egress: {egress:?}"
            );

            // Back under the threshold: the downgrade stays.
            report(&as_pool, &a, "paris", "lyon", &counts(30, 1000)).await?;
            let obj = wait_peer(&client, &a, "lyon", "30/1000 read", |o| {
                reputation(o, 30, 1000)
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let obj2 = wait_peer(&client, &a, "lyon", "30/1000 read", |o| {
                reputation(o, 30, 1000)
            })
            .await?;
            for o in [&obj, &obj2] {
                ensure!(
                    level(o) == 2 && o["status"]["reputation"]["downgrade"] == *downgrade,
                    "the downgrade went by itself: {}",
                    summary(o)
                );
            }
            // An admin resets it: counts start from here.
            annotate(
                &client,
                &a,
                "lyon",
                "cellule.ai/reputation-reset",
                "2026-incident-1",
            )
            .await?;
            let obj = wait_peer(&client, &a, "lyon", "reset", |o| {
                o["status"]["reputation"]["reset"] == "2026-incident-1"
            })
            .await?;
            ensure!(
                level(&obj) == 3 && condition(&obj, "Downgraded").is_none(),
                "{}",
                summary(&obj)
            );
            let rep = &obj["status"]["reputation"];
            ensure!(
                rep["baselineMismatches"] == 30
                    && rep["baselineSamples"] == 1000
                    && rep["downgrade"].is_null(),
                "{rep}"
            );
            wait_config_peers(&client, &a, "paris", "lyon back at 3", |p| {
                config_has(p, "lyon", 3)
            })
            .await?;
            // Since the baseline: 15 of 50 (30 %) is over again.
            report(&as_pool, &a, "paris", "lyon", &counts(45, 1050)).await?;
            let obj = wait_peer(&client, &a, "lyon", "downgraded again", |o| {
                condition(o, "Downgraded").is_some()
            })
            .await?;
            let downgrade = &obj["status"]["reputation"]["downgrade"];
            ensure!(
                level(&obj) == 2 && downgrade["mismatches"] == 15 && downgrade["samples"] == 50,
                "{}",
                summary(&obj)
            );
            // The same reset value again clears nothing; a new one does.
            annotate(
                &client,
                &a,
                "lyon",
                "cellule.ai/reputation-reset",
                "2026-incident-1",
            )
            .await?;
            annotate(&client, &a, "lyon", "e2e.cellule.ai/touch", "1").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let obj = wait_level(&client, &a, "lyon", 2).await?;
            ensure!(condition(&obj, "Downgraded").is_some(), "{}", summary(&obj));
            annotate(
                &client,
                &a,
                "lyon",
                "cellule.ai/reputation-reset",
                "2026-incident-2",
            )
            .await?;
            wait_peer(&client, &a, "lyon", "reset again", |o| {
                level(o) == 3 && condition(o, "Downgraded").is_none()
            })
            .await?;

            // The pool's credentials write that ConfigMap and nothing else.
            let maps = Api::<ConfigMap>::namespaced(as_pool.clone(), &a);
            let touch = Patch::Merge(json!({"data": {"e2e": "1"}}));
            for other in [
                cellule_operator::names::config("paris"),
                cellule_operator::names::routing("paris"),
                cellule_operator::names::jwks("paris"),
            ] {
                let outcome = maps.patch(&other, &PatchParams::default(), &touch).await;
                ensure!(
                    matches!(&outcome, Err(kube::Error::Api(s)) if s.code == 403),
                    "patching {other} as the pool: {:?}",
                    outcome.map(|_| "accepted")
                );
            }
            let outcome = Api::<ConfigMap>::namespaced(as_pool.clone(), &b)
                .patch(
                    &cellule_operator::names::peer_reports("lyon"),
                    &PatchParams::default(),
                    &touch,
                )
                .await;
            ensure!(
                matches!(&outcome, Err(kube::Error::Api(s)) if s.code == 403),
                "patching lyon's reports as paris's pool: {:?}",
                outcome.map(|_| "accepted")
            );
            let outcome = maps.delete(&reports, &DeleteParams::default()).await;
            ensure!(
                matches!(&outcome, Err(kube::Error::Api(s)) if s.code == 403),
                "deleting its reports: {:?}",
                outcome.map(|_| "accepted")
            );
            println!("reputation: downgraded {downgrade_took:?} after the report");
            Ok(())
        },
    )
    .await;
}

/// `status.level3Until` ("when level 3 ends", the `Until` column) is
/// shown only while the peer is at level 3: not once a downgrade or
/// Paranoid lowered it (the pool's peers list already leaves it out).
#[tokio::test]
async fn level3_until_is_shown_only_at_level_3() {
    in_two_namespaces("fed-until", |client: Client, a: String, b: String| async move {
        let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
        let window = Window::fresh(3600).await?;
        federate(&client, &paris, &lyon, &window, 3).await?;
        let obj = wait_level(&client, &a, "lyon", 3).await?;
        ensure!(obj["status"]["level3Until"] == rfc3339(window.not_after), "{}", obj["status"]);
        let as_pool = pool_client(&client, &a, "paris").await?;
        report(&as_pool, &a, "paris", "lyon", r#"{"mismatches": 30, "samples": 100}"#).await?;
        let obj = wait_peer(&client, &a, "lyon", "downgraded", |o| level(o) == 2 && condition(o, "Downgraded").is_some()).await?;
        let downgraded = obj["status"]["level3Until"].clone();
        annotate(&client, &a, "lyon", "cellule.ai/reputation-reset", "1").await?;
        wait_level(&client, &a, "lyon", 3).await?;
        merge_patch(&client, &a, "Pool", "paris", json!({"spec": {"privacy": {"mode": "Paranoid"}}})).await?;
        let obj = wait_peer(&client, &a, "lyon", "suspended", |o| level(o) == 0).await?;
        let suspended = obj["status"]["level3Until"].clone();
        ensure!(
            downgraded.is_null() && suspended.is_null(),
            "level3Until shown at level 2 (downgraded): {downgraded}, at level 0 (Paranoid): {suspended}"
        );
        Ok(())
    })
    .await;
}

/// A federation Secret someone garbled: no key is minted over it, nothing
/// is judged from it, every peer leaves the egress (fail closed); put
/// back, all is as before.
#[tokio::test]
async fn an_unreadable_federation_secret_fails_closed() {
    in_site_namespace("fed-unreadable", |client: Client, a: String| async move {
        let paris = start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        let base = baseline_egress(&client, &a, "paris").await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "marseille",
                "paris",
                "marseille",
                None,
                &endpoint(Some("10.40.0.10"), None, 8443),
                &random_key(),
                1,
            ),
        )
        .await?;
        wait_level(&client, &a, "marseille", 1).await?;
        let with_marseille: BTreeSet<_> = base
            .iter()
            .cloned()
            .chain([rule("10.40.0.10/32", 8443)])
            .collect();
        wait_ip_egress(&client, &a, "paris", "marseille", |e| *e == with_marseille).await?;
        let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &a);
        let original = secrets
            .get("paris-federation")
            .await?
            .data
            .context("data")?["keys.json"]
            .clone();
        secrets
            .patch(
                "paris-federation",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"keys.json": "garbage"}})),
            )
            .await?;
        let obj = wait_peer(&client, &a, "marseille", "stalled", |o| {
            ready(o).1 == "StateUnreadable"
        })
        .await?;
        ensure!(
            level(&obj).is_null() || level(&obj) == 0,
            "a level judged from an unreadable Secret: {}",
            summary(&obj)
        );
        // Not trusted any more: out of the egress and the pool's peers
        // (BUGS.md: the stalled Pool leaves both as they were).
        eventually(
            "no peer in paris's egress while nothing can be judged",
            Duration::from_secs(15),
            || async {
                let egress = ip_egress(&client, &a, "paris")
                    .await
                    .map_err(|e| e.to_string())?;
                (egress.as_ref() == Some(&base))
                    .then_some(())
                    .ok_or(format!("{egress:?}"))
            },
        )
        .await?;
        let listed = live_peers(&client, &a, "paris")
            .await?
            .context("paris-peers")?;
        ensure!(listed.is_empty(), "{listed:?}");
        cellule_e2e::wait_condition(&client, &a, "Pool", "paris", "Ready", "False", WAIT).await?;
        // Left as it is: not a new key over it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let garbled = secrets
            .get("paris-federation")
            .await?
            .data
            .context("data")?["keys.json"]
            .clone();
        ensure!(garbled.0 == b"garbage", "the garbled Secret was rewritten");
        ensure!(
            pool_key(&client, &a, "paris").await? == paris.pool_key,
            "another key published"
        );
        // Put back: judged and rendered again, with the same key.
        secrets
            .patch(
                "paris-federation",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"keys.json": original}})),
            )
            .await?;
        wait_level(&client, &a, "marseille", 1).await?;
        wait_ip_egress(&client, &a, "paris", "marseille back", |e| {
            *e == with_marseille
        })
        .await?;
        cellule_e2e::wait_condition(&client, &a, "Pool", "paris", "Ready", "True", WAIT).await?;
        ensure!(
            pool_key(&client, &a, "paris").await? == paris.pool_key,
            "another key published"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_paranoid_pool_suspends_every_peer() {
    in_two_namespaces(
        "fed-paranoid",
        |client: Client, a: String, b: String| async move {
            let (paris, lyon) = paris_and_lyon(&client, &a, &b).await?;
            let base = baseline_egress(&client, &a, "paris").await?;
            federate(&client, &paris, &lyon, &Window::fresh(3600).await?, 3).await?;
            let marseille = endpoint(Some("10.40.0.10"), None, 8443);
            apply(
                &client,
                &a,
                &peer_trust(
                    "marseille",
                    "paris",
                    "marseille",
                    None,
                    &marseille,
                    &random_key(),
                    1,
                ),
            )
            .await?;
            wait_level(&client, &a, "marseille", 1).await?;
            let both: BTreeSet<_> = base
                .iter()
                .cloned()
                .chain([rule("10.30.0.0/24", 8443), rule("10.40.0.10/32", 8443)])
                .collect();
            wait_ip_egress(&client, &a, "paris", "both peers", |e| *e == both).await?;
            wait_config_peers(&client, &a, "paris", "both peers", |p| {
                config_has(p, "lyon", 3) && config_has(p, "marseille", 1)
            })
            .await?;

            let started = Instant::now();
            merge_patch(
                &client,
                &a,
                "Pool",
                "paris",
                json!({"spec": {"privacy": {"mode": "Paranoid"}}}),
            )
            .await?;
            for name in ["lyon", "marseille"] {
                let obj = wait_peer(&client, &a, name, "suspended", |o| {
                    condition(o, "Suspended").is_some()
                })
                .await?;
                ensure!(level(&obj) == 0, "{name}: {}", summary(&obj));
                ensure!(
                    condition(&obj, "Suspended")
                        .is_some_and(|c| c["status"] == "True" && c["reason"] == "Paranoid"),
                    "{name}: {}",
                    summary(&obj)
                );
                ensure!(
                    ready(&obj) == ("True".into(), "Suspended".into()),
                    "{name}: {}",
                    summary(&obj)
                );
            }
            wait_config_peers(&client, &a, "paris", "no peer", <[Value]>::is_empty).await?;
            wait_ip_egress(&client, &a, "paris", "no peer", |e| *e == base).await?;
            let suspended = started.elapsed();
            // The other site trusts paris as before: Paranoid is paris's own.
            wait_level(&client, &b, "paris", 3).await?;

            merge_patch(
                &client,
                &a,
                "Pool",
                "paris",
                json!({"spec": {"privacy": {"mode": "Balanced"}}}),
            )
            .await?;
            let obj = wait_level(&client, &a, "lyon", 3).await?;
            ensure!(
                condition(&obj, "Suspended").is_none()
                    && ready(&obj) == ("True".into(), "Trusted".into()),
                "{}",
                summary(&obj)
            );
            wait_level(&client, &a, "marseille", 1).await?;
            wait_config_peers(&client, &a, "paris", "both peers back", |p| {
                config_has(p, "lyon", 3) && config_has(p, "marseille", 1)
            })
            .await?;
            wait_ip_egress(&client, &a, "paris", "both peers back", |e| *e == both).await?;
            println!(
                "paranoid: every peer out of config and egress in {suspended:?}, back in {:?}",
                started.elapsed() - suspended
            );
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_peer_trust_leaves_the_config_and_the_egress() {
    in_site_namespace("fed-delete", |client: Client, a: String| async move {
        start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        let base = baseline_egress(&client, &a, "paris").await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "marseille",
                "paris",
                "marseille",
                None,
                &endpoint(Some("10.40.0.10"), None, 8443),
                &random_key(),
                1,
            ),
        )
        .await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "nice",
                "paris",
                "nice",
                None,
                &endpoint(Some("pool.nice.example.com"), Some("10.60.0.0/24"), 9443),
                &random_key(),
                2,
            ),
        )
        .await?;
        let both: BTreeSet<_> = base
            .iter()
            .cloned()
            .chain([rule("10.40.0.10/32", 8443), rule("10.60.0.0/24", 9443)])
            .collect();
        wait_ip_egress(&client, &a, "paris", "both peers", |e| *e == both).await?;
        let peers = wait_config_peers(&client, &a, "paris", "both peers", |p| {
            config_has(p, "marseille", 1) && config_has(p, "nice", 2)
        })
        .await?;
        ensure!(peers.len() == 2, "{peers:?}");
        let started = Instant::now();
        delete_peer(&client, &a, "marseille").await?;
        let left: BTreeSet<_> = base
            .iter()
            .cloned()
            .chain([rule("10.60.0.0/24", 9443)])
            .collect();
        wait_ip_egress(&client, &a, "paris", "marseille gone", |e| *e == left).await?;
        let peers = wait_config_peers(&client, &a, "paris", "marseille gone", |p| {
            config_peer(p, "marseille").is_none()
        })
        .await?;
        ensure!(
            peers.len() == 1 && config_has(&peers, "nice", 2),
            "{peers:?}"
        );
        println!(
            "a deleted PeerTrust out of egress and config in {:?}",
            started.elapsed()
        );
        delete_peer(&client, &a, "nice").await?;
        wait_ip_egress(&client, &a, "paris", "no peer", |e| *e == base).await?;
        wait_config_peers(&client, &a, "paris", "no peer", <[Value]>::is_empty).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn keys_a_pool_must_not_pin_are_refused() {
    in_site_namespace("fed-keys", |client: Client, a: String| async move {
        let paris = start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        let base = baseline_egress(&client, &a, "paris").await?;
        let peer = |name: &str, key: &str, port: i32| {
            peer_trust(
                name,
                "paris",
                name,
                None,
                &endpoint(None, Some(&format!("10.70.{port}.0/24")), 8000 + port),
                key,
                2,
            )
        };
        let stalled = |obj: &Value, reason: &str| {
            level(obj) == 0
                && ready(obj) == ("False".into(), reason.into())
                && condition(obj, "Stalled")
                    .is_some_and(|c| c["status"] == "True" && c["reason"] == reason)
        };
        // No such Pool here.
        let mut orphan = peer("orphan", &random_key(), 9);
        orphan["spec"]["poolRef"]["name"] = json!("nowhere");
        apply(&client, &a, &orphan).await?;
        let obj = wait_peer(&client, &a, "orphan", "refused", |o| {
            observed(o) && level(o) == 0
        })
        .await?;
        ensure!(stalled(&obj, "PoolNotFound"), "{}", summary(&obj));
        // Its own key.
        apply(&client, &a, &peer("self", &paris.pool_key, 1)).await?;
        let obj = wait_peer(&client, &a, "self", "refused", |o| {
            observed(o) && level(o) == 0
        })
        .await?;
        ensure!(stalled(&obj, "PeerKeyIsOwnKey"), "{}", summary(&obj));
        // Weak keys: the identity point and the all-zero encoding (both of
        // small order), well-formed base64 of 32 bytes for admission.
        let identity = format!("AQ{}=", "A".repeat(41));
        let zero = format!("{}=", "A".repeat(43));
        for (name, key) in [("identity", identity.as_str()), ("zero", zero.as_str())] {
            apply(&client, &a, &peer(name, key, 2)).await?;
            let obj = wait_peer(&client, &a, name, "refused", |o| {
                observed(o) && level(o) == 0
            })
            .await?;
            ensure!(stalled(&obj, "PeerKeyInvalid"), "{name}: {}", summary(&obj));
            ensure!(
                obj["status"]["peerKeyFingerprint"].is_null(),
                "{name}: a fingerprint of a refused key"
            );
        }
        let message = wait_peer(&client, &a, "identity", "refused", |o| level(o) == 0).await?;
        let message = condition(&message, "Ready")
            .map(|c| c["message"].to_string())
            .unwrap_or_default();
        ensure!(message.contains("weak"), "{message}");
        // One key pinned twice: the second PeerTrust is refused...
        let key = random_key();
        apply(&client, &a, &peer("first", &key, 3)).await?;
        wait_level(&client, &a, "first", 2).await?;
        apply(&client, &a, &peer("second", &key, 4)).await?;
        let obj = wait_peer(&client, &a, "second", "refused", |o| {
            observed(o) && level(o) == 0
        })
        .await?;
        ensure!(stalled(&obj, "PeerKeyPinnedTwice"), "{}", summary(&obj));
        ensure!(
            condition(&obj, "Ready").is_some_and(|c| c["message"]
                .as_str()
                .unwrap_or_default()
                .contains("\"first\"")),
            "{}",
            summary(&obj)
        );
        wait_level(&client, &a, "first", 2).await?;
        // ...and none of the refused in the config or the egress.
        let only_first: BTreeSet<_> = base
            .iter()
            .cloned()
            .chain([rule("10.70.3.0/24", 8003)])
            .collect();
        wait_ip_egress(&client, &a, "paris", "first only", |e| *e == only_first).await?;
        let peers = wait_config_peers(&client, &a, "paris", "first only", |p| {
            config_has(p, "first", 2)
        })
        .await?;
        ensure!(peers.len() == 1, "refused peers in the config: {peers:?}");
        // The first one goes: the second is the pool's peer now.
        delete_peer(&client, &a, "first").await?;
        let obj = wait_level(&client, &a, "second", 2).await?;
        ensure!(
            ready(&obj) == ("True".into(), "Trusted".into())
                && condition(&obj, "Stalled").is_none(),
            "{}",
            summary(&obj)
        );
        let only_second: BTreeSet<_> = base
            .iter()
            .cloned()
            .chain([rule("10.70.4.0/24", 8004)])
            .collect();
        wait_ip_egress(&client, &a, "paris", "second only", |e| *e == only_second).await?;
        // A rotated key is still the pool's own during its overlap, and
        // so is the new one.
        merge_patch(
            &client,
            &a,
            "Pool",
            "paris",
            json!({"spec": {"federation": {"keyGeneration": 1}}}),
        )
        .await?;
        let new_key = eventually("a new federation key", WAIT, || async {
            let key = pool_key(&client, &a, "paris")
                .await
                .map_err(|e| e.to_string())?;
            (key != paris.pool_key)
                .then_some(key)
                .ok_or("not yet".to_owned())
        })
        .await?;
        let pool = cellule_api(&client, &a, "Pool").get("paris").await?;
        ensure!(
            pool.data["status"]["federation"]["previousKeys"][0]["publicKey"]
                == paris.pool_key.as_str(),
            "{}",
            pool.data["status"]["federation"]
        );
        annotate(&client, &a, "self", "e2e.cellule.ai/touch", "1").await?;
        apply(&client, &a, &peer("self-new", &new_key, 5)).await?;
        let obj = wait_peer(&client, &a, "self-new", "refused", |o| {
            observed(o) && level(o) == 0
        })
        .await?;
        ensure!(stalled(&obj, "PeerKeyIsOwnKey"), "{}", summary(&obj));
        let obj = wait_peer(&client, &a, "self", "refused", observed).await?;
        ensure!(
            stalled(&obj, "PeerKeyIsOwnKey"),
            "the replaced key: {}",
            summary(&obj)
        );
        Ok(())
    })
    .await;
}

/// The peers `<pool>-peers` (`peers.yaml`) lists, read directly (a
/// blocked pool has no config pointing to it); `None` while absent.
async fn live_peers(client: &Client, ns: &str, pool: &str) -> anyhow::Result<Option<Vec<Value>>> {
    let Some(map) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&cellule_operator::names::peers(pool))
        .await?
    else {
        return Ok(None);
    };
    let text = map
        .data
        .as_ref()
        .and_then(|d| d.get("peers.yaml"))
        .context("peers.yaml")?;
    let peers: Value = serde_yaml::from_str(text)?;
    Ok(Some(peers["peers"].as_array().cloned().unwrap_or_default()))
}

/// What a blocked Pool (its Secrets missing) renders of its peers: its
/// peer egress policy and live peers ConfigMap, both following the
/// PeerTrusts.
async fn blocked_view(
    client: &Client,
    ns: &str,
) -> Result<(BTreeSet<(String, i32)>, Vec<Value>), String> {
    let policies = pool_policies(client, ns, "paris")
        .await
        .map_err(|e| e.to_string())?;
    let peers = policies.get("paris-peers").ok_or("no paris-peers policy")?;
    let egress = policy_ip_egress(peers).map_err(|e| e.to_string())?;
    let listed = live_peers(client, ns, "paris")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no paris-peers ConfigMap")?;
    Ok((egress, listed))
}

#[tokio::test]
async fn a_blocked_pool_still_follows_its_peers() {
    in_site_namespace("fed-blocked", |client: Client, a: String| async move {
        cellule_e2e::install_crds(&client).await;
        // No database or TLS Secret: the Pool is blocked.
        apply(
            &client,
            &a,
            &pool_document("paris", &endpoint(Some("10.20.0.1"), None, 8443), &[]),
        )
        .await?;
        cellule_e2e::wait_condition(&client, &a, "Pool", "paris", "Ready", "False", WAIT).await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "marseille",
                "paris",
                "marseille",
                None,
                &endpoint(Some("10.40.0.10"), None, 8443),
                &random_key(),
                1,
            ),
        )
        .await?;
        wait_level(&client, &a, "marseille", 1).await?;
        eventually(
            "marseille in the blocked pool's egress and peers",
            WAIT,
            || async {
                let (egress, listed) = blocked_view(&client, &a).await?;
                (egress == BTreeSet::from([rule("10.40.0.10/32", 8443)])
                    && config_has(&listed, "marseille", 1))
                .then_some(())
                .ok_or(format!("{egress:?} {listed:?}"))
            },
        )
        .await?;
        let pool = cellule_api(&client, &a, "Pool").get("paris").await?;
        let ready = pool.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        ensure!(
            ready["status"] == "False" && ready["reason"] == "DatabaseSecretMissing",
            "the Pool is not blocked as meant: {ready}"
        );
        ensure!(
            ip_egress(&client, &a, "paris").await?.is_none(),
            "a blocked pool got its main policy"
        );
        // Paranoid, then the PeerTrust gone: followed while blocked.
        merge_patch(
            &client,
            &a,
            "Pool",
            "paris",
            json!({"spec": {"privacy": {"mode": "Paranoid"}}}),
        )
        .await?;
        eventually("no peer while Paranoid", WAIT, || async {
            let (egress, listed) = blocked_view(&client, &a).await?;
            (egress.is_empty() && listed.is_empty())
                .then_some(())
                .ok_or(format!("{egress:?} {listed:?}"))
        })
        .await?;
        merge_patch(
            &client,
            &a,
            "Pool",
            "paris",
            json!({"spec": {"privacy": {"mode": "Balanced"}}}),
        )
        .await?;
        eventually("marseille back", WAIT, || async {
            let (egress, listed) = blocked_view(&client, &a).await?;
            (egress.len() == 1 && listed.len() == 1)
                .then_some(())
                .ok_or(format!("{egress:?} {listed:?}"))
        })
        .await?;
        delete_peer(&client, &a, "marseille").await?;
        eventually("marseille gone", WAIT, || async {
            let (egress, listed) = blocked_view(&client, &a).await?;
            (egress.is_empty() && listed.is_empty())
                .then_some(())
                .ok_or(format!("{egress:?} {listed:?}"))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_downgrade_survives_a_refused_key_and_the_pool_going() {
    in_site_namespace("fed-sticky", |client: Client, a: String| async move {
        let paris = start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        let lyon = peer_trust(
            "lyon",
            "paris",
            "lyon",
            None,
            &endpoint(None, Some("10.30.0.0/24"), 8443),
            &random_key(),
            2,
        );
        apply(&client, &a, &lyon).await?;
        wait_level(&client, &a, "lyon", 2).await?;
        let as_pool = pool_client(&client, &a, "paris").await?;
        report(
            &as_pool,
            &a,
            "paris",
            "lyon",
            r#"{"mismatches": 30, "samples": 100}"#,
        )
        .await?;
        let obj = wait_peer(&client, &a, "lyon", "downgraded to 1", |o| {
            level(o) == 1 && condition(o, "Downgraded").is_some()
        })
        .await?;
        let downgrade = obj["status"]["reputation"]["downgrade"].clone();
        ensure!(downgrade["mismatches"] == 30, "{downgrade}");
        // A refused key: nothing granted, the evidence kept...
        apply(
            &client,
            &a,
            &with(&lyon, "/spec/publicKey", json!(paris.pool_key)),
        )
        .await?;
        let obj = wait_peer(&client, &a, "lyon", "refused", |o| {
            observed(o) && level(o) == 0
        })
        .await?;
        ensure!(
            ready(&obj) == ("False".into(), "PeerKeyIsOwnKey".into()),
            "{}",
            summary(&obj)
        );
        ensure!(
            obj["status"]["reputation"]["downgrade"] == downgrade,
            "the downgrade lost on a key refusal: {}",
            obj["status"]
        );
        // ...and back with its key, still downgraded.
        apply(&client, &a, &lyon).await?;
        let obj = wait_level(&client, &a, "lyon", 1).await?;
        ensure!(
            condition(&obj, "Downgraded").is_some()
                && obj["status"]["reputation"]["downgrade"] == downgrade,
            "{}",
            summary(&obj)
        );
        // The Pool deleted (its reports with it) and made again.
        cellule_api(&client, &a, "Pool")
            .delete("paris", &DeleteParams::default())
            .await?;
        let obj = wait_peer(&client, &a, "lyon", "PoolNotFound", |o| {
            ready(o).1 == "PoolNotFound"
        })
        .await?;
        ensure!(
            level(&obj) == 0 && obj["status"]["reputation"]["downgrade"] == downgrade,
            "{}",
            summary(&obj)
        );
        eventually("the Pool gone", WAIT, || async {
            match cellule_api(&client, &a, "Pool").get_opt("paris").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.map(|_| "present")))),
            }
        })
        .await?;
        apply(
            &client,
            &a,
            &pool_document(
                "paris",
                &paris.endpoint,
                std::slice::from_ref(&paris.admin_key),
            ),
        )
        .await?;
        let obj = wait_peer(&client, &a, "lyon", "judged again", |o| {
            ready(o).1 != "PoolNotFound" && level(o) != 0
        })
        .await?;
        ensure!(
            level(&obj) == 1 && condition(&obj, "Downgraded").is_some(),
            "the downgrade went with the Pool: {}",
            summary(&obj)
        );
        ensure!(
            obj["status"]["reputation"]["downgrade"] == downgrade,
            "{}",
            obj["status"]
        );
        wait_config_peers(&client, &a, "paris", "lyon at 1", |p| {
            config_has(p, "lyon", 1)
        })
        .await?;
        Ok(())
    })
    .await;
}

fn group(pod: &Pod) -> String {
    // The analyzer names pods by their ReplicaSet: ns/name-hash[ReplicaSet].
    let owner = pod
        .owner_references()
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_default();
    format!(
        "{}/{owner}[ReplicaSet]",
        pod.namespace().unwrap_or_default()
    )
}

#[tokio::test]
async fn the_analyzer_finds_egress_to_exactly_the_trusted_peers() {
    in_site_namespace("fed-netpol", |client: Client, a: String| async move {
        start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        baseline_egress(&client, &a, "paris").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &a);
        let pool = eventually("the pool pod with an IP", WAIT, || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=pool"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                .ok_or("none yet".to_owned())
        })
        .await?;
        let egress_of = |rows: &[(String, String, String)]| -> BTreeSet<(String, String)> {
            rows.iter()
                .filter(|r| r.0 == group(&pool))
                .map(|r| (r.1.clone(), r.2.clone()))
                .collect()
        };
        let (_, rows) = allowed_connections(&a).await?;
        let before = egress_of(&rows);
        ensure!(
            !before
                .iter()
                .any(|(dst, _)| dst.starts_with("10.30.") || dst.starts_with("10.40.")),
            "{before:?}"
        );

        apply(
            &client,
            &a,
            &peer_trust(
                "lyon",
                "paris",
                "lyon",
                None,
                &endpoint(Some("pool.lyon.example.com"), Some("10.30.0.0/24"), 8443),
                &random_key(),
                2,
            ),
        )
        .await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "marseille",
                "paris",
                "marseille",
                None,
                &endpoint(Some("10.40.0.10"), None, 9443),
                &random_key(),
                1,
            ),
        )
        .await?;
        wait_ip_egress(&client, &a, "paris", "both peers", |e| {
            e.contains(&rule("10.30.0.0/24", 8443)) && e.contains(&rule("10.40.0.10/32", 9443))
        })
        .await?;
        let (dir, rows) = allowed_connections(&a).await?;
        let after = egress_of(&rows);
        let new: BTreeSet<_> = after.difference(&before).cloned().collect();
        let expected = BTreeSet::from([
            ("10.30.0.0-10.30.0.255".to_owned(), "TCP 8443".to_owned()),
            ("10.40.0.10-10.40.0.10".to_owned(), "TCP 9443".to_owned()),
        ]);
        println!("pool egress per the analyzer, new with the peers: {new:?}");
        ensure!(
            new == expected,
            "new egress {new:?}, expected exactly {expected:?}"
        );
        ensure!(
            before.is_subset(&after),
            "egress lost: {:?}",
            before.difference(&after).collect::<Vec<_>>()
        );
        // Each peer on its own port only, and nothing around it.
        for (ip, port, allowed) in [
            ("10.30.0.77", "8443", true),
            ("10.30.0.77", "9443", false),
            ("10.30.1.1", "8443", false),
            ("10.40.0.10", "9443", true),
            ("10.40.0.10", "8443", false),
            ("10.40.0.11", "9443", false),
        ] {
            let verdict = egress_allowed(&dir, &a, &pool.name_any(), ip, port, None).await?;
            ensure!(verdict == allowed, "pool -> {ip}:{port}: allowed {verdict}");
        }
        Ok(())
    })
    .await;
}

/// The operator's reconciles of PeerTrusts in `ns` so far (its debug log).
fn peer_reconciles(ns: &str) -> usize {
    let log = std::fs::read_to_string(Env::var("CELLULE_E2E_OPERATOR_LOG")).unwrap_or_default();
    log.lines()
        .filter(|l| {
            l.contains("reconciled kind=PeerTrust") && l.contains(&format!("namespace={ns}"))
        })
        .count()
}

/// The operator's reconciles of objects in `ns` so far (its debug log).
fn reconciles_logged(ns: &str) -> usize {
    let log = std::fs::read_to_string(Env::var("CELLULE_E2E_OPERATOR_LOG")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("reconciled") && l.contains(&format!("namespace={ns}")))
        .count()
}

#[tokio::test]
async fn garbage_in_the_reports_leaves_the_operator_and_the_status_sane() {
    in_site_namespace("fed-garbage", |client: Client, a: String| async move {
        start_site(
            &client,
            &a,
            "paris",
            endpoint(Some("10.20.0.1"), None, 8443),
        )
        .await?;
        apply(
            &client,
            &a,
            &peer_trust(
                "lyon",
                "paris",
                "lyon",
                None,
                &endpoint(None, Some("10.30.0.0/24"), 8443),
                &random_key(),
                2,
            ),
        )
        .await?;
        wait_level(&client, &a, "lyon", 2).await?;
        let as_pool = pool_client(&client, &a, "paris").await?;
        let health = Env::var("CELLULE_E2E_OPERATOR_HEALTH");
        let operator = Env::var("CELLULE_E2E_OPERATOR_USER");
        let sane = |o: &Value| {
            let rep = &o["status"]["reputation"];
            let field = |k: &str| rep[k].as_i64().unwrap_or(0);
            [1, 2].contains(&level(o).as_i64().unwrap_or(-1))
                && [
                    "mismatches",
                    "samples",
                    "baselineMismatches",
                    "baselineSamples",
                ]
                .iter()
                .all(|k| field(k) >= 0)
                && field("baselineMismatches") <= field("mismatches")
                && field("baselineSamples") <= field("samples")
        };
        let max = i64::MAX;
        let huge = "9".repeat(400_000);
        for (value, expect) in [
            ("not json at all", None),
            ("", None),
            ("[1, 2, 3]", None),
            (r#"{"mismatches": -5, "samples": -1}"#, Some((0, 0, 2))),
            (r#"{"mismatches": "ten", "samples": 100}"#, None),
            (r#"{"mismatches": 1e3, "samples": 2.5}"#, None),
            (
                &format!(r#"{{"mismatches": {max}, "samples": {max}}}"#),
                Some((max, max, 1)),
            ),
            (r#"{"mismatches": 9223372036854775808, "samples": 1}"#, None),
            (r#"{"mismatches": 3, "samples": 1000}"#, Some((3, 1000, 1))),
            (&format!(r#"{{"mismatches": {huge}, "samples": 1}}"#), None),
        ] {
            report(&as_pool, &a, "paris", "lyon", value).await?;
            tokio::time::sleep(Duration::from_millis(700)).await;
            let obj = wait_peer(&client, &a, "lyon", "a sane status", |o| {
                observed(o) && sane(o)
            })
            .await?;
            if let Some((m, s, l)) = expect {
                let obj = wait_peer(
                    &client,
                    &a,
                    "lyon",
                    &format!("counts {m}/{s} at level {l}"),
                    |o| {
                        o["status"]["reputation"]["mismatches"] == m
                            && o["status"]["reputation"]["samples"] == s
                            && level(o) == l
                    },
                )
                .await?;
                ensure!(sane(&obj), "{}", summary(&obj));
            } else {
                ensure!(sane(&obj), "{}", summary(&obj));
            }
            let ok = cellule_e2e::http_get(&health, "/healthz")
                .await
                .map_err(anyhow::Error::msg)?;
            ensure!(
                ok.starts_with("HTTP/1.1 200"),
                "the operator after {:.40}: {ok}",
                value
            );
        }
        // i64::MAX of i64::MAX downgraded it (sticky); the counts going back
        // did not clear it.
        let obj = wait_level(&client, &a, "lyon", 1).await?;
        ensure!(
            obj["status"]["reputation"]["downgrade"]["samples"] == max,
            "{}",
            summary(&obj)
        );
        // No hot loop: quiet, the operator neither reconciles nor writes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(
            reconciles_logged(&a) > 0,
            "no reconcile of {a} in the operator's log: nothing would be counted"
        );
        let (reconciles, writes) = (
            reconciles_logged(&a),
            cellule_e2e::audited_writes(&operator, &a).len(),
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (reconciles, writes) = (
            reconciles_logged(&a) - reconciles,
            cellule_e2e::audited_writes(&operator, &a).len() - writes,
        );
        println!("garbage reports: {reconciles} reconciles and {writes} writes in 5 s of quiet");
        ensure!(
            writes == 0 && reconciles <= 3,
            "{reconciles} reconciles and {writes} writes in 5 s of quiet"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn forty_peers_are_judged_and_rendered_and_leave() {
    const PEERS: usize = 40;
    in_site_namespace("fed-forty", |client: Client, a: String| async move {
        start_site(&client, &a, "paris", endpoint(Some("10.20.0.1"), None, 8443)).await?;
        let base = baseline_egress(&client, &a, "paris").await?;
        let reconciles = peer_reconciles(&a);
        let started = Instant::now();
        let names: Vec<String> = (0..PEERS).map(|i| format!("peer-{i:02}")).collect();
        let docs: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ep = endpoint(None, Some(&format!("10.100.{i}.0/24")), 8443);
                peer_trust(name, "paris", name, None, &ep, &random_key(), 1 + i32::try_from(i % 2).unwrap_or(0))
            })
            .collect();
        futures::future::try_join_all(docs.iter().map(|d| apply(&client, &a, d))).await?;
        let created = started.elapsed();
        let api = cellule_api(&client, &a, "PeerTrust");
        eventually("every PeerTrust judged", WAIT, || async {
            let list = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let judged = list
                .items
                .iter()
                .filter(|p| {
                    p.data["status"]["observedGeneration"] == json!(p.metadata.generation)
                        && p.data["status"]["effectiveTrustLevel"] == p.data["spec"]["trustLevel"]
                })
                .count();
            (judged == PEERS).then_some(()).ok_or(format!("{judged} of {PEERS} judged"))
        })
        .await?;
        let judged = started.elapsed();
        let all: BTreeSet<_> = base.iter().cloned().chain((0..PEERS).map(|i| rule(&format!("10.100.{i}.0/24"), 8443))).collect();
        wait_ip_egress(&client, &a, "paris", "40 peers", |e| *e == all).await?;
        let peers = wait_config_peers(&client, &a, "paris", "40 peers", |p| p.len() == PEERS).await?;
        for (i, name) in names.iter().enumerate() {
            ensure!(config_has(&peers, name, 1 + i64::try_from(i % 2)?), "{name} in {peers:?}");
        }
        let rendered = started.elapsed();
        futures::future::try_join_all(names.iter().map(|n| delete_peer(&client, &a, n))).await?;
        wait_ip_egress(&client, &a, "paris", "back to the baseline", |e| *e == base).await?;
        wait_config_peers(&client, &a, "paris", "no peer", <[Value]>::is_empty).await?;
        let gone = started.elapsed();
        let reconciles = peer_reconciles(&a) - reconciles;
        println!(
            "{PEERS} PeerTrusts: created in {created:?}, all judged at {judged:?}, in egress and config at {rendered:?}, all gone at {gone:?}; {reconciles} PeerTrust reconciles"
        );
        // Each is judged a few times, not once per sibling (40 × 40).
        ensure!(reconciles < PEERS * PEERS / 2, "{reconciles} PeerTrust reconciles for {PEERS} PeerTrusts");
        Ok(())
    })
    .await;
}
