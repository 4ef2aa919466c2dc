//! The sidecar injection webhook: a mutating admission webhook on its own
//! HTTPS port that adds the agent to Qdrant pods labelled
//! `qdrant.io/backup-agent: "true"` (see `inject`). Before it answers, the
//! workload's token and TLS Secrets exist, owned by its StatefulSet, so an
//! injected pod never waits for them. Anything that goes wrong admits the
//! pod unchanged with a warning: the webhook never stands between a user
//! and their Qdrant (its configuration says `failurePolicy: Ignore` too).

use crate::inject;
use crate::pki::Ca;
use axum::Json;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The path the API server posts AdmissionReviews of pods to.
pub const PATH: &str = "/mutate-pods";

#[derive(Clone)]
pub struct Webhook {
    pub client: kube::Client,
    pub ca: Arc<Ca>,
    /// The agent image injected pods get.
    pub agent_image: String,
    pub memory_budget_mib: u32,
    /// This installation (`<namespace>/<lease name>`): the Secrets it makes
    /// say so, and it renews only those.
    pub installation: String,
}

pub fn router(w: Webhook) -> axum::Router {
    axum::Router::new().route(PATH, post(review)).with_state(w)
}

async fn review(State(w): State<Webhook>, Json(review): Json<Value>) -> Json<Value> {
    let req = &review["request"];
    let uid = req["uid"].clone();
    let (patch, warning) = match admit(&w, req).await {
        Ok(Some(patch)) => (Some(patch), None),
        Ok(None) => (None, None),
        Err(why) => {
            // Recorded on the pod too: a backup of its StatefulSet then
            // says why the pod has no agent.
            let note = Value::Array(inject::skipped_patch(&req["object"], &why));
            tracing::warn!(
                namespace = req["namespace"].as_str().unwrap_or_default(),
                // A StatefulSet's pods are named before admission;
                // others may only have a generateName yet.
                pod = req["object"]["metadata"]["name"]
                    .as_str()
                    .or(req["object"]["metadata"]["generateName"].as_str())
                    .unwrap_or_default(),
                why,
                "admitted without the agent"
            );
            (
                Some(note),
                Some(format!("qdrant-operator: no backup agent injected: {why}")),
            )
        }
    };
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(p) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64(&serde_json::to_vec(&p).unwrap_or_default()));
    }
    if let Some(w) = warning {
        response["warnings"] = json!([w]);
    }
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// The patch for the pod under review, after making sure its workload's
/// Secrets exist.
async fn admit(w: &Webhook, req: &Value) -> Result<Option<Value>, String> {
    if req["kind"]["kind"] != "Pod" || req["operation"] != "CREATE" {
        return Ok(None);
    }
    let pod: Pod = serde_json::from_value(req["object"].clone())
        .map_err(|e| format!("unreadable pod: {e}"))?;
    let ns = req["namespace"]
        .as_str()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default")
        .to_string();
    let Some(plan) = inject::plan(&pod, &w.agent_image, w.memory_budget_mib)? else {
        return Ok(None);
    };
    // A dry run must have no side effects (the configuration says
    // NoneOnDryRun): the patch alone.
    if req["dryRun"] == true {
        return Ok(Some(Value::Array(plan.patch)));
    }
    let sts = Api::<StatefulSet>::namespaced(w.client.clone(), &ns)
        .get(&plan.workload)
        .await
        .map_err(|e| format!("StatefulSet {ns}/{}: {e}", plan.workload))?;
    // Secrets are made only for a StatefulSet that asks for the agent and
    // owns this very pod: a review that is not the API server's (the
    // webhook does not authenticate its caller) cannot have Secrets made
    // for workloads that never wanted them.
    asks_for_agent(&sts, &pod)?;
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &ns);
    crate::cluster::ensure_agent_token(
        &secrets,
        secret_meta(&sts, inject::token_secret(&plan.workload), &w.installation),
    )
    .await
    .map_err(|e| format!("the agents' token Secret: {e}"))?;
    ensure_tls(&w.client, &sts, &w.ca, &w.installation).await?;
    Ok(Some(Value::Array(plan.patch)))
}

/// A Secret of the operator's for the agents of `sts`, owned by it, and
/// marked with the installation that made it.
fn secret_meta(sts: &StatefulSet, name: String, installation: &str) -> ObjectMeta {
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        uid: sts.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    ObjectMeta {
        name: Some(name),
        namespace: sts.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "qdrant-operator".to_string(),
        )])),
        owner_references: Some(vec![owner]),
        annotations: Some(BTreeMap::from([(
            crate::runtime::ANN_INSTALLATION.to_string(),
            installation.to_string(),
        )])),
        ..Default::default()
    }
}

