#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use cellule_operator::{controller, health, leader, peer_trust::handshake, telemetry};
use clap::{Parser, Subcommand};
use futures::FutureExt as _;
use tokio::sync::watch;

/// Deploys and guards Cellule PRO on Kubernetes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Make and sign the bilateral handshake of a level-3 PeerTrust.
    #[command(subcommand)]
    Handshake(HandshakeCommand),
    /// Verify a worker token (read from stdin) as a pool would: prints its
    /// claims, or why it is refused (exit code 1). Never prints the token.
    VerifyToken(VerifyTokenArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyTokenArgs {
    /// The pool's JWKS (`jwks.json` of the `<pool>-jwks` ConfigMap).
    #[arg(long)]
    jwks: PathBuf,
    /// The pool's revocation lists as JSON: what `kubectl get
    /// revocationlists -l cellule.ai/pool=<pool> -o json` prints. Input
    /// that is not such a list refuses every token (fail closed).
    #[arg(long)]
    revocations: Option<PathBuf>,
    /// The pool's verifier policy (`policy.json` of the `<pool>-jwks`
    /// ConfigMap): audience, maxTtl, leeway.
    #[arg(long)]
    policy: PathBuf,
    /// The pool the token must be for, as `<namespace>/<pool>`: checked
    /// against the policy's audience.
    #[arg(long)]
    audience: Option<String>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the /healthz and /readyz endpoints.
    #[arg(
        long,
        env = "CELLULE_HEALTH_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    health_addr: SocketAddr,
    /// Log line format.
    #[arg(
        long,
        env = "CELLULE_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: telemetry::LogFormat,
    /// Watch and reconcile only these namespaces (comma-separated; default:
    /// every namespace). RBAC can then be granted per namespace.
    #[arg(
        long,
        env = "CELLULE_WATCH_NAMESPACES",
        value_delimiter = ',',
        global = true
    )]
    watch_namespaces: Vec<String>,
    /// Reconciles of one kind that run at once.
    #[arg(
        long,
        env = "CELLULE_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=64),
        global = true
    )]
    concurrency: u16,
    #[command(flatten)]
    registries: RegistryArgs,
    #[command(flatten)]
    leader: LeaderArgs,
}

/// Leader election: of several replicas, only the holder of one Lease
/// reconciles; the others wait to take over.
#[derive(clap::Args, Debug)]
struct LeaderArgs {
    /// Take part in leader election (`false`: reconcile at once, for a
    /// single replica only).
    #[arg(long, env = "CELLULE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    leader_election: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the
    /// namespace of the in-cluster or kubeconfig context).
    #[arg(long, env = "CELLULE_LEADER_ELECTION_NAMESPACE", global = true)]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "CELLULE_LEADER_ELECTION_ID",
        default_value = "cellule-operator",
        global = true
    )]
    leader_election_id: String,
    /// How long the Lease holds unrenewed: the longest takeover after a
    /// leader dies without handing over.
    #[arg(long, env = "CELLULE_LEASE_DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    lease_duration: std::time::Duration,
    /// How long before expiry the leader renews. A leader that could not
    /// renew steps down half of this before expiry: the other half is the
    /// clock skew tolerated between nodes.
    #[arg(long, env = "CELLULE_LEASE_RENEW_BEFORE", default_value = "4s", value_parser = parse_duration, global = true)]
    lease_renew_before: std::time::Duration,
}

impl LeaderArgs {
    async fn election(
        self,
        client: &kube::Client,
    ) -> anyhow::Result<Option<std::sync::Arc<leader::Election>>> {
        if !self.leader_election {
            return Ok(None);
        }
        let namespace = self
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let settings = leader::Settings {
            namespace,
            name: self.leader_election_id,
            identity: identity(),
            duration: self.lease_duration,
            renew_before: self.lease_renew_before,
        };
        tracing::info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "leader election");
        Ok(Some(leader::Election::new(client.clone(), settings).await?))
    }
}

/// This process's name in the Lease: the pod's name (else the host's) and
/// a random part, as controller-runtime does. A restarted container is
/// another process: it waits for the Lease like any standby rather than
/// take back one its predecessor may have lost.
fn identity() -> String {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "cellule-operator".to_owned())
    });
    let mut suffix = [0u8; 4];
    let _ = getrandom::fill(&mut suffix);
    format!("{pod}_{}", hex::encode(suffix))
}

