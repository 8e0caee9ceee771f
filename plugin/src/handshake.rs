//! `handshake`: the operator's handshake code, with the Pool and the
//! PeerTrust read from the cluster or from manifests.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cellule_operator::{
    api::{PeerTrust, Pool},
    peer_trust::handshake::{self, Statement},
};

use crate::{
    cli::{HandshakeCommand, StatementArgs},
    cluster::Ctx,
};

pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let (seed, public) = handshake::generate_key();
    handshake::write_seed(out, &seed).with_context(|| {
        format!(
            "writing {} (an existing key is never overwritten: choose another path)",
            out.display()
        )
    })?;
    println!("{public}");
    Ok(())
}

/// Whether `command` reads manifests only (no cluster needed).
pub fn from_files(command: &HandshakeCommand) -> bool {
    match command {
        HandshakeCommand::Statement(args)
        | HandshakeCommand::Sign {
            statement: args, ..
        } => args.pool_file.is_some(),
        _ => false,
    }
}

fn read_manifest<T: serde::de::DeserializeOwned>(path: &PathBuf, kind: &str) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing the {kind} in {}", path.display()))
}

async fn statement(ctx: Option<&Ctx>, args: &StatementArgs) -> anyhow::Result<Statement> {
    let (pool, peer): (Pool, PeerTrust) = match (ctx, &args.pool, &args.peer_trust) {
        (Some(ctx), Some(pool), Some(peer)) => (ctx.get(pool).await?, ctx.get(peer).await?),
        _ => (
            read_manifest(
                args.pool_file
                    .as_ref()
                    .context("give --pool or --pool-file")?,
                "Pool",
            )?,
            read_manifest(
                args.peer_trust_file
                    .as_ref()
                    .context("give --peer-trust or --peer-trust-file")?,
                "PeerTrust",
            )?,
        ),
    };
    if peer.spec.pool_ref.name != pool.metadata.name.clone().unwrap_or_default() {
        anyhow::bail!(
            "PeerTrust {} belongs to Pool {}, not {}",
            peer.metadata.name.clone().unwrap_or_default(),
            peer.spec.pool_ref.name,
            pool.metadata.name.clone().unwrap_or_default()
        );
    }
    Ok(handshake::statement_of(&pool, &peer)?)
}

fn print(command: HandshakeCommand, statement: Statement) -> anyhow::Result<()> {
    match command {
        HandshakeCommand::Sign { key, .. } => {
            let seed = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = handshake::signing_key(&seed)?;
            println!("{}", handshake::sign(&key, &statement)?);
        }
        _ => print!("{}", statement.canonical()?),
    }
    Ok(())
}

pub async fn run_offline(command: HandshakeCommand) -> anyhow::Result<()> {
    let args = match &command {
        HandshakeCommand::Statement(args)
        | HandshakeCommand::Sign {
            statement: args, ..
        } => args,
        _ => unreachable!("keygen and nonce are handled before"),
    };
    let statement = statement(None, args).await?;
    print(command, statement)
}

pub async fn run_cluster(ctx: &Ctx, command: HandshakeCommand) -> anyhow::Result<()> {
    let args = match &command {
        HandshakeCommand::Statement(args)
        | HandshakeCommand::Sign {
            statement: args, ..
        } => args,
        _ => unreachable!("keygen and nonce are handled before"),
    };
    let statement = statement(Some(ctx), args).await?;
    print(command, statement)
}
