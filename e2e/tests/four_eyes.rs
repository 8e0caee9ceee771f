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

/// A level-3 PeerTrust's handshake, well formed (admission checks the
/// form; the operator, not admission, checks the signatures).
fn peer_trust(requested_by: &str, level: i32, nonce: &str) -> DynamicObject {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let signature = |n: u8| STANDARD.encode([n; 64]);
    let key = cellule_operator::peer_trust::handshake::generate_key().1;
    serde_json::from_value(json!({
        "apiVersion": "cellule.ai/v1alpha1", "kind": "PeerTrust",
        "metadata": {"name": "lyon"},
        "spec": {
            "poolRef": {"name": "paris"}, "site": "lyon",
            "peerPool": {"namespace": "lyon-site", "name": "lyon"},
            "endpoint": {"host": "pool.lyon.example.com", "cidr": "10.30.0.0/24", "port": 8443},
            "publicKey": key, "trustLevel": level, "requestedBy": requested_by,
            "handshake": {
                "nonce": nonce, "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2026-12-01T00:00:00Z",
                "localSignature": signature(1), "peerSignature": signature(2),
            },
        },
    }))
    .unwrap()
}

/// Four-eyes enforced in `ns` (config/admission applied, the namespace
/// labelled), where alice and bob may create and edit PeerTrusts, and
/// nothing more; once the API server enforces the policy.
async fn peer_trust_editors(client: &Client, ns: &str) -> anyhow::Result<()> {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"cellule.ai/four-eyes": "enforced"}}})),
        )
        .await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "peer-editor"},
        "rules": [{"apiGroups": ["cellule.ai"], "resources": ["peertrusts"], "verbs": ["get", "create", "patch", "update"]}]
    }))?;
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "peer-editors"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peer-editor"},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    // The policy is enforced once the API server has loaded it.
    let alice = cellule_api(&user_client("alice").await, ns, "PeerTrust");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let refused = eventually(
        "the policy is in force",
        Duration::from_secs(30),
        || async {
            let m = message(
                alice
                    .create(&dry, &peer_trust("bob", 2, "nonce-0123456789abcdef"))
                    .await,
            );
            if m.contains("must be alice") {
                Ok(m)
            } else {
                Err(m)
            }
        },
    )
    .await?;
    ensure!(
        refused.contains("spec.requestedBy must be alice"),
        "{refused}"
    );
    Ok(())
}

async fn apply_admission() -> anyhow::Result<()> {
    let kubeconfig = Env::var("CELLULE_E2E_KUBECONFIG");
    let admission = cellule_e2e::repo_path("config/admission");
    run_tool(
        "kubectl",
        &[
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            admission.to_str().unwrap(),
        ],
        &[],
    )
    .await?;
    Ok(())
}

/// The four-eyes policy's refusals, by what they say.
const SECOND_PERSON: &str = "needs a second person";
const FROZEN_AT_3: &str = "cannot change (and none is created at 3)";

