//! The connection to the cluster, reads that say what to do when the
//! object is missing, and waiting for the operator.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

use crate::cli::KubeArgs;

/// A client and the namespace commands work in.
pub struct Ctx {
    pub client: Client,
    pub namespace: String,
}

impl Ctx {
    /// Connects as kubectl would: `--kubeconfig` (else $KUBECONFIG, else
    /// ~/.kube/config, else in-cluster), `--context`, `-n`.
    pub async fn connect(args: &KubeArgs) -> anyhow::Result<Self> {
        // The operator crate links sigstore, whose rustls backend (aws-lc)
        // and kube's (ring) leave rustls unable to choose by itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        const HINT: &str = "loading the kubeconfig: give --kubeconfig FILE or set KUBECONFIG";
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .context(HINT)?
            }
            None if args.context.is_some() => {
                Config::from_kubeconfig(&options).await.context(HINT)?
            }
            None => Config::infer().await.context(HINT)?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Self { client, namespace })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `name`, or an error naming it and how to list what exists.
    pub async fn get<K>(&self, name: &str) -> anyhow::Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match self.api::<K>().get_opt(name).await {
            Ok(Some(object)) => Ok(object),
            Ok(None) => Err(anyhow::anyhow!(not_found::<K>(name, &self.namespace))),
            Err(e) => Err(api_error(
                e,
                &format!("reading {} {name}", K::kind(&Default::default())),
            )),
        }
    }

    /// The user the API server sees (SelfSubjectReview): what four-eyes
    /// admission compares `approvedBy` with.
    pub async fn whoami(&self) -> anyhow::Result<String> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let review = Api::<SelfSubjectReview>::all(self.client.clone())
            .create(&Default::default(), &SelfSubjectReview::default())
            .await
            .map_err(|e| api_error(e, "asking the API server who you are (SelfSubjectReview)"))?;
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .filter(|u| !u.is_empty())
            .context("the API server did not say who you are (SelfSubjectReview has no username)")
    }
}

/// "WorkerGrant x not found in namespace y: list them with `kubectl get
/// workergrants -n y`".
pub fn not_found<K: Resource>(name: &str, namespace: &str) -> String
where
    K::DynamicType: Default,
{
    let dt = Default::default();
    format!(
        "{} {name} not found in namespace {namespace}: list them with `kubectl get {} -n {namespace}`",
        K::kind(&dt),
        K::plural(&dt)
    )
}

/// An API error with what was being done, and the server's own message
/// (which names the admission rule that refused a write).
pub fn api_error(error: kube::Error, doing: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => ": log in again (your credentials were refused)",
                403 if status.reason == "Forbidden" && status.message.contains("cannot") => {
                    ": ask for the RBAC permission it names"
                }
                _ => "",
            };
            anyhow::anyhow!("{doing}: {}{hint}", status.message)
        }
        other => anyhow::anyhow!("{doing}: {other}"),
    }
}

/// Polls `check` every half second until it returns `Some`, or fails after
/// `timeout` with `what` and the last state it reported.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = check().await?;
        match last {
            Ok(done) => return Ok(done),
            Err(state) if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                "timed out after {} waiting for {what} (last seen: {state}); the change was made: \
                 look at the operator's logs and `kubectl cellule status`, or wait longer with --timeout",
                cellule_operator::api::common::Duration(timeout)
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
