//! The agents' credentials: the bearer token Secret, made once, and the
//! server certificate Secret, issued and renewed from the operator's CA.
//! Shared by the cluster reconciler and the injection webhook.

use super::owned::{ours, ssa};
use super::render;
use crate::runtime::Error;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// How long until `at`; a second when it is past (never a busy loop).
pub fn until(at: jiff::Timestamp) -> Duration {
    let left = at.duration_since(jiff::Timestamp::now());
    Duration::try_from(left)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// Creates the agents' bearer token Secret once; an existing one is never
/// replaced (that would cut the controller off from running agents).
pub async fn ensure_agent_token(secrets: &Api<Secret>, meta: ObjectMeta) -> Result<(), Error> {
    let name = meta.name.clone().unwrap_or_default();
    if let Some(existing) = secrets.get_opt(&name).await? {
        return ours("Secret", &existing.metadata, &meta);
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    match secrets
        .create(
            &PostParams::default(),
            &render::agent_token_secret(meta, &token),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Issues the agents' server certificate for `dns` when it is missing, was
/// signed by another CA, or nears its expiry; returns when the current one
/// is due for renewal. Agents pick up the renewed files without a restart.
pub async fn ensure_agent_tls(
    client: &Client,
    secrets: &Api<Secret>,
    meta: ObjectMeta,
    dns: Vec<String>,
    ca: &crate::pki::Ca,
) -> Result<jiff::Timestamp, Error> {
    let name = meta.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    if let Some(s) = secrets.get_opt(&name).await? {
        ours("Secret", &s.metadata, &meta)?;
        let ann = s.metadata.annotations.unwrap_or_default();
        let stale = crate::pki::needs_reissue(
            ann.get(crate::pki::ANN_CA).map(String::as_str),
            ann.get(crate::pki::ANN_NOT_AFTER).map(String::as_str),
            ca,
            now,
        );
        let not_after = ann
            .get(crate::pki::ANN_NOT_AFTER)
            .and_then(|t| t.parse().ok());
        if let (false, Some(t)) = (stale, not_after) {
            return Ok(ca.renew_at(t));
        }
    }
    let ns = meta.namespace.clone().unwrap_or_default();
    let leaf = ca.server_cert(dns, now)?;
    let secret = render::agent_tls_secret(meta, &leaf, ca);
    ssa(client, &ns, &secret).await?;
    tracing::info!(secret = %name, namespace = %ns, not_after = %leaf.not_after, "issued the agents' certificate");
    Ok(ca.renew_at(leaf.not_after))
}