/// How images are resolved and their signatures verified. Registries are
/// called only as the specs' image references name them, never a public
/// TUF repository, Rekor or Fulcio.
#[derive(clap::Args, Debug)]
struct RegistryArgs {
    /// Registries (`host[:port]`) spoken to over plain HTTP instead of TLS
    /// (comma-separated). Only for a registry on loopback or a trusted link.
    #[arg(
        long,
        env = "CELLULE_INSECURE_REGISTRIES",
        value_delimiter = ',',
        global = true
    )]
    insecure_registries: Vec<String>,
    /// The registries (`host[:port]`, comma-separated) the operator may
    /// call, besides the insecure ones: an image elsewhere is refused
    /// (`PolicyInvalid`) without a call. None by default.
    #[arg(
        long,
        env = "CELLULE_ALLOWED_REGISTRIES",
        value_delimiter = ',',
        global = true
    )]
    allowed_registries: Vec<String>,
    /// PEM file of CA certificates trusted for registries, on top of the
    /// system's (an intranet registry's CA).
    #[arg(long, env = "CELLULE_REGISTRY_CA_FILE", global = true)]
    registry_ca_file: Option<PathBuf>,
    /// Bound on one registry operation (a resolve, a verification).
    #[arg(long, env = "CELLULE_REGISTRY_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    registry_timeout: std::time::Duration,
    /// How long a positive verification decision is reused (per digest and
    /// key set), including through a registry outage.
    #[arg(long, env = "CELLULE_IMAGE_DECISION_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    image_decision_ttl: std::time::Duration,
    /// Entries kept in each image cache (decisions, tag resolutions).
    #[arg(
        long,
        env = "CELLULE_IMAGE_CACHE_SIZE",
        default_value_t = 4096,
        global = true
    )]
    image_cache_size: u64,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<cellule_operator::api::common::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

impl RegistryArgs {
    fn verifier(self) -> anyhow::Result<std::sync::Arc<dyn cellule_operator::images::Verify>> {
        use cellule_operator::images::{cache::Cached, registry};
        let ca_bundle = match &self.registry_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the registry CA file {}", path.display()))?,
            ),
            None => None,
        };
        let lower = |v: Vec<String>| v.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        anyhow::ensure!(
            self.registry_timeout >= std::time::Duration::from_secs(1),
            "--registry-timeout must be at least 1s"
        );
        let registry = registry::Registry::new(registry::RegistryConfig {
            insecure: lower(self.insecure_registries),
            allowed: lower(self.allowed_registries),
            ca_bundle,
            timeout: self.registry_timeout,
        })
        .context("the registry settings")?;
        Ok(std::sync::Arc::new(Cached::new(
            registry,
            self.image_decision_ttl,
            self.image_cache_size,
        )))
    }
}

