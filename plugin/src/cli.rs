//! The command line: `kubectl cellule <command>`, with kubectl's own
//! connection flags.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Operate Cellule pools: on-call status, worker grants, signing keys,
/// federation handshakes and token checks.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-cellule",
    bin_name = "kubectl cellule",
    version,
    after_help = "Examples:\n  kubectl cellule status -n cellule-paris\n  kubectl cellule revoke laptop-alice -n cellule-paris\n  kubectl cellule verify-token --pool paris < token.jwt"
)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster, as kubectl takes it.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One screen for on-call: conditions, tier routing, images, grants
    /// that need attention, peers.
    #[command(
        after_help = "Examples:\n  kubectl cellule status paris -n cellule-paris\n  kubectl cellule status --expiring-within 72h   # every pool of the namespace"
    )]
    Status(StatusArgs),
    /// Revoke a WorkerGrant for good (a stolen laptop): its token goes on
    /// the pool's revocation list at once. Cannot be undone.
    #[command(
        after_help = "Examples:\n  kubectl cellule revoke laptop-alice -n cellule-paris\n  kubectl cellule revoke laptop-alice --wait=false"
    )]
    Revoke(GrantArgs),
    /// Suspend a WorkerGrant (its token is revoked), or lift the
    /// suspension with --undo (a fresh token is issued).
    #[command(
        after_help = "Examples:\n  kubectl cellule suspend laptop-alice -n cellule-paris\n  kubectl cellule suspend --undo laptop-alice -n cellule-paris"
    )]
    Suspend(SuspendArgs),
    /// Issue a new token for a WorkerGrant now; the current one is revoked.
    #[command(after_help = "Examples:\n  kubectl cellule rotate laptop-alice -n cellule-paris")]
    Rotate(GrantArgs),
    /// Approve a WorkerGrant as yourself (four-eyes: not its requester), or
    /// raise a PeerTrust to level 3 (`approve peertrust NAME --level 3`).
    Approve(ApproveArgs),
    /// Declare a pool's token signing key leaked: it is withdrawn at once
    /// (every token it signed is refused), a new key signs, and every grant
    /// holding a token it signed gets a new one.
    #[command(
        after_help = "Examples:\n  kubectl cellule compromise-key paris 3f2a9c1e --yes -n cellule-paris\n  kubectl cellule status paris -n cellule-paris   # the key ids, under Signing keys"
    )]
    CompromiseKey(CompromiseKeyArgs),
    /// The bilateral handshake of a level-3 PeerTrust: keys, nonce,
    /// statement, signature.
    #[command(
        subcommand,
        after_help = "Examples:\n  kubectl cellule handshake nonce\n  kubectl cellule handshake statement --pool paris --peer-trust lyon -n cellule-paris"
    )]
    Handshake(HandshakeCommand),
    /// Verify a worker token (read from stdin) as the pool would, with the
    /// pool's JWKS, policy and revocation lists read from the cluster:
    /// prints its claims, or why it is refused (exit code 1). Never prints
    /// the token.
    #[command(
        after_help = "Examples:\n  kubectl cellule verify-token --pool paris -n cellule-paris < token.jwt\n  kubectl get secret laptop-alice-token -o jsonpath='{.data.token}' | base64 -d \\\n    | kubectl cellule verify-token --pool paris -n cellule-paris"
    )]
    VerifyToken(VerifyTokenArgs),
}

/// How long to wait for the operator, and whether to.
#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Wait until the operator's status shows the change done.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    pub wait: bool,
    /// Give up waiting after this long (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The Pool (default: every pool of the namespace).
    pub pool: Option<String>,
    /// Show grants whose token or grant ends within this long.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub expiring_within: Duration,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The WorkerGrant.
    pub grant: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct SuspendArgs {
    /// The WorkerGrant.
    pub grant: String,
    /// Lift the suspension instead (a fresh token is issued).
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  kubectl cellule approve laptop-contractor -n cellule-paris\n  kubectl cellule approve laptop-contractor --resource-version 48213 -n cellule-paris   # the version you reviewed\n  kubectl cellule approve peertrust lyon --level 3 -n cellule-paris"
)]
pub struct ApproveArgs {
    /// The WorkerGrant to approve.
    #[arg(required = true)]
    pub grant: Option<String>,
    #[command(subcommand)]
    pub kind: Option<ApproveKind>,
    #[command(flatten)]
    pub version: ResourceVersionArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// What an approval is bound to.
#[derive(Args, Debug, Clone, Default)]
pub struct ResourceVersionArg {
    /// Approve only this version of the object: its `metadata.resourceVersion`
    /// as you reviewed it (`kubectl get ... -o yaml`). If it changed since,
    /// nothing is approved. Default: the version the plugin reads and
    /// prints just before writing.
    #[arg(long, value_name = "RV")]
    pub resource_version: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ApproveKind {
    /// Raise a PeerTrust's requested level to 3 with yourself as
    /// `approvedBy` (four-eyes: not its `requestedBy`). Its handshake must
    /// be complete for the effective level to follow.
    #[command(
        after_help = "Examples:\n  kubectl cellule approve peertrust lyon --level 3 -n cellule-paris\n  kubectl cellule approve peertrust lyon --level 3 --resource-version 48213 -n cellule-paris"
    )]
    Peertrust(ApprovePeerArgs),
    /// Approve a WorkerGrant (same as `approve GRANT`).
    #[command(
        after_help = "Examples:\n  kubectl cellule approve grant laptop-contractor -n cellule-paris\n  kubectl cellule approve grant laptop-contractor --resource-version 48213 -n cellule-paris"
    )]
    Grant(ApproveGrantArgs),
}

