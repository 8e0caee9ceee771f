//! `revoke`, `suspend`, `rotate`, `approve`: writes to a WorkerGrant's (or
//! PeerTrust's) spec, then a wait on the status the operator writes.

use anyhow::Context as _;
use cellule_operator::api::{PeerTrust, WorkerGrant, worker_grant::WorkerGrantPhase};
use cellule_verifier::revocations::{POOL_LABEL, RevocationList};
use kube::{
    ResourceExt as _,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    cli::{ApproveArgs, ApproveKind, ApprovePeerArgs, GrantArgs, SuspendArgs, WaitArgs},
    cluster::{Ctx, api_error, wait_for},
};

/// The merge patch that revokes a grant.
pub fn revoke_patch() -> Value {
    json!({"spec": {"revoked": true}})
}

/// The merge patch that suspends a grant, or lifts it.
pub fn suspend_patch(suspended: bool) -> Value {
    json!({"spec": {"suspended": suspended}})
}

/// The merge patch of a rotation: the next `rotation`, at the
/// `resourceVersion` it was read at. The API server refuses it (409) if the
/// grant changed since, so two rotations at once cannot both write the
/// same number and lose one.
pub fn rotate_patch(current: i64, resource_version: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"rotation": current + 1},
    })
}

/// The merge patch that approves a grant as `user`.
pub fn approve_patch(user: &str) -> Value {
    json!({"spec": {"approvedBy": user}})
}

/// The merge patch that raises a PeerTrust to `level` approved by `user`,
/// what the four-eyes policy expects: `trustLevel` and `approvedBy` only
/// (changing anything else that is trusted at level 3 is refused).
pub fn approve_peer_patch(user: &str, level: i32) -> Value {
    json!({"spec": {"trustLevel": level, "approvedBy": user}})
}

async fn patch(ctx: &Ctx, name: &str, patch: &Value) -> anyhow::Result<WorkerGrant> {
    ctx.api::<WorkerGrant>()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| api_error(e, &format!("updating WorkerGrant {name}")))
}

fn phase(grant: &WorkerGrant) -> Option<WorkerGrantPhase> {
    grant.status.as_ref().and_then(|s| s.phase)
}

fn jti(grant: &WorkerGrant) -> Option<String> {
    grant
        .status
        .as_ref()
        .and_then(|s| s.token.as_ref())
        .map(|t| t.jti.clone())
}

/// The grant once its status describes `generation` and `done` holds.
async fn settled(
    ctx: &Ctx,
    name: &str,
    generation: Option<i64>,
    wait: &WaitArgs,
    what: &str,
    done: impl Fn(&WorkerGrant) -> bool,
) -> anyhow::Result<WorkerGrant> {
    wait_for(what, wait.timeout, || async {
        let grant = ctx.get::<WorkerGrant>(name).await?;
        let status = grant.status.clone().unwrap_or_default();
        let caught_up = status.common.observed_generation >= generation;
        Ok(if caught_up && done(&grant) {
            Ok(grant)
        } else {
            Err(format!(
                "phase {:?}, observedGeneration {:?} (want {generation:?})",
                status.phase, status.common.observed_generation
            ))
        })
    })
    .await
}

/// Whether `jti` is on `pool`'s revocation lists, and in which.
async fn listed_in(ctx: &Ctx, pool: &str, jti: &str) -> anyhow::Result<Option<String>> {
    let lists = ctx
        .api::<RevocationList>()
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
        .map_err(|e| api_error(e, "reading the revocation lists"))?;
    Ok(lists
        .items
        .into_iter()
        .find(|l| l.spec.pool == pool && l.spec.entries.iter().any(|e| e.jti == jti))
        .map(|l| l.name_any()))
}

/// Says which token a change revoked, once it is on the pool's list.
async fn report_revoked(
    ctx: &Ctx,
    grant: &WorkerGrant,
    old: Option<String>,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    let pool = &grant.spec.pool_ref.name;
    let Some(jti) = old else {
        println!("it held no token: nothing to revoke");
        return Ok(());
    };
    let list = wait_for(
        &format!("token {jti} on pool {pool}'s revocation list"),
        wait.timeout,
        || async {
            Ok(listed_in(ctx, pool, &jti)
                .await?
                .ok_or("not listed".to_owned()))
        },
    )
    .await?;
    println!("token jti {jti} revoked (RevocationList {list})");
    Ok(())
}

