#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context as _;
use cellule_operator::{health, telemetry};
use clap::Parser;
use tokio::sync::watch;

/// Deploys and guards Cellule PRO on Kubernetes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "CELLULE_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "CELLULE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);

    let (stop_tx, stop_rx) = watch::channel(false);
    let readiness = health::Readiness::default();
    let health = health::serve(cli.health_addr, readiness.clone(), stopped(stop_rx.clone()))
        .await
        .with_context(|| format!("binding the health endpoints on {}", cli.health_addr))?;
    let health = tokio::spawn(health);

    let client = kube::Client::try_default()
        .await
        .context("loading the kubeconfig or in-cluster configuration")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(version = %version.git_version, "connected to the API server");
    readiness.set_ready(true);

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested, stopping");
        let _ = stop_tx.send(true);
    });
    stopped(stop_rx).await;
    readiness.set_ready(false);
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
