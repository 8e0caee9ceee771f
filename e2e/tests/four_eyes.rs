//! Four-eyes approval of WorkerGrants by the ValidatingAdmissionPolicy of
//! config/admission, with two real users (static tokens of the e2e API
//! server): self-approval is refused, a second person's approval works, and
//! an approved grant can only be narrowed until it is approved again.

use std::time::Duration;

use anyhow::ensure;
use cellule_e2e::{
    Env, cellule_api, eventually, in_namespace, install_crds, run_tool, user_client,
};
use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

fn grant(requested_by: &str, approved_by: Option<&str>) -> DynamicObject {
    let mut spec = json!({
        "poolRef": {"name": "paris"}, "workerId": "pc-7", "owner": "alice@example.com",
        "tiers": ["light"], "ttl": "24h", "requestedBy": requested_by,
    });
    if let Some(approver) = approved_by {
        spec["approvedBy"] = json!(approver);
    }
    serde_json::from_value(json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "WorkerGrant",
        "metadata": {"name": "laptop"}, "spec": spec,
    }))
    .unwrap()
}

fn message(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => other.to_string(),
    }
}

#[tokio::test]
async fn self_approval_is_refused_and_a_second_person_approves() {
    in_namespace("foureyes", |client: Client, ns: String| async move {
        install_crds(&client).await;
        let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
        let admission = cellule_e2e::repo_path("config/admission");
        run_tool(
            "kubectl",
            &["--kubeconfig", &kubeconfig, "apply", "--server-side", "--force-conflicts", "-k", admission.to_str().unwrap()],
            &[],
        )
        .await?;
        Api::<Namespace>::all(client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"cellule.ai/four-eyes": "enforced"}}})))
            .await?;
        // Both users may create and edit grants here, nothing more.
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "grant-editor"},
            "rules": [{"apiGroups": ["cellule.ai"], "resources": ["workergrants"], "verbs": ["get", "create", "patch", "update"]}]
        }))?;
        Api::<Role>::namespaced(client.clone(), &ns).create(&PostParams::default(), &role).await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "grant-editors"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "grant-editor"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]
        }))?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&PostParams::default(), &binding).await?;

        let alice = cellule_api(&user_client("alice").await, &ns, "WorkerGrant");
        let bob = cellule_api(&user_client("bob").await, &ns, "WorkerGrant");
        let pp = PostParams::default();

        // The policy is enforced once the API server has loaded it.
        let refused = eventually("the policy is in force", Duration::from_secs(30), || async {
            let m = message(alice.create(&PostParams { dry_run: true, ..Default::default() }, &grant("bob", None)).await);
            if m.contains("must be alice") { Ok(m) } else { Err(m) }
        })
        .await?;
        ensure!(refused.contains("spec.requestedBy must be alice"), "{refused}");
        let m = message(alice.create(&pp, &grant("alice", Some("bob"))).await);
        ensure!(m.contains("cannot be created approved"), "{m}");

        alice.create(&pp, &grant("alice", None)).await?;
        let approve = |approver: &str| json!({"spec": {"approvedBy": approver}});
        let m = message(alice.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("alice"))).await);
        ensure!(m.contains("requester") || m.contains("four-eyes"), "self-approval: {m}");
        let m = message(alice.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("bob"))).await);
        ensure!(m.contains("requester of a WorkerGrant cannot approve it"), "approving in bob's name: {m}");
        let m = message(bob.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("carol"))).await);
        ensure!(m.contains("spec.approvedBy must be bob"), "approving in carol's name: {m}");

        let approved = bob.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("bob"))).await?;
        ensure!(approved.data["spec"]["approvedBy"] == "bob", "{:?}", approved.data);

        // The approval binds the grant: widening it is refused...
        let patch = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
        for widen in [json!({"tiers": ["light", "heavy"]}), json!({"ttl": "48h"}), json!({"ttl": null, "expiresAt": "2099-01-01T00:00:00Z"})] {
            let m = message(alice.patch("laptop", &PatchParams::default(), &patch(widen.clone())).await);
            ensure!(m.contains("an approved grant can only be narrowed"), "widening {widen}: {m}");
        }
        let m = message(alice.patch("laptop", &PatchParams::default(), &patch(json!({"owner": "mallory@example.com"}))).await);
        ensure!(m.contains("owner cannot change while the grant is approved"), "owner change: {m}");
        // ...narrowing is not...
        alice.patch("laptop", &PatchParams::default(), &patch(json!({"ttl": "12h"}))).await?;
        // ...and widening takes a withdrawn approval and a second person again.
        alice
            .patch("laptop", &PatchParams::default(), &patch(json!({"approvedBy": null, "tiers": ["light", "heavy"]})))
            .await?;
        let m = message(alice.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("alice"))).await);
        ensure!(m.contains("requester") || m.contains("four-eyes"), "self re-approval: {m}");
        let m = message(bob.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("carol"))).await);
        ensure!(m.contains("spec.approvedBy must be bob"), "re-approval in carol's name: {m}");
        let approved = bob.patch("laptop", &PatchParams::default(), &Patch::Merge(approve("bob"))).await?;
        ensure!(approved.data["spec"]["tiers"] == json!(["light", "heavy"]), "{:?}", approved.data);
        Ok(())
    })
    .await;
}
