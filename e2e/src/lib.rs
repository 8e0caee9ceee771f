//! Helpers for the end-to-end tests. The control plane they talk to is
//! started by `e2e/scripts/up.sh`, which writes the variables read here.
#![forbid(unsafe_code)]

pub mod failover;
pub mod federation;
pub mod images;

use std::{future::Future, panic::AssertUnwindSafe, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Deserialize as _;

/// What `up.sh` wrote into `STATE_DIR/env`, as passed by `e2e/test.sh`.
pub struct Env;

impl Env {
    /// A required variable; a test run without the control plane fails here
    /// with a message saying how to start it, instead of passing vacuously.
    pub fn var(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the e2e tests need the local control plane. \
                 Run them with `bash e2e/test.sh` (or start one with `e2e/scripts/up.sh DIR` \
                 and export the variables of DIR/env)."
            )
        })
    }

    pub fn bin(tool: &str) -> PathBuf {
        PathBuf::from(Self::var("CELLULE_E2E_BIN")).join(tool)
    }

    pub fn registry() -> String {
        Self::var("CELLULE_E2E_REGISTRY")
    }
}

/// A client with cluster-admin rights on the e2e control plane.
pub async fn admin_client() -> Client {
    client_for(&Env::var("CELLULE_E2E_KUBECONFIG")).await
}

/// The operator crate links sigstore, whose rustls backend (aws-lc) and
/// kube's (ring) leave rustls unable to choose: ring is installed first.
fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn client_for(kubeconfig_path: &str) -> Client {
    tls_provider();
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {kubeconfig_path}: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("building the client configuration");
    Client::try_from(config).expect("building the client")
}

/// A client that authenticates as one of the static test users of
/// `up.sh` (`alice`, `bob`) with a bearer token.
pub async fn user_client(user: &str) -> Client {
    tls_provider();
    let tokens =
        std::fs::read_to_string(Env::var("CELLULE_E2E_TOKENS")).expect("reading tokens.csv");
    let token = tokens
        .lines()
        .find_map(|line| {
            let mut fields = line.split(',');
            let token = fields.next()?;
            (fields.next()? == user).then(|| token.to_owned())
        })
        .unwrap_or_else(|| panic!("no static token for user {user}"));
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(Env::var("CELLULE_E2E_KUBECONFIG")).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).expect("building the user client")
}

