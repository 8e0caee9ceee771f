//! The operator as it is packaged and installed:
//! - the Helm chart with its default values renders exactly the objects of
//!   `config/default` (one source of truth for RBAC, admission policies and
//!   the Deployment), and its namespaced install binds per namespace;
//! - the permissions the operator's ServiceAccount holds on the API server
//!   are the committed allowlist (`config/rbac/allowlist.txt`), with no
//!   wildcard and no escalate/bind/impersonate;
//! - `helm install` of the chart is admitted, and its pods pass Pod Security
//!   `restricted`;
//! - (`--ignored`, run by `e2e/test.sh` once the shared operator is
//!   stopped) the operator binary run with exactly the ServiceAccount, RBAC,
//!   args and environment the chart deployed reconciles the samples and
//!   holds its Lease in the release namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use cellule_e2e::{Env, cellule_api, eventually, repo_path, run_tool};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    coordination::v1::Lease,
    core::v1::{Event, Namespace, Pod},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ListParams, ObjectMeta, PostParams},
};
use serde::Deserialize as _;
use serde_json::{Value, json};

const CHART: &str = "charts/cellule-operator";
/// The release of the install tests and its namespace (created by the test).
const RELEASE: &str = "cellule-helm";
const RELEASE_NS: &str = "cellule-helm-e2e";
/// The fullname the chart gives release `cellule-helm` (it does not contain
/// the chart name): every object's name, the ServiceAccount's, the Lease's.
const FULLNAME: &str = "cellule-helm-cellule-operator";
/// The ServiceAccount `e2e/scripts/start-operator.sh` runs the shared
/// operator as, with the RBAC of `config/rbac`.
const OPERATOR_SA: (&str, &str) = ("cellule-system", "cellule-operator");
const WAIT: Duration = Duration::from_secs(90);

/// The labels Helm (and only Helm) adds to every object: left out when
/// comparing with `config/default`.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

type Key = (String, String, String);

/// `kind`, namespace (empty if cluster-scoped), name.
fn key(object: &Value) -> Key {
    let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        field(&object["kind"]),
        field(&object["metadata"]["namespace"]),
        field(&object["metadata"]["name"]),
    )
}

/// The objects of a multi-document YAML stream, by key; Helm's own labels
/// removed from each object's metadata (not from selectors or pod
/// templates, which must match as written).
fn objects(yaml: &str, what: &str) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
        if value.is_null() {
            continue;
        }
        // A null field is an absent one to the API server, and 10.0 is 10
        // (kustomize drops nulls and writes whole floats as integers, Helm
        // keeps what crdgen wrote: `labels: null`, `maximum: 10.0`).
        canonical(&mut value);
        let metadata = value.get_mut("metadata").and_then(Value::as_object_mut);
        if let Some(labels) = metadata
            .and_then(|m| m.get_mut("labels"))
            .and_then(Value::as_object_mut)
        {
            for label in HELM_LABELS {
                labels.remove(label);
            }
            if labels.is_empty() {
                value["metadata"].as_object_mut().unwrap().remove("labels");
            }
        }
        let key = key(&value);
        assert!(
            out.insert(key.clone(), value).is_none(),
            "{what}: {key:?} twice"
        );
    }
    out
}

fn canonical(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(canonical);
        }
        Value::Array(items) => items.iter_mut().for_each(canonical),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                && !n.is_i64()
                && !n.is_u64()
            {
                *value = json!(f as i64);
            }
        }
        _ => {}
    }
}

async fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = repo_path(CHART);
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    run_tool("helm", &args, &[]).await.unwrap()
}

fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap()
}

