//! A cluster's agents as the backup and restore reconcilers see them: the
//! ready pods, a connection to each (mutual TLS and the cluster's token),
//! what each reports (`Status`, `GetPlacement`), and the storage target
//! built from a resource's S3 settings and credentials Secret.

use crate::agent_client::{self, AgentTls, Client};
use crate::crd::S3Storage;
use crate::crd::{AgentTask, AgentTaskState};
use crate::names;
use crate::plan::AgentPod;
use crate::runtime::Halt;
use crate::runtime::Wait;
use crate::target::Target;
use crate::tasks::Observed;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use qdrant_agent_proto::v1::{
    self as pb, GetPlacementRequest, GetPlacementResponse, S3Credentials, StatusRequest,
    StorageTarget, TaskPhase, TaskRef,
};
use std::time::Duration;

/// An agent's gRPC error as (reason, message): the reason the agent gave,
/// or for errors that are not the agent's (transport, auth) the gRPC code.
pub fn status_reason(s: &tonic::Status) -> (String, String) {
    let reason =
        qdrant_agent_proto::errors::reason(s).unwrap_or_else(|| format!("Agent{:?}", s.code()));
    (reason, s.message().trim().to_string())
}

pub use crate::settings::StoragePolicy;

/// Whether an operation may start on `s3` under `policy`: the refusal's
/// reason and message, which says how to opt in.
pub fn storage_allowed(
    s3: &S3Storage,
    policy: &StoragePolicy,
) -> Result<(), (&'static str, String)> {
    if s3.credentials_secret_ref.is_none() && !policy.ambient_credentials {
        return Err((
            "AmbientCredentialsRefused",
            "storage.s3 has no credentialsSecretRef, so the agents would use their pod's or node's cloud identity, which every tenant on the node shares: set credentialsSecretRef to a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or have the operator's administrator allow it (flag --allow-ambient-credentials, Helm value storage.allowAmbientCredentials=true)".into(),
        ));
    }
    if let Some(e) = s3.endpoint.as_deref().filter(|e| e.starts_with("http://"))
        && !policy.insecure_endpoints
    {
        return Err((
            "InsecureEndpointRefused",
            format!(
                "storage.s3.endpoint {e} is plain http: backups and requests would cross the network in clear text; use https://, or have the operator's administrator allow it (flag --allow-insecure-endpoints, Helm value storage.allowInsecureEndpoints=true)"
            ),
        ));
    }
    Ok(())
}

/// The storage target the agents get: `s3://bucket/<prefix>` with the
/// endpoint, region, encryption and the credentials from the Secret (same
/// namespace). The credentials go to the agents only, never to status,
/// events or logs.
pub async fn storage_target(
    client: &kube::Client,
    ns: &str,
    s3: &S3Storage,
    prefix: &str,
) -> Result<StorageTarget, Halt> {
    let credentials = match &s3.credentials_secret_ref {
        None => None,
        Some(r) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let Some(secret) = secrets.get_opt(&r.name).await? else {
                return Err(Halt::Wait {
                    reason: Wait::SecretNotFound,
                    message: format!(
                        "Secret {ns}/{} (storage.s3.credentialsSecretRef) not found",
                        r.name
                    ),
                });
            };
            let data = secret.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                    .filter(|v| !v.is_empty())
            };
            let (Some(id), Some(key)) =
                (field("AWS_ACCESS_KEY_ID"), field("AWS_SECRET_ACCESS_KEY"))
            else {
                return Err(Halt::fail(
                    "SecretInvalid",
                    format!(
                        "Secret {ns}/{} needs the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                        r.name
                    ),
                ));
            };
            Some(S3Credentials {
                access_key_id: id,
                secret_access_key: key,
                session_token: field("AWS_SESSION_TOKEN").unwrap_or_default(),
            })
        }
    };
    Ok(StorageTarget {
        url: format!("s3://{}/{}", s3.bucket, prefix.trim_matches('/')),
        s3_endpoint: s3.endpoint.clone().unwrap_or_default(),
        s3_region: s3.region.clone().unwrap_or_default(),
        credentials,
        sse: s3
            .sse
            .map(|s| match s {
                crate::crd::ServerSideEncryption::Aes256 => "AES256",
                crate::crd::ServerSideEncryption::AwsKms => "aws:kms",
            })
            .unwrap_or_default()
            .to_string(),
        sse_kms_key_id: s3.sse_kms_key_id.clone().unwrap_or_default(),
        virtual_hosted_style: false,
    })
}

