//! The shared operator's `/metrics`, linted by Prometheus' own `promtool
//! check metrics` (built by `build-tools.sh` from the prometheus Go
//! module): no parse error and no lint problem (promtool exits 3 on lint
//! problems and prints each one), and the reconcile families exist once the
//! operator has reconciled something.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail, ensure};
use cellule_e2e::{
    Env, apply_sample_site, cellule_api, eventually, http_get, in_namespace, run_with_stdin,
    wait_condition,
};
use kube::Client;

/// The body of an HTTP/1.1 response, with a chunked body decoded.
fn body_of(response: &str) -> anyhow::Result<(String, String)> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let content_type = header("content-type").unwrap_or_default();
    if !header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok((content_type, body.to_owned()));
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n").context("a chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size:?}"))?;
        if size == 0 {
            return Ok((content_type, out));
        }
        out.push_str(after.get(..size).context("a truncated chunk")?);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("a chunk end")?;
    }
}

/// `# TYPE name type` of each family.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// The samples of metric `name`: (labels as written, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
                let (labels, after) = inner.split_once('}')?;
                (labels, after)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None; // another metric with this prefix
            };
            Some((labels, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// `promtool check metrics` on `text`: Err with everything it said unless
/// it exits 0 and says nothing.
async fn promtool(text: &str) -> anyhow::Result<()> {
    let out = run_with_stdin(&Env::bin("promtool"), &["check", "metrics"], text).await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics: {}: {said}", out.status);
    }
    Ok(())
}

#[tokio::test]
async fn promtool_finds_nothing_to_fix_and_reconcile_families_exist() {
    let addr = Env::var("CELLULE_E2E_OPERATOR_HEALTH");
    in_namespace("metrics", |client: Client, ns: String| async move {
        // The per-kind counts before: the samples' reconciles must add to them.
        let before = scrape(&addr).await.map_err(anyhow::Error::msg)?;
        let count = |text: &str, kind: &str| -> f64 {
            series(text, "cellule_reconcile_total")
                .iter()
                .filter(|(l, _)| l.get("kind").map(String::as_str) == Some(kind))
                .map(|(_, v)| v)
                .sum()
        };
        // Something for every controller to have reconciled.
        apply_sample_site(&client, &ns).await?;
        wait_condition(
            &client,
            &ns,
            "Pool",
            "paris",
            "Ready",
            "True",
            Duration::from_secs(90),
        )
        .await?;
        let (content_type, text) = eventually("GET /metrics", Duration::from_secs(30), || async {
            let response = http_get(&addr, "/metrics").await?;
            body_of(&response).map_err(|e| e.to_string())
        })
        .await?;
        println!("Content-Type: {content_type}; {} bytes", text.len());
        promtool(&text).await?;

        let families = families(&text);
        let reconcile: BTreeMap<_, _> = families
            .iter()
            .filter(|(name, _)| name.starts_with("cellule_reconcile"))
            .collect();
        println!("reconcile families: {reconcile:?}");
        // Families with labels show once they have a series: the errors
        // one only after an error, so it is checked when present.
        for (family, kind) in [
            ("cellule_reconcile_total", "counter"),
            ("cellule_reconcile_duration_seconds", "histogram"),
            ("cellule_reconciles_running", "gauge"),
            ("cellule_leader", "gauge"),
            ("cellule_token_revocations_total", "counter"),
            (
                "cellule_worker_grant_token_expiration_timestamp_seconds",
                "gauge",
            ),
            ("cellule_pool_tier_served_by", "gauge"),
            ("cellule_peer_trust_effective_level", "gauge"),
        ] {
            ensure!(
                families.get(family).map(String::as_str) == Some(kind),
                "no {kind} family {family}; the cellule_reconcile families: {reconcile:?}"
            );
        }
        if let Some(kind) = families.get("cellule_reconcile_errors_total") {
            ensure!(
                kind == "counter",
                "cellule_reconcile_errors_total is a {kind}"
            );
        }
        // The samples just applied were reconciled, each kind counted.
        // The samples just applied were reconciled, each kind counted (a
        // reconcile is counted when it ends, just after its status write).
        eventually(
            "every kind's reconciles counted",
            Duration::from_secs(30),
            || async {
                let now = scrape(&addr).await?;
                let grew: Vec<_> = ["Pool", "NpuServer", "WorkerGrant", "PeerTrust"]
                    .into_iter()
                    .map(|kind| (kind, count(&before, kind), count(&now, kind)))
                    .collect();
                grew.iter()
                    .all(|(_, before, now)| now > before)
                    .then_some(())
                    .ok_or(format!(
                        "cellule_reconcile_total per kind, before and now: {grew:?}"
                    ))
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

/// promtool here flags what it should: a counter without `_total` and a
/// metric without help (so a clean result above means something).
#[tokio::test]
async fn promtool_flags_a_badly_named_counter() {
    let bad = "# HELP cellule_bad_things A counter named without _total.\n# TYPE cellule_bad_things counter\ncellule_bad_things 1\n# TYPE cellule_no_help gauge\ncellule_no_help 1\n";
    let error = promtool(bad)
        .await
        .expect_err("promtool accepts a bad counter");
    let said = error.to_string();
    assert!(
        said.contains("cellule_bad_things") && said.contains("_total"),
        "{said}"
    );
    assert!(
        said.contains("cellule_no_help") && said.contains("no help"),
        "{said}"
    );
    promtool("# HELP cellule_good_total A well named counter.\n# TYPE cellule_good_total counter\ncellule_good_total 1\n")
        .await
        .expect("a clean exposition passes");
}

/// The scrape-time gauges say what the objects' statuses say, and a
/// deleted object's series go with it (nothing is kept per object).
#[tokio::test]
async fn state_gauges_follow_the_objects_and_go_with_them() {
    let addr = Env::var("CELLULE_E2E_OPERATOR_HEALTH");
    in_namespace("metrics-state", |client: Client, ns: String| async move {
        apply_sample_site(&client, &ns).await?;
        wait_condition(
            &client,
            &ns,
            "Pool",
            "paris",
            "Ready",
            "True",
            Duration::from_secs(90),
        )
        .await?;
        let grants = cellule_api(&client, &ns, "WorkerGrant");
        let expires = eventually("laptop-alice's token", Duration::from_secs(60), || async {
            let grant = grants
                .get("laptop-alice")
                .await
                .map_err(|e| e.to_string())?;
            let at = grant.data["status"]["token"]["expiresAt"]
                .as_str()
                .map(str::to_owned);
            at.ok_or("no token yet".to_owned())
        })
        .await?;
        let expires = expires.parse::<jiff::Timestamp>()?.as_second() as f64;
        let peers = cellule_api(&client, &ns, "PeerTrust");
        let levels = eventually("the PeerTrusts judged", Duration::from_secs(60), || async {
            let mut levels = BTreeMap::new();
            for name in ["lyon", "marseille"] {
                let peer = peers.get(name).await.map_err(|e| e.to_string())?;
                let level = peer.data["status"]["effectiveTrustLevel"].as_f64();
                levels.insert(name, level.ok_or(format!("{name} not judged"))?);
            }
            Ok(levels)
        })
        .await?;

        let in_ns = |labels: &BTreeMap<String, String>| labels.get("namespace") == Some(&ns);
        eventually(
            "the gauges match the statuses",
            Duration::from_secs(30),
            || async {
                let text = scrape(&addr).await?;
                let expiry = series(
                    &text,
                    "cellule_worker_grant_token_expiration_timestamp_seconds",
                );
                let alice: Vec<_> = expiry
                    .iter()
                    .filter(|(l, _)| in_ns(l) && l["name"] == "laptop-alice")
                    .collect();
                if alice.len() != 1 || alice[0].1 != expires || alice[0].0["pool"] != "paris" {
                    return Err(format!("token expiry {alice:?}, want {expires}"));
                }
                // Routing may move while the NPU pods come up: compare with the
                // status as it is now.
                let pool = cellule_api(&client, &ns, "Pool")
                    .get("paris")
                    .await
                    .map_err(|e| e.to_string())?;
                let tiers: Vec<(String, String)> = pool.data["status"]["tiers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let name = t["name"].as_str().unwrap_or_default().to_owned();
                        (name, t["servedBy"].as_str().unwrap_or("Npu").to_owned())
                    })
                    .collect();
                if tiers.is_empty() {
                    return Err("the sample Pool has no tiers in its status".into());
                }
                let served = series(&text, "cellule_pool_tier_served_by");
                for (tier, by) in &tiers {
                    let want = match by.as_str() {
                        "Npu" => "npu",
                        "Cpu" => "cpu",
                        "CpuFailover" => "cpu-failover",
                        _ => "unavailable",
                    };
                    let rows: Vec<_> = served
                        .iter()
                        .filter(|(l, _)| in_ns(l) && l["tier"] == *tier)
                        .collect();
                    let ones: Vec<_> = rows
                        .iter()
                        .filter(|(_, v)| *v == 1.0)
                        .map(|(l, _)| l["served_by"].clone())
                        .collect();
                    if rows.len() != 4 || ones != [want] {
                        return Err(format!("tier {tier} served by {by}: {rows:?}"));
                    }
                }
                let level = series(&text, "cellule_peer_trust_effective_level");
                for (name, want) in &levels {
                    let got: Vec<_> = level
                        .iter()
                        .filter(|(l, _)| in_ns(l) && l["name"] == *name)
                        .map(|(_, v)| *v)
                        .collect();
                    if got != [*want] {
                        return Err(format!("peer {name}: {got:?}, want {want}"));
                    }
                }
                if series(&text, "cellule_leader") != [(BTreeMap::new(), 1.0)] {
                    return Err("cellule_leader is not 1 on the leader".into());
                }
                Ok(())
            },
        )
        .await?;

        // Removal: the grant, a peer and the Pool deleted, their series gone.
        let delete = kube::api::DeleteParams::default();
        grants.delete("laptop-alice", &delete).await?;
        peers.delete("marseille", &delete).await?;
        cellule_api(&client, &ns, "Pool")
            .delete("paris", &delete)
            .await?;
        eventually("their series gone", Duration::from_secs(60), || async {
            let text = scrape(&addr).await?;
            let left: Vec<_> = [
                (
                    "cellule_worker_grant_token_expiration_timestamp_seconds",
                    "laptop-alice",
                ),
                ("cellule_peer_trust_effective_level", "marseille"),
                ("cellule_pool_tier_served_by", "paris"),
            ]
            .into_iter()
            .flat_map(|(metric, name)| {
                series(&text, metric)
                    .into_iter()
                    .filter(move |(l, _)| l.get("name").map(String::as_str) == Some(name))
            })
            .filter(|(l, _)| in_ns(l))
            .collect();
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        })
        .await?;
        // What stays is still there: lyon's level.
        let text = scrape(&addr).await.map_err(anyhow::Error::msg)?;
        ensure!(
            series(&text, "cellule_peer_trust_effective_level")
                .iter()
                .any(|(l, _)| in_ns(l) && l["name"] == "lyon"),
            "lyon's series went too"
        );
        Ok(())
    })
    .await;
}

async fn scrape(addr: &str) -> Result<String, String> {
    let response = http_get(addr, "/metrics").await?;
    body_of(&response)
        .map(|(_, text)| text)
        .map_err(|e| e.to_string())
}

/// The samples of metric `name`, their labels parsed.
fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    samples(text, name)
        .into_iter()
        .map(|(labels, value)| {
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            (labels, value)
        })
        .collect()
}

#[test]
fn series_parses_labels() {
    let text = "# TYPE cellule_reconcile_total counter\ncellule_reconcile_total{kind=\"Pool\",result=\"success\"} 8\n";
    let got = series(text, "cellule_reconcile_total");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].0.get("kind").map(String::as_str),
        Some("Pool"),
        "{got:?}"
    );
    assert_eq!(got[0].1, 8.0);
}