#[tokio::test]
async fn the_chart_with_default_values_renders_config_default() {
    let chart = objects(
        &helm_template("cellule-operator", "cellule-system", &[]).await,
        "helm template",
    );
    let default_dir = repo_path("config/default");
    let mut kustomize = objects(
        &run_tool(
            "kubectl",
            &["kustomize", default_dir.to_str().unwrap()],
            &[],
        )
        .await
        .unwrap(),
        "kubectl kustomize config/default",
    );
    // The namespace is kustomize's alone: Helm installs into an existing
    // one (or --create-namespace), which the docs say to label restricted.
    let namespace = kustomize
        .remove(&("Namespace".into(), String::new(), "cellule-system".into()))
        .expect("config/default creates namespace cellule-system");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted",
        "{}",
        yaml(&namespace)
    );

    let (chart_keys, kustomize_keys): (BTreeSet<_>, BTreeSet<_>) =
        (chart.keys().collect(), kustomize.keys().collect());
    assert_eq!(
        chart_keys, kustomize_keys,
        "the chart (left) and config/default (right) install different objects"
    );
    let mut differ = vec![];
    for (key, from_chart) in &chart {
        let from_kustomize = &kustomize[key];
        if from_chart != from_kustomize {
            differ.push(format!(
                "{key:?}\n--- chart:\n{}--- config/default:\n{}",
                yaml(from_chart),
                yaml(from_kustomize)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "objects differ between the chart (default values, release cellule-operator) and config/default:\n{}",
        differ.join("\n")
    );
    // What the comparison covered, so that a rendering that lost a kind
    // cannot pass: RBAC, admission, the Deployment, CRDs.
    let kinds: BTreeSet<&str> = chart.keys().map(|(kind, _, _)| kind.as_str()).collect();
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
    }
}

/// The chart's `crds/` is the repository's `crds/` (what crdgen writes),
/// file for file.
#[test]
fn the_chart_crds_are_the_generated_crds() {
    let list = |dir: &str| -> BTreeMap<String, String> {
        std::fs::read_dir(repo_path(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
    };
    let (generated, chart) = (list("crds"), list(&format!("{CHART}/crds")));
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "crds/ and {CHART}/crds/ hold different files"
    );
    for (file, text) in &generated {
        assert!(
            &chart[file] == text,
            "{CHART}/crds/{file} differs from crds/{file}: cp crds/{file} {CHART}/crds/"
        );
    }
}

#[tokio::test]
async fn a_namespaced_install_binds_per_namespace_and_reads_nodes_cluster_wide() {
    let rendered = objects(
        &helm_template(
            "cellule-operator",
            "cellule-system",
            &["--set", "watchNamespaces={team-a,team-b}"],
        )
        .await,
        "helm template (namespaced)",
    );
    let find =
        |kind: &str, ns: &str, name: &str| rendered.get(&(kind.into(), ns.into(), name.into()));
    assert!(
        find("ClusterRoleBinding", "", "cellule-operator").is_none(),
        "a namespaced install must not bind the operator's ClusterRole cluster-wide"
    );
    for ns in ["team-a", "team-b"] {
        let binding = find("RoleBinding", ns, "cellule-operator")
            .unwrap_or_else(|| panic!("no RoleBinding cellule-operator in {ns}"));
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cellule-operator"})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "cellule-operator", "namespace": "cellule-system"}])
        );
    }
    // Nodes are cluster-scoped: still bound cluster-wide.
    assert!(find("ClusterRoleBinding", "", "cellule-operator-nodes").is_some());
    let deployment = find("Deployment", "cellule-system", "cellule-operator").unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "CELLULE_WATCH_NAMESPACES", "value": "team-a,team-b"})),
        "{env}"
    );
}

