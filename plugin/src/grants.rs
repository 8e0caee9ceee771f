//! `revoke`, `suspend`, `rotate`, `approve`: writes to a WorkerGrant's (or
//! PeerTrust's) spec, then a wait on the status the operator writes.

use anyhow::Context as _;
use cellule_operator::{
    api::{PeerTrust, WorkerGrant, worker_grant::WorkerGrantPhase},
    peer_trust::handshake,
};
use cellule_verifier::revocations::{POOL_LABEL, RevocationList};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
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

/// What an approval is bound to: the `resourceVersion` and `uid` of the
/// object the approver reviewed. The API server refuses the write (409) if
/// the object changed since, or was deleted and created again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub resource_version: String,
    pub uid: String,
}

impl Reviewed {
    /// The version read, or `given` (`--resource-version`) instead.
    fn of(meta: &ObjectMeta, given: Option<&str>, kind: &str) -> anyhow::Result<Self> {
        Ok(Self {
            resource_version: match given {
                Some(rv) => rv.to_owned(),
                None => meta
                    .resource_version
                    .clone()
                    .with_context(|| format!("the {kind} has no resourceVersion"))?,
            },
            uid: meta
                .uid
                .clone()
                .with_context(|| format!("the {kind} has no uid"))?,
        })
    }

    fn metadata(&self) -> Value {
        json!({"resourceVersion": self.resource_version, "uid": self.uid})
    }
}

/// The merge patch that approves a grant as `user`, at the version reviewed.
pub fn approve_patch(user: &str, reviewed: &Reviewed) -> Value {
    json!({"metadata": reviewed.metadata(), "spec": {"approvedBy": user}})
}

/// The merge patch that raises a PeerTrust to `level` approved by `user`,
/// at the version reviewed, with what the four-eyes policy expects:
/// `trustLevel` and `approvedBy` only (changing anything else that is
/// trusted at level 3 is refused).
pub fn approve_peer_patch(user: &str, level: i32, reviewed: &Reviewed) -> Value {
    json!({"metadata": reviewed.metadata(), "spec": {"trustLevel": level, "approvedBy": user}})
}

fn time(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What approving `grant` approves, printed before the write.
pub fn describe_grant(grant: &WorkerGrant, reviewed: &Reviewed) -> String {
    let spec = &grant.spec;
    let expiry = match (&spec.ttl, &spec.expires_at) {
        (Some(ttl), _) => format!("ttl {ttl}"),
        (None, Some(at)) => format!("expiresAt {}", time(at)),
        (None, None) => "none".to_owned(),
    };
    format!(
        "Approving WorkerGrant {name} (resourceVersion {rv}, uid {uid}):\n  \
         owner:       {owner}\n  \
         workerId:    {worker}\n  \
         pool:        {pool}\n  \
         tiers:       {tiers}\n  \
         expiry:      {expiry}\n  \
         requestedBy: {by}",
        name = grant.name_any(),
        rv = reviewed.resource_version,
        uid = reviewed.uid,
        owner = spec.owner,
        worker = spec.worker_id,
        pool = spec.pool_ref.name,
        tiers = spec.tiers.join(", "),
        by = spec.requested_by,
    )
}

/// The fingerprint of `peer`'s pinned key, as the operator writes it in
/// `status.peerKeyFingerprint`: computed from the spec (what is approved),
/// with the status' value when it differs (the operator has not seen this
/// key yet).
fn peer_fingerprint(peer: &PeerTrust) -> String {
    let status = peer
        .status
        .as_ref()
        .and_then(|s| s.peer_key_fingerprint.as_deref());
    match (
        handshake::public_key("publicKey", &peer.spec.public_key)
            .map(|k| handshake::fingerprint(&k)),
        status,
    ) {
        (Ok(spec), Some(status)) if status != spec => format!(
            "{spec} (status.peerKeyFingerprint still shows {status}: the operator has not seen this key yet)"
        ),
        (Ok(spec), _) => spec,
        (Err(e), Some(status)) => format!("{e} (status.peerKeyFingerprint: {status})"),
        (Err(e), None) => e.to_string(),
    }
}

/// What raising `peer` to `level` approves, printed before the write.
pub fn describe_peer(peer: &PeerTrust, level: i32, reviewed: &Reviewed) -> String {
    let spec = &peer.spec;
    let endpoint = &spec.endpoint;
    let address = match (&endpoint.host, &endpoint.cidr) {
        (Some(host), Some(cidr)) => format!("{host}:{} (cidr {cidr})", endpoint.port),
        (Some(host), None) => format!("{host}:{}", endpoint.port),
        (None, Some(cidr)) => format!("{cidr} port {}", endpoint.port),
        (None, None) => format!("? port {}", endpoint.port),
    };
    let handshake = spec.handshake.as_ref().map_or("none".to_owned(), |h| {
        format!(
            "nonce {}, valid {} to {}",
            h.nonce,
            time(&h.not_before),
            time(&h.not_after)
        )
    });
    format!(
        "Approving PeerTrust {name} (resourceVersion {rv}, uid {uid}):\n  \
         site:        {site}{pool}\n  \
         endpoint:    {address}\n  \
         publicKey:   {fingerprint}\n  \
         handshake:   {handshake}\n  \
         requestedBy: {by}\n  \
         trustLevel:  {level} (now {current})",
        name = peer.name_any(),
        rv = reviewed.resource_version,
        uid = reviewed.uid,
        site = spec.site,
        pool = spec
            .peer_pool
            .as_ref()
            .map(|p| format!(" (pool {}/{})", p.namespace, p.name))
            .unwrap_or_default(),
        fingerprint = peer_fingerprint(peer),
        by = spec.requested_by.as_deref().unwrap_or("(not set)"),
        current = spec.trust_level,
    )
}

/// The error of an approval the API server refused: a conflict (the object
/// changed since it was read or reviewed) is never retried, the approver
/// has to look again; anything else with `hint`.
fn approval_error(
    error: kube::Error,
    kind: &str,
    name: &str,
    reviewed: &Reviewed,
    doing: &str,
    hint: String,
) -> anyhow::Error {
    match error {
        kube::Error::Api(s) if s.code == 409 => anyhow::anyhow!(
            "{kind} {name} changed since it was read/reviewed at resourceVersion {}: nothing was approved. \
             Review it again (`kubectl get {} {name} -o yaml`) and approve the version you reviewed ({})",
            reviewed.resource_version,
            kind.to_lowercase(),
            s.message
        ),
        e => anyhow::anyhow!("{}{hint}", api_error(e, doing)),
    }
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
        (Some(ApproveKind::Grant(grant)), _) => {
            approve_grant(
                ctx,
                &grant.grant,
                grant.version.resource_version.as_deref(),
                &grant.wait,
            )
            .await
        }
        (None, Some(grant)) => {
            approve_grant(
                ctx,
                &grant,
                args.version.resource_version.as_deref(),
                &args.wait,
            )
            .await
        }
        (None, None) => {
            anyhow::bail!("name the WorkerGrant to approve (or `approve peertrust NAME --level 3`)")
        }
    }
}

