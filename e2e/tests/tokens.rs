//! WorkerGrant tokens on the real API server, with the operator running
//! under its RBAC: issue, verify (ours and PyJWT), revoke at once,
//! suspend/resume, rotate, expire at the exact instant, revoke on delete,
//! and no token or key material anywhere in the logs.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use cellule_e2e::{Env, apply_sample_site, cellule_api, eventually, in_namespace};
use cellule_operator::tokens;
use cellule_operator::tokens::revocations::RevocationList;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn phase(client: &Client, ns: &str, grant: &str, want: &str) -> anyhow::Result<Value> {
    let api = cellule_api(client, ns, "WorkerGrant");
    eventually(&format!("{grant} {want}"), WAIT, || async {
        let g = api.get(grant).await.map_err(|e| e.to_string())?;
        if g.data["status"]["phase"] == want {
            Ok(g.data["status"].clone())
        } else {
            Err(format!("{}", g.data["status"]))
        }
    })
    .await
}

use cellule_e2e::token_of;

async fn jwks(client: &Client, ns: &str) -> anyhow::Result<(String, jsonwebtoken::jwk::JwkSet)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("paris-jwks")
        .await?;
    let text = cm.data.context("jwks data")?["jwks.json"].clone();
    Ok((text.clone(), serde_json::from_str(&text)?))
}

/// The verifier policy published beside the JWKS, as text and parsed.
async fn policy(client: &Client, ns: &str) -> anyhow::Result<(String, tokens::VerifierPolicy)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("paris-jwks")
        .await?;
    let text = cm.data.context("jwks data")?["policy.json"].clone();
    Ok((text.clone(), serde_json::from_str(&text)?))
}

async fn revocations_json(client: &Client, ns: &str) -> anyhow::Result<String> {
    cellule_e2e::revocation_lists_json(client, ns, "paris").await
}

async fn revocations(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    cellule_e2e::revoked(client, ns, "paris").await
}

/// The sample site in `ns`, once laptop-alice is Active: its token's jti
/// and expiry.
async fn alice_active(client: &Client, ns: &str) -> anyhow::Result<(String, jiff::Timestamp)> {
    apply_sample_site(client, ns).await?;
    let status = phase(client, ns, "laptop-alice", "Active").await?;
    let jti = status["token"]["jti"].as_str().context("jti")?.to_owned();
    let exp = status["token"]["expiresAt"]
        .as_str()
        .context("exp")?
        .parse()?;
    Ok((jti, exp))
}

/// laptop-alice revoked, once its `jti` is listed.
async fn revoke_alice(client: &Client, ns: &str, jti: &str) -> anyhow::Result<()> {
    cellule_api(client, ns, "WorkerGrant")
        .patch(
            "laptop-alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await?;
    revoked_eventually(client, ns, jti).await
}

/// The name of the pool's revocation list that holds `jti`.
async fn list_holding(client: &Client, ns: &str, jti: &str) -> anyhow::Result<String> {
    Api::<RevocationList>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("cellule.ai/pool=paris"))
        .await?
        .items
        .into_iter()
        .find(|l| l.spec.entries.iter().any(|e| e.jti == jti))
        .and_then(|l| l.metadata.name)
        .context("the list holding the jti")
}

/// No revocation list at all.
const NO_LISTS: &str = r#"{"kind":"List","items":[]}"#;

