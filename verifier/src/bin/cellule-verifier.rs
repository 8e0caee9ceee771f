//! `cellule-verifier`: the pool's token verifier as a localhost service,
//! for pool software not written in Rust. It runs with the pool's
//! credentials (in-cluster, or `KUBECONFIG`), keeps the pool's JWKS and
//! revocation lists current (see `cellule_verifier::live`), and answers:
//!
//! - `POST /verify` with the token as the body: 200 and the claims (JSON),
//!   or 401 and why it is refused;
//! - `GET /readyz`: 200 once the data is current, 503 and why not;
//! - `GET /routing`: 200 and how each tier is served now (JSON, with the
//!   `resourceVersion` it was read at), 503 before it is known.
//!
//! Tokens are never logged.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use cellule_verifier::{live::Live, routing::Routing};
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Verifies a Cellule pool's worker tokens, live")]
struct Args {
    /// Namespace of the pool.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Name of the Pool.
    #[arg(long, env = "CELLULE_POOL")]
    pool: String,
    /// Where to answer (keep it on localhost).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Refuse every token when the JWKS or the revocation list has not been
    /// confirmed current for this many seconds.
    #[arg(long, default_value_t = 10)]
    stale_after_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    // Built together with the operator, rustls has two crypto backends and
    // picks neither by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let routing = Routing::start(client.clone(), &args.namespace, &args.pool);
    let live = Live::start(
        client,
        &args.namespace,
        &args.pool,
        Duration::from_secs(args.stale_after_seconds.max(1)),
    );
    let router = Router::new()
        .route("/verify", post(verify))
        .route("/readyz", get(ready))
        .with_state(live)
        .merge(
            Router::new()
                .route("/routing", get(current_routing))
                .with_state(routing),
        );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, pool = %args.pool, namespace = %args.namespace, "verifying tokens");
    axum::serve(listener, router).await?;
    Ok(())
}

async fn verify(State(live): State<Live>, token: String) -> (StatusCode, String) {
    match live.verify(token.trim(), jiff::Timestamp::now().as_second()) {
        Ok(claims) => (
            StatusCode::OK,
            serde_json::to_string(&claims).unwrap_or_default(),
        ),
        Err(refused) => (StatusCode::UNAUTHORIZED, refused.to_string()),
    }
}

async fn current_routing(State(routing): State<Routing>) -> (StatusCode, String) {
    match routing.current() {
        Ok(value) => (StatusCode::OK, value.to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn ready(State(live): State<Live>) -> (StatusCode, String) {
    match live.unavailable() {
        None => (StatusCode::OK, "ok".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}
