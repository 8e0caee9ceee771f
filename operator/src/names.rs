//! The names of every object the operator makes, in one place, so that no
//! two owners can ever want the same name.
//!
//! Each name is `<owner>-<tag>` with a fixed tag per kind of object, or,
//! for a CPU worker set or a tier (the only names built from two user
//! strings), `<pool>--<set>` and `<pool>--<tier>`. The scheme is
//! collision-free because admission refuses Pool and NpuServer names that
//! contain `--` (see `api::common::derived_name_rule`), and a set named
//! like a tier of its Pool:
//! - `<pool>--<x>` contains `--` and no other name does, and splitting at
//!   the first `--` gives back the pool (which has none) and the set or
//!   tier;
//! - the fixed tags differ per kind (`npu` is only an NpuServer's, `token`
//!   only a WorkerGrant's) and none is a `-`-suffix of another, so
//!   `<a>-<tag1>` = `<b>-<tag2>` forces `a = b` and `tag1 = tag2`.
//!
//! The length limits keep every derived name a DNS label (at most 63
//! characters, as Service names and label values need).
//!
//! Names are not the only guard: [`crate::reconcile::apply`] never writes
//! over an object that another owner, or a person, made.

/// Longest name of a Service or a label value.
pub const DNS_LABEL_MAX: usize = 63;
/// Longest Pool name: `<pool>--<set>` with a 21-character set fits in 63.
pub const POOL_NAME_MAX: usize = 40;
/// Longest CPU worker set name (see [`POOL_NAME_MAX`]).
pub const CPU_WORKER_SET_MAX: usize = 21;
/// Longest NpuServer name: `<npu>-npu` fits in 63.
pub const NPU_SERVER_NAME_MAX: usize = 59;
/// Longest WorkerGrant name: `<grant>-token` fits in a Secret name (253).
pub const GRANT_NAME_MAX: usize = 247;

/// The pool orchestrator's Deployment, Service, ServiceAccount, PDB and
/// NetworkPolicy.
pub fn pool(pool: &str) -> String {
    format!("{pool}-pool")
}

/// A CPU worker set's Deployment, Service and NetworkPolicy.
pub fn cpu_workers(pool: &str, set: &str) -> String {
    format!("{pool}--{set}")
}

/// A tier's Service and EndpointSlice: where the pool sends the tier's
/// requests. Admission keeps it a DNS label, and different from every CPU
/// worker set's `<pool>--<set>` (no set may be named like a tier).
pub fn tier(pool: &str, tier: &str) -> String {
    format!("{pool}--{tier}")
}

/// The default-deny NetworkPolicy of every pod of the pool.
pub fn default_deny(pool: &str) -> String {
    format!("{pool}-default-deny")
}

pub fn config(pool: &str) -> String {
    format!("{pool}-config")
}

pub fn routing(pool: &str) -> String {
    format!("{pool}-routing")
}

pub fn jwks(pool: &str) -> String {
    format!("{pool}-jwks")
}

const LEGACY_REVOCATIONS: &str = "-revocations";
const SIGNING_KEYS: &str = "-signing-keys";
const REVOKED: &str = "-revoked-";

/// The ConfigMap an earlier version kept a pool's revocations in (read
/// once to move them into RevocationLists, then deleted).
pub fn legacy_revocations(pool: &str) -> String {
    format!("{pool}{LEGACY_REVOCATIONS}")
}

pub fn signing_keys(pool: &str) -> String {
    format!("{pool}{SIGNING_KEYS}")
}

/// Part `part` of the RevocationList of `pool`'s time bucket ending at
/// `end` (a kind of its own: no other object's name competes).
pub fn revocation_list(pool: &str, end: i64, part: u32) -> String {
    format!("{pool}{REVOKED}{end}-{part}")
}

/// `(pool, end, part)` of a RevocationList name, read from the right (a
/// pool name may itself contain `-revoked-`).
pub fn parse_revocation_list(name: &str) -> Option<(&str, i64, u32)> {
    let (rest, part) = name.rsplit_once('-')?;
    let (pool, end) = rest.rsplit_once(REVOKED)?;
    Some((pool, end.parse().ok()?, part.parse().ok()?))
}