async fn revoked_eventually(client: &Client, ns: &str, jti: &str) -> anyhow::Result<()> {
    eventually(&format!("{jti} on the revocation list"), WAIT, || async {
        let list = revocations(client, ns).await.map_err(|e| e.to_string())?;
        if list.contains_key(jti) {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    })
    .await
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// PyJWT's verdict on `token` against the JWKS text.
async fn pyjwt(jwks: &str, token: &str, audience: &str) -> anyhow::Result<Result<Value, String>> {
    let dir = std::env::temp_dir().join(format!("cellule-pyjwt-{}", tokens::new_jti()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("jwks.json"), jwks)?;
    let script = cellule_e2e::repo_path("e2e/interop/verify_pyjwt.py");
    let jwks_file = dir.join("jwks.json");
    let args = [
        script.to_str().unwrap(),
        "--jwks",
        jwks_file.to_str().unwrap(),
        "--audience",
        audience,
    ];
    let out = cellule_e2e::run_with_stdin(&Env::bin("interop-python"), &args, token).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout)?)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[tokio::test]
async fn an_issued_token_verifies_here_and_in_pyjwt_and_revocation_is_immediate() {
    in_namespace("token", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        let status = phase(&client, &ns, "laptop-alice", "Active").await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        let (jwks_text, jwks) = jwks(&client, &ns).await?;
        let audience = format!("{ns}/paris");
        let (policy_text, policy) = policy(&client, &ns).await?;
        ensure!(
            policy.audience == audience,
            "published audience: {policy:?}"
        );
        let claims = tokens::verify(&token, &jwks, &BTreeMap::new(), &policy, now())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            claims.sub == "pc-0042" && claims.tiers == ["light"],
            "{claims:?}"
        );
        ensure!(
            status["token"]["jti"] == claims.jti.as_str(),
            "status names the jti"
        );
        ensure!(
            status["token"]["sha256"] == tokens::fingerprint(&token).as_str(),
            "status keeps the token's SHA-256"
        );
        ensure!(claims.exp - claims.iat == 720 * 3600, "30-day token");
        ensure!(
            status["audit"]["requestedBy"] == "alice.martin@example.com"
                && status["audit"]["approvedBy"] == "bob.durand@example.com"
        );

        let py = pyjwt(&jwks_text, &token, &audience)
            .await?
            .map_err(|e| anyhow::anyhow!("PyJWT refused: {e}"))?;
        ensure!(py["jti"] == claims.jti.as_str(), "PyJWT read {py}");
        let wrong = pyjwt(&jwks_text, &token, &format!("{ns}/lyon")).await?;
        ensure!(wrong.is_err(), "PyJWT accepted a wrong audience");
        // PyJWT also refuses a tampered payload and an HS256 token keyed
        // with the public key (the classic algorithm confusion).
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut forged_claims = claims.clone();
        forged_claims.tiers = vec!["heavy".into()];
        let forged_payload = base64_url(&serde_json::to_vec(&forged_claims)?);
        parts[1] = &forged_payload;
        ensure!(
            pyjwt(&jwks_text, &parts.join("."), &audience)
                .await?
                .is_err(),
            "PyJWT accepted a tampered token"
        );
        let public_x = serde_json::from_str::<Value>(&jwks_text)?["keys"][0]["x"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = jsonwebtoken::decode_header(&token)?.kid;
        let confused = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
        )?;
        ensure!(
            pyjwt(&jwks_text, &confused, &audience).await?.is_err(),
            "PyJWT accepted HS256 keyed with the public key"
        );
        ensure!(
            tokens::verify(&confused, &jwks, &BTreeMap::new(), &policy, now()).is_err(),
            "we accepted it"
        );

        // The operator's own command verifies it the same way.
        let verdict = verify_token_command(&jwks_text, NO_LISTS, &token, &policy_text).await?;
        ensure!(
            verdict.as_ref().is_ok_and(|c| c.contains(&claims.jti)),
            "verify-token: {verdict:?}"
        );

        let started = std::time::Instant::now();
        cellule_api(&client, &ns, "WorkerGrant")
            .patch(
                "laptop-alice",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true}})),
            )
            .await?;
        revoked_eventually(&client, &ns, &claims.jti).await?;
        println!("revocation reached the list in {:?}", started.elapsed());
        let list = revocations(&client, &ns).await?;
        ensure!(list[&claims.jti] == claims.exp, "entry carries exp");
        let refused = tokens::verify(&token, &jwks, &list, &policy, now());
        ensure!(
            matches!(refused, Err(tokens::VerifyError::Revoked { .. })),
            "{refused:?}"
        );
        let as_text = revocations_json(&client, &ns).await?;
        let verdict = verify_token_command(&jwks_text, &as_text, &token, &policy_text).await?;
        ensure!(
            verdict.as_ref().is_err_and(|e| e.contains("revoked")),
            "verify-token after revocation: {verdict:?}"
        );
        let status = phase(&client, &ns, "laptop-alice", "Revoked").await?;
        ensure!(
            status["audit"]["revokedAt"].is_string() && status.get("token").is_none(),
            "{status}"
        );
        eventually("token Secret deleted", WAIT, || async {
            match Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt("laptop-alice-token")
                .await
            {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn suspend_resume_rotate_and_delete() {
    in_namespace("rotate", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let first = phase(&client, &ns, "laptop-alice", "Active").await?["token"]["jti"]
            .as_str()
            .unwrap()
            .to_owned();

        let patch = |spec: Value| {
            let grants = grants.clone();
            async move {
                grants
                    .patch(
                        "laptop-alice",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": spec})),
                    )
                    .await
            }
        };
        patch(json!({"suspended": true})).await?;
        phase(&client, &ns, "laptop-alice", "Suspended").await?;
        revoked_eventually(&client, &ns, &first).await?;
        patch(json!({"suspended": false})).await?;
        let second = phase(&client, &ns, "laptop-alice", "Active").await?["token"]["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        ensure!(second != first, "un-suspending issues a fresh token");

        patch(json!({"rotation": 1})).await?;
        let third = eventually("a rotated token", WAIT, || async {
            let g = grants
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?;
            match g.data["status"]["token"]["jti"].as_str() {
                Some(jti) if jti != second => Ok(jti.to_owned()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        revoked_eventually(&client, &ns, &second).await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        let (_, jwks) = jwks(&client, &ns).await?;
        let claims = tokens::verify(
            &token,
            &jwks,
            &revocations(&client, &ns).await?,
            &policy(&client, &ns).await?.1,
            now(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(claims.jti == third, "the Secret holds the rotated token");

        // Deleting the grant revokes its token (finalizer).
        grants
            .delete("laptop-alice", &DeleteParams::default())
            .await?;
        revoked_eventually(&client, &ns, &third).await?;
        eventually("grant gone", WAIT, || async {
            match grants.get_opt("laptop-alice").await {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{:?}",
                    other.map(|o| o.map(|o| o.metadata.finalizers))
                )),
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn approval_then_expiry_at_the_exact_instant() {
    in_namespace("expiry", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        phase(&client, &ns, "laptop-contractor", "PendingApproval").await?;
        ensure!(
            Api::<Secret>::namespaced(client.clone(), &ns).get_opt("laptop-contractor-token").await?.is_none(),
            "no token before approval"
        );
        // Approve, and bring the end date to a few seconds from now.
        // Far enough for the approval to show as Active first on a loaded machine.
        let end = jiff::Timestamp::from_second(now() + 12)?;
        cellule_api(&client, &ns, "WorkerGrant")
            .patch(
                "laptop-contractor",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"approvedBy": "bob.durand@example.com", "expiresAt": end.to_string()}})),
            )
            .await?;
        let status = phase(&client, &ns, "laptop-contractor", "Active").await?;
        ensure!(status["token"]["expiresAt"] == end.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(), "exp capped at expiresAt: {status}");
        phase(&client, &ns, "laptop-contractor", "Expired").await?;
        let late = now() - end.as_second();
        println!("expired {late}s after expiresAt");
        ensure!(late <= 3, "the grant expired {late}s late");
        // Deleted once the status says Expired (the write just before).
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        eventually("token Secret deleted at expiry", Duration::from_secs(2), || async {
            match secrets.get_opt("laptop-contractor-token").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|s| s.is_some()))),
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn no_token_or_key_material_in_logs_events_or_status() {
    in_namespace("leak", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        phase(&client, &ns, "laptop-alice", "Active").await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        let ring = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("paris-signing-keys")
            .await?;
        let ring: Value = serde_json::from_slice(&ring.data.unwrap()["keys.json"].0)?;
        let seeds: Vec<String> = ring["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["seed"].as_str().map(str::to_owned))
            .collect();
        let signature = token.rsplit('.').next().unwrap().to_owned();
        let mut secrets = vec![token.clone(), signature];
        secrets.extend(seeds);
        // And every other token and key the operator holds right now, in
        // every namespace (the other tests' too).
        for secret in Api::<Secret>::all(client.clone())
            .list(
                &kube::api::ListParams::default()
                    .labels("app.kubernetes.io/managed-by=cellule-operator"),
            )
            .await?
        {
            for (key, value) in secret.data.unwrap_or_default() {
                let text = String::from_utf8(value.0)?;
                match key.as_str() {
                    "token" => secrets.push(text),
                    "keys.json" => {
                        let ring: Value = serde_json::from_str(&text)?;
                        secrets.extend(
                            ring["keys"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter_map(|k| k["seed"].as_str().map(str::to_owned)),
                        );
                    }
                    _ => {}
                }
            }
        }
        println!("looked for {} tokens and keys in the logs", secrets.len());

        let mut haystacks = vec![];
        for entry in std::fs::read_dir(Env::var("CELLULE_E2E_LOGS"))? {
            let path = entry?.path();
            haystacks.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        haystacks.push(("events".into(), serde_json::to_string(&events)?));
        for kind in ["Pool", "WorkerGrant"] {
            let list = cellule_api(&client, &ns, kind)
                .list(&Default::default())
                .await?;
            haystacks.push((format!("{kind} objects"), serde_json::to_string(&list)?));
        }
        ensure!(haystacks.len() > 5, "logs collected: {}", haystacks.len());
        for (place, text) in &haystacks {
            for secret in &secrets {
                ensure!(
                    !text.contains(secret.as_str()),
                    "secret material found in {place}"
                );
            }
        }
        Ok(())
    })
    .await;
}

/// The pool's `status.signingKeys` entry for `kid`.
async fn key_status(client: &Client, ns: &str, kid: &str) -> anyhow::Result<Value> {
    let pool = cellule_api(client, ns, "Pool").get("paris").await?;
    pool.data["status"]["signingKeys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid).cloned())
        .with_context(|| format!("no key {kid} in {}", pool.data["status"]["signingKeys"]))
}

/// The key ring as stored, parsed.
async fn stored_ring(client: &Client, ns: &str) -> anyhow::Result<tokens::KeyRing> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("paris-signing-keys")
        .await?;
    Ok(serde_json::from_slice(
        &secret.data.context("ring data")?[tokens::ring::RING_KEY].0,
    )?)
}

#[tokio::test]
async fn a_rotated_key_is_published_before_it_signs_and_refuses_no_valid_token() {
    in_namespace("keyrot", |client: Client, ns: String| async move {
        const PRE: i64 = 15;
        apply_sample_site(&client, &ns).await?;
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "Pool",
            "paris",
            json!({"spec": {"tokens": {"signingKeyPrePublication": format!("{PRE}s")}}}),
        )
        .await?;
        phase(&client, &ns, "laptop-alice", "Active").await?;
        let old_token = token_of(&client, &ns, "laptop-alice").await?;
        let old_kid = jsonwebtoken::decode_header(&old_token)?.kid.unwrap();
        let audience = format!("{ns}/paris");

        cellule_e2e::merge_patch(
            &client,
            &ns,
            "Pool",
            "paris",
            json!({"spec": {"tokens": {"signingKeyGeneration": 1}}}),
        )
        .await?;
        let (_, set) = eventually("two keys published", WAIT, || async {
            let (text, set) = jwks(&client, &ns).await.map_err(|e| e.to_string())?;
            if set.keys.len() == 2 {
                Ok((text, set))
            } else {
                Err(format!("{} keys", set.keys.len()))
            }
        })
        .await?;
        let new_kid = set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .find(|kid| *kid != old_kid)
            .context("the new kid")?;
        let pending = eventually("the new key pending", WAIT, || async {
            let key = key_status(&client, &ns, &new_kid).await.map_err(|e| e.to_string())?;
            if key["state"] == "Pending" && key["publishedAt"].is_string() {
                Ok(key)
            } else {
                Err(key.to_string())
            }
        })
        .await?;
        let published_at: jiff::Timestamp = pending["publishedAt"].as_str().unwrap().parse()?;

        // A token issued during pre-publication is still the old key's.
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "WorkerGrant",
            "laptop-alice",
            json!({"spec": {"rotation": 1}}),
        )
        .await?;
        let during = eventually("a token issued during pre-publication", WAIT, || async {
            let g = cellule_api(&client, &ns, "WorkerGrant")
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?;
            match g.data["status"]["observedRotation"].as_i64() {
                Some(1) => Ok(g.data["status"]["token"].clone()),
                _ => Err(g.data["status"].to_string()),
            }
        })
        .await?;
        let issued_at: jiff::Timestamp = during["issuedAt"].as_str().unwrap().parse()?;
        ensure!(
            issued_at.as_second() < published_at.as_second() + PRE,
            "re-issued {issued_at}, too late to test pre-publication (published {published_at})"
        );
        ensure!(
            during["keyId"] == old_kid.as_str(),
            "a token issued {}s after the new key was published is signed by {} (pre-publication {PRE}s)",
            issued_at.as_second() - published_at.as_second(),
            during["keyId"]
        );

        // Then the new key signs, and the old one retires: its private
        // half is deleted, its public half stays for the old tokens.
        let signing = eventually("the new key signing", WAIT, || async {
            let key = key_status(&client, &ns, &new_kid).await.map_err(|e| e.to_string())?;
            (key["state"] == "Signing").then_some(()).ok_or(key.to_string())
        });
        signing.await?;
        let switched = jiff::Timestamp::now();
        println!(
            "the new key signed {}s after it was published (pre-publication {PRE}s)",
            switched.as_second() - published_at.as_second()
        );
        ensure!(
            switched.as_second() >= published_at.as_second() + PRE,
            "signing before its pre-publication ended"
        );
        ensure!(key_status(&client, &ns, &old_kid).await?["state"] == "Retired");
        let ring = stored_ring(&client, &ns).await?;
        let old = ring.keys.iter().find(|k| k.kid == old_kid).context("old key kept")?;
        ensure!(old.seed.is_none(), "the retired key's private half is deleted");
        ensure!(
            old.latest_exp >= during["expiresAt"].as_str().unwrap().parse::<jiff::Timestamp>()?.as_second(),
            "the retired key records the latest exp it signed"
        );
        // Tokens signed by the retired key are still accepted, here and by PyJWT.
        let current = token_of(&client, &ns, "laptop-alice").await?;
        let (jwks_text, set) = jwks(&client, &ns).await?;
        for token in [&old_token, &current] {
            tokens::verify(token, &set, &BTreeMap::new(), &policy(&client, &ns).await?.1, now())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            pyjwt(&jwks_text, token, &audience)
                .await?
                .map_err(|e| anyhow::anyhow!("PyJWT: {e}"))?;
        }

        // New tokens are the new key's.
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "WorkerGrant",
            "laptop-alice",
            json!({"spec": {"rotation": 2}}),
        )
        .await?;
        eventually("a token from the new key", WAIT, || async {
            let g = cellule_api(&client, &ns, "WorkerGrant")
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?;
            match g.data["status"]["token"]["keyId"].as_str() {
                Some(kid) if kid == new_kid => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        tokens::verify(&token, &jwks(&client, &ns).await?.1, &BTreeMap::new(), &policy(&client, &ns).await?.1, now())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_compromised_key_is_withdrawn_at_once_and_every_token_it_signed_replaced() {
    in_namespace("compromise", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        // Both sample grants hold a token of the pool's first key (the
        // contractor's without approval here).
        cellule_e2e::merge_patch(&client, &ns, "Pool", "paris", json!({"spec": {"tokens": {"approvalRequired": false}}})).await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let names = ["laptop-alice", "laptop-contractor"];
        let mut before = BTreeMap::new();
        for name in names {
            phase(&client, &ns, name, "Active").await?;
            before.insert(name, token_of(&client, &ns, name).await?);
        }
        let kid = jsonwebtoken::decode_header(&before["laptop-alice"])?.kid.unwrap();
        // The response must not wait for the rest of the pool to be right:
        // the pool is stalled (its database Secret gone) when it comes.
        Api::<Secret>::namespaced(client.clone(), &ns)
            .delete("paris-db", &DeleteParams::default())
            .await?;
        cellule_e2e::wait_condition(&client, &ns, "Pool", "paris", "Stalled", "True", WAIT).await?;
        ensure!(before.values().all(|t| jsonwebtoken::decode_header(t).unwrap().kid.as_deref() == Some(kid.as_str())));

        let declared = std::time::Instant::now();
        cellule_e2e::merge_patch(
            &client,
            &ns,
            "Pool",
            "paris",
            json!({"spec": {"tokens": {"compromisedKeys": [kid]}}}),
        )
        .await?;
        eventually("the key unpublished", WAIT, || async {
            let (_, set) = jwks(&client, &ns).await.map_err(|e| e.to_string())?;
            if set.find(&kid).is_none() && !set.keys.is_empty() {
                Ok(())
            } else {
                Err(format!("{} keys", set.keys.len()))
            }
        })
        .await?;
        let unpublished = declared.elapsed();
        // Every token it signed is refused from now on.
        let (_, set) = jwks(&client, &ns).await?;
        let policy = policy(&client, &ns).await?.1;
        for (name, token) in &before {
            let verdict = tokens::verify(token, &set, &BTreeMap::new(), &policy, now());
            ensure!(
                matches!(verdict, Err(tokens::VerifyError::UnknownKey(_))),
                "{name}'s token of the compromised key: {verdict:?}"
            );
        }
        // Every grant gets a new token, signed by the new key.
        for name in names {
            eventually(&format!("{name} re-issued"), WAIT, || async {
                let token = token_of(&client, &ns, name).await.map_err(|e| e.to_string())?;
                let (_, set) = jwks(&client, &ns).await.map_err(|e| e.to_string())?;
                tokens::verify(&token, &set, &revocations(&client, &ns).await.map_err(|e| e.to_string())?, &policy, now())
                    .map_err(|e| e.to_string())
            })
            .await?;
        }
        println!(
            "compromise declared: key unpublished after {unpublished:?}, both grants re-issued after {:?}",
            declared.elapsed()
        );
        let status = grants.get("laptop-alice").await?.data["status"].clone();
        ensure!(status["token"]["keyId"] != kid.as_str(), "{status}");
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        ensure!(
            events.items.iter().any(|e| e.reason.as_deref() == Some("SigningKeyWithdrawn")),
            "a SigningKeyWithdrawn Event"
        );
        // Nothing of the key is left: not in the ring, not in the status.
        ensure!(!stored_ring(&client, &ns).await?.publishes(&kid), "the key is gone from the ring");
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        ensure!(
            !pool.data["status"]["signingKeys"].to_string().contains(&kid),
            "{}",
            pool.data["status"]["signingKeys"]
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_renewed_token_stays_valid_for_a_grace_then_a_revocation_takes_both() {
    in_namespace("renew", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        // Renew 2 s after issue (renewBefore just under the 1 h lifetime).
        cellule_api(&client, &ns, "Pool")
            .patch(
                "paris",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"tokens": {"defaultTtl": "1h", "renewBefore": "3598s"}}}),
                ),
            )
            .await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        grants
            .patch(
                "laptop-alice",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"ttl": "1h"}})),
            )
            .await?;
        let first = phase(&client, &ns, "laptop-alice", "Active").await?["token"]["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        let retiring = eventually("a renewal", WAIT, || async {
            let g = grants
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?;
            let status = g.data["status"].clone();
            if status["token"]["jti"] != first.as_str()
                && status["retiringToken"]["jti"].is_string()
            {
                Ok(status)
            } else {
                Err(format!("{status}"))
            }
        })
        .await?;
        let retiring_jti = retiring["retiringToken"]["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        let revoke_at: jiff::Timestamp = retiring["retiringToken"]["revokeAt"]
            .as_str()
            .unwrap()
            .parse()?;
        ensure!(
            revoke_at.as_second() - now() > 200,
            "a grace of minutes, not seconds: {retiring}"
        );
        ensure!(
            !revocations(&client, &ns).await?.contains_key(&retiring_jti),
            "the renewed token is not revoked during its grace"
        );

        grants
            .patch(
                "laptop-alice",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true}})),
            )
            .await?;
        let status = phase(&client, &ns, "laptop-alice", "Revoked").await?;
        ensure!(status.get("retiringToken").is_none(), "{status}");
        revoked_eventually(&client, &ns, &retiring_jti).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_token_shorter_than_the_renewal_window_is_issued_once() {
    in_namespace("oneissue", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        // renewBefore 2h: longer than alice's 1h token, and longer than
        // what is left of the contractor's grant (100 s).
        cellule_api(&client, &ns, "Pool")
            .patch(
                "paris",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"tokens": {"defaultTtl": "3h", "renewBefore": "2h"}}}),
                ),
            )
            .await?;
        // Issue only once the operator has seen the pool's new policy.
        let pools = cellule_api(&client, &ns, "Pool");
        eventually("the Pool's new generation observed", WAIT, || async {
            let p = pools.get("paris").await.map_err(|e| e.to_string())?;
            let (seen, generation) = (p.data["status"]["observedGeneration"].clone(), p.metadata.generation);
            if seen.as_i64() == generation { Ok(()) } else { Err(format!("{seen} of {generation:?}")) }
        })
        .await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let ends = jiff::Timestamp::from_second(now() + 100)?.to_string();
        let short = json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant", "metadata": {"name": "laptop-short"},
            "spec": {"poolRef": {"name": "paris"}, "workerId": "pc-short", "owner": "alice.martin@example.com", "tiers": ["light"],
                     "ttl": "1h", "requestedBy": "alice.martin@example.com", "approvedBy": "bob.durand@example.com"}
        });
        grants.patch("laptop-short", &PatchParams::apply("e2e"), &Patch::Apply(&short)).await?;
        grants
            .patch(
                "laptop-contractor",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"expiresAt": ends, "approvedBy": "bob.durand@example.com"}})),
            )
            .await?;
        let mut first = BTreeMap::new();
        for (grant, lifetime) in [("laptop-short", 3600), ("laptop-contractor", 100)] {
            let status = phase(&client, &ns, grant, "Active").await?;
            let at = |k: &str| status["token"][k].as_str().unwrap_or_default().parse::<jiff::Timestamp>().map(|t| t.as_second());
            let issued_for = at("expiresAt")? - at("issuedAt")?;
            ensure!((lifetime - 5..=lifetime).contains(&issued_for), "{grant}: a token of {issued_for}s: {status}");
            first.insert(grant, status["token"]["jti"].as_str().unwrap_or_default().to_owned());
        }
        // Before the fix: a new token every second. Watch for 15 s.
        tokio::time::sleep(Duration::from_secs(15)).await;
        for grant in ["laptop-short", "laptop-contractor"] {
            let status = grants.get(grant).await?.data["status"].clone();
            ensure!(
                status["token"]["jti"] == first[grant].as_str(),
                "{grant} re-issued: {status}"
            );
            ensure!(
                status.get("retiringToken").is_none(),
                "{grant} renewed: {status}"
            );
        }
        let list = revocations(&client, &ns).await?;
        ensure!(
            list.is_empty(),
            "nothing revoked, nothing renewed: {list:?}"
        );
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        let renewed = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("TokenRenewed"))
            .count();
        ensure!(renewed == 0, "{renewed} TokenRenewed Events");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_forged_long_lived_token_and_a_garbled_revocation_list_are_refused() {
    in_namespace("forged", |client: Client, ns: String| async move {
        let (jti, _) = alice_active(&client, &ns).await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        let (jwks_text, _) = jwks(&client, &ns).await?;
        let (policy_text, policy) = policy(&client, &ns).await?;
        ensure!(
            policy.max_ttl_seconds == 2160 * 3600,
            "published maxTtl: {policy:?}"
        );

        // Someone who can read the pool's signing key forges a token that
        // lives ten years, and one issued in the future.
        let ring = stored_ring(&client, &ns).await?;
        let key = ring.signer(300, now()).context("a signing key")?;
        let forged = |iat: i64, exp: i64| {
            tokens::jwt::sign(
                &key,
                &tokens::Claims {
                    iss: policy.audience.clone(),
                    sub: "pc-evil".into(),
                    aud: policy.audience.clone(),
                    iat,
                    nbf: now(),
                    exp,
                    jti: tokens::new_jti(),
                    tiers: vec!["light".into()],
                },
            )
        };
        let none = NO_LISTS;
        for (what, forged, why) in [
            (
                "ten years",
                forged(now(), now() + 10 * 365 * 86400),
                "exceeds the pool's maxTtl",
            ),
            (
                "issued in an hour",
                forged(now() + 3600, now() + 7200),
                "issued in the future",
            ),
        ] {
            let verdict = verify_token_command(&jwks_text, none, &forged, &policy_text).await?;
            ensure!(
                matches!(&verdict, Err(e) if e.contains(why)),
                "forged token ({what}): {verdict:?}"
            );
        }
        ensure!(
            verify_token_command(&jwks_text, none, &token, &policy_text)
                .await?
                .is_ok(),
            "the real token verifies"
        );

        // Revoke it. Garbled revocation data cannot reach a verifier
        // through the API server (its schema refuses it), and read from a
        // file it makes the verifier refuse every token.
        revoke_alice(&client, &ns, &jti).await?;
        let lists = Api::<RevocationList>::namespaced(client.clone(), &ns);
        let name = list_holding(&client, &ns, &jti).await?;
        for (what, entry) in [
            ("an expiry that is not a time", json!({"jti": "x", "exp": "revoked"})),
            ("a jti with a space", json!({"jti": "a b", "exp": 1})),
            ("an expiry after the list's", json!({"jti": "late", "exp": i64::MAX})),
        ] {
            let refused = lists
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::<()>::Json(serde_json::from_value(json!([
                        {"op": "add", "path": "/spec/entries/-", "value": entry}
                    ]))?),
                )
                .await;
            ensure!(
                matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
                "{what}: {refused:?}"
            );
        }
        for garbled in [r#"{"items":[{"spec":{"pool":"paris","expiresAt":1,"entries":[{"jti":"x","exp":"revoked"}]}}]}"#, "{}"] {
            let verdict = verify_token_command(&jwks_text, garbled, &token, &policy_text).await?;
            ensure!(
                matches!(&verdict, Err(e) if e.contains("revocation list unreadable")),
                "garbled revocation data fails closed: {verdict:?}"
            );
        }
        let lists = revocations_json(&client, &ns).await?;
        let verdict = verify_token_command(&jwks_text, &lists, &token, &policy_text).await?;
        ensure!(
            matches!(&verdict, Err(e) if e.contains("revoked")),
            "revoked: {verdict:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn approval_binds_the_token_and_one_grant_holds_a_worker_id() {
    in_namespace("approval", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let merge = |spec: Value| Patch::Merge(json!({ "spec": spec }));
        let jti_of = |status: &Value| status["token"]["jti"].as_str().unwrap_or_default().to_owned();
        let first = jti_of(&phase(&client, &ns, "laptop-alice", "Active").await?);

        // Widening an approved grant is refused at admission.
        let refused = grants
            .patch("laptop-alice", &PatchParams::default(), &merge(json!({"tiers": ["light", "heavy"]})))
            .await;
        ensure!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.message.contains("can only be narrowed")),
            "widening while approved: {refused:?}"
        );
        // Withdrawing the approval (to widen) revokes the token at once.
        grants
            .patch("laptop-alice", &PatchParams::default(), &merge(json!({"approvedBy": null, "tiers": ["light", "heavy"]})))
            .await?;
        let pending = phase(&client, &ns, "laptop-alice", "PendingApproval").await?;
        ensure!(pending.get("token").is_none(), "{pending}");
        revoked_eventually(&client, &ns, &first).await?;
        // Approved again: a token with the new tiers.
        grants
            .patch("laptop-alice", &PatchParams::default(), &merge(json!({"approvedBy": "bob.durand@example.com"})))
            .await?;
        let second = eventually("a token for both tiers", WAIT, || async {
            let g = grants.get("laptop-alice").await.map_err(|e| e.to_string())?;
            let status = g.data["status"].clone();
            if status["phase"] == "Active" && status["token"]["tiers"] == json!(["light", "heavy"]) {
                Ok(jti_of(&status))
            } else {
                Err(status.to_string())
            }
        })
        .await?;
        let claims = tokens::verify(
            &token_of(&client, &ns, "laptop-alice").await?,
            &jwks(&client, &ns).await?.1,
            &BTreeMap::new(),
            &policy(&client, &ns).await?.1,
            now(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(claims.jti == second && claims.tiers == ["light", "heavy"], "{claims:?}");
        // Narrowing needs no new approval, and re-issues: the old token goes.
        grants
            .patch("laptop-alice", &PatchParams::default(), &merge(json!({"tiers": ["heavy"]})))
            .await?;
        eventually("a token for the one tier left", WAIT, || async {
            let g = grants.get("laptop-alice").await.map_err(|e| e.to_string())?;
            let status = g.data["status"].clone();
            if status["token"]["tiers"] == json!(["heavy"]) && jti_of(&status) != second {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await?;
        revoked_eventually(&client, &ns, &second).await?;

        // A second grant for the same worker gets no token.
        let twin = json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant", "metadata": {"name": "laptop-alice-twin"},
            "spec": {"poolRef": {"name": "paris"}, "workerId": "pc-0042", "owner": "mallory@example.com", "tiers": ["light"],
                     "ttl": "24h", "requestedBy": "mallory@example.com", "approvedBy": "bob.durand@example.com"}
        });
        grants
            .patch("laptop-alice-twin", &PatchParams::apply("e2e"), &Patch::Apply(&twin))
            .await?;
        let stalled = cellule_e2e::wait_condition(&client, &ns, "WorkerGrant", "laptop-alice-twin", "Stalled", "True", WAIT).await?;
        let condition = stalled.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled"))
            .cloned()
            .unwrap_or_default();
        ensure!(condition["reason"] == "WorkerIdInUse" && condition["message"].as_str().unwrap_or_default().contains("laptop-alice"), "{condition}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let secret = Api::<Secret>::namespaced(client.clone(), &ns).get_opt("laptop-alice-twin-token").await?;
        ensure!(secret.is_none(), "the twin got a token Secret");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_namespace_admin_cannot_unrevoke_a_token() {
    in_namespace("durable", |client: Client, ns: String| async move {
        let (jti, _) = alice_active(&client, &ns).await?;
        revoke_alice(&client, &ns, &jti).await?;
        let name = list_holding(&client, &ns, &jti).await?;

        // alice administers the namespace (the built-in `admin` role)...
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "alice-admin"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
                }))?,
            )
            .await?;
        let alice = cellule_e2e::user_client("alice").await;
        let alice_client = alice.clone();
        // ...so she may read and write ConfigMaps...
        let her_config_maps = Api::<ConfigMap>::namespaced(alice.clone(), &ns);
        // (once the API server's authorizer has seen the new binding)
        eventually("alice bound as admin", WAIT, || async {
            her_config_maps.get("paris-jwks").await.map(drop).map_err(|e| e.to_string())
        })
        .await?;
        her_config_maps
            .create(&Default::default(), &serde_json::from_value(json!({"metadata": {"name": "alice-notes"}}))?)
            .await?;
        // ...but neither delete nor edit its revocation lists, nor make one.
        let lists = Api::<RevocationList>::namespaced(alice, &ns);
        let forbidden = |what: &str, result: Result<(), kube::Error>| {
            ensure!(
                matches!(&result, Err(kube::Error::Api(s)) if s.code == 403),
                "alice could {what}: {result:?}"
            );
            Ok(())
        };
        forbidden(
            "delete the list",
            lists.delete(&name, &DeleteParams::default()).await.map(drop),
        )?;
        forbidden(
            "empty the list",
            lists
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"entries": []}})),
                )
                .await
                .map(drop),
        )?;
        forbidden(
            "delete every list",
            lists
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .map(drop),
        )?;
        // (and reads the lists as any reader may).
        ensure!(
            cellule_e2e::revoked(&alice_client, &ns, "paris").await?.contains_key(&jti),
            "revoked, as she reads it"
        );
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        ensure!(
            pool.data["status"].get("revokedTokens").is_none(),
            "no record in the Pool's status: {}",
            pool.data["status"]
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_rotation_cut_between_its_two_writes_still_revokes_the_old_token() {
    in_namespace("cut", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        let first = phase(&client, &ns, "laptop-alice", "Active").await?["token"]["jti"]
            .as_str()
            .context("jti")?
            .to_owned();
        let old_token = token_of(&client, &ns, "laptop-alice").await?;
        // The fault: the API server refuses every write of the token
        // Secret in this namespace (as a full quota or a policy would).
        let lift = cellule_e2e::deny_secret_writes(&client, &ns, "laptop-alice-token").await?;
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let outcome = async {
            // A rotation now: the status takes the new jti, the Secret
            // cannot. The old token must still be refused.
            cellule_api(&client, &ns, "WorkerGrant")
                .patch(
                    "laptop-alice",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"rotation": 1}})),
                )
                .await?;
            revoked_eventually(&client, &ns, &first).await?;
            let (_, jwks) = jwks(&client, &ns).await?;
            let refused = tokens::verify(
                &old_token,
                &jwks,
                &revocations(&client, &ns).await?,
                &policy(&client, &ns).await?.1,
                now(),
            );
            ensure!(
                matches!(refused, Err(tokens::VerifyError::Revoked { .. })),
                "the old token during the fault: {refused:?}"
            );
            anyhow::Ok(())
        }
        .await;
        // The fault lifted: the grant ends with one token, in its Secret.
        lift().await;
        outcome?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let started = std::time::Instant::now();
        let jti = eventually("Secret and status agree again", WAIT, || async {
            let status = grants
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?
                .data["status"]
                .clone();
            let jti = status["token"]["jti"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let held = secrets
                .get_opt("laptop-alice-token")
                .await
                .map_err(|e| e.to_string())?;
            let held = held
                .and_then(|s| s.data)
                .and_then(|d| {
                    d.get("token")
                        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
                })
                .and_then(|t| tokens::unverified_claims(&t))
                .map(|c| c.jti);
            if status["phase"] == "Active" && held.as_deref() == Some(jti.as_str()) && jti != first
            {
                Ok(jti)
            } else {
                Err(format!("status {jti}, Secret {held:?}"))
            }
        })
        .await?;
        println!(
            "rotation completed {:?} after the fault was lifted",
            started.elapsed()
        );
        let claims = tokens::verify(
            &token_of(&client, &ns, "laptop-alice").await?,
            &jwks(&client, &ns).await?.1,
            &revocations(&client, &ns).await?,
            &policy(&client, &ns).await?.1,
            now(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(claims.jti == jti, "the Secret's token verifies: {claims:?}");
        Ok(())
    })
    .await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `cellule-operator verify-token`'s verdict: the claims it prints, or why it refused.
async fn verify_token_command(
    jwks: &str,
    revoked: &str,
    token: &str,
    policy: &str,
) -> anyhow::Result<Result<String, String>> {
    let dir = std::env::temp_dir().join(format!("cellule-verify-{}", tokens::new_jti()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("jwks.json"), jwks)?;
    std::fs::write(dir.join("policy.json"), policy)?;
    std::fs::write(dir.join("revoked.json"), revoked)?;
    let (jwks_file, list_file, policy_file) = (
        dir.join("jwks.json"),
        dir.join("revoked.json"),
        dir.join("policy.json"),
    );
    let args = [
        "verify-token",
        "--jwks",
        jwks_file.to_str().unwrap(),
        "--revocations",
        list_file.to_str().unwrap(),
        "--policy",
        policy_file.to_str().unwrap(),
    ];
    let binary = std::path::PathBuf::from(Env::var("CELLULE_E2E_OPERATOR_BIN"));
    let out = cellule_e2e::run_with_stdin(&binary, &args, token).await?;
    std::fs::remove_dir_all(&dir)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        !stderr.contains(token) && !String::from_utf8_lossy(&out.stdout).contains(token),
        "verify-token printed the token"
    );
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(stderr)
    })
}