/// The image: by digest when one is given (the tag then ignored), else
/// repository:tag, the tag defaulting to the chart's appVersion.
#[tokio::test]
async fn the_image_is_pulled_by_digest_when_one_is_given() {
    let image = |rendered: String| {
        let objects = objects(&rendered, "helm template");
        let key = (
            "Deployment".to_owned(),
            "ops".to_owned(),
            "cellule-operator".to_owned(),
        );
        objects[&key]["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let pinned = format!("image.digest={digest}");
    assert_eq!(
        image(
            helm_template(
                "cellule-operator",
                "ops",
                &[
                    "--set",
                    "image.repository=reg.example/cellule",
                    "--set",
                    "image.tag=1.2.3",
                    "--set",
                    &pinned
                ],
            )
            .await
        ),
        json!(format!("reg.example/cellule@{digest}"))
    );
    assert_eq!(
        image(helm_template("cellule-operator", "ops", &["--set", "image.tag=1.2.3"]).await),
        json!("cellule-operator:1.2.3")
    );
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_path(&format!("{CHART}/Chart.yaml"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        image(helm_template("cellule-operator", "ops", &[]).await),
        json!(format!(
            "cellule-operator:{}",
            chart["appVersion"].as_str().unwrap()
        ))
    );
    // The chart's appVersion is the operator's version.
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// `kubectl` as the e2e cluster admin.
async fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
    run_tool("kubectl", args, &[("KUBECONFIG", &kubeconfig)]).await
}

/// What `kubectl auth can-i --list` says `user` (with `groups`) may do in
/// `ns`, one normalized row per permission: `resources | non-resource URLs
/// | resource names | verbs`.
async fn can_i(user: &str, groups: &[&str], ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut args = vec!["auth", "can-i", "--list", "--as", user, "-n", ns];
    for group in groups {
        args.extend(["--as-group", group]);
    }
    let out = kubectl(&args).await?;
    let mut rows = BTreeSet::new();
    for line in out.lines().skip(1) {
        // Columns are space-padded; lists are bracketed and space-separated
        // inside: split on the brackets.
        let line = line.trim();
        let (resource, rest) = match line.find('[') {
            Some(i) => (line[..i].trim(), &line[i..]),
            None => bail!("unexpected can-i row: {line}"),
        };
        let lists: Vec<&str> = rest
            .split(']')
            .map(|s| s.trim().trim_start_matches('['))
            .collect();
        ensure!(lists.len() >= 3, "unexpected can-i row: {line}");
        rows.insert(format!(
            "{} | {} | {} | {}",
            if resource.is_empty() { "-" } else { resource },
            if lists[0].is_empty() { "-" } else { lists[0] },
            if lists[1].is_empty() { "-" } else { lists[1] },
            lists[2]
        ));
    }
    Ok(rows)
}

/// The permissions of `sa` in `ns`, less what every ServiceAccount has
/// (the built-in discovery, self-review and service-account-issuer rows,
/// measured as a ServiceAccount of the same groups with no binding).
async fn operator_rows(sa: (&str, &str), ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let user = format!("system:serviceaccount:{}:{}", sa.0, sa.1);
    let nobody = format!("system:serviceaccount:{}:cellule-e2e-nobody", sa.0);
    let sa_group = format!("system:serviceaccounts:{}", sa.0);
    let groups = [
        "system:serviceaccounts",
        sa_group.as_str(),
        "system:authenticated",
    ];
    let baseline = can_i(&nobody, &groups, ns).await?;
    ensure!(
        !baseline.is_empty(),
        "no baseline permissions at all: is can-i output parsed?"
    );
    Ok(can_i(&user, &groups, ns)
        .await?
        .difference(&baseline)
        .cloned()
        .collect())
}

const ALLOWLIST: &str = "config/rbac/allowlist.txt";

/// The allowlist's scopes: where `can-i` is asked. `any-namespace` is a
/// fresh namespace with no binding of its own (what every watched
/// namespace gets from the ClusterRoleBinding); the other scopes list only
/// what they add to it.
async fn measured_allowlist(fresh_ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let everywhere = operator_rows(OPERATOR_SA, fresh_ns).await?;
    let mut lines: BTreeSet<String> = everywhere
        .iter()
        .map(|row| format!("any-namespace: {row}"))
        .collect();
    for ns in ["cellule-system", "default"] {
        let here = operator_rows(OPERATOR_SA, ns).await?;
        // What it holds everywhere must hold here too: a namespace cannot
        // take permissions away.
        ensure!(
            here.is_superset(&everywhere),
            "{ns}: rows of every namespace missing: {:?}",
            everywhere.difference(&here).collect::<Vec<_>>()
        );
        for row in here.difference(&everywhere) {
            lines.insert(format!("{ns}: {row}"));
        }
    }
    Ok(lines)
}

fn rules_with_wildcards_or_escalation(rules: &[PolicyRule]) -> Vec<String> {
    let mut bad = vec![];
    for rule in rules {
        let fields = [
            rule.api_groups.as_deref().unwrap_or_default(),
            rule.resources.as_deref().unwrap_or_default(),
            rule.resource_names.as_deref().unwrap_or_default(),
            rule.non_resource_urls.as_deref().unwrap_or_default(),
            &rule.verbs,
        ];
        if fields
            .iter()
            .flat_map(|f| f.iter())
            .any(|v| v.contains('*'))
        {
            bad.push(format!("wildcard: {rule:?}"));
        }
        if rule
            .verbs
            .iter()
            .any(|v| matches!(v.as_str(), "escalate" | "bind" | "impersonate"))
        {
            bad.push(format!("escalate/bind/impersonate: {rule:?}"));
        }
    }
    bad
}

/// Every role bound to ServiceAccount `sa` (`namespace`, `name`), by
/// ClusterRoleBindings and by RoleBindings in any namespace, with its rules.
async fn roles_bound_to(
    client: &Client,
    sa: (&str, &str),
) -> anyhow::Result<Vec<(String, Vec<PolicyRule>)>> {
    let is_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa.1 && s.namespace.as_deref() == Some(sa.0)
        })
    };
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    let mut bound = vec![];
    for binding in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        if is_sa(&binding.subjects) {
            let role = cluster_roles.get(&binding.role_ref.name).await?;
            bound.push((
                format!("ClusterRole {}", binding.role_ref.name),
                role.rules.unwrap_or_default(),
            ));
        }
    }
    for binding in Api::<RoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        if !is_sa(&binding.subjects) {
            continue;
        }
        let ns = binding.namespace().unwrap_or_default();
        let name = &binding.role_ref.name;
        let rules = if binding.role_ref.kind == "ClusterRole" {
            cluster_roles.get(name).await?.rules
        } else {
            Api::<Role>::namespaced(client.clone(), &ns)
                .get(name)
                .await?
                .rules
        };
        bound.push((
            format!("{} {name} (in {ns})", binding.role_ref.kind),
            rules.unwrap_or_default(),
        ));
    }
    Ok(bound)
}