#[derive(Subcommand, Debug)]
enum HandshakeCommand {
    /// Create an administrator's Ed25519 key: writes the private seed to
    /// FILE (mode 0600) and prints the public key to put in the Pool's
    /// `federation.adminPublicKeys` (or to send to the peer site).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a fresh nonce for a handshake.
    Nonce,
    /// Print the exact text that both sites' admins sign, built from this
    /// site's Pool and its PeerTrust as the operator builds it (the peer
    /// site gets the same bytes from theirs).
    Statement(StatementArgs),
    /// Sign the statement with an admin's key; prints the base64 signature
    /// for `handshake.localSignature` (or to send to the peer site for
    /// their `peerSignature`).
    Sign {
        #[command(flatten)]
        statement: StatementArgs,
        /// File with the admin's private seed (from `keygen`).
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct StatementArgs {
    /// This site's Pool as YAML or JSON (`kubectl get pool NAME -o yaml`):
    /// its federation site, endpoint and (from status) its key.
    #[arg(long)]
    pool: PathBuf,
    /// The PeerTrust as YAML or JSON (the manifest, with its handshake's
    /// nonce and window).
    #[arg(long)]
    peer_trust: PathBuf,
}

impl StatementArgs {
    fn statement(&self) -> anyhow::Result<handshake::Statement> {
        use cellule_operator::api::{PeerTrust, Pool};
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let pool: Pool = serde_yaml::from_str(&read(&self.pool)?).context("parsing the Pool")?;
        let peer: PeerTrust =
            serde_yaml::from_str(&read(&self.peer_trust)?).context("parsing the PeerTrust")?;
        Ok(handshake::statement_of(&pool, &peer)?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // sigstore links rustls' aws-lc backend, kube uses ring: with both,
    // rustls cannot pick one by itself and the first TLS client panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.run).await,
        Command::Handshake(command) => run_handshake(command),
        Command::VerifyToken(args) => verify_token(args),
    }
}

fn run_handshake(command: HandshakeCommand) -> anyhow::Result<()> {
    match command {
        HandshakeCommand::Keygen { out } => {
            let (seed, public) = handshake::generate_key();
            handshake::write_seed(&out, &seed)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{public}");
        }
        HandshakeCommand::Nonce => println!("{}", handshake::generate_nonce()),
        HandshakeCommand::Statement(args) => print!("{}", args.statement()?.canonical()?),
        HandshakeCommand::Sign { statement, key } => {
            let seed = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = handshake::signing_key(&seed)?;
            println!("{}", handshake::sign(&key, &statement.statement()?)?);
        }
    }
    Ok(())
}

fn verify_token(args: VerifyTokenArgs) -> anyhow::Result<()> {
    use cellule_operator::tokens;
    let jwks =
        serde_json::from_str(&std::fs::read_to_string(&args.jwks)?).context("parsing the JWKS")?;
    let policy: tokens::VerifierPolicy =
        serde_json::from_str(&std::fs::read_to_string(&args.policy)?)
            .context("parsing the verifier policy")?;
    if let Some(audience) = &args.audience
        && *audience != policy.audience
    {
        anyhow::bail!("the policy is for {:?}, not {audience:?}", policy.audience);
    }
    // The pool's lists only: the audience is `<namespace>/<pool>`.
    let pool = policy.audience.rsplit('/').next().unwrap_or_default();
    let revoked = match &args.revocations {
        Some(path) => {
            cellule_verifier::revocations::parse_lists(&std::fs::read_to_string(path)?, pool)
        }
        None => Ok(Default::default()),
    };
    let mut token = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)?;
    let verdict = revoked.and_then(|revoked| {
        tokens::verify(
            token.trim(),
            &jwks,
            &revoked,
            &policy,
            jiff::Timestamp::now().as_second(),
        )
    });
    match verdict {
        Ok(claims) => {
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(())
        }
        Err(refused) => {
            eprintln!("refused: {refused}");
            std::process::exit(1);
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let images = args.registries.verifier()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let readiness = health::Readiness::default();
    let health = health::serve(
        args.health_addr,
        readiness.clone(),
        stopped(stop_rx.clone()),
    )
    .await
    .with_context(|| format!("binding the health endpoints on {}", args.health_addr))?;
    let health = tokio::spawn(health);

    let client = kube::Client::try_default()
        .await
        .context("loading the kubeconfig or in-cluster configuration")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(version = %version.git_version, "connected to the API server");

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested, stopping");
        let _ = stop_tx.send(true);
    });
    let election = args.leader.election(&client).await?;
    // A standby is ready (connected, waiting to lead): a rollout must not
    // wait for a new replica to lead. Without election, ready means the
    // caches have synced.
    readiness.set_ready(election.is_some());
    if let Some(election) = &election {
        tracing::info!("waiting to lead");
        tokio::select! {
            () = election.acquire() => tracing::info!("leading"),
            () = stopped(stop_rx.clone()) => {
                health.await.context("health server task")??;
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
    cellule_operator::metrics::global().set_leading(true);
    // A leader that is no longer sure it leads exits at once, in-flight
    // reconciles and all: the replica that took over may be writing
    // already. Its pod restarts as a standby.
    let holding = election.clone().map(|election| {
        tokio::spawn(async move {
            let lost = election.hold().await;
            tracing::error!(%lost, "stopped leading; exiting");
            std::process::exit(1);
        })
    });
    let shutdown = {
        let stop_rx = stop_rx.clone();
        async move { stopped(stop_rx).await }.shared()
    };
    let options = controller::Options {
        namespaces: args.watch_namespaces,
        concurrency: args.concurrency,
        images,
    };
    let ready = readiness.clone();
    controller::run(client, options, shutdown, move || ready.set_ready(true)).await;
    readiness.set_ready(false);
    cellule_operator::metrics::global().set_leading(false);
    if let (Some(election), Some(holding)) = (election, holding) {
        holding.abort();
        let _ = holding.await;
        election.release().await;
        tracing::info!("handed the leader Lease over");
    }
    health.await.context("health server task")??;
    tracing::info!("stopped");
    Ok(())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