/// A test namespace (`metadata` names it) that enforces Pod Security
/// `restricted`, labelled as the e2e tests'.
pub fn restricted_namespace(mut metadata: ObjectMeta) -> Namespace {
    metadata.labels.get_or_insert_default().extend(
        [
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
            ("cellule.ai/e2e", "true"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    Namespace {
        metadata,
        ..Default::default()
    }
}

/// Runs `body` in a fresh namespace that enforces Pod Security `restricted`,
/// and deletes the namespace afterwards, whether `body` passed or not.
pub async fn in_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = admin_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &restricted_namespace(ObjectMeta {
                generate_name: Some(format!("e2e-{prefix}-")),
                ..Default::default()
            }),
        )
        .await
        .expect("creating the test namespace");
    let name = ns.metadata.name.expect("generated namespace name");
    let outcome = AssertUnwindSafe(body(client, name.clone()))
        .catch_unwind()
        .await;
    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("test in namespace {name} failed: {e:?}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after
/// `timeout` with the last reason it gave.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(why) if tokio::time::Instant::now() >= deadline => {
                bail!("{what}: not reached within {timeout:?}; last state: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs a tool of the harness and returns its stdout; fails with its stderr.
pub async fn run_tool(tool: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(Env::bin(tool))
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {tool}"))?;
    if !output.status.success() {
        bail!(
            "{tool} {} exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A pod template that passes Pod Security `restricted`, for harness tests.
pub fn restricted_pod_spec(image: &str) -> k8s_openapi::api::core::v1::PodSpec {
    serde_json::from_value(serde_json::json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": false,
        "containers": [{
            "name": "main",
            "image": image,
            "ports": [{"containerPort": 8080, "name": "http"}],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}
            }
        }]
    }))
    .expect("valid pod spec")
}

/// Pod annotation that the KWOK stages of `e2e/kwok/stages.yaml` watch:
/// `"false"` turns a running pod NotReady, `"true"` makes it Ready again.
pub const POD_READY_ANNOTATION: &str = "cellule.ai/e2e-ready";
/// Node annotation with the same meaning for a fake node.
pub const NODE_READY_ANNOTATION: &str = "cellule.ai/e2e-node-ready";

/// The repository root (for `crds/`, `config/samples/`, `e2e/invalid/`).
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Every YAML document of the files matching `dir/*.yaml`, with their file names.
pub fn yaml_documents(dir: &str) -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<_> = std::fs::read_dir(repo_path(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut docs = vec![];
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// Installs (server-side apply) the generated CRDs and waits until they are
/// served. Safe to call from concurrent tests.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, doc) in yaml_documents("crds") {
        if doc["kind"] != "CustomResourceDefinition" {
            continue; // the kustomization listing them
        }
        let crd: CustomResourceDefinition =
            serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &kube::api::PatchParams::apply("cellule-e2e").force(),
            &kube::api::Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        )
        .await
        .unwrap();
    }
}

/// The dynamic API of a `cellule.ai` object, by its kind.
pub fn cellule_api(client: &Client, namespace: &str, kind: &str) -> Api<kube::api::DynamicObject> {
    use cellule_operator::api::{NpuServer, PeerTrust, Pool, WorkerGrant};
    use kube::api::ApiResource;
    let resource = match kind {
        "Pool" => ApiResource::erase::<Pool>(&()),
        "NpuServer" => ApiResource::erase::<NpuServer>(&()),
        "WorkerGrant" => ApiResource::erase::<WorkerGrant>(&()),
        "PeerTrust" => ApiResource::erase::<PeerTrust>(&()),
        other => panic!("not a cellule.ai kind: {other}"),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The documents of `config/samples/`, with the image registry they name
/// pointed at the e2e registry, where `up.sh` pushed and signed them.
pub fn sample_documents() -> Vec<(String, serde_json::Value)> {
    let (from, to) = (Env::var("CELLULE_E2E_SAMPLE_REGISTRY"), Env::registry());
    yaml_documents("config/samples")
        .into_iter()
        .map(|(file, doc)| {
            let text = serde_json::to_string(&doc).unwrap().replace(&from, &to);
            (file, serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// The ConfigMap `cellule-signing` the samples' images are verified with:
/// the public half of `up.sh`'s cosign key pair.
pub async fn apply_signing_key(client: &Client, ns: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let pem = std::fs::read_to_string(Env::var("CELLULE_E2E_COSIGN_PUB"))?;
    let map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cellule-signing"},
        "data": {"cosign.pub": pem},
    });
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            "cellule-signing",
            &kube::api::PatchParams::apply("cellule-e2e").force(),
            &kube::api::Patch::Apply(&map),
        )
        .await
        .context("applying the cosign public key")?;
    Ok(())
}

/// Server-side applies every object of `config/samples/` into `ns`, with
/// the cosign key their images are verified with.
pub async fn apply_samples(client: &Client, ns: &str) -> anyhow::Result<()> {
    apply_signing_key(client, ns).await?;
    for (file, doc) in sample_documents() {
        let name = doc["metadata"]["name"]
            .as_str()
            .context("sample without a name")?
            .to_owned();
        let kind = doc["kind"]
            .as_str()
            .context("sample without a kind")?
            .to_owned();
        cellule_api(client, ns, &kind)
            .patch(
                &name,
                &kube::api::PatchParams::apply("cellule-e2e").force(),
                &kube::api::Patch::Apply(&doc),
            )
            .await
            .with_context(|| format!("{file}: applying {kind} {name}"))?;
    }
    Ok(())
}

/// The sample site in `ns`: the CRDs, the database and TLS Secrets the
/// sample Pool references, and every object of `config/samples/`.
pub async fn apply_sample_site(client: &Client, ns: &str) -> anyhow::Result<()> {
    site_secrets(client, ns).await?;
    apply_samples(client, ns).await
}

/// The CRDs, and the database and TLS Secrets a Pool `paris` references.
pub async fn site_secrets(client: &Client, ns: &str) -> anyhow::Result<()> {
    install_crds(client).await;
    create_secret(
        client,
        ns,
        "paris-db",
        &[("dsn", "postgres://cellule@db:5432/cellule")],
    )
    .await?;
    create_secret(
        client,
        ns,
        "paris-tls",
        &[("tls.crt", "cert"), ("tls.key", "key")],
    )
    .await
}

/// Creates an Opaque Secret with the given string data.
pub async fn create_secret(
    client: &Client,
    ns: &str,
    name: &str,
    data: &[(&str, &str)],
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// Waits until the `cellule.ai` object has condition `type_` = `status`;
/// returns the object.
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> anyhow::Result<kube::api::DynamicObject> {
    let api = cellule_api(client, ns, kind);
    eventually(
        &format!("{kind} {name} {type_}={status}"),
        timeout,
        || async {
            let object = api.get(name).await.map_err(|e| e.to_string())?;
            let found = object.data["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
                .cloned();
            match found {
                Some(c) if c["status"] == status => Ok(object),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// The writes (create, update, patch, delete) that `user` made in
/// `namespace`, from the API server's audit log, as `verb resource name`.
pub fn audited_writes(user: &str, namespace: &str) -> Vec<String> {
    let log =
        std::fs::read_to_string(PathBuf::from(Env::var("CELLULE_E2E_LOGS")).join("audit.log"))
            .expect("reading the audit log");
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| e["user"]["username"] == user)
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .map(|e| {
            let o = &e["objectRef"];
            format!(
                "{} {} {}/{} {}",
                e["requestReceivedTimestamp"],
                e["verb"],
                o["resource"],
                o["subresource"],
                o["name"]
            )
        })
        .collect()
}

/// Runs `program` with `args`, writes `input` to its stdin, and returns its
/// output (whatever the exit status).
pub async fn run_with_stdin(
    program: &std::path::Path,
    args: &[&str],
    input: &str,
) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    tokio::io::AsyncWriteExt::write_all(
        child.stdin.as_mut().expect("piped stdin"),
        input.as_bytes(),
    )
    .await?;
    drop(child.stdin.take());
    Ok(child.wait_with_output().await?)
}

/// Every connection the np-guard analyzer allows between the pods of `ns`
/// (and kube-system's DNS pods) and IP ranges, per the NetworkPolicies on
/// the API server now, as `(src, dst, conn)`; and the directory of the
/// objects it read (for `netpolicy eval --dirpath`).
pub async fn allowed_connections(
    ns: &str,
) -> anyhow::Result<(PathBuf, Vec<(String, String, String)>)> {
    let dir = std::env::temp_dir().join(format!("cellule-netpol-{ns}"));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
    for (file, args) in [
        ("namespaces.yaml", vec!["namespace", ns, "kube-system"]),
        ("pods.yaml", vec!["pods", "-n", ns]),
        ("dns.yaml", vec!["pods", "-n", "kube-system"]),
        ("policies.yaml", vec!["networkpolicies", "-n", ns]),
    ] {
        let mut all = vec!["--kubeconfig", &kubeconfig, "get"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["-o", "yaml"]);
        std::fs::write(dir.join(file), run_tool("kubectl", &all, &[]).await?)?;
    }
    let dirpath = dir.to_str().context("temp dir path")?;
    let list: serde_json::Value = serde_json::from_str(
        &run_tool(
            "netpolicy",
            &["list", "--dirpath", dirpath, "-o", "json"],
            &[],
        )
        .await?,
    )
    .context("analyzer output")?;
    let rows = list
        .as_array()
        .context("analyzer output is a list")?
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("src"), field("dst"), field("conn"))
        })
        .collect();
    Ok((dir, rows))
}

/// Whether the np-guard analyzer lets pod `pod` of `ns` reach `ip` on
/// `port` (`protocol`: TCP unless given), per the objects of `dir` (from
/// [`allowed_connections`]).
pub async fn egress_allowed(
    dir: &std::path::Path,
    ns: &str,
    pod: &str,
    ip: &str,
    port: &str,
    protocol: Option<&str>,
) -> anyhow::Result<bool> {
    let dirpath = dir.to_str().context("temp dir path")?;
    let mut args = vec![
        "eval",
        "--dirpath",
        dirpath,
        "-n",
        ns,
        "-s",
        pod,
        "--destination-ip",
        ip,
        "-p",
        port,
    ];
    if let Some(protocol) = protocol {
        args.extend(["--protocol", protocol]);
    }
    let out = run_tool("netpolicy", &args, &[]).await?;
    match out.trim_end() {
        o if o.ends_with(": true") => Ok(true),
        o if o.ends_with(": false") => Ok(false),
        _ => anyhow::bail!("np-guard eval {pod} -> {ip}:{port}: {out}"),
    }
}

/// Merge-patches the `cellule.ai` object `kind`/`name` in `ns`.
pub async fn merge_patch(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    patch: serde_json::Value,
) -> anyhow::Result<()> {
    cellule_api(client, ns, kind)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("patching {kind} {name}"))?;
    Ok(())
}

/// The sample site in `ns`, once Pool `paris` and NpuServer `heavy` are Ready.
pub async fn sample_site_ready(client: &Client, ns: &str) -> anyhow::Result<()> {
    let wait = Duration::from_secs(90);
    apply_sample_site(client, ns).await?;
    wait_condition(client, ns, "Pool", "paris", "Ready", "True", wait).await?;
    wait_condition(client, ns, "NpuServer", "heavy", "Ready", "True", wait).await?;
    Ok(())
}

/// The raw HTTP/1.1 response to `GET path` on `addr` (health endpoints).
pub async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    http(addr, &format!("GET {path}"), "").await
}

/// The status code and body of `POST path` with `body` (text) on `addr`.
pub async fn http_post(addr: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let response = http(addr, &format!("POST {path}"), body).await?;
    let code = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or(response.clone())?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

async fn http(addr: &str, request_line: &str, body: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// Starts `binary` with `args` and `env`, logging to `<logs>/<log>.log`
/// (killed when dropped), and waits until `GET <ready_addr>/readyz` is 200.
pub async fn spawn_ready(
    binary: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: &str,
    ready_addr: &str,
) -> anyhow::Result<tokio::process::Child> {
    let log_file = std::fs::File::create(
        std::path::Path::new(&Env::var("CELLULE_E2E_LOGS")).join(format!("{log}.log")),
    )?;
    let child = tokio::process::Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    eventually(&format!("{log} ready"), Duration::from_secs(60), || async {
        let response = http_get(ready_addr, "/readyz").await?;
        response
            .starts_with("HTTP/1.1 200")
            .then_some(())
            .ok_or(response)
    })
    .await?;
    Ok(child)
}

/// The operator as deployed: its ServiceAccount's token (so its RBAC),
/// pod `pod` of `cellule-system` (its Lease there), logging to
/// `<logs>/<log>.log`, with `extra` environment; ready when this returns
/// (killed when dropped).
pub async fn spawn_operator(
    pod: &str,
    log: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    let addr = free_local_addr().await?;
    let kubeconfig = Env::var("CELLULE_E2E_OPERATOR_KUBECONFIG");
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("CELLULE_HEALTH_ADDR", addr.as_str()),
        ("RUST_LOG", "info,cellule_operator=debug"),
        ("POD_NAME", pod),
        ("POD_NAMESPACE", "cellule-system"),
    ];
    env.extend_from_slice(extra);
    spawn_ready(&Env::var("CELLULE_E2E_OPERATOR_BIN"), &[], &env, log, &addr).await
}

/// A free port on 127.0.0.1, as `127.0.0.1:<port>`.
pub async fn free_local_addr() -> anyhow::Result<String> {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// The token in WorkerGrant `grant`'s Secret (written just after the
/// status that announces it, so it may take a moment to appear).
pub async fn token_of(client: &Client, ns: &str, grant: &str) -> anyhow::Result<String> {
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    let secret = eventually(
        &format!("{grant}-token"),
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt(&format!("{grant}-token"))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("absent".to_owned())
        },
    )
    .await?;
    Ok(String::from_utf8(
        secret.data.context("token data")?["token"].0.clone(),
    )?)
}

/// `pool`'s revocation lists in `ns` as `kubectl get revocationlists -l
/// cellule.ai/pool=<pool> -o json` prints them.
pub async fn revocation_lists_json(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<String> {
    use cellule_verifier::revocations::{POOL_LABEL, RevocationList};
    let lists = Api::<RevocationList>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await?;
    Ok(serde_json::to_string(
        &serde_json::json!({"kind": "List", "items": lists.items}),
    )?)
}

/// Every token revoked in `pool`'s lists, `jti` → `exp`.
pub async fn revoked(
    client: &Client,
    ns: &str,
    pool: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let text = revocation_lists_json(client, ns, pool).await?;
    Ok(cellule_verifier::revocations::parse_lists(&text, pool)?.to_map())
}

/// The fault: an admission policy that refuses every write of Secret
/// `secret` in `ns` (as a full quota or a policy would), in force when this
/// returns; call the returned closure to lift it.
pub async fn deny_secret_writes(
    client: &Client,
    ns: &str,
    secret: &str,
) -> anyhow::Result<impl AsyncFnOnce()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    use serde_json::json;
    let lift = deny_writes(
        client,
        ns,
        "token",
        json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}),
        &format!("object.metadata.name != '{secret}'"),
        "e2e: token Secret writes refused",
    )
    .await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    eventually("the fault in force", Duration::from_secs(60), || async {
        let probe = json!({"metadata": {"annotations": {"e2e.cellule.ai/probe": jiff::Timestamp::now().to_string()}}});
        let dry = PatchParams { dry_run: true, ..Default::default() };
        match secrets.patch(secret, &dry, &Patch::Merge(&probe)).await {
            Err(kube::Error::Api(s)) if s.message.contains("token Secret writes refused") => Ok(()),
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await?;
    Ok(lift)
}

/// The fault: an admission policy that refuses every write of a
/// RevocationList in `ns`, in force when this returns; call the returned
/// closure to lift it.
pub async fn deny_revocation_writes(
    client: &Client,
    ns: &str,
) -> anyhow::Result<impl AsyncFnOnce()> {
    use cellule_verifier::revocations::{RevocationList, RevocationListSpec};
    use kube::api::PostParams;
    use serde_json::json;
    let lift = deny_writes(
        client,
        ns,
        "revocations",
        json!({"apiGroups": ["cellule.ai"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["revocationlists"]}),
        "false",
        "e2e: revocation list writes refused",
    )
    .await?;
    let lists = Api::<RevocationList>::namespaced(client.clone(), ns);
    let probe = RevocationList::new(
        "e2e-probe-revoked-1-0",
        RevocationListSpec {
            pool: "e2e-probe".into(),
            expires_at: 1,
            entries: vec![],
        },
    );
    eventually("the fault in force", Duration::from_secs(60), || async {
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match lists.create(&dry, &probe).await {
            Err(kube::Error::Api(s)) if s.message.contains("revocation list writes refused") => {
                Ok(())
            }
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await?;
    Ok(lift)
}

/// A ValidatingAdmissionPolicy, bound to `ns`, refusing the writes of
/// `rule` where `expression` is false; the closure returned removes it.
pub async fn deny_writes(
    client: &Client,
    ns: &str,
    tag: &str,
    rule: serde_json::Value,
    expression: &str,
    message: &str,
) -> anyhow::Result<impl AsyncFnOnce() + use<>> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use serde_json::json;
    let name = format!("cellule-e2e-deny-{tag}-{ns}");
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    policies
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [rule]},
                    "validations": [{"expression": expression, "message": message}],
                }
            }))?,
        )
        .await?;
    bindings
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Deny"],
                         "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}
            }))?,
        )
        .await?;
    Ok(async move || {
        let _ = bindings.delete(&name, &Default::default()).await;
        let _ = policies.delete(&name, &Default::default()).await;
    })
}