#[tokio::test]
async fn the_operator_holds_exactly_the_allowlisted_permissions() {
    cellule_e2e::in_namespace("allowlist", |client: Client, ns: String| async move {
        let measured = measured_allowlist(&ns).await?;
        let path = repo_path(ALLOWLIST);
        let committed_text = std::fs::read_to_string(&path).context(ALLOWLIST)?;
        let committed: BTreeSet<String> = committed_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let extra: Vec<_> = measured.difference(&committed).collect();
        let missing: Vec<_> = committed.difference(&measured).collect();
        ensure!(
            extra.is_empty() && missing.is_empty(),
            "the operator's permissions are not {ALLOWLIST}.\n\
             held but not allowlisted: {extra:#?}\nallowlisted but not held: {missing:#?}\n\
             If the change is intended, put these lines (after the file's comments) in {ALLOWLIST}:\n{}",
            measured.iter().cloned().collect::<Vec<_>>().join("\n")
        );

        // Every role bound to the ServiceAccount, anywhere: no wildcard, no
        // escalate/bind/impersonate.
        let bound = roles_bound_to(&client, OPERATOR_SA).await?;
        let checked: Vec<&String> = bound.iter().map(|(role, _)| role).collect();
        let bad: Vec<String> = bound
            .iter()
            .flat_map(|(role, rules)| {
                rules_with_wildcards_or_escalation(rules)
                    .into_iter()
                    .map(move |b| format!("{role}: {b}"))
            })
            .collect();
        println!("roles bound to the operator: {checked:?}");
        ensure!(
            checked.iter().any(|c| *c == "ClusterRole cellule-operator"),
            "ClusterRole cellule-operator is not bound to the operator: {checked:?}"
        );
        ensure!(bad.is_empty(), "{bad:#?}");
        // The check itself catches a wildcard.
        let wildcard = PolicyRule {
            verbs: vec!["*".into()],
            ..Default::default()
        };
        ensure!(!rules_with_wildcards_or_escalation(&[wildcard]).is_empty());
        Ok(())
    })
    .await;
}

/// `kubectl apply -k config/default` (client-side, as a user would type
/// it) is accepted by the e2e API server: every object passes validation,
/// the CRDs' schemas and admission (server dry run: the shared operator's
/// cluster keeps its own objects; the pods of this same Deployment are
/// shown admitted under `restricted` by the chart install below, which
/// renders it identically).
#[tokio::test]
async fn kubectl_apply_k_config_default_is_accepted() {
    let dir = repo_path("config/default");
    let out = kubectl(&["apply", "-k", dir.to_str().unwrap(), "--dry-run=server"])
        .await
        .unwrap();
    let applied = out
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    let expected = run_tool("kubectl", &["kustomize", dir.to_str().unwrap()], &[])
        .await
        .unwrap();
    assert_eq!(applied, objects(&expected, "config/default").len(), "{out}");
}

/// A Helm release of the chart in [`RELEASE_NS`] (created here, labelled
/// Pod Security `restricted`), uninstalled and its namespace deleted when
/// dropped, whether the test passed or not.
struct Release;