#[derive(Args, Debug)]
pub struct ApproveGrantArgs {
    /// The WorkerGrant.
    pub grant: String,
    #[command(flatten)]
    pub version: ResourceVersionArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct ApprovePeerArgs {
    /// The PeerTrust.
    pub name: String,
    /// The level approved: only 3 needs a second person.
    #[arg(long, value_parser = parse_level)]
    pub level: i32,
    #[command(flatten)]
    pub version: ResourceVersionArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct CompromiseKeyArgs {
    /// The Pool whose key leaked.
    pub pool: String,
    /// The key id (`kid`), as in `status.signingKeys` and tokens' headers.
    pub kid: String,
    /// Confirm: tokens signed by the key stop working at once until their
    /// grants' new tokens reach the workers.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Subcommand, Debug)]
pub enum HandshakeCommand {
    /// Create an administrator's Ed25519 key: writes the private seed to
    /// FILE (mode 0600, never overwritten) and prints the public key for
    /// the Pool's `federation.adminPublicKeys`.
    #[command(
        after_help = "Examples:\n  kubectl cellule handshake keygen --out ~/.cellule/paris-admin.key"
    )]
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a fresh nonce for a handshake.
    #[command(after_help = "Examples:\n  kubectl cellule handshake nonce")]
    Nonce,
    /// Print the exact text that both sites' admins sign, from this site's
    /// Pool and PeerTrust (in the cluster, or manifests).
    #[command(
        after_help = "Examples:\n  kubectl cellule handshake statement --pool paris --peer-trust lyon -n cellule-paris\n  kubectl cellule handshake statement --pool-file paris.yaml --peer-trust-file lyon.yaml"
    )]
    Statement(StatementArgs),
    /// Sign the statement with an admin's key; prints the base64 signature
    /// for `handshake.localSignature` (or for the peer site's
    /// `peerSignature`).
    #[command(
        after_help = "Examples:\n  kubectl cellule handshake sign --pool paris --peer-trust lyon --key ~/.cellule/paris-admin.key -n cellule-paris"
    )]
    Sign {
        #[command(flatten)]
        statement: StatementArgs,
        /// File with the admin's private seed (from `keygen`).
        #[arg(long)]
        key: PathBuf,
    },
}