#[tokio::test]
async fn level_3_trust_in_a_peer_takes_a_second_person() {
    in_namespace("foureyes-peer", |client: Client, ns: String| async move {
        install_crds(&client).await;
        apply_admission().await?;
        peer_trust_editors(&client, &ns).await?;
        let alice = cellule_api(&user_client("alice").await, &ns, "PeerTrust");
        let bob = cellule_api(&user_client("bob").await, &ns, "PeerTrust");
        let pp = PostParams::default();
        let dry = PostParams { dry_run: true, ..Default::default() };
        let patch = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
        let pp_patch = PatchParams::default();

        // Nothing is created at level 3, "approved" or not.
        let mut approved = peer_trust("alice", 3, "nonce-0123456789abcdef");
        approved.data["spec"]["approvedBy"] = json!("bob");
        let m = message(alice.create(&dry, &approved).await);
        ensure!(m.contains(FROZEN_AT_3) || m.contains(SECOND_PERSON), "created at level 3: {m}");

        // Alice asks for the trust at level 2, without a handshake, then
        // adds it (naming herself again): both hers to make.
        let mut asked = peer_trust("alice", 2, "nonce-0123456789abcdef");
        let handshake = asked.data["spec"].as_object_mut().unwrap().remove("handshake").unwrap();
        alice.create(&pp, &asked).await?;
        alice.patch("lyon", &pp_patch, &patch(json!({"handshake": handshake}))).await?;
        // Bob changing what is trusted must name himself.
        let m = message(bob.patch("lyon", &pp_patch, &patch(json!({"handshake": {"nonce": "nonce-bob-0123456789"}}))).await);
        ensure!(m.contains("spec.requestedBy must be bob"), "bob changing the handshake in alice's name: {m}");
        // Nobody names someone else.
        let m = message(alice.patch("lyon", &pp_patch, &patch(json!({"requestedBy": "bob"}))).await);
        ensure!(m.contains("spec.requestedBy can only be set to alice"), "alice naming bob the requester: {m}");

        // Alice cannot raise it herself, however she words it.
        for raise in [json!({"trustLevel": 3}), json!({"trustLevel": 3, "approvedBy": "alice"}), json!({"trustLevel": 3, "approvedBy": "bob"})] {
            let m = message(alice.patch("lyon", &pp_patch, &patch(raise.clone())).await);
            ensure!(m.contains(SECOND_PERSON), "alice raising with {raise}: {m}");
        }
        // Bob raises it, naming himself, only.
        let m = message(bob.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3}))).await);
        ensure!(m.contains(SECOND_PERSON), "bob raising without naming himself: {m}");
        let m = message(bob.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3, "approvedBy": "carol"}))).await);
        ensure!(m.contains(SECOND_PERSON), "bob raising in carol's name: {m}");
        // Raising and changing the handshake at once is not a raise.
        let m = message(bob.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3, "approvedBy": "bob", "requestedBy": "bob", "handshake": {"peerSignature": SIGNATURE_3}}))).await);
        ensure!(m.contains(FROZEN_AT_3) || m.contains(SECOND_PERSON), "bob changing the handshake while raising: {m}");
        let raised = bob.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3, "approvedBy": "bob"}))).await?;
        ensure!(raised.data["spec"]["trustLevel"] == 3 && raised.data["spec"]["approvedBy"] == "bob", "{:?}", raised.data);

        // At level 3, what was approved is frozen, for both.
        let endpoint = json!({"host": "pool.lyon.example.com", "cidr": "10.31.0.0/24", "port": 8443});
        for (who, api) in [("alice", &alice), ("bob", &bob)] {
            for change in [
                json!({"handshake": {"nonce": "nonce-fedcba9876543210"}}),
                json!({"handshake": {"peerSignature": SIGNATURE_3}}),
                json!({"publicKey": cellule_operator::peer_trust::handshake::generate_key().1}),
                json!({"endpoint": endpoint}),
                json!({"site": "lyon-2"}),
                json!({"peerPool": {"namespace": "lyon-site", "name": "lyon-2"}}),
            ] {
                let mut change = change;
                change["requestedBy"] = json!(who);
                let m = message(api.patch("lyon", &pp_patch, &patch(change.clone())).await);
                ensure!(m.contains(FROZEN_AT_3), "{who} changing {change} at level 3: {m}");
            }
        }
        // Lowering is always allowed; then the change is made at 2, by bob
        // this time, and bob (now the requester) cannot raise it: alice can.
        alice.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 2}))).await?;
        bob.patch("lyon", &pp_patch, &patch(json!({"requestedBy": "bob", "handshake": {"nonce": "nonce-fedcba9876543210"}}))).await?;
        let m = message(bob.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3, "approvedBy": "bob"}))).await);
        ensure!(m.contains(SECOND_PERSON), "bob raising his own change: {m}");
        let raised = alice.patch("lyon", &pp_patch, &patch(json!({"trustLevel": 3, "approvedBy": "alice"}))).await?;
        ensure!(raised.data["spec"]["approvedBy"] == "alice" && raised.data["spec"]["requestedBy"] == "bob", "{:?}", raised.data);
        Ok(())
    })
    .await;
}

/// A PeerTrust made before its namespace enforced four-eyes (by GitOps,
/// say) has no requestedBy: alice cannot name someone else its requester
/// and then approve level 3 alone.
#[tokio::test]
async fn a_requester_named_after_the_fact_does_not_make_a_second_person() {
    in_namespace("foureyes-legacy", |client: Client, ns: String| async move {
        install_crds(&client).await;
        apply_admission().await?;
        let mut legacy = peer_trust("x", 2, "legacy-nonce-0123456789");
        legacy.data["spec"]
            .as_object_mut()
            .unwrap()
            .remove("requestedBy");
        cellule_api(&client, &ns, "PeerTrust")
            .create(&PostParams::default(), &legacy)
            .await?;
        peer_trust_editors(&client, &ns).await?;
        let alice = cellule_api(&user_client("alice").await, &ns, "PeerTrust");
        let bob = cellule_api(&user_client("bob").await, &ns, "PeerTrust");
        let patch = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
        let pp = PatchParams::default();
        let m = message(
            alice
                .patch(
                    "lyon",
                    &pp,
                    &patch(json!({"requestedBy": "bob", "trustLevel": 3, "approvedBy": "alice"})),
                )
                .await,
        );
        ensure!(
            m != "accepted",
            "alice approving alone a request she wrote in bob's name: {m}"
        );
        let m = message(
            alice
                .patch("lyon", &pp, &patch(json!({"requestedBy": "bob"})))
                .await,
        );
        ensure!(
            m.contains("spec.requestedBy can only be set to alice"),
            "alice naming bob the requester: {m}"
        );
        // Without any requester, nobody raises it...
        let m = message(
            bob.patch(
                "lyon",
                &pp,
                &patch(json!({"trustLevel": 3, "approvedBy": "bob"})),
            )
            .await,
        );
        ensure!(m.contains(SECOND_PERSON), "raised with no requester: {m}");
        // ...once alice names herself, bob can.
        alice
            .patch("lyon", &pp, &patch(json!({"requestedBy": "alice"})))
            .await?;
        let m = message(
            alice
                .patch(
                    "lyon",
                    &pp,
                    &patch(json!({"trustLevel": 3, "approvedBy": "alice"})),
                )
                .await,
        );
        ensure!(m.contains(SECOND_PERSON), "alice raising: {m}");
        bob.patch(
            "lyon",
            &pp,
            &patch(json!({"trustLevel": 3, "approvedBy": "bob"})),
        )
        .await?;
        Ok(())
    })
    .await;
}

const SIGNATURE_3: &str =
    "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAw==";