/// The request that starts a task: starting is idempotent per task id, so
/// it is also how a task the agent does not know yet gets started.
#[derive(Debug, Clone)]
pub enum Start {
    Backup(pb::StartBackupRequest),
    Restore(pb::StartRestoreRequest),
    Verify(pb::StartVerifyRequest),
    Drain(pb::StartDrainRequest),
}

impl Start {
    pub async fn send(self, c: &mut Client) -> Result<pb::Task, tonic::Status> {
        let r = match self {
            Start::Backup(r) => c.start_backup(r).await?,
            Start::Restore(r) => c.start_restore(r).await?,
            Start::Verify(r) => c.start_verify(r).await?,
            Start::Drain(r) => c.start_drain(r).await?,
        };
        Ok(r.into_inner())
    }
}

/// A ready pod of the cluster and its IP.
#[derive(Debug, Clone)]
pub struct PodAddr {
    pub name: String,
    pub ip: String,
}

/// What one agent reported.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pod: String,
    pub instance_id: String,
    pub qdrant_version: String,
    pub placement: GetPlacementResponse,
}

/// The agents of one cluster.
pub struct Agents {
    tls: AgentTls,
    token: Option<String>,
    port: i32,
    /// `<headless>.<namespace>.svc`: the agents' certificates name
    /// `<pod>.` under it.
    domain: String,
    pub pods: Vec<PodAddr>,
    /// Why pods of the target have no agent to ask, one line each.
    pub without_agent: Vec<String>,
}