/// A kubeconfig file that authenticates as ServiceAccount `sa` of `ns`
/// (a one-hour token from the TokenRequest API).
pub async fn service_account_kubeconfig(
    client: &Client,
    ns: &str,
    sa: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    use serde_json::{Value, json};
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &kube::api::PostParams::default(), &request)
        .await?
        .status
        .context("token status")?
        .token;
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(Env::var(
        "CELLULE_E2E_KUBECONFIG",
    ))?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "pool", "context": {"cluster": "e2e", "user": sa}}],
        "current-context": "pool",
    });
    let path = std::env::temp_dir().join(format!("cellule-{ns}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// The Events of `ns` with `reason`, once there is one (an Event is
/// recorded just after the status it goes with).
pub async fn events_with(
    client: &Client,
    ns: &str,
    reason: &str,
) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
    events_matching(client, ns, &format!("a {reason} Event"), |e| {
        e.reason.as_deref() == Some(reason)
    })
    .await
}

/// The first Event of `ns` about the object `name` with `reason`, once
/// there is one.
pub async fn event_about(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<k8s_openapi::api::events::v1::Event> {
    let what = format!("a {reason} Event about {name}");
    let found = events_matching(client, ns, &what, |e| {
        e.reason.as_deref() == Some(reason)
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
    })
    .await?;
    Ok(found.into_iter().next().expect("at least one"))
}

async fn events_matching(
    client: &Client,
    ns: &str,
    what: &str,
    matches: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns);
    eventually(what, Duration::from_secs(60), || async {
        let list = events
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let found: Vec<_> = list.items.into_iter().filter(&matches).collect();
        if found.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(found)
        }
    })
    .await
}

/// `cellule-verifier` for `pool`, as the pool, ready when this returns.
pub async fn start_verifier(
    kubeconfig: &std::path::Path,
    ns: &str,
    pool: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let addr = crate::free_local_addr().await?;
    let args = [
        "--namespace",
        ns,
        "--pool",
        pool,
        "--listen",
        &addr,
        "--stale-after-seconds",
        "5",
    ];
    let env = [
        ("KUBECONFIG", kubeconfig.to_str().context("utf-8 path")?),
        ("RUST_LOG", "info"),
    ];
    let child = crate::spawn_ready(
        &Env::var("CELLULE_E2E_VERIFIER_BIN"),
        &args,
        &env,
        &format!("verifier-{ns}"),
        &addr,
    )
    .await?;
    Ok((child, addr))
}