/// Says so when the version given is not the one just read (the write
/// will then be refused if it changed).
fn note_given_version(kind: &str, meta: &ObjectMeta, given: Option<&str>) {
    if let (Some(given), Some(read)) = (given, meta.resource_version.as_deref())
        && given != read
    {
        println!(
            "note: you gave resourceVersion {given}, the {kind} is now at {read}: the approval is bound to {given}"
        );
    }
}

async fn approve_grant(
    ctx: &Ctx,
    name: &str,
    version: Option<&str>,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
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
    let reviewed = Reviewed::of(&before.metadata, version, "WorkerGrant")?;
    println!("{}", describe_grant(&before, &reviewed));
    note_given_version("WorkerGrant", &before.metadata, version);
    let after = ctx
        .api::<WorkerGrant>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(approve_patch(&user, &reviewed)),
        )
        .await
        .map_err(|e| {
            let hint = if before.spec.requested_by == user {
                format!(
                    "\nyou ({user}) requested this grant: four-eyes needs someone else to approve it"
                )
            } else {
                String::new()
            };
            approval_error(
                e,
                "WorkerGrant",
                name,
                &reviewed,
                &format!("approving WorkerGrant {name} as {user}"),
                hint,
            )
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
    let version = args.version.resource_version.as_deref();
    let reviewed = Reviewed::of(&before.metadata, version, "PeerTrust")?;
    println!("{}", describe_peer(&before, args.level, &reviewed));
    note_given_version("PeerTrust", &before.metadata, version);
    let after = ctx
        .api::<PeerTrust>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(approve_peer_patch(&user, args.level, &reviewed)),
        )
        .await
        .map_err(|e| {
            let hint = match &before.spec.requested_by {
                Some(by) if *by == user => format!(
                    "\nyou ({user}) last changed what this PeerTrust trusts (spec.requestedBy): four-eyes needs someone else to raise it"
                ),
                _ => String::new(),
            };
            approval_error(
                e,
                "PeerTrust",
                name,
                &reviewed,
                &format!("raising PeerTrust {name} to level {} as {user}", args.level),
                hint,
            )
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
    }

    fn reviewed() -> Reviewed {
        Reviewed {
            resource_version: "1234".into(),
            uid: "6f1c".into(),
        }
    }

    #[test]
    fn an_approval_is_bound_to_the_version_reviewed() {
        assert_eq!(
            approve_patch("bob", &reviewed()),
            json!({
                "metadata": {"resourceVersion": "1234", "uid": "6f1c"},
                "spec": {"approvedBy": "bob"},
            })
        );
        // Four-eyes refuses any other change of a PeerTrust raised to 3.
        assert_eq!(
            approve_peer_patch("bob", 3, &reviewed()),
            json!({
                "metadata": {"resourceVersion": "1234", "uid": "6f1c"},
                "spec": {"trustLevel": 3, "approvedBy": "bob"},
            })
        );
    }

    fn meta(rv: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            resource_version: rv.map(Into::into),
            uid: Some("6f1c".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_version_given_wins_over_the_one_read() {
        assert_eq!(
            Reviewed::of(&meta(Some("1234")), None, "WorkerGrant").unwrap(),
            reviewed()
        );
        assert_eq!(
            Reviewed::of(&meta(Some("2000")), Some("1234"), "WorkerGrant").unwrap(),
            reviewed()
        );
        assert!(Reviewed::of(&meta(None), None, "WorkerGrant").is_err());
        let no_uid = ObjectMeta {
            uid: None,
            ..meta(Some("1"))
        };
        assert!(Reviewed::of(&no_uid, Some("1"), "WorkerGrant").is_err());
    }

    #[test]
    fn a_conflict_says_to_review_again() {
        let conflict = kube::Error::Api(
            kube::core::Status::failure("the object has been modified", "Conflict")
                .with_code(409)
                .boxed(),
        );
        let err = approval_error(
            conflict,
            "WorkerGrant",
            "laptop",
            &reviewed(),
            "approving",
            "hint".into(),
        )
        .to_string();
        assert!(
            err.contains("WorkerGrant laptop changed since it was read/reviewed at resourceVersion 1234: nothing was approved")
                && err.contains("kubectl get workergrant laptop -o yaml")
                && !err.contains("hint"),
            "{err}"
        );
    }

    #[test]
    fn what_is_approved_is_shown() {
        let grant: WorkerGrant = serde_json::from_value(json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
            "metadata": {"name": "laptop", "namespace": "ns"},
            "spec": {"poolRef": {"name": "paris"}, "workerId": "pc-1", "owner": "a@example.com",
                     "tiers": ["light", "heavy"], "ttl": "24h", "requestedBy": "alice"},
        }))
        .unwrap();
        let text = describe_grant(&grant, &reviewed());
        for want in [
            "WorkerGrant laptop (resourceVersion 1234, uid 6f1c)",
            "owner:       a@example.com",
            "workerId:    pc-1",
            "pool:        paris",
            "tiers:       light, heavy",
            "expiry:      ttl 24h",
            "requestedBy: alice",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }

        let (_, public) = handshake::generate_key();
        let fingerprint = handshake::fingerprint(&handshake::public_key("", &public).unwrap());
        let mut peer: PeerTrust = serde_json::from_value(json!({
            "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
            "metadata": {"name": "lyon"},
            "spec": {"poolRef": {"name": "paris"}, "site": "lyon",
                     "peerPool": {"namespace": "cellule-lyon", "name": "lyon"},
                     "endpoint": {"host": "10.0.0.1", "port": 8443}, "publicKey": public,
                     "trustLevel": 2, "requestedBy": "alice",
                     "handshake": {"nonce": "0123456789abcdef", "notBefore": "2026-01-01T00:00:00Z",
                                   "notAfter": "2026-02-01T00:00:00Z"}},
        }))
        .unwrap();
        let text = describe_peer(&peer, 3, &reviewed());
        for want in [
            "PeerTrust lyon (resourceVersion 1234, uid 6f1c)",
            "site:        lyon (pool cellule-lyon/lyon)",
            "endpoint:    10.0.0.1:8443",
            &format!("publicKey:   {fingerprint}\n"),
            "handshake:   nonce 0123456789abcdef, valid 2026-01-01T00:00:00Z to 2026-02-01T00:00:00Z",
            "requestedBy: alice",
            "trustLevel:  3 (now 2)",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        // A status from before a key change: both, and which is approved.
        peer.status =
            Some(serde_json::from_value(json!({"peerKeyFingerprint": "sha256:old"})).unwrap());
        let text = describe_peer(&peer, 3, &reviewed());
        assert!(
            text.contains(&format!(
                "publicKey:   {fingerprint} (status.peerKeyFingerprint still shows sha256:old"
            )),
            "{text}"
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