impl Release {
    async fn install(client: &Client, values: &[&str]) -> anyhow::Result<Release> {
        let namespaces = Api::<Namespace>::all(client.clone());
        // A leftover of an interrupted run: wait until it is gone.
        eventually("no leftover namespace", WAIT, || async {
            match namespaces.get_opt(RELEASE_NS).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => {
                    let _ = namespaces.delete(RELEASE_NS, &Default::default()).await;
                    Err("still there".to_owned())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        namespaces
            .create(
                &PostParams::default(),
                &cellule_e2e::restricted_namespace(ObjectMeta {
                    name: Some(RELEASE_NS.into()),
                    ..Default::default()
                }),
            )
            .await
            .context("creating the release namespace")?;
        let release = Release; // from here on, dropping cleans up
        let chart = repo_path(CHART);
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let mut args = vec![
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NS,
        ];
        args.extend_from_slice(values);
        // Exits non-zero if any object is refused. No --wait: the pods are
        // checked by the caller, who can say why one is missing.
        let out = run_tool("helm", &args, &[("KUBECONFIG", &kubeconfig)]).await?;
        println!("{out}");
        Ok(release)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let run = |tool: &str, args: &[&str]| {
            let _ = std::process::Command::new(Env::bin(tool))
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        run(
            "helm",
            &[
                "uninstall",
                RELEASE,
                "--namespace",
                RELEASE_NS,
                "--wait",
                "--timeout",
                "60s",
            ],
        );
        run(
            "kubectl",
            &["delete", "namespace", RELEASE_NS, "--wait=false"],
        );
    }
}

/// The pods of the release's Deployment, once its ReplicaSet made all of
/// them and they run (KWOK marks them Running); fails on a `FailedCreate`
/// Event (e.g. refused by Pod Security).
async fn release_pods(client: &Client) -> anyhow::Result<Vec<Pod>> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS);
    let deployment = deployments.get(FULLNAME).await?;
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let events = Api::<Event>::namespaced(client.clone(), RELEASE_NS);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), RELEASE_NS);
    let pods = Api::<Pod>::namespaced(client.clone(), RELEASE_NS);
    eventually("the release's pods created and running", WAIT, || async {
        let failed: Vec<String> = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .map(|e| e.message.unwrap_or_default())
            .collect();
        if !failed.is_empty() {
            // Not retried: a refusal is the failure being tested for.
            return Ok(Err(failed));
        }
        let owned_by =
            |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
             name: &str| {
                refs.iter()
                    .any(|o| o.name == name && o.controller == Some(true))
            };
        let sets: Vec<ReplicaSet> = replica_sets
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|rs| owned_by(rs.owner_references(), FULLNAME))
            .collect();
        let [set] = sets.as_slice() else {
            return Err(format!("{} ReplicaSets of {FULLNAME}", sets.len()));
        };
        let made: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|p| owned_by(p.owner_references(), &set.name_any()))
            .collect();
        let running = made
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if made.len() == replicas as usize && running == made.len() {
            Ok(Ok(made))
        } else {
            Err(format!(
                "{} pods, {running} running, want {replicas}",
                made.len()
            ))
        }
    })
    .await?
    .map_err(|failed| anyhow::anyhow!("the ReplicaSet could not create pods: {failed:?}"))
}

#[tokio::test]
async fn helm_install_is_admitted_and_its_pods_pass_pod_security_restricted() {
    let client = cellule_e2e::admin_client().await;
    let release = Release::install(&client, &[]).await.unwrap();
    // Every object of the release is on the API server.
    let manifest = run_tool(
        "helm",
        &["get", "manifest", RELEASE, "--namespace", RELEASE_NS],
        &[("KUBECONFIG", &Env::var("CELLULE_E2E_KUBECONFIG"))],
    )
    .await
    .unwrap();
    let rendered = objects(&manifest, "helm get manifest");
    assert!(
        rendered.len() >= 15,
        "only {} objects: {manifest}",
        rendered.len()
    );
    let kubectl_bin = Env::bin("kubectl");
    let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
    let got = cellule_e2e::run_with_stdin(
        &kubectl_bin,
        &["--kubeconfig", &kubeconfig, "get", "-f", "-", "-o", "name"],
        &manifest,
    )
    .await
    .unwrap();
    assert!(
        got.status.success(),
        "objects of the release missing: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).lines().count(),
        rendered.len(),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );
    // Cluster-scoped objects carry the release's fullname.
    for (kind, ns, name) in rendered.keys() {
        if ns.is_empty() {
            assert!(
                name.starts_with(FULLNAME),
                "{kind} {name} does not carry {FULLNAME}"
            );
        }
    }
    // The namespace enforces restricted, so pods existing means admitted.
    let ns = Api::<Namespace>::all(client.clone())
        .get(RELEASE_NS)
        .await
        .unwrap();
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    let pods = release_pods(&client).await.unwrap();
    assert_eq!(pods.len(), 2, "the chart's default is 2 replicas");
    // The control: the namespace does refuse the same pod without its
    // securityContext (so the pods above were admitted on their merits).
    let deployment = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS)
        .get(FULLNAME)
        .await
        .unwrap();
    let mut spec = deployment.spec.unwrap().template.spec.unwrap();
    spec.security_context = None;
    spec.containers[0].security_context = None;
    let unrestricted = Pod {
        metadata: ObjectMeta {
            name: Some("unrestricted".into()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .create(&dry_run, &unrestricted)
        .await
    {
        Err(kube::Error::Api(status)) if status.message.contains("violates PodSecurity") => {}
        other => panic!("a pod without securityContext was not refused: {other:?}"),
    }
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some(FULLNAME));
    }
    drop(release);
}

