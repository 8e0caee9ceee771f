//! `kubectl cellule`: what on-call and admins of a Cellule site run against
//! the cluster. Every change it makes is an ordinary write to a custom
//! resource (the operator does the rest); every wait reads the status the
//! operator writes. It never prints token material or private keys.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod grants;
pub mod handshake;
pub mod keys;
pub mod status;
pub mod verify;

/// Runs the parsed command line.
pub async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    match cli.command {
        // Key and nonce generation need no cluster.
        Command::Handshake(cli::HandshakeCommand::Keygen { out }) => handshake::keygen(&out),
        Command::Handshake(cli::HandshakeCommand::Nonce) => {
            println!(
                "{}",
                cellule_operator::peer_trust::handshake::generate_nonce()
            );
            Ok(())
        }
        Command::Handshake(command) if handshake::from_files(&command) => {
            handshake::run_offline(command).await
        }
        command => {
            let ctx = cluster::Ctx::connect(&cli.kube).await?;
            match command {
                Command::Status(args) => status::run(&ctx, args).await,
                Command::Revoke(args) => grants::revoke(&ctx, args).await,
                Command::Suspend(args) => grants::suspend(&ctx, args).await,
                Command::Rotate(args) => grants::rotate(&ctx, args).await,
                Command::Approve(args) => grants::approve(&ctx, args).await,
                Command::CompromiseKey(args) => keys::compromise(&ctx, args).await,
                Command::Handshake(command) => handshake::run_cluster(&ctx, command).await,
                Command::VerifyToken(args) => verify::run(&ctx, args).await,
            }
        }
    }
}
