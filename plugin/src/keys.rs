//! `compromise-key`: a leaked token signing key named in the Pool's
//! `spec.tokens.compromisedKeys`; the operator withdraws it from the JWKS
//! and the ring at once, signs with a new key, and re-issues every token it
//! signed (see `compromised_keys` in operator/src/api/pool.rs).

use std::collections::BTreeMap;

use anyhow::Context as _;
use cellule_operator::api::{Pool, WorkerGrant, pool::SigningKeyState};
use kube::{
    ResourceExt as _,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    cli::CompromiseKeyArgs,
    cluster::{Ctx, api_error, wait_for},
};

/// The merge patch that adds `kid` to `listed` (a merge patch replaces a
/// list whole), at the `resourceVersion` it was read at: a concurrent
/// change of the list makes it fail (409) instead of dropping an entry.
pub fn compromise_patch(listed: &[String], kid: &str, resource_version: &str) -> Value {
    let mut keys = listed.to_vec();
    if !keys.iter().any(|k| k == kid) {
        keys.push(kid.to_owned());
    }
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"tokens": {"compromisedKeys": keys}},
    })
}

fn key_id(grant: &WorkerGrant) -> Option<&str> {
    grant
        .status
        .as_ref()?
        .token
        .as_ref()
        .map(|t| t.key_id.as_str())
}

pub async fn compromise(ctx: &Ctx, args: CompromiseKeyArgs) -> anyhow::Result<()> {
    let (name, kid) = (&args.pool, &args.kid);
    if !args.yes {
        anyhow::bail!(
            "this withdraws signing key {kid} of Pool {name} at once: every token it signed is refused until its grant's new token reaches the worker. Run again with --yes to go ahead"
        );
    }
    let mut attempts = 0;
    let patched = loop {
        let pool = ctx.get::<Pool>(name).await?;
        let listed = &pool.spec.tokens.compromised_keys;
        let published: Vec<String> = pool
            .status
            .iter()
            .flat_map(|s| &s.signing_keys)
            .map(|k| k.kid.clone())
            .collect();
        if listed.contains(kid) {
            println!("key {kid} is already in Pool {name}'s spec.tokens.compromisedKeys");
            break false;
        }
        if !published.contains(kid) {
            anyhow::bail!(
                "Pool {name} publishes no signing key {kid} (its keys: {}): see `kubectl get pool {name} -n {} -o jsonpath='{{.status.signingKeys}}'`",
                if published.is_empty() {
                    "none".to_owned()
                } else {
                    published.join(", ")
                },
                ctx.namespace
            );
        }
        let version = pool
            .resource_version()
            .context("the Pool has no resourceVersion")?;
        match ctx
            .api::<Pool>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(compromise_patch(listed, kid, &version)),
            )
            .await
        {
            Ok(_) => break true,
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => attempts += 1,
            Err(e) => return Err(api_error(e, &format!("updating Pool {name}"))),
        }
    };
    if patched {
        println!("Pool {name}: key {kid} added to spec.tokens.compromisedKeys");
    }
    if !args.wait.wait {
        return Ok(());
    }
    // What held a token of the key: each must end up with another.
    let grants = ctx
        .api::<WorkerGrant>()
        .list(&Default::default())
        .await
        .map_err(|e| api_error(e, "listing worker grants"))?
        .items;
    let held: BTreeMap<String, String> = grants
        .iter()
        .filter(|g| g.spec.pool_ref.name == *name && key_id(g) == Some(kid.as_str()))
        .filter_map(|g| Some((g.name_any(), g.status.as_ref()?.token.as_ref()?.jti.clone())))
        .collect();
    let signer = wait_for(
        &format!("Pool {name} to withdraw key {kid} and sign with another"),
        args.wait.timeout,
        || async {
            let pool = ctx.get::<Pool>(name).await?;
            let keys = pool.status.map(|s| s.signing_keys).unwrap_or_default();
            let signer = keys.iter().find(|k| k.state == SigningKeyState::Signing);
            Ok(match signer {
                Some(s) if !keys.iter().any(|k| k.kid == *kid) => Ok(s.kid.clone()),
                _ => Err(format!(
                    "keys {:?}",
                    keys.iter().map(|k| (&k.kid, k.state)).collect::<Vec<_>>()
                )),
            })
        },
    )
    .await?;
    println!("key {kid} withdrawn from the JWKS; now signing with {signer}");
    let reissued = wait_for(
        &format!(
            "the {} grant(s) holding a token of {kid} to get a new one",
            held.len()
        ),
        args.wait.timeout,
        || async {
            let mut done = Vec::new();
            let mut pending = Vec::new();
            for (grant, old) in &held {
                let now = ctx.get::<WorkerGrant>(grant).await?;
                match now.status.as_ref().and_then(|s| s.token.as_ref()) {
                    Some(t) if t.key_id != *kid => {
                        done.push(format!("{grant}: {old} -> {} (key {})", t.jti, t.key_id))
                    }
                    // Suspended or revoked meanwhile: nothing to re-issue.
                    None if now.status.as_ref().and_then(|s| s.phase)
                        != Some(cellule_operator::api::worker_grant::WorkerGrantPhase::Active) =>
                    {
                        done.push(format!(
                            "{grant}: {old} -> no token ({:?})",
                            now.status.and_then(|s| s.phase)
                        ))
                    }
                    _ => pending.push(grant.clone()),
                }
            }
            Ok(if pending.is_empty() {
                Ok(done)
            } else {
                Err(format!("still waiting for {}", pending.join(", ")))
            })
        },
    )
    .await?;
    if reissued.is_empty() {
        println!("no grant held a token signed by {kid}");
    } else {
        println!("tokens re-issued ({}):", reissued.len());
        for line in reissued {
            println!("  {line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_appended_once_at_the_version_read() {
        let listed = vec!["old".to_owned()];
        assert_eq!(
            compromise_patch(&listed, "k2", "77"),
            json!({"metadata": {"resourceVersion": "77"}, "spec": {"tokens": {"compromisedKeys": ["old", "k2"]}}})
        );
        assert_eq!(
            compromise_patch(&listed, "old", "77")["spec"]["tokens"]["compromisedKeys"],
            json!(["old"])
        );
    }
}