type EnvVars = Vec<(String, String)>;

/// The operator's args and environment as the Deployment's container declares it,
/// with downward-API fields resolved for `pod`; `CELLULE_HEALTH_ADDR` is the
/// one value replaced (by `health_addr`): the process runs on this machine,
/// not in the pod's network namespace.
fn rendered_env(
    deployment: &Deployment,
    pod: &str,
    health_addr: &str,
) -> anyhow::Result<(Vec<String>, EnvVars)> {
    let spec = deployment
        .spec
        .as_ref()
        .context("spec")?
        .template
        .spec
        .as_ref()
        .context("pod spec")?;
    let [container] = spec.containers.as_slice() else {
        bail!(
            "the Deployment has {} containers, expected 1",
            spec.containers.len()
        );
    };
    ensure!(
        container.command.is_none(),
        "a command overrides the image's entrypoint: {:?}",
        container.command
    );
    let mut env = vec![];
    let mut replaced = false;
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) if var.name == "CELLULE_HEALTH_ADDR" => {
                ensure!(value.starts_with("0.0.0.0:"), "health address {value}");
                replaced = true;
                health_addr.to_owned()
            }
            (Some(value), None) => value.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => RELEASE_NS.to_owned(),
                _ => bail!("{}: cannot resolve {from:?} outside the pod", var.name),
            },
            (None, None) => String::new(),
            (Some(_), Some(_)) => bail!("{}: both value and valueFrom", var.name),
        };
        env.push((var.name.clone(), value));
    }
    ensure!(replaced, "the chart sets no CELLULE_HEALTH_ADDR");
    ensure!(container.env_from.is_none(), "envFrom is not resolved here");
    Ok((container.args.clone().unwrap_or_default(), env))
}

