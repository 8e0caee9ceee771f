//! `verify-token`: a token checked as the pool checks it, with the pool's
//! JWKS, policy and revocation lists as they are in the cluster now.

use anyhow::Context as _;
use cellule_operator::{names, tokens};
use cellule_verifier::revocations::{POOL_LABEL, RevocationList, Revoked};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;

use crate::{
    cli::VerifyTokenArgs,
    cluster::{Ctx, api_error},
};

/// What the pool's verifiers read: the JWKS, the policy and the union of
/// its revocation lists.
pub struct PoolKeys {
    pub jwks: jsonwebtoken::jwk::JwkSet,
    pub policy: tokens::VerifierPolicy,
    pub revoked: Revoked,
}

/// The verification data of `pool`, from the `<pool>-jwks` ConfigMap and
/// the RevocationLists labelled with the pool (only those whose
/// `spec.pool` is it, as the verifiers take them).
pub async fn pool_keys(ctx: &Ctx, pool: &str) -> anyhow::Result<PoolKeys> {
    let map_name = names::jwks(pool);
    let map = ctx
        .api::<ConfigMap>()
        .get_opt(&map_name)
        .await
        .map_err(|e| api_error(e, &format!("reading ConfigMap {map_name}")))?
        .with_context(|| {
            format!(
                "Pool {pool} has no ConfigMap {map_name} in namespace {ns} (its JWKS): check the pool exists and is Ready with `kubectl cellule status {pool} -n {ns}`",
                ns = ctx.namespace
            )
        })?;
    let data = map.data.unwrap_or_default();
    let field = |key: &str| {
        data.get(key).with_context(|| {
            format!("ConfigMap {map_name} has no key {key}: is the operator running?")
        })
    };
    let jwks = serde_json::from_str(field(tokens::JWKS_KEY)?).context("parsing the pool's JWKS")?;
    let policy = serde_json::from_str(field(tokens::POLICY_KEY)?)
        .context("parsing the pool's verifier policy")?;
    let lists = ctx
        .api::<RevocationList>()
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
        .map_err(|e| api_error(e, "reading the pool's revocation lists"))?;
    let mut revoked = Revoked::default();
    for list in lists.items.iter().filter(|l| l.spec.pool == pool) {
        revoked.apply(list);
    }
    Ok(PoolKeys {
        jwks,
        policy,
        revoked,
    })
}

pub async fn run(ctx: &Ctx, args: VerifyTokenArgs) -> anyhow::Result<()> {
    let keys = pool_keys(ctx, &args.pool).await?;
    let mut token = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
        .context("reading the token from stdin")?;
    anyhow::ensure!(
        !token.trim().is_empty(),
        "no token on stdin: pipe it in, e.g. `kubectl get secret GRANT-token -o jsonpath='{{.data.token}}' | base64 -d | kubectl cellule verify-token --pool {}`",
        args.pool
    );
    let verdict = tokens::verify(
        token.trim(),
        &keys.jwks,
        &keys.revoked,
        &keys.policy,
        jiff::Timestamp::now().as_second(),
    );
    match verdict {
        Ok(claims) => {
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(())
        }
        Err(refused) => {
            // The error names the reason (key, revocation, expiry), never
            // the token.
            eprintln!("refused: {refused}");
            std::process::exit(1);
        }
    }
}