impl Agents {
    /// The target's ready pods that run the agent, and the token to reach
    /// them.
    pub async fn of(client: &kube::Client, target: &Target, tls: &AgentTls) -> Result<Self, Halt> {
        let ns = &target.namespace;
        let reach = &target.reach;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut ready = Vec::new();
        let mut without_agent = Vec::new();
        let live = pods
            .list(&ListParams::default().labels(&reach.selector))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && reach.owns(p));
        for p in live {
            let name = p.name_any();
            let has_agent = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|c| c.name == reach.container);
            if !has_agent {
                let skipped = p.annotations().get(crate::names::SKIPPED);
                without_agent.push(target.missing_agent(&name, skipped.map(String::as_str)));
                continue;
            }
            let Some(status) = p.status.as_ref() else {
                continue;
            };
            let is_ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty())
                && is_ready
            {
                ready.push(PodAddr { name, ip });
            }
        }
        ready.sort_by(|a, b| a.name.cmp(&b.name));
        without_agent.sort();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let Some(secret) = secrets.get_opt(&reach.token_secret).await? else {
            // Pods without the agent are why there is no token yet (the
            // injection webhook creates it with the first agent it adds).
            if !without_agent.is_empty() {
                return Err(agent_missing(&without_agent));
            }
            return Err(Halt::Wait {
                reason: Wait::AgentTokenMissing,
                message: format!(
                    "Secret {ns}/{} (the agents' token) does not exist yet",
                    reach.token_secret
                ),
            });
        };
        let token = secret
            .data
            .unwrap_or_default()
            .get(names::AGENT_TOKEN_KEY)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
        Ok(Self {
            tls: tls.clone(),
            token,
            port: reach.port,
            domain: reach.domain.clone(),
            pods: ready,
            without_agent,
        })
    }

    /// A new operation needs every pod's agent: a pod without one is said,
    /// with how to give it one.
    pub fn every_pod_has_one(&self) -> Result<(), Halt> {
        if self.without_agent.is_empty() {
            return Ok(());
        }
        Err(agent_missing(&self.without_agent))
    }

    pub fn has(&self, pod: &str) -> bool {
        self.pods.iter().any(|p| p.name == pod)
    }

    /// A client for the agent of `pod`; the error says why it is out of reach.
    pub async fn connect(&self, pod: &str) -> Result<Client, String> {
        let Some(p) = self.pods.iter().find(|p| p.name == pod) else {
            return Err(format!("pod {pod} is gone or not ready"));
        };
        let addr = if p.ip.contains(':') {
            format!("[{}]:{}", p.ip, self.port)
        } else {
            format!("{}:{}", p.ip, self.port)
        };
        agent_client::connect(
            &addr,
            &format!("{pod}.{}", self.domain),
            &self.tls,
            self.token.as_deref(),
        )
        .await
        .map_err(|e| format!("agent of pod {pod} unreachable: {e}"))
    }

    /// A client for any agent that answers, for requests any of them can
    /// serve (manifests, deletion).
    pub async fn any(&self) -> Result<Client, Halt> {
        let mut why = Vec::new();
        for p in &self.pods {
            match self.connect(&p.name).await {
                Ok(c) => return Ok(c),
                Err(e) => why.push(e),
            }
        }
        Err(Halt::Wait {
            reason: Wait::AgentUnreachable,
            message: if why.is_empty() {
                "the cluster has no ready pod".into()
            } else {
                why.join("; ")
            },
        })
    }

    /// Asks every agent for its instance, Qdrant version and shard
    /// placement. Agents out of reach are listed, not fatal; an error from
    /// Qdrant about the request (e.g. an unknown collection) is.
    pub async fn survey(&self, collections: &[String]) -> Result<(Vec<Seen>, Vec<String>), Halt> {
        let asks = self.pods.iter().map(|p| self.ask(&p.name, collections));
        let mut seen = Vec::new();
        let mut unreachable = Vec::new();
        for r in futures::future::join_all(asks).await {
            match r {
                Ok(s) => seen.push(s),
                Err(Ask::Unreachable(why)) => unreachable.push(why),
                Err(Ask::Refused(reason, message)) => return Err(Halt::fail(reason, message)),
            }
        }
        Ok((seen, unreachable))
    }

    /// [`Agents::survey`], waiting while no agent of `cluster` answers at all.
    pub async fn survey_some(
        &self,
        collections: &[String],
        cluster: &str,
    ) -> Result<(Vec<Seen>, Vec<String>), Halt> {
        let (seen, unreachable) = self.survey(collections).await?;
        if seen.is_empty() {
            return Err(Halt::wait(
                Wait::AgentUnreachable,
                if unreachable.is_empty() {
                    format!("cluster {cluster} has no ready pod")
                } else {
                    unreachable.join("; ")
                },
            ));
        }
        Ok((seen, unreachable))
    }

    /// Starts each task on its pod's agent. A task that does not start now
    /// is started by the next reconcile, which finds it unknown to a same
    /// agent instance (see [`Agents::observe`]).
    pub async fn start_each(&self, starts: Vec<(&AgentTask, Start)>) {
        for (t, req) in starts {
            let started = match self.connect(&t.pod).await {
                Ok(mut c) => req
                    .send(&mut c)
                    .await
                    .map(|_| ())
                    .map_err(|s| status_reason(&s).1),
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                tracing::warn!(task = %t.task_id, pod = %t.pod, error = %e, "could not start a task; the next reconcile retries");
            }
        }
    }

    async fn ask(&self, pod: &str, collections: &[String]) -> Result<Seen, Ask> {
        let mut c = self.connect(pod).await.map_err(Ask::Unreachable)?;
        let unreachable =
            |s: tonic::Status| Ask::Unreachable(format!("agent of pod {pod}: {}", s.message()));
        let st = c
            .status(StatusRequest {})
            .await
            .map_err(unreachable)?
            .into_inner();
        if !st.qdrant_reachable {
            return Err(Ask::Unreachable(format!(
                "Qdrant of pod {pod} does not answer its agent: {}",
                st.qdrant_error
            )));
        }
        let placement = c
            .get_placement(GetPlacementRequest {
                collections: collections.to_vec(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                    let (reason, message) = status_reason(&s);
                    Ask::Refused(reason, message)
                }
                _ => unreachable(s),
            })?
            .into_inner();
        Ok(Seen {
            pod: pod.to_string(),
            instance_id: st.instance_id,
            qdrant_version: st.qdrant_version,
            placement,
        })
    }
}

fn agent_missing(why: &[String]) -> Halt {
    Halt::wait(Wait::AgentMissing, why.join("; "))
}

enum Ask {
    Unreachable(String),
    Refused(String, String),
}

/// Each surveyed pod's agent instance.
pub fn instances(seen: &[Seen]) -> std::collections::HashMap<String, String> {
    seen.iter()
        .map(|s| (s.pod.clone(), s.instance_id.clone()))
        .collect()
}

/// The pods as planning input: each with its Qdrant peer id, as its own
/// Qdrant reports it.
pub fn agent_pods(seen: &[Seen]) -> Vec<AgentPod> {
    seen.iter()
        .map(|s| AgentPod {
            name: s.pod.clone(),
            peer_id: s.placement.peer_id,
        })
        .collect()
}

pub fn is_terminal(t: &pb::Task) -> bool {
    matches!(
        t.phase(),
        TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
    )
}

