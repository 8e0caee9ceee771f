//! `status`: one screen per pool for on-call.

use std::time::Duration;

use cellule_operator::{
    api::{
        PeerTrust, Pool, WorkerGrant,
        pool::{SigningKeyState, TierServing},
        worker_grant::WorkerGrantPhase,
    },
    conditions::types::{READY, STALLED},
    images::IMAGE_VERIFIED,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt as _;

use crate::{cli::StatusArgs, cluster::Ctx};

pub async fn run(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<()> {
    let pools = match &args.pool {
        Some(name) => vec![ctx.get::<Pool>(name).await?],
        None => {
            let pools = ctx
                .api::<Pool>()
                .list(&Default::default())
                .await
                .map_err(|e| crate::cluster::api_error(e, "listing pools"))?
                .items;
            anyhow::ensure!(
                !pools.is_empty(),
                "no Pool in namespace {ns}: give the namespace with -n (list pools with `kubectl get pools -A`)",
                ns = ctx.namespace
            );
            pools
        }
    };
    let listing = |what| move |e| crate::cluster::api_error(e, what);
    let grants = ctx
        .api::<WorkerGrant>()
        .list(&Default::default())
        .await
        .map_err(listing("listing worker grants"))?
        .items;
    let peers = ctx
        .api::<PeerTrust>()
        .list(&Default::default())
        .await
        .map_err(listing("listing peer trusts"))?
        .items;
    let now = Timestamp::now();
    let screens: Vec<String> = pools
        .iter()
        .map(|pool| render(pool, &grants, &peers, now, args.expiring_within))
        .collect();
    print!("{}", screens.join("\n"));
    Ok(())
}

/// The screen of `pool`, from the grants and peers of its namespace (those
/// of other pools are left out), as of `now`.
pub fn render(
    pool: &Pool,
    grants: &[WorkerGrant],
    peers: &[PeerTrust],
    now: Timestamp,
    expiring_within: Duration,
) -> String {
    let name = pool.name_any();
    let status = pool.status.clone().unwrap_or_default();
    let conditions = &status.common.conditions;
    let mut out = format!(
        "Pool {name} (namespace {})\n",
        pool.namespace().unwrap_or_default()
    );
    let stale = match (status.common.observed_generation, pool.metadata.generation) {
        (Some(seen), Some(current)) if seen < current => {
            format!(
                " (status is of generation {seen}, spec is at {current}: the operator has not caught up)"
            )
        }
        _ => String::new(),
    };
    let replicas = status.ready_replicas.map_or("?".into(), |r| r.to_string());
    out += &format!(
        "  Replicas: {replicas}/{} ready{stale}\n",
        pool.spec.replicas
    );
    let mut rows = vec![row(["CONDITION", "STATUS", "REASON", "MESSAGE"])];
    for type_ in [READY, STALLED] {
        rows.push(condition_row(type_, conditions));
    }
    out += &table(&rows, 2);

    out += &format!(
        "\nTiers (routing: {})\n",
        status.routing.as_deref().unwrap_or("not reported yet")
    );
    if status.tiers.is_empty() {
        out += "  none reported yet\n";
    } else {
        let mut rows = vec![row([
            "TIER",
            "SERVED BY",
            "MODEL",
            "REASON",
            "NPU",
            "SINCE",
        ])];
        for tier in &status.tiers {
            let served = match tier.served_by {
                TierServing::Npu => "NPU".to_owned(),
                TierServing::Cpu => "CPU".to_owned(),
                TierServing::CpuFailover => {
                    format!("CPU fail-over via {}", tier.via.as_deref().unwrap_or("?"))
                }
                TierServing::Unavailable => "UNAVAILABLE".to_owned(),
            };
            let npu = tier.npu.as_ref().map_or("-".to_owned(), |n| {
                format!(
                    "{} {}/{} {}",
                    n.server,
                    n.ready,
                    n.required,
                    if n.healthy { "healthy" } else { "unhealthy" }
                )
            });
            rows.push(vec![
                tier.name.clone(),
                served,
                tier.model.clone().unwrap_or_else(|| "-".into()),
                tier.reason.clone(),
                npu,
                tier.since.as_ref().map_or("-".into(), |t| ago(t.0, now)),
            ]);
        }
        out += &table(&rows, 2);
    }

    out += "\nImages\n";
    let images: Vec<_> = status.image.iter().chain(&status.worker_images).collect();
    if images.is_empty() {
        out += "  none verified yet\n";
    } else {
        let mut rows = vec![row(["IMAGE", "DIGEST", "VERIFIED BY", "VERIFIED"])];
        for image in images {
            rows.push(vec![
                image.name.clone().unwrap_or_else(|| "pool".into()),
                image.digest.clone(),
                image.verified_by.clone().unwrap_or_else(|| "-".into()),
                image
                    .verified_at
                    .as_ref()
                    .map_or("-".into(), |t| ago(t.0, now)),
            ]);
        }
        out += &table(&rows, 2);
    }
    out += &table(
        &[
            row(["CONDITION", "STATUS", "REASON", "MESSAGE"]),
            condition_row(IMAGE_VERIFIED, conditions),
        ],
        2,
    );

    out += "\nSigning keys\n";
    if status.signing_keys.is_empty() {
        out += "  none published yet\n";
    } else {
        let mut rows = vec![row(["KID", "STATE", "PUBLISHED", "LAST TOKEN EXPIRES"])];
        for key in &status.signing_keys {
            rows.push(vec![
                key.kid.clone(),
                match key.state {
                    SigningKeyState::Pending => "Pending",
                    SigningKeyState::Signing => "Signing",
                    SigningKeyState::Retired => "Retired",
                }
                .into(),
                key.published_at
                    .as_ref()
                    .map_or("-".into(), |t| ago(t.0, now)),
                key.latest_token_expiry
                    .as_ref()
                    .map_or("-".into(), |t| until(t.0, now)),
            ]);
        }
        out += &table(&rows, 2);
    }

    let mine: Vec<&WorkerGrant> = grants
        .iter()
        .filter(|g| g.spec.pool_ref.name == name)
        .collect();
    let active = mine
        .iter()
        .filter(|g| phase(g) == Some(WorkerGrantPhase::Active))
        .count();
    let horizon = now.as_second() + expiring_within.as_secs() as i64;
    let attention: Vec<(&WorkerGrant, String)> = mine
        .iter()
        .filter_map(|g| attention(g, horizon).map(|why| (*g, why)))
        .collect();
    out += &format!(
        "\nGrants: {} of this pool, {active} active; needing attention (revoked, suspended, pending, invalid, or ending within {}): {}\n",
        mine.len(),
        cellule_operator::api::common::Duration(expiring_within),
        attention.len()
    );
    if !attention.is_empty() {
        let mut rows = vec![row(["GRANT", "WORKER", "PHASE", "ENDS", "WHY"])];
        for (grant, why) in attention {
            let ends = token_end(grant)
                .or_else(|| grant.spec.expires_at.as_ref().map(|t| t.0.as_second()))
                .map_or("-".into(), |end| until_secs(end, now));
            rows.push(vec![
                grant.name_any(),
                grant.spec.worker_id.clone(),
                phase(grant).map_or("Unknown".into(), |p| format!("{p:?}")),
                ends,
                why,
            ]);
        }
        out += &table(&rows, 2);
    }

    let mut mine: Vec<&PeerTrust> = peers
        .iter()
        .filter(|p| p.spec.pool_ref.name == name)
        .collect();
    mine.sort_by_key(|p| p.name_any());
    out += &format!("\nPeers: {}\n", mine.len());
    if !mine.is_empty() {
        let mut rows = vec![row([
            "PEER",
            "SITE",
            "REQUESTED",
            "EFFECTIVE",
            "LEVEL 3 UNTIL",
            "READY",
            "REASON",
        ])];
        for peer in mine {
            let status = peer.status.clone().unwrap_or_default();
            let ready = find(&status.common.conditions, READY);
            rows.push(vec![
                peer.name_any(),
                peer.spec.site.clone(),
                peer.spec.trust_level.to_string(),
                status
                    .effective_trust_level
                    .map_or("?".into(), |l| l.to_string()),
                status
                    .level3_until
                    .as_ref()
                    .map_or("-".into(), |t| rfc3339(t.0)),
                ready.map_or("Unknown".into(), |c| c.status.clone()),
                ready.map_or("-".into(), |c| c.reason.clone()),
            ]);
        }
        out += &table(&rows, 2);
    }
    out
}

fn phase(grant: &WorkerGrant) -> Option<WorkerGrantPhase> {
    grant.status.as_ref().and_then(|s| s.phase)
}

fn token_end(grant: &WorkerGrant) -> Option<i64> {
    grant
        .status
        .as_ref()?
        .token
        .as_ref()
        .map(|t| t.expires_at.0.as_second())
}

/// Why on-call should look at `grant`, if they should: a phase other than
/// Active or Expired (long gone), or an Active grant whose token or grant
/// ends before `horizon` (a renewal should come first: if it ends that
/// soon, the renewal is late or the grant is ending).
fn attention(grant: &WorkerGrant, horizon: i64) -> Option<String> {
    let message = || {
        grant
            .status
            .as_ref()
            .and_then(|s| find(&s.common.conditions, READY))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    match phase(grant) {
        Some(WorkerGrantPhase::Revoked) => Some("revoked for good".into()),
        Some(WorkerGrantPhase::Suspended) => {
            Some("suspended: `kubectl cellule suspend --undo`".into())
        }
        Some(WorkerGrantPhase::PendingApproval) => {
            Some("waiting for approval: `kubectl cellule approve`".into())
        }
        Some(WorkerGrantPhase::Invalid) => Some(format!("invalid: {}", message())),
        None => Some("not reconciled yet".into()),
        Some(WorkerGrantPhase::Expired) => None,
        Some(WorkerGrantPhase::Active) => {
            let grant_end = grant.spec.expires_at.as_ref().map(|t| t.0.as_second());
            match (token_end(grant), grant_end) {
                (_, Some(end)) if end <= horizon => Some("grant ends soon (spec.expiresAt)".into()),
                (Some(end), _) if end <= horizon => Some("token expires soon".into()),
                _ => None,
            }
        }
    }
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn condition_row(type_: &str, conditions: &[Condition]) -> Vec<String> {
    match find(conditions, type_) {
        Some(c) => vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ],
        // Stalled is removed when it no longer applies (kstatus).
        None if type_ == STALLED => row([type_, "False", "-", "(absent: not stalled)"]),
        None => row([type_, "Unknown", "-", "(not reported yet)"]),
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Rows as columns aligned on the widest cell, `indent` spaces in; the
/// last column is not padded.
pub fn table(rows: &[Vec<String>], indent: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = " ".repeat(indent);
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line += cell;
            } else {
                line += &format!("{cell:<w$}  ", w = widths[i]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `3h ago`, `in 2h`: the whole hours or minutes that matter at a glance.
fn human(secs: i64) -> String {
    let secs = secs.abs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn ago(t: Timestamp, now: Timestamp) -> String {
    format!("{} ago", human(now.as_second() - t.as_second()))
}

fn until(t: Timestamp, now: Timestamp) -> String {
    until_secs(t.as_second(), now)
}

fn until_secs(end: i64, now: Timestamp) -> String {
    let left = end - now.as_second();
    if left < 0 {
        format!("{} ago", human(left))
    } else {
        format!("in {}", human(left))
    }
}

#[cfg(test)]
mod tests;
