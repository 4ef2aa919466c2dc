//! `qdrant-operator`: the controller binary.

use clap::Parser;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::PostParams;
use kube::api::{Api, ListParams};
use qdrant_operator::cluster::render;
use qdrant_operator::crd::QdrantCluster;
use qdrant_operator::pki::{CA_SECRET, Ca};
use qdrant_operator::runtime::{Context, http, lease, metrics::Metrics};
use qdrant_operator::{backup, cluster, restore, schedule};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "qdrant-operator",
    version,
    about = "Kubernetes operator for Qdrant"
)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_listen: std::net::SocketAddr,
    /// Run without leader election (only one replica may run then).
    #[arg(long)]
    no_leader_election: bool,
    /// Lease used for leader election, in the operator's namespace.
    #[arg(long, default_value = "qdrant-operator-leader")]
    lease_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "qdrant-operator")]
    namespace: String,
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// text or json.
    #[arg(long, default_value = "json")]
    log_format: String,
    /// Qdrant's image repository for clusters without `spec.image` (the tag
    /// is their `spec.version`), e.g. a mirror in your own registry.
    #[arg(long, env = "QDRANT_IMAGE", default_value = render::DEFAULT_IMAGE)]
    qdrant_image: String,
    /// The agent image for clusters without `spec.agent.image`.
    #[arg(long, env = "AGENT_IMAGE", default_value_t = render::default_agent_image())]
    agent_image: String,
    /// Serve the sidecar injection webhook over HTTPS on this address (e.g.
    /// 0.0.0.0:9443); off when not given.
    #[arg(long)]
    webhook_listen: Option<std::net::SocketAddr>,
    /// Names (DNS or IP) the webhook's certificate is for, comma-separated
    /// [default: qdrant-operator-webhook.<namespace>.svc].
    #[arg(long, value_delimiter = ',')]
    webhook_hosts: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps
    /// set to its CA, so the API server trusts the webhook.
    #[arg(long, default_value = "qdrant-operator-agent-injector")]
    webhook_config: String,
    /// Let backups and restores without storage.s3.credentialsSecretRef use
    /// the agents' pod or node cloud identity (IRSA, instance profile),
    /// which every tenant with pods on that node shares.
    #[arg(long, env = "ALLOW_AMBIENT_CREDENTIALS")]
    allow_ambient_credentials: bool,
    /// Let backups and restores use an http:// S3 endpoint, which carries
    /// every byte in clear text.
    #[arg(long, env = "ALLOW_INSECURE_ENDPOINTS")]
    allow_insecure_endpoints: bool,
    /// How long the certificates of mutual TLS between the operator and
    /// the agents live (e.g. 90d, 12h); they are issued again in their last
    /// 30 days, or in the second half of a shorter life, and agents pick
    /// up renewed files without a restart.
    #[arg(long, env = "AGENT_CERT_VALIDITY", default_value = "365d")]
    agent_cert_validity: qdrant_operator::pki::Validity,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        fmt.json().init()
    } else {
        fmt.init()
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let state = Arc::new(qdrant_operator::runtime::state::StateMetrics::default());
    registry.register_collector(Box::new(state.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let shared = http::Shared {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.http_listen).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, http::router(shared)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    // The operator never installs its own CRDs: say how when they are missing.
    if let Err(e) = Api::<QdrantCluster>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
    {
        return Err(format!(
            "cannot list QdrantClusters ({e}); are the CRDs installed? kubectl apply -k manifests/"
        )
        .into());
    }

    let installation = format!("{}/{}", args.namespace, args.lease_name);
    // Before leadership: every replica answers admission requests.
    let ca = Arc::new(
        load_or_create_ca(&client, &args.namespace)
            .await?
            .with_validity(args.agent_cert_validity),
    );
    if let Some(listen) = args.webhook_listen {
        let hosts = if args.webhook_hosts.is_empty() {
            let svc = format!("qdrant-operator-webhook.{}.svc", args.namespace);
            vec![svc.clone(), format!("{svc}.cluster.local")]
        } else {
            args.webhook_hosts.clone()
        };
        let w = qdrant_operator::webhook::Webhook {
            client: client.clone(),
            ca: ca.clone(),
            agent_image: args.agent_image.clone(),
            memory_budget_mib: qdrant_operator::inject::MEMORY_BUDGET_MIB,
            installation: installation.clone(),
        };
        let webhook = qdrant_operator::webhook::bind(listen, hosts, w).await?;
        tokio::spawn(async move {
            if let Err(e) = webhook.run().await {
                tracing::error!(error = %e, "injection webhook stopped");
            }
        });
        // Again every few minutes: a configuration re-created (a reinstall)
        // comes without the bundle.
        let (c, config, trusted) = (client.clone(), args.webhook_config.clone(), ca.clone());
        tokio::spawn(async move {
            loop {
                qdrant_operator::webhook::trust(&c, &config, &trusted).await;
                tokio::time::sleep(std::time::Duration::from_secs(300)).await;
            }
        });
    }
    // Ready once every listener it runs serves: the webhook's is bound.
    ready.store(true, Ordering::Relaxed);
    let leadership = if args.no_leader_election {
        None
    } else {
        let me = args
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("qdrant-operator-{:08x}", rand::random::<u32>()));
        // Its own client, so renewals never queue behind the reconcilers'
        // requests: a burst of work must not cost the lease.
        let own = Client::try_default().await?;
        Some(
            lease::acquire(
                Api::<Lease>::namespaced(own, &args.namespace),
                args.lease_name.clone(),
                me,
            )
            .await,
        )
    };
    tokio::spawn(qdrant_operator::webhook::keep_renewed(
        client.clone(),
        ca.clone(),
        installation.clone(),
    ));
    let identity = Arc::new(qdrant_operator::agent_client::ClientIdentity::issue(
        ca.clone(),
    )?);
    let mut ctx = Context::new(client, ca, identity, metrics);
    ctx.state = state.clone();
    ctx.leadership = leadership;
    ctx.installation = installation;
    ctx.storage_policy = qdrant_operator::agents::StoragePolicy {
        ambient_credentials: args.allow_ambient_credentials,
        insecure_endpoints: args.allow_insecure_endpoints,
    };
    ctx.images = render::Images {
        qdrant: args.qdrant_image,
        agent: args.agent_image,
    };
    let ctx = Arc::new(ctx);
    tracing::info!(
        "reconciling QdrantClusters, QdrantBackups, QdrantRestores and QdrantBackupSchedules"
    );
    tokio::join!(
        cluster::run(ctx.clone()),
        backup::run(ctx.clone()),
        restore::run(ctx.clone()),
        schedule::run(ctx),
    );
    Ok(())
}

/// The operator's CA from its Secret in the operator's namespace, created on
/// first start. Two replicas starting at once both end up with the same CA:
/// the loser of the create reads the winner's.
async fn load_or_create_ca(client: &Client, ns: &str) -> Result<Ca, Box<dyn std::error::Error>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(CA_SECRET).await? {
            let data = s.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .ok_or_else(|| format!("Secret {ns}/{CA_SECRET} lacks {k}"))
            };
            return Ok(Ca::load(&field("ca.crt")?, &field("ca.key")?)?);
        }
        let ca = Ca::generate()?;
        let mut secret = Secret {
            data: Some(
                [("ca.crt", ca.cert_pem.clone()), ("ca.key", ca.key_pem())]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        secret.metadata.name = Some(CA_SECRET.into());
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = CA_SECRET, "created the operator's CA");
                return Ok(ca);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err("could not create or read the operator's CA Secret".into())
}