/// The pool whose signing key ring `name` would be.
pub fn pool_of_signing_keys(name: &str) -> Option<&str> {
    name.strip_suffix(SIGNING_KEYS)
}

/// A pool's federation keys and nonce ledger (a Secret).
pub fn federation(pool: &str) -> String {
    format!("{pool}-federation")
}

/// The NetworkPolicy of a pool's egress to its trusted peers.
pub fn peers(pool: &str) -> String {
    format!("{pool}-peers")
}

/// The tag of [`peer_reports`].
pub const PEER_REPORTS: &str = "-peer-reports";

/// Where a pool reports on its peers (a ConfigMap the pool writes).
pub fn peer_reports(pool: &str) -> String {
    format!("{pool}{PEER_REPORTS}")
}

/// The pool whose federation Secret `name` would be.
pub fn pool_of_federation(name: &str) -> Option<&str> {
    name.strip_suffix("-federation")
}

/// An NpuServer's Deployment, Service and NetworkPolicy.
pub fn npu_server(npu: &str) -> String {
    format!("{npu}-npu")
}

/// The NpuServer whose Deployment `name` is.
pub fn npu_server_of(name: &str) -> Option<&str> {
    name.strip_suffix("-npu")
}

/// A WorkerGrant's token Secret.
pub fn token(grant: &str) -> String {
    format!("{grant}-token")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every name each owner derives, labelled with who wants it.
    fn all_names(
        pools: &[(&str, &[&str])],
        npus: &[&str],
        grants: &[&str],
    ) -> Vec<(String, String)> {
        let mut out = vec![];
        for (p, sets) in pools {
            for f in [
                pool,
                default_deny,
                config,
                routing,
                jwks,
                legacy_revocations,
                signing_keys,
                federation,
                peer_reports,
                peers,
            ] {
                out.push((f(p), format!("Pool {p}")));
            }
            for s in *sets {
                out.push((cpu_workers(p, s), format!("Pool {p} set {s}")));
            }
            for t in ["light", "heavy-npu"] {
                out.push((tier(p, t), format!("Pool {p} tier {t}")));
            }
        }
        for n in npus {
            out.push((npu_server(n), format!("NpuServer {n}")));
        }
        for g in grants {
            out.push((token(g), format!("WorkerGrant {g}")));
        }
        out
    }

    #[test]
    fn a_revocation_list_name_reads_back() {
        for (pool, end, part) in [("paris", 1_800_003_600, 0), ("a-revoked-1", -5, 12)] {
            assert_eq!(
                parse_revocation_list(&revocation_list(pool, end, part)),
                Some((pool, end, part))
            );
        }
        assert_eq!(parse_revocation_list("paris-revocations"), None);
    }

    #[test]
    fn the_pairs_that_collided_before_do_not() {
        // A set named `pool`; Pool `a` set `b-pool` vs Pool `a-b`; Pool
        // `heavy` set `npu` vs NpuServer `heavy`; sets across pools.
        let names = all_names(
            &[
                ("a", &["pool", "b-pool", "npu", "x-y"]),
                ("a-b", &["c"]),
                ("heavy", &["npu", "token", "config"]),
                ("a-x", &["y"]),
            ],
            &["heavy", "a", "a-b-pool"],
            &["a", "heavy", "a-config"],
        );
        let mut seen = BTreeMap::new();
        for (name, owner) in names {
            if let Some(other) = seen.insert(name.clone(), owner.clone()) {
                panic!("{name} wanted by {other} and {owner}");
            }
        }
    }

    #[test]
    fn longest_names_fit_a_dns_label() {
        let p = "p".repeat(POOL_NAME_MAX);
        let s = "s".repeat(CPU_WORKER_SET_MAX);
        for name in [
            cpu_workers(&p, &s),
            tier(&p, &"t".repeat(DNS_LABEL_MAX - 2 - POOL_NAME_MAX)),
            signing_keys(&p),
            legacy_revocations(&p),
        ] {
            assert!(name.len() <= 63, "{name}");
        }
        assert!(npu_server(&"n".repeat(NPU_SERVER_NAME_MAX)).len() <= 63);
        assert!(token(&"g".repeat(GRANT_NAME_MAX)).len() <= 253);
    }
}