/// A kubeconfig authenticating as the release's ServiceAccount, with a
/// token from `kubectl create token`, as start-operator.sh makes its own.
async fn release_kubeconfig() -> anyhow::Result<PathBuf> {
    let token = kubectl(&[
        "create",
        "token",
        FULLNAME,
        "--namespace",
        RELEASE_NS,
        "--duration",
        "1h",
    ])
    .await?;
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(Env::var(
        "CELLULE_E2E_KUBECONFIG",
    ))?)?;
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": FULLNAME, "user": {"token": token.trim()}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": FULLNAME}}],
        "current-context": "e2e",
    });
    let path = PathBuf::from(Env::var("CELLULE_E2E_STATE")).join(format!("{FULLNAME}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

#[tokio::test]
#[ignore = "runs its own operator: e2e/test.sh runs it once the shared operator is stopped"]
async fn the_operator_as_the_chart_deployed_it_reconciles_the_samples() {
    let client = cellule_e2e::admin_client().await;
    // The e2e registry (plain HTTP on loopback) holds the samples' signed
    // images: the values a user would give for their own registry.
    let registry = Env::registry();
    let insecure = format!("registries.insecure={{{registry}}}");
    let release = Release::install(
        &client,
        &["--set", &insecure, "--set", "registries.timeout=3s"],
    )
    .await
    .unwrap();
    let pods = release_pods(&client).await.unwrap();
    let pod = pods[0].name_any();

    let deployment = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS)
        .get(FULLNAME)
        .await
        .unwrap();
    let health = cellule_e2e::free_local_addr().await.unwrap();
    let (args, env) = rendered_env(&deployment, &pod, &health).unwrap();
    println!("args {args:?}\nenv {env:?}");
    assert!(
        env.contains(&("CELLULE_INSECURE_REGISTRIES".into(), registry.clone())),
        "the value given to helm is not in the Deployment: {env:?}"
    );
    let kubeconfig = release_kubeconfig().await.unwrap();
    let log = PathBuf::from(Env::var("CELLULE_E2E_LOGS")).join("operator-helm.log");
    // Nothing of this process's environment leaks in (the e2e env sets
    // CELLULE_* variables of its own): the chart's env, and the kubeconfig
    // in place of the in-cluster one.
    let log_file = std::fs::File::create(&log).unwrap();
    let _operator = tokio::process::Command::new(Env::var("CELLULE_E2E_OPERATOR_BIN"))
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("starting the operator");
    let log_tail = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ready = eventually("the operator ready", Duration::from_secs(60), || async {
        let response = cellule_e2e::http_get(&health, "/readyz").await?;
        response
            .starts_with("HTTP/1.1 200")
            .then_some(())
            .ok_or(response)
    })
    .await;
    assert!(
        ready.is_ok(),
        "{ready:?}; operator log (last lines, newest first):\n{}",
        log_tail()
    );

    // Its Lease, in the release namespace, held by the pod identity the
    // Deployment gave it.
    let leases = Api::<Lease>::namespaced(client.clone(), RELEASE_NS);
    let held = eventually("the Lease held by the operator", WAIT, || async {
        let lease = leases
            .get_opt(FULLNAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Lease yet")?;
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        // An identity is `<pod>_<random>`: one per process.
        holder
            .as_deref()
            .and_then(|h| h.rsplit_once('_'))
            .is_some_and(|(p, _)| p == pod)
            .then_some(())
            .ok_or(format!("holder {holder:?}"))
    })
    .await;
    assert!(
        held.is_ok(),
        "{held:?}; operator log (last lines, newest first):\n{}",
        log_tail()
    );

    cellule_e2e::in_namespace("helm-operator", |client: Client, ns: String| async move {
        cellule_e2e::apply_sample_site(&client, &ns).await?;
        cellule_e2e::wait_condition(&client, &ns, "Pool", "paris", "Ready", "True", WAIT).await?;
        cellule_e2e::wait_condition(&client, &ns, "NpuServer", "heavy", "Ready", "True", WAIT)
            .await?;
        // The approved grant gets its token; the unapproved one waits.
        for (grant, phase) in [
            ("laptop-alice", "Active"),
            ("laptop-contractor", "PendingApproval"),
        ] {
            let api = cellule_api(&client, &ns, "WorkerGrant");
            eventually(&format!("{grant} {phase}"), WAIT, || async {
                let status =
                    api.get(grant).await.map_err(|e| e.to_string())?.data["status"].clone();
                (status["phase"] == phase)
                    .then_some(())
                    .ok_or(status.to_string())
            })
            .await?;
        }
        cellule_e2e::token_of(&client, &ns, "laptop-alice").await?;
        // Every sample's status is of its current generation.
        for (file, doc) in cellule_e2e::sample_documents() {
            let (kind, name) = (
                doc["kind"].as_str().context("kind")?,
                doc["metadata"]["name"].as_str().context("name")?,
            );
            let api = cellule_api(&client, &ns, kind);
            eventually(&format!("{file}: {kind} {name} observed"), WAIT, || async {
                let object = api.get(name).await.map_err(|e| e.to_string())?;
                let generation = object.metadata.generation;
                let observed = object.data["status"]["observedGeneration"].as_i64();
                (observed.is_some() && observed == generation)
                    .then_some(())
                    .ok_or(format!("generation {generation:?}, observed {observed:?}"))
            })
            .await?;
        }
        // And the writes were the release's ServiceAccount's.
        let user = format!("system:serviceaccount:{RELEASE_NS}:{FULLNAME}");
        let writes = cellule_e2e::audited_writes(&user, &ns);
        ensure!(
            writes.iter().any(|w| w.contains("deployments")),
            "no Deployment written by {user}: {writes:?}"
        );
        ensure!(
            writes.iter().any(|w| w.contains("status")),
            "no status written by {user}: {writes:?}"
        );
        Ok(())
    })
    .await;
    drop(release);
}