#[tokio::test]
async fn a_token_verifies_with_exactly_what_the_rendered_pool_config_names() {
    in_namespace("contract", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        phase(&client, &ns, "laptop-alice", "Active").await?;
        let token = token_of(&client, &ns, "laptop-alice").await?;
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let rendered = config_maps.get("paris-config").await?;
        let config: Value =
            serde_yaml::from_str(&rendered.data.context("config data")?["pool.yaml"])?;
        let tokens_config = &config["tokens"];
        // The files the config names, read from what the pool mounts there:
        // the Deployment's volume at that directory.
        let deployment =
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
                .get("paris-pool")
                .await?;
        let pod = deployment
            .spec
            .context("spec")?
            .template
            .spec
            .context("pod spec")?;
        let file = |key: &str| -> anyhow::Result<String> {
            let path = std::path::Path::new(
                tokens_config[key]
                    .as_str()
                    .with_context(|| format!("tokens.{key}"))?,
            );
            let (dir, name) = (
                path.parent().context("dir")?,
                path.file_name()
                    .context("name")?
                    .to_str()
                    .context("utf-8")?,
            );
            let mount = pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| std::path::Path::new(&m.mount_path) == dir)
                .with_context(|| format!("nothing mounted at {}", dir.display()))?;
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .context("volume")?;
            Ok(volume
                .config_map
                .as_ref()
                .context("a ConfigMap volume")?
                .name
                .clone()
                + "/"
                + name)
        };
        let read = async |at: String| -> anyhow::Result<String> {
            let (cm, key) = at.split_once('/').context("cm/key")?;
            Ok(config_maps.get(cm).await?.data.context("data")?[key].clone())
        };
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&read(file("jwksFile")?).await?)?;
        let policy: Value = serde_json::from_str(&read(file("policyFile")?).await?)?;
        // Verified with jsonwebtoken directly, from the config's own values.
        let kid = jsonwebtoken::decode_header(&token)?.kid.context("kid")?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).context("kid in the JWKS")?)?;
        ensure!(
            tokens_config["algorithms"] == json!(["EdDSA"]),
            "{tokens_config}"
        );
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[tokens_config["audience"].as_str().context("audience")?]);
        validation.set_issuer(&[tokens_config["issuer"].as_str().context("issuer")?]);
        validation.leeway = policy["leewaySeconds"].as_u64().context("leeway")?;
        let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
            .map_err(|e| anyhow::anyhow!("the token against the rendered config: {e}"))?
            .claims;
        let lifetime =
            claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default();
        ensure!(
            lifetime <= policy["maxTtlSeconds"].as_i64().context("maxTtl")?,
            "{claims}"
        );
        ensure!(claims["aud"] == format!("{ns}/paris").as_str(), "{claims}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn revocations_an_earlier_version_recorded_move_into_revocation_lists() {
    in_namespace("upgrade", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        phase(&client, &ns, "laptop-alice", "Active").await?;
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let uid = pool.metadata.uid.clone().context("uid")?;
        let (recorded, listed, expired) = (tokens::new_jti(), tokens::new_jti(), tokens::new_jti());
        let exp = now() + 3600;
        // What the previous version left: the record in the Pool's status
        // and the list ConfigMap it made (its labels), one entry expired.
        cellule_api(&client, &ns, "Pool")
            .patch_status(
                "paris",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"revokedTokens": {&recorded: exp, &expired: now() - 3600}}})),
            )
            .await?;
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "paris-revocations", "labels": {
                        "app.kubernetes.io/managed-by": "cellule-operator", "cellule.ai/owner-uid": uid},
                        "ownerReferences": [{"apiVersion": "cellule.ai/v1alpha1", "kind": "Pool", "name": "paris",
                                             "uid": uid, "controller": true}]},
                    "data": {&listed: (exp + 60).to_string(), "garbled": "revoked"},
                }))?,
            )
            .await?;
        let moved = eventually("the old record moved", WAIT, || async {
            let list = revocations(&client, &ns).await.map_err(|e| e.to_string())?;
            let config_map = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt("paris-revocations")
                .await
                .map_err(|e| e.to_string())?;
            let status = cellule_api(&client, &ns, "Pool").get("paris").await.map_err(|e| e.to_string())?.data["status"].clone();
            let record_left = status.get("revokedTokens").is_some_and(|r| r.as_object().is_none_or(|r| !r.is_empty()));
            if list.contains_key(&recorded) && config_map.is_none() && !record_left {
                Ok(list)
            } else {
                Err(format!("{list:?} {config_map:?} {status}"))
            }
        })
        .await?;
        ensure!(moved[&recorded] == exp && moved[&listed] == exp + 60, "{moved:?}");
        ensure!(!moved.contains_key(&expired), "an expired entry moved: {moved:?}");
        // A garbled entry outlives any token of the pool (fail closed).
        ensure!(moved.get("garbled").is_some_and(|e| *e > now() + 3600), "{moved:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_token_secret_or_a_list_made_by_hand_cannot_block_a_revocation() {
    in_namespace("blockers", |client: Client, ns: String| async move {
        let (jti, exp) = alice_active(&client, &ns).await?;

        // A cluster administrator makes, by hand, the list the operator
        // would make next for the real token (unlabelled, for another
        // pool)...
        let pool = cellule_api(&client, &ns, "Pool").get("paris").await?;
        let max_ttl: cellule_operator::api::common::Duration =
            serde_json::from_value(pool.data["spec"]["tokens"]["maxTtl"].clone())?;
        let width = tokens::revocations::bucket_width(max_ttl.0.as_secs() as i64);
        let end = tokens::revocations::bucket_end(exp.as_second(), width);
        let squatted = cellule_operator::names::revocation_list("paris", end, 0);
        let squatter: RevocationList = serde_json::from_value(json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "RevocationList",
            "metadata": {"name": squatted},
            "spec": {"pool": "lyon", "expiresAt": end, "entries": []},
        }))?;
        Api::<RevocationList>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &squatter)
            .await?;

        // The Secret is written just after the status that names it.
        token_of(&client, &ns, "laptop-alice").await?;
        // ...and whoever may write Secrets overwrites the token Secret
        // with an unsigned token whose jti no list could hold and whose
        // exp is the end of time.
        let claims = json!({"iss": "x", "sub": "x", "aud": "x", "iat": 0, "nbf": 0, "exp": i64::MAX,
                            "jti": "bad jti!/x", "tiers": []});
        let forged = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none"}"#),
            base64_url(claims.to_string().as_bytes())
        );
        Api::<Secret>::namespaced(client.clone(), &ns)
            .patch(
                "laptop-alice-token",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"token": forged}})),
            )
            .await?;
        // The revocation still happens: the real jti is listed, in a list
        // of this pool, and no list reaches past any token's life.
        revoke_alice(&client, &ns, &jti).await?;
        let holder = list_holding(&client, &ns, &jti).await?;
        ensure!(holder != squatted, "listed in the hand-made list");
        phase(&client, &ns, "laptop-alice", "Revoked").await?;
        let lists = Api::<RevocationList>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        let far = now() + 2 * 8760 * 3600;
        ensure!(
            lists.items.iter().all(|l| l.spec.expires_at < far),
            "a list that would outlive every token: {:?}",
            lists
                .items
                .iter()
                .map(|l| (&l.metadata.name, l.spec.expires_at))
                .collect::<Vec<_>>()
        );
        Ok(())
    })
    .await;
}