/// Where the Pool and the PeerTrust come from: by name from the cluster,
/// or from manifests (`kubectl get pool NAME -o yaml`).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = true)]
pub struct StatementArgs {
    /// This site's Pool, read from the cluster.
    #[arg(long, conflicts_with = "pool_file", requires = "peer_trust")]
    pub pool: Option<String>,
    /// The PeerTrust, read from the cluster.
    #[arg(long, conflicts_with = "peer_trust_file", requires = "pool")]
    pub peer_trust: Option<String>,
    /// This site's Pool as YAML or JSON, with its status.
    #[arg(long, requires = "peer_trust_file")]
    pub pool_file: Option<PathBuf>,
    /// The PeerTrust as YAML or JSON (with its handshake's nonce and window).
    #[arg(long, requires = "pool_file")]
    pub peer_trust_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyTokenArgs {
    /// The pool the token must be valid for.
    #[arg(long)]
    pub pool: String,
}

/// A Kubernetes duration (`90s`, `5m`, `24h`), as the CRDs write them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<cellule_operator::api::common::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

fn parse_level(text: &str) -> Result<i32, String> {
    match text.trim() {
        "3" => Ok(3),
        "1" | "2" => Err(format!(
            "level {text} needs no approval: lower or set it with `kubectl patch peertrust NAME --type merge -p '{{\"spec\":{{\"trustLevel\":{text}}}}}'`"
        )),
        _ => Err(format!("{text:?} is not a trust level: only 3 is approved")),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    /// Every command and subcommand, with its path.
    fn all(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), command.clone()));
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            all(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_help_has_an_example() {
        Cli::command().debug_assert();
        let mut commands = Vec::new();
        all(&Cli::command(), "kubectl cellule".into(), &mut commands);
        assert!(commands.len() >= 14, "{}", commands.len());
        for (path, mut command) in commands {
            let help = command.render_long_help().to_string();
            assert!(
                help.contains("Examples:\n  kubectl cellule"),
                "{path}: {help}"
            );
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-cellule").chain(args.iter().copied()))
    }

    #[test]
    fn kubectl_flags_anywhere() {
        let cli = parse(&[
            "revoke",
            "g",
            "-n",
            "site",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
        ])
        .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("site"));
        assert_eq!(cli.kube.context.as_deref(), Some("prod"));
        assert_eq!(cli.kube.kubeconfig, Some(PathBuf::from("/k")));
    }

    #[test]
    fn waiting_is_the_default_and_can_be_turned_off() {
        let Command::Revoke(args) = parse(&["revoke", "g"]).unwrap().command else {
            panic!()
        };
        assert!(args.wait.wait);
        assert_eq!(args.wait.timeout, Duration::from_secs(60));
        let Command::Revoke(args) = parse(&["revoke", "g", "--wait=false", "--timeout", "2m"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(!args.wait.wait);
        assert_eq!(args.wait.timeout, Duration::from_secs(120));
        assert!(parse(&["revoke", "g", "--timeout", "soon"]).is_err());
        assert!(parse(&["revoke"]).is_err(), "the grant is required");
    }

    #[test]
    fn status_window_defaults_to_a_day() {
        let Command::Status(args) = parse(&["status"]).unwrap().command else {
            panic!()
        };
        assert_eq!(args.pool, None);
        assert_eq!(args.expiring_within, Duration::from_secs(86400));
        let Command::Status(args) = parse(&["status", "paris", "--expiring-within", "72h"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(args.pool.as_deref(), Some("paris"));
        assert_eq!(args.expiring_within, Duration::from_secs(72 * 3600));
    }

    #[test]
    fn approve_takes_a_grant_or_a_peertrust_at_level_3_only() {
        let Command::Approve(args) = parse(&["approve", "laptop"]).unwrap().command else {
            panic!()
        };
        assert_eq!(args.grant.as_deref(), Some("laptop"));
        assert!(args.kind.is_none());
        let Command::Approve(args) = parse(&["approve", "peertrust", "lyon", "--level", "3"])
            .unwrap()
            .command
        else {
            panic!()
        };
        let Some(ApproveKind::Peertrust(peer)) = args.kind else {
            panic!()
        };
        assert_eq!((peer.name.as_str(), peer.level), ("lyon", 3));
        let err = parse(&["approve", "peertrust", "lyon", "--level", "2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs no approval"), "{err}");
        assert!(parse(&["approve", "peertrust", "lyon", "--level", "4"]).is_err());
        assert!(
            parse(&["approve", "peertrust", "lyon"]).is_err(),
            "--level is required"
        );
        assert!(parse(&["approve"]).is_err(), "a grant or a peertrust");
        assert_eq!(args.version.resource_version, None, "the version read");
        let Command::Approve(args) = parse(&["approve", "laptop", "--resource-version", "42"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(args.version.resource_version.as_deref(), Some("42"));
        let Command::Approve(args) =
            parse(&["approve", "grant", "laptop", "--resource-version", "43"])
                .unwrap()
                .command
        else {
            panic!()
        };
        let Some(ApproveKind::Grant(grant)) = args.kind else {
            panic!()
        };
        assert_eq!(grant.version.resource_version.as_deref(), Some("43"));
        let Command::Approve(args) = parse(&[
            "approve",
            "peertrust",
            "lyon",
            "--level",
            "3",
            "--resource-version",
            "44",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let Some(ApproveKind::Peertrust(peer)) = args.kind else {
            panic!()
        };
        assert_eq!(peer.version.resource_version.as_deref(), Some("44"));
    }

    #[test]
    fn suspend_undo_and_compromise_confirmation() {
        let Command::Suspend(args) = parse(&["suspend", "--undo", "g"]).unwrap().command else {
            panic!()
        };
        assert!(args.undo);
        let Command::CompromiseKey(args) =
            parse(&["compromise-key", "paris", "k1"]).unwrap().command
        else {
            panic!()
        };
        assert!(!args.yes, "--yes is never implied");
        assert!(
            parse(&["compromise-key", "paris"]).is_err(),
            "the kid is required"
        );
    }

    #[test]
    fn a_statement_reads_names_or_files_never_a_mix() {
        let ok = |a: &[&str]| parse(a).map(|_| ()).map_err(|e| e.to_string());
        ok(&[
            "handshake",
            "statement",
            "--pool",
            "paris",
            "--peer-trust",
            "lyon",
        ])
        .unwrap();
        ok(&[
            "handshake",
            "statement",
            "--pool-file",
            "p.yaml",
            "--peer-trust-file",
            "l.yaml",
        ])
        .unwrap();
        ok(&[
            "handshake",
            "sign",
            "--pool",
            "paris",
            "--peer-trust",
            "lyon",
            "--key",
            "k",
        ])
        .unwrap();
        assert!(ok(&["handshake", "statement"]).is_err());
        assert!(ok(&["handshake", "statement", "--pool", "paris"]).is_err());
        assert!(
            ok(&[
                "handshake",
                "statement",
                "--pool",
                "paris",
                "--pool-file",
                "p.yaml",
                "--peer-trust",
                "lyon"
            ])
            .is_err()
        );
        assert!(
            ok(&[
                "handshake",
                "sign",
                "--pool",
                "paris",
                "--peer-trust",
                "lyon"
            ])
            .is_err(),
            "--key is required"
        );
    }
}