impl Agents {
    /// Follows one task for up to `window`: the task as last seen, or why
    /// it is lost. A task its agent does not know is started with `start`
    /// if the agent is still the instance it was planned on (the controller
    /// stopped between writing the plan and starting the task); another
    /// instance means the agent restarted and the task is gone.
    pub async fn observe(&self, t: &AgentTask, window: Duration, start: Start) -> Observed {
        let lost =
            |s: tonic::Status| Observed::Lost(format!("agent of pod {}: {}", t.pod, s.message()));
        let mut c = match self.connect(&t.pod).await {
            Ok(c) => c,
            Err(why) => return Observed::Lost(why),
        };
        let task_ref = TaskRef {
            task_id: t.task_id.clone(),
        };
        let mut stream = match c.watch_task(task_ref).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                let instance = match c.status(StatusRequest {}).await {
                    Ok(st) => st.into_inner().instance_id,
                    Err(s) => return lost(s),
                };
                if instance != t.instance_id {
                    return Observed::Lost(format!(
                        "the agent of pod {} restarted (instance {} is now {instance})",
                        t.pod, t.instance_id
                    ));
                }
                return match start.send(&mut c).await {
                    Ok(task) => Observed::Task(Box::new(task)),
                    Err(s) => lost(s),
                };
            }
            Err(s) => return lost(s),
        };
        let deadline = tokio::time::Instant::now() + window;
        let mut last: Option<pb::Task> = None;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(task))) => {
                    let end = is_terminal(&task);
                    last = Some(task);
                    if end {
                        break;
                    }
                }
                Ok(Some(Err(s))) => return lost(s),
                Ok(None) | Err(_) => break,
            }
        }
        match last {
            Some(task) => Observed::Task(Box::new(task)),
            None => Observed::Lost(format!("the agent of pod {} sent nothing", t.pod)),
        }
    }

    /// The agents of `cluster`, once `tasks` that still run were cancelled
    /// and stopped: the first step of undoing an operation.
    pub async fn stop(
        ctx: &crate::runtime::Context,
        cluster: Option<&Target>,
        tasks: &[AgentTask],
    ) -> Result<Self, String> {
        let cluster = cluster.ok_or("its cluster is gone")?;
        let agents = Agents::of(&ctx.client, cluster, &ctx.tls.get())
            .await
            .map_err(Halt::text)?;
        agents.cancel_running(tasks).await;
        Ok(agents)
    }

    /// Cancels every running task and waits up to 30 s for each to stop,
    /// so nothing lands after a deletion or rollback that follows.
    pub async fn cancel_running(&self, tasks: &[AgentTask]) {
        let running = tasks.iter().filter(|t| t.state == AgentTaskState::Running);
        let cancels = running.map(|t| async move {
            let Ok(mut c) = self.connect(&t.pod).await else {
                return;
            };
            let r = TaskRef {
                task_id: t.task_id.clone(),
            };
            if c.cancel_task(r.clone()).await.is_err() {
                return;
            }
            if let Ok(s) = c.watch_task(r).await {
                let mut s = s.into_inner();
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Some(Ok(t)) = s.next().await {
                        if is_terminal(&t) {
                            break;
                        }
                    }
                })
                .await;
            }
        });
        futures::future::join_all(cancels).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambient_credentials_and_plain_http_need_the_administrators_opt_in() {
        let s3 = |yaml: &str| -> S3Storage { serde_yaml::from_str(yaml).unwrap() };
        let strict = StoragePolicy::default();
        let secret = s3("{bucket: b, credentialsSecretRef: {name: s3}}");
        assert_eq!(storage_allowed(&secret, &strict), Ok(()));
        let https =
            s3("{bucket: b, endpoint: 'https://minio:9000', credentialsSecretRef: {name: s3}}");
        assert_eq!(storage_allowed(&https, &strict), Ok(()));
        let ambient = s3("{bucket: b}");
        let (reason, message) = storage_allowed(&ambient, &strict).unwrap_err();
        assert_eq!(reason, "AmbientCredentialsRefused");
        assert!(
            message.contains("storage.allowAmbientCredentials=true"),
            "{message}"
        );
        let http =
            s3("{bucket: b, endpoint: 'http://minio:9000', credentialsSecretRef: {name: s3}}");
        let (reason, message) = storage_allowed(&http, &strict).unwrap_err();
        assert_eq!(reason, "InsecureEndpointRefused");
        assert!(message.contains("--allow-insecure-endpoints"), "{message}");
        let open = StoragePolicy {
            ambient_credentials: true,
            insecure_endpoints: true,
        };
        assert_eq!(storage_allowed(&ambient, &open), Ok(()));
        assert_eq!(storage_allowed(&http, &open), Ok(()));
    }
}