pub async fn revoke(ctx: &Ctx, args: GrantArgs) -> anyhow::Result<()> {
    let name = &args.grant;
    let before = ctx.get::<WorkerGrant>(name).await?;
    if before.spec.revoked && phase(&before) == Some(WorkerGrantPhase::Revoked) {
        println!("WorkerGrant {name} is already revoked");
        return Ok(());
    }
    let old = jti(&before);
    let after = patch(ctx, name, &revoke_patch()).await?;
    println!("WorkerGrant {name}: spec.revoked set");
    if !args.wait.wait {
        return Ok(());
    }
    let grant = settled(
        ctx,
        name,
        after.metadata.generation,
        &args.wait,
        &format!("WorkerGrant {name} to be revoked"),
        |g| phase(g) == Some(WorkerGrantPhase::Revoked),
    )
    .await?;
    println!("WorkerGrant {name} is Revoked");
    report_revoked(ctx, &grant, old, &args.wait).await
}

pub async fn suspend(ctx: &Ctx, args: SuspendArgs) -> anyhow::Result<()> {
    let name = &args.grant;
    let before = ctx.get::<WorkerGrant>(name).await?;
    let suspended = !args.undo;
    if before.spec.revoked {
        anyhow::bail!(
            "WorkerGrant {name} is revoked for good: suspending changes nothing; create a new WorkerGrant to let the worker back"
        );
    }
    let old = jti(&before);
    let after = patch(ctx, name, &suspend_patch(suspended)).await?;
    println!("WorkerGrant {name}: spec.suspended set to {suspended}");
    if !args.wait.wait {
        return Ok(());
    }
    if suspended {
        let grant = settled(
            ctx,
            name,
            after.metadata.generation,
            &args.wait,
            &format!("WorkerGrant {name} to be suspended"),
            |g| phase(g) == Some(WorkerGrantPhase::Suspended),
        )
        .await?;
        println!("WorkerGrant {name} is Suspended");
        report_revoked(ctx, &grant, old, &args.wait).await
    } else {
        let grant = settled(
            ctx,
            name,
            after.metadata.generation,
            &args.wait,
            &format!("WorkerGrant {name} to leave suspension"),
            |g| phase(g).is_some_and(|p| p != WorkerGrantPhase::Suspended),
        )
        .await?;
        print_outcome(&grant);
        Ok(())
    }
}

/// The grant's phase, and its token when it has one (never the token).
fn print_outcome(grant: &WorkerGrant) {
    let name = grant.name_any();
    let status = grant.status.clone().unwrap_or_default();
    match (status.phase, status.token) {
        (Some(WorkerGrantPhase::Active), Some(token)) => println!(
            "WorkerGrant {name} is Active: token jti {} (key {}), expires {}",
            token.jti,
            token.key_id,
            token.expires_at.0.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        (phase, _) => {
            let why = status
                .common
                .conditions
                .iter()
                .find(|c| c.type_ == cellule_operator::conditions::types::READY)
                .map(|c| format!(": {} ({})", c.message, c.reason))
                .unwrap_or_default();
            println!("WorkerGrant {name} is {phase:?}{why}");
        }
    }
}

pub async fn rotate(ctx: &Ctx, args: GrantArgs) -> anyhow::Result<()> {
    let name = &args.grant;
    // Read, +1, write at that resourceVersion; on a conflict (someone
    // else wrote in between, maybe a rotation) read again.
    let mut attempts = 0;
    let (before, after) = loop {
        let before = ctx.get::<WorkerGrant>(name).await?;
        if args.wait.wait && phase(&before) != Some(WorkerGrantPhase::Active) {
            anyhow::bail!(
                "WorkerGrant {name} is {:?}, not Active: a rotation issues a token only for an active grant (see `kubectl cellule status {}`)",
                phase(&before),
                before.spec.pool_ref.name
            );
        }
        let version = before
            .resource_version()
            .context("the grant has no resourceVersion")?;
        match ctx
            .api::<WorkerGrant>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(rotate_patch(before.spec.rotation, &version)),
            )
            .await
        {
            Ok(after) => break (before, after),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => attempts += 1,
            Err(e) => return Err(api_error(e, &format!("rotating WorkerGrant {name}"))),
        }
    };
    let rotation = after.spec.rotation;
    let old = jti(&before);
    println!("WorkerGrant {name}: spec.rotation raised to {rotation}");
    if !args.wait.wait {
        return Ok(());
    }
    let grant = settled(
        ctx,
        name,
        after.metadata.generation,
        &args.wait,
        &format!("WorkerGrant {name} to answer rotation {rotation}"),
        |g| {
            g.status
                .as_ref()
                .is_some_and(|s| s.observed_rotation >= Some(rotation) && s.token.is_some())
        },
    )
    .await?;
    print_outcome(&grant);
    report_revoked(ctx, &grant, old, &args.wait).await
}

pub async fn approve(ctx: &Ctx, args: ApproveArgs) -> anyhow::Result<()> {
    match (args.kind, args.grant) {
        (Some(ApproveKind::Peertrust(peer)), _) => approve_peer(ctx, peer).await,
        (Some(ApproveKind::Grant(grant)), _) => approve_grant(ctx, &grant.grant, &grant.wait).await,
        (None, Some(grant)) => approve_grant(ctx, &grant, &args.wait).await,
        (None, None) => {
            anyhow::bail!("name the WorkerGrant to approve (or `approve peertrust NAME --level 3`)")
        }
    }
}

