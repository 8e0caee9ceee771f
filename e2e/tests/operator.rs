//! The operator binary as a process against the e2e API server: it becomes
//! ready once connected and stops cleanly on SIGTERM.

use std::{process::Stdio, time::Duration};

use cellule_e2e::{Env, eventually, http_get};
use tokio::{io::AsyncReadExt, net::TcpListener};

#[tokio::test]
async fn operator_becomes_ready_and_stops_on_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut operator = tokio::process::Command::new(Env::var("CELLULE_E2E_OPERATOR_BIN"))
        .env("KUBECONFIG", Env::var("CELLULE_E2E_KUBECONFIG"))
        .env("CELLULE_HEALTH_ADDR", &addr)
        .env("CELLULE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting cellule-operator");

    let healthz = eventually("/healthz answers", Duration::from_secs(30), || {
        http_get(&addr, "/healthz")
    })
    .await
    .unwrap();
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    eventually("/readyz is 200", Duration::from_secs(30), || async {
        let response = http_get(&addr, "/readyz").await?;
        if response.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(response)
        }
    })
    .await
    .unwrap();

    let pid = operator.id().expect("operator pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), operator.wait())
        .await
        .expect("the operator did not stop within 10s of SIGTERM")
        .unwrap();
    let mut logs = String::new();
    operator
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit}; logs:\n{logs}");
    // JSON logs: every line parses, and the connection was logged.
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(logs.contains("connected to the API server"), "{logs}");
    assert!(
        http_get(&addr, "/healthz").await.is_err(),
        "health endpoint still up after exit"
    );
}