/// Issues the agent certificate of `sts`'s pods when it is missing or due;
/// returns when it is due next.
async fn ensure_tls(
    client: &kube::Client,
    sts: &StatefulSet,
    ca: &Ca,
    installation: &str,
) -> Result<jiff::Timestamp, String> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let headless = sts
        .spec
        .as_ref()
        .map(|s| s.service_name.clone().unwrap_or_default())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("StatefulSet {ns}/{name} names no serviceName"))?;
    crate::cluster::ensure_agent_tls(
        client,
        &Api::namespaced(client.clone(), &ns),
        secret_meta(sts, inject::tls_secret(&name), installation),
        crate::pki::agent_dns_names(&headless, &ns),
        ca,
    )
    .await
    .map_err(|e| format!("the agents' TLS Secret: {e}"))
}

/// Renews the agent certificates of the StatefulSets the webhook injected,
/// wherever they run: a pod is admitted rarely, certificates expire on
/// their own schedule. (A QdrantCluster's are its reconcile's.) Only this
/// installation's: marked as made by it, or, from before there was a
/// mark, issued by its CA. Returns when the next one is due.
pub async fn renew_injected(
    client: &kube::Client,
    ca: &Ca,
    installation: &str,
) -> Result<Option<jiff::Timestamp>, String> {
    let lp = kube::api::ListParams::default()
        .labels("app.kubernetes.io/managed-by=qdrant-operator")
        .fields("type=kubernetes.io/tls");
    let secrets = Api::<Secret>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| format!("listing the agents' TLS Secrets: {e}"))?;
    let mut next: Option<jiff::Timestamp> = None;
    for s in secrets.items {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let ann = s.metadata.annotations.clone().unwrap_or_default();
        let ours = match ann.get(crate::runtime::ANN_INSTALLATION) {
            Some(by) => by == installation,
            None => ann.get(crate::pki::ANN_CA) == Some(&ca.fingerprint()),
        };
        if !ours {
            continue;
        }
        let Some(owner) = s.metadata.owner_references.iter().flatten().find(|o| {
            o.kind == "StatefulSet"
                && s.metadata.name.as_deref() == Some(inject::tls_secret(&o.name).as_str())
        }) else {
            continue;
        };
        // A StatefulSet gone, or another of the same name: the garbage
        // collector removes this Secret, nothing to renew.
        let sts = match Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get_opt(&owner.name)
            .await
        {
            Ok(Some(sts)) if sts.metadata.uid.as_deref() == Some(owner.uid.as_str()) => sts,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(namespace = %ns, statefulset = %owner.name, error = %e, "cannot read the StatefulSet whose agents' certificate may need renewal");
                continue;
            }
        };
        match ensure_tls(client, &sts, ca, installation).await {
            Ok(at) => next = Some(next.map_or(at, |n| n.min(at))),
            Err(e) => {
                tracing::warn!(namespace = %ns, statefulset = %owner.name, error = %e, "could not renew the agents' certificate")
            }
        }
    }
    Ok(next)
}

/// Keeps the injected workloads' agent certificates renewed, for as long
/// as the operator leads: looks again when the next one is due, and often
/// enough to find one the webhook (of any replica) issued meanwhile in time
/// for its renewal: a quarter of the renewal window, at most ten minutes.
pub async fn keep_renewed(client: kube::Client, ca: Arc<Ca>, installation: String) {
    let often = Duration::try_from(ca.validity.renew_before() / 4)
        .unwrap_or_default()
        .clamp(Duration::from_secs(5), Duration::from_secs(600));
    loop {
        let wait = match renew_injected(&client, &ca, &installation).await {
            Ok(Some(at)) => crate::cluster::until(at),
            Ok(None) => often,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the agents' certificates");
                Duration::from_secs(30)
            }
        };
        tokio::time::sleep(wait.min(often)).await;
    }
}

/// Whether `sts` asks for the agent in its pod template and is the owner
/// (by uid) of `pod`; `Err` says which is not so.
fn asks_for_agent(sts: &StatefulSet, pod: &Pod) -> Result<(), String> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let labelled = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref()?.labels.as_ref())
        .and_then(|l| l.get(inject::OPT_IN))
        .is_some_and(|v| v == "true");
    if !labelled {
        return Err(format!(
            "the pod template of StatefulSet {name} does not carry {}: \"true\"",
            inject::OPT_IN
        ));
    }
    let owned = pod.metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "StatefulSet" && o.name == name && Some(&o.uid) == sts.metadata.uid.as_ref()
    });
    if !owned {
        return Err(format!("the pod is not owned by StatefulSet {name}"));
    }
    Ok(())
}