async fn approve_grant(ctx: &Ctx, name: &str, wait: &WaitArgs) -> anyhow::Result<()> {
    let before = ctx.get::<WorkerGrant>(name).await?;
    let user = ctx.whoami().await?;
    if let Some(by) = &before.spec.approved_by {
        if *by == user {
            println!("WorkerGrant {name} is already approved by you");
            return Ok(());
        }
        anyhow::bail!(
            "WorkerGrant {name} is already approved by {by}: an approval cannot be changed (remove spec.approvedBy to withdraw it)"
        );
    }
    let after = ctx
        .api::<WorkerGrant>()
        .patch(name, &PatchParams::default(), &Patch::Merge(approve_patch(&user)))
        .await
        .map_err(|e| {
            let hint = if before.spec.requested_by == user {
                format!(
                    "\nyou ({user}) requested this grant: four-eyes needs someone else to approve it"
                )
            } else {
                String::new()
            };
            anyhow::anyhow!("{}{hint}", api_error(e, &format!("approving WorkerGrant {name} as {user}")))
        })?;
    println!("WorkerGrant {name}: approved by {user}");
    if !wait.wait {
        return Ok(());
    }
    let grant = settled(
        ctx,
        name,
        after.metadata.generation,
        wait,
        &format!("WorkerGrant {name} to leave PendingApproval"),
        |g| phase(g).is_some_and(|p| p != WorkerGrantPhase::PendingApproval),
    )
    .await?;
    print_outcome(&grant);
    Ok(())
}

async fn approve_peer(ctx: &Ctx, args: ApprovePeerArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let before = ctx.get::<PeerTrust>(name).await?;
    let user = ctx.whoami().await?;
    if before.spec.trust_level >= args.level && before.spec.approved_by.as_deref() == Some(&user) {
        println!(
            "PeerTrust {name} is already at level {} approved by you",
            before.spec.trust_level
        );
        return Ok(());
    }
    if before.spec.handshake.is_none() {
        anyhow::bail!(
            "PeerTrust {name} has no handshake: level 3 needs one signed by both sites' admins first (see `kubectl cellule handshake --help`)"
        );
    }
    let after = ctx
        .api::<PeerTrust>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(approve_peer_patch(&user, args.level)),
        )
        .await
        .map_err(|e| {
            let hint = match &before.spec.requested_by {
                Some(by) if *by == user => format!(
                    "\nyou ({user}) last changed what this PeerTrust trusts (spec.requestedBy): four-eyes needs someone else to raise it"
                ),
                _ => String::new(),
            };
            anyhow::anyhow!("{}{hint}", api_error(e, &format!("raising PeerTrust {name} to level {} as {user}", args.level)))
        })?;
    println!(
        "PeerTrust {name}: trustLevel {} approved by {user}",
        args.level
    );
    if !args.wait.wait {
        return Ok(());
    }
    let generation = after.metadata.generation;
    let peer = wait_for(
        &format!("PeerTrust {name}'s status to catch up"),
        args.wait.timeout,
        || async {
            let peer = ctx.get::<PeerTrust>(name).await?;
            let seen = peer
                .status
                .as_ref()
                .and_then(|s| s.common.observed_generation);
            Ok(if seen >= generation {
                Ok(peer)
            } else {
                Err(format!("observedGeneration {seen:?}"))
            })
        },
    )
    .await?;
    let status = peer.status.unwrap_or_default();
    let ready = status
        .common
        .conditions
        .iter()
        .find(|c| c.type_ == cellule_operator::conditions::types::READY);
    println!(
        "PeerTrust {name}: requested level {}, effective level {}{}{}",
        args.level,
        status
            .effective_trust_level
            .map_or("?".into(), |l| l.to_string()),
        status
            .level3_until
            .map(|t| format!(", level 3 until {}", t.0.strftime("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default(),
        ready
            .map(|c| format!(" ({}: {})", c.reason, c.message))
            .unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_touch_only_what_they_mean_to() {
        assert_eq!(revoke_patch(), json!({"spec": {"revoked": true}}));
        assert_eq!(suspend_patch(false), json!({"spec": {"suspended": false}}));
        assert_eq!(approve_patch("bob"), json!({"spec": {"approvedBy": "bob"}}));
        // Four-eyes refuses any other change of a PeerTrust raised to 3.
        assert_eq!(
            approve_peer_patch("bob", 3),
            json!({"spec": {"trustLevel": 3, "approvedBy": "bob"}})
        );
    }

    #[test]
    fn a_rotation_is_conditional_on_what_was_read() {
        assert_eq!(
            rotate_patch(4, "1234"),
            json!({"metadata": {"resourceVersion": "1234"}, "spec": {"rotation": 5}})
        );
    }
}