/// Standard base64, as AdmissionReview's `patch` and a `caBundle` want it.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The name of the webhook in its MutatingWebhookConfiguration.
pub const NAME: &str = "agent.qdrant.io";

/// Sets the caBundle of the webhook configuration `config` to the operator's
/// CA (a no-op write when it is set already). A missing configuration (the webhook registered some other way) or a
/// refusal is logged: injection then waits for it, nothing else does.
pub async fn trust(client: &kube::Client, config: &str, ca: &Ca) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Patch, PatchParams};
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let patch = json!({"webhooks": [{"name": NAME,
        "clientConfig": {"caBundle": base64(ca.cert_pem.as_bytes())}}]});
    match api
        .patch(config, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => tracing::debug!(config, "webhook configuration trusts the operator's CA"),
        Err(e) => {
            tracing::warn!(config, error = %e, "could not set the webhook's caBundle; pods are admitted without the agent until it is set")
        }
    }
}

/// A TLS acceptor with a fresh certificate from `ca` for `hosts`, and when
/// that certificate is due for renewal.
fn acceptor(
    ca: &Ca,
    hosts: &[String],
) -> Result<(tokio_rustls::TlsAcceptor, jiff::Timestamp), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let leaf = ca
        .server_cert(hosts.to_vec(), jiff::Timestamp::now())
        .map_err(|e| format!("webhook certificate: {e}"))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("webhook certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .map_err(|e| format!("webhook key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("webhook TLS: {e}"))?;
    let renew = ca.renew_at(leaf.not_after);
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), renew))
}

/// How long a client has for its TLS handshake, and then for each request's
/// headers: a connection that sends nothing is closed, not kept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives: an admission review takes milliseconds,
/// and the API server opens a new connection when it needs one.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections served at once; more are closed at once, so thousands of
/// idle ones cannot exhaust the operator's memory.
pub const MAX_CONNECTIONS: usize = 1024;

/// The webhook's bound listener: the operator reports ready only once it
/// exists, so a pod admitted during a rollout is never missed.
pub struct Listening {
    listener: tokio::net::TcpListener,
    hosts: Vec<String>,
    w: Webhook,
}

/// Binds the webhook's listener on `listen`.
pub async fn bind(listen: SocketAddr, hosts: Vec<String>, w: Webhook) -> Result<Listening, String> {
    // The certificate is checked here too, so a bad one fails before ready.
    acceptor(&w.ca, &hosts)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("webhook listen on {listen}: {e}"))?;
    Ok(Listening { listener, hosts, w })
}

impl Listening {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves the webhook over HTTPS with a certificate from the operator's
    /// CA for its hosts (the Service's DNS names, or an address), issued
    /// again in its last days, so a long-running operator never serves an
    /// expired one.
    pub async fn run(self) -> Result<(), String> {
        let Listening { listener, hosts, w } = self;
        let (mut tls, mut renew) = acceptor(&w.ca, &hosts)?;
        tracing::info!(listen = ?listener.local_addr().ok(), "injection webhook serving");
        let app = router(w.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "webhook connections at their limit; closing a new one"
                );
                continue;
            };
            if jiff::Timestamp::now() >= renew {
                match acceptor(&w.ca, &hosts) {
                    Ok((a, r)) => (tls, renew) = (a, r),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the webhook's certificate")
                    }
                }
            }
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_made_only_for_a_statefulset_that_asks_and_owns_the_pod() {
        use k8s_openapi::api::apps::v1::StatefulSet;
        use k8s_openapi::api::core::v1::Pod;
        let sts = |labels: &str| -> StatefulSet {
            serde_yaml::from_str(&format!(
                "metadata: {{name: qdrant, uid: u-1}}\nspec:\n  serviceName: h\n  selector: {{}}\n\
                 \x20 template: {{metadata: {{labels: {{{labels}}}}}}}\n"
            ))
            .unwrap()
        };
        let pod = |uid: &str| -> Pod {
            serde_yaml::from_str(&format!(
                "metadata: {{name: qdrant-0, ownerReferences: [{{apiVersion: apps/v1, kind: StatefulSet, name: qdrant, uid: {uid}}}]}}\n"
            ))
            .unwrap()
        };
        let asks = sts("qdrant.io/backup-agent: \"true\"");
        assert_eq!(super::asks_for_agent(&asks, &pod("u-1")), Ok(()));
        assert!(
            super::asks_for_agent(&asks, &pod("u-other"))
                .unwrap_err()
                .contains("not owned")
        );
        assert!(
            super::asks_for_agent(&sts("app: qdrant"), &pod("u-1"))
                .unwrap_err()
                .contains("does not carry qdrant.io/backup-agent")
        );
    }

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"[{\"op\":1}]"), "W3sib3AiOjF9XQ==");
    }
}
