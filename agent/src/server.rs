//! The gRPC face of the agent: `qdrant.agent.v1.Agent`, plus health and
//! reflection (v1 and v1alpha, so grpcurl 1.8 works without a proto file).
//! Tasks are idempotent by caller-given id and live in memory; the
//! `instance_id` changes with each process so callers can tell a restart.

use crate::backup::{self, BackupRequest, Mode};
use crate::error::Error;
use crate::node::{Node, Target, free_space};
use crate::progress::{Progress, is_terminal, now};
use crate::restore::{self, RestoreRequest};
use crate::store::{self, Location, S3Config};
use crate::upload::UploadOptions;
use futures::Stream;
use qdrant_agent_proto::v1::agent_server::{Agent, AgentServer};
use qdrant_agent_proto::v1::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Finished tasks kept for `GetTask`/`ListTasks`.
const KEEP_FINISHED: usize = 100;

struct Entry {
    progress: Progress,
    cancel: CancellationToken,
    fingerprint: String,
    seq: u64,
}

pub struct AgentService {
    node: Node,
    s3_defaults: S3Config,
    instance_id: String,
    tasks: Mutex<HashMap<String, Entry>>,
    seq: std::sync::atomic::AtomicU64,
    allow_local_targets: bool,
}

impl AgentService {
    pub fn new(node: Node, s3_defaults: S3Config) -> Self {
        Self {
            node,
            s3_defaults,
            instance_id: format!("{:016x}", rand::random::<u64>()),
            tasks: Mutex::default(),
            seq: Default::default(),
            allow_local_targets: false,
        }
    }

    /// Accept `file://` storage targets over gRPC (a trusted local setup).
    pub fn allow_local_targets(mut self, allow: bool) -> Self {
        self.allow_local_targets = allow;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, id: &str) -> Result<Progress, Status> {
        self.lock()
            .get(id)
            .map(|e| e.progress.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no task {id:?} on this agent (instance {})",
                    self.instance_id
                ))
            })
    }

    /// Registers a task or returns the one with the same id. The fingerprint
    /// (the request without credentials) must match: one id, one request.
    fn register(
        &self,
        id: &str,
        kind: TaskKind,
        backup_name: &str,
        fingerprint: String,
    ) -> Result<(Progress, Option<CancellationToken>), Status> {
        if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
            return Err(Status::invalid_argument(
                "task_id must be 1-200 printable characters",
            ));
        }
        let mut tasks = self.lock();
        if let Some(e) = tasks.get(id) {
            if e.fingerprint != fingerprint {
                return Err(Status::already_exists(format!(
                    "task {id:?} exists with a different request"
                )));
            }
            return Ok((e.progress.clone(), None));
        }
        let mut finished: Vec<(u64, String)> = tasks
            .iter()
            .filter(|(_, e)| e.progress.is_finished())
            .map(|(k, e)| (e.seq, k.clone()))
            .collect();
        if finished.len() >= KEEP_FINISHED {
            finished.sort();
            for (_, k) in finished.iter().take(finished.len() + 1 - KEEP_FINISHED) {
                tasks.remove(k);
            }
        }
        let mut task = Task {
            task_id: id.to_string(),
            backup_name: backup_name.to_string(),
            started_at: now(),
            instance_id: self.instance_id.clone(),
            node_name: self.node.name.clone(),
            ..Default::default()
        };
        task.set_kind(kind);
        task.set_phase(TaskPhase::Running);
        let progress = Progress::new(task);
        let cancel = CancellationToken::new();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tasks.insert(
            id.to_string(),
            Entry {
                progress: progress.clone(),
                cancel: cancel.clone(),
                fingerprint,
                seq,
            },
        );
        Ok((progress, Some(cancel)))
    }

    /// Registers a task, or attaches to the one with its id, and runs `work`
    /// in the background. `rest` is the request without its storage.
    async fn start<Fut>(
        &self,
        id: &str,
        kind: TaskKind,
        backup_name: &str,
        storage: Option<&StorageTarget>,
        rest: &impl prost::Message,
        work: impl FnOnce(Node, Target, Progress, CancellationToken) -> Fut + Send + 'static,
    ) -> Result<Response<Task>, Status>
    where
        Fut: std::future::Future<Output = crate::Result<()>> + Send + 'static,
    {
        check_input(backup_name, storage, self.allow_local_targets)?;
        let (progress, cancel) =
            self.register(id, kind, backup_name, fingerprint(storage, rest))?;
        let Some(cancel) = cancel else {
            return Ok(Response::new(progress.get()));
        };
        let target = self.target(storage).await;
        let node = self.node.clone();
        let p = progress.clone();
        tokio::spawn(async move {
            let result = match target {
                Ok(t) => work(node, t, p.clone(), cancel).await,
                Err(e) => Err(e),
            };
            log_end(&p, &result);
            p.finish(result.as_ref().map(|_| ()));
        });
        Ok(Response::new(progress.get()))
    }

    async fn target(&self, t: Option<&StorageTarget>) -> Result<Target, Error> {
        let t = t.ok_or_else(|| Error::Invalid("storage is required".into()))?;
        let loc = Location::parse(&t.url)?;
        let mut cfg = self.s3_defaults.clone();
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        cfg.endpoint = nonempty(&t.s3_endpoint).or(cfg.endpoint);
        cfg.region = nonempty(&t.s3_region).or(cfg.region);
        cfg.sse = nonempty(&t.sse).or(cfg.sse);
        cfg.sse_kms_key_id = nonempty(&t.sse_kms_key_id).or(cfg.sse_kms_key_id);
        cfg.virtual_hosted_style |= t.virtual_hosted_style;
        if let Some(c) = &t.credentials
            && !c.access_key_id.is_empty()
        {
            cfg.static_credentials = Some((
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                nonempty(&c.session_token),
            ));
        }
        Ok(Target {
            store: store::open(&loc, &cfg).await?,
            prefix: loc.prefix().to_string(),
        })
    }
}

/// A request's identity without its credentials.
fn fingerprint(storage: Option<&StorageTarget>, rest: &impl prost::Message) -> String {
    let mut h = Sha256::new();
    if let Some(s) = storage {
        let mut s = s.clone();
        s.credentials = None;
        h.update(prost::Message::encode_to_vec(&s));
    }
    h.update(rest.encode_to_vec());
    hex::encode(h.finalize())
}

/// Every shard's replicas, local and remote, sorted by shard id.
fn shard_placements(p: &crate::qdrant::Placement) -> Vec<ShardPlacement> {
    let mut shards: std::collections::BTreeMap<u32, ShardPlacement> = Default::default();
    let key_json =
        |k: &Option<serde_json::Value>| k.as_ref().map(|k| k.to_string()).unwrap_or_default();
    let mut add = |id: u32, key: &Option<serde_json::Value>, peer_id: u64, state: &str| {
        let s = shards.entry(id).or_insert_with(|| ShardPlacement {
            shard_id: id,
            replicas: vec![],
            shard_key_json: key_json(key),
        });
        s.replicas.push(ReplicaPlacement {
            peer_id,
            state: state.to_string(),
        });
    };
    for l in &p.local_shards {
        add(l.shard_id, &l.shard_key, p.peer_id, &l.state);
    }
    for r in &p.remote_shards {
        add(r.shard_id, &r.shard_key, r.peer_id, &r.state);
    }
    shards.into_values().collect()
}

/// An agent error as a gRPC status: the code says what kind of problem it
/// is, the message (never holding a credential) what happened, and the
/// `ErrorInfo` detail its reason.
fn to_status(e: Error) -> Status {
    use tonic::Code;
    let reason = e.reason();
    let code = match reason {
        "InvalidRequest" => Code::InvalidArgument,
        "ManifestMissing" | "ObjectNotFound" | "S3BucketNotFound" | "QdrantNotFound" => {
            Code::NotFound
        }
        "S3AccessDenied" => Code::PermissionDenied,
        "S3Unreachable" | "S3Unavailable" | "QdrantUnreachable" => Code::Unavailable,
        "ChecksumMismatch" | "VersionMismatch" => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    qdrant_agent_proto::errors::status(code, e.to_string(), reason)
}

/// Input errors are answered at once rather than as a failed task.
/// A directory target (`file://`) would let a caller fill or delete the
/// node's own disks: over gRPC it is refused unless `serve` was started
/// with `--allow-local-targets`.
fn check_input(
    backup_name: &str,
    storage: Option<&StorageTarget>,
    allow_local: bool,
) -> Result<(), Status> {
    crate::keys::validate_segment("backup", backup_name)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let url = storage.map(|s| s.url.as_str()).unwrap_or_default();
    let loc = Location::parse(url).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if matches!(loc, Location::Local { .. }) && !allow_local {
        return Err(Status::invalid_argument(
            "local directory targets (file://) are refused over gRPC; use an object store, or start the agent with --allow-local-targets [InvalidRequest]",
        ));
    }
    Ok(())
}

fn selections(c: &[CollectionSelection]) -> Vec<(String, Vec<u32>)> {
    c.iter()
        .map(|s| (s.collection.clone(), s.shard_ids.clone()))
        .collect()
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<Task, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let q = &self.node.qdrant;
        let (reachable, version, err) = match q.version().await {
            Ok(v) => (true, v, String::new()),
            Err(e) => (false, String::new(), e.to_string()),
        };
        let peer_id = if reachable {
            q.peer_id().await.ok().flatten().unwrap_or(0)
        } else {
            0
        };
        let dir = self.node.snapshots_dir.clone();
        let free = match &dir {
            Some(d) => {
                let d = d.clone();
                tokio::task::spawn_blocking(move || free_space(&d))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            }
            None => 0,
        };
        let running = self
            .lock()
            .values()
            .filter(|e| !e.progress.is_finished())
            .map(|e| e.progress.get())
            .collect();
        Ok(Response::new(StatusResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: self.instance_id.clone(),
            qdrant_reachable: reachable,
            qdrant_version: version,
            qdrant_error: err,
            peer_id,
            snapshots_dir: dir.map(|d| d.display().to_string()).unwrap_or_default(),
            snapshots_free_bytes: free,
            running_tasks: running,
            node_name: self.node.name.clone(),
        }))
    }

    async fn start_backup(
        &self,
        req: Request<StartBackupRequest>,
    ) -> Result<Response<Task>, Status> {
        let r = req.into_inner();
        let mode = match r.mode() {
            BackupMode::File => Mode::File,
            BackupMode::Auto => Mode::Auto,
            _ => Mode::Stream,
        };
        let or = |v: u64, default: u64, max: u64| if v == 0 { default } else { v.min(max) };
        let breq = BackupRequest {
            backup_name: r.backup_name.clone(),
            collections: selections(&r.collections),
            mode,
            upload: UploadOptions {
                part_size: or(r.part_size, 8 << 20, crate::keys::MAX_PART_SIZE),
                concurrency: or(r.concurrency.into(), 4, 64) as usize,
                ..Default::default()
            },
            shard_concurrency: or(r.shard_concurrency.into(), 2, 16) as usize,
            write_manifest: !r.skip_manifest,
        };
        let mut rest = r.clone();
        rest.storage = None;
        self.start(
            &r.task_id,
            TaskKind::Backup,
            &r.backup_name,
            r.storage.as_ref(),
            &rest,
            move |node, t, p, cancel| async move {
                backup::run(&node, &t, &breq, &p, &cancel).await.map(|_| ())
            },
        )
        .await
    }

    async fn start_restore(
        &self,
        req: Request<StartRestoreRequest>,
    ) -> Result<Response<Task>, Status> {
        let r = req.into_inner();
        let timeout = if r.green_timeout_seconds == 0 {
            600
        } else {
            r.green_timeout_seconds.into()
        };
        let rreq = RestoreRequest {
            backup_name: r.backup_name.clone(),
            collections: selections(&r.collections),
            rename: r.rename.clone().into_iter().collect(),
            verify_first: !r.skip_verify,
            create_collections: !r.skip_create_collections,
            restore_aliases: !r.skip_aliases,
            green_timeout: Duration::from_secs(timeout),
            concurrency: 2,
            stage: match r.stage() {
                RestoreStage::Unspecified => restore::Stage::All,
                RestoreStage::Create => restore::Stage::Create,
                RestoreStage::Upload => restore::Stage::Upload,
                RestoreStage::Finish => restore::Stage::Finish,
                RestoreStage::Rollback => restore::Stage::Rollback,
            },
        };
        let mut rest = r.clone();
        rest.storage = None;
        self.start(&r.task_id, TaskKind::Restore, &r.backup_name, r.storage.as_ref(), &rest, move |node, t, p, cancel| async move {
            restore::run(&node, &t, &rreq, &p, &cancel).await
        })
        .await
    }

    async fn get_task(&self, req: Request<TaskRef>) -> Result<Response<Task>, Status> {
        Ok(Response::new(self.find(&req.into_inner().task_id)?.get()))
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(&self, req: Request<TaskRef>) -> Result<Response<TaskStream>, Status> {
        let rx = self.find(&req.into_inner().task_id)?.subscribe();
        // The current state first, then each change, ending after a terminal one.
        let s = futures::stream::unfold((rx, true, false), |(mut rx, first, ended)| async move {
            if ended {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let t = rx.borrow_and_update().clone();
            let end = is_terminal(t.phase());
            Some((Ok(t), (rx, false, end)))
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn cancel_task(&self, req: Request<TaskRef>) -> Result<Response<Task>, Status> {
        let id = req.into_inner().task_id;
        let (progress, cancel) = {
            let tasks = self.lock();
            let e = tasks
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("no task {id:?}")))?;
            (e.progress.clone(), e.cancel.clone())
        };
        cancel.cancel();
        Ok(Response::new(progress.get()))
    }

    async fn write_manifest(
        &self,
        req: Request<WriteManifestRequest>,
    ) -> Result<Response<WriteManifestResponse>, Status> {
        let r = req.into_inner();
        check_input(&r.backup_name, r.storage.as_ref(), self.allow_local_targets)?;
        let target = self.target(r.storage.as_ref()).await.map_err(to_status)?;
        let mut m = crate::manifest::assemble(&r.backup_name, &r.started_at, &now(), &r.parts)
            .map_err(to_status)?;
        crate::manifest::add_placement(&mut m, &r.placement, &r.nodes).map_err(to_status)?;
        let key = crate::manifest::commit(&*target.store, &target.prefix, &m)
            .await
            .map_err(to_status)?;
        tracing::info!(backup = %r.backup_name, key, objects = m.objects().count(), "manifest written");
        Ok(Response::new(WriteManifestResponse {
            manifest_key: key,
            total_bytes: m.total_bytes(),
            objects: m.objects().count() as u32,
        }))
    }

    async fn read_manifest(
        &self,
        req: Request<ReadManifestRequest>,
    ) -> Result<Response<ReadManifestResponse>, Status> {
        let r = req.into_inner();
        check_input(&r.backup_name, r.storage.as_ref(), self.allow_local_targets)?;
        let target = self.target(r.storage.as_ref()).await.map_err(to_status)?;
        let m = crate::manifest::read(&*target.store, &target.prefix, &r.backup_name)
            .await
            .map_err(to_status)?;
        let manifest_json =
            serde_json::to_string(&m).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ReadManifestResponse { manifest_json }))
    }

    async fn delete_backup(
        &self,
        req: Request<DeleteBackupRequest>,
    ) -> Result<Response<DeleteBackupResponse>, Status> {
        let r = req.into_inner();
        check_input(&r.backup_name, r.storage.as_ref(), self.allow_local_targets)?;
        let target = self.target(r.storage.as_ref()).await.map_err(to_status)?;
        let n = crate::manifest::delete_backup(&*target.store, &target.prefix, &r.backup_name)
            .await
            .map_err(to_status)?;
        tracing::info!(backup = %r.backup_name, objects = n, "backup deleted");
        Ok(Response::new(DeleteBackupResponse { deleted_objects: n }))
    }

    async fn get_placement(
        &self,
        req: Request<GetPlacementRequest>,
    ) -> Result<Response<GetPlacementResponse>, Status> {
        let q = &self.node.qdrant;
        let mut names = req.into_inner().collections;
        if names.is_empty() {
            names = q.collections().await.map_err(to_status)?;
        }
        let mut out = GetPlacementResponse::default();
        for c in names {
            crate::keys::validate_segment("collection", &c).map_err(to_status)?;
            let p = q.placement(&c).await.map_err(to_status)?;
            out.peer_id = p.peer_id;
            out.collections.push(CollectionPlacement {
                name: c,
                shards: shard_placements(&p),
            });
        }
        Ok(Response::new(out))
    }

    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let mut tasks: Vec<(u64, Task)> = self
            .lock()
            .values()
            .map(|e| (e.seq, e.progress.get()))
            .collect();
        tasks.sort_by_key(|(s, _)| *s);
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.into_iter().map(|(_, t)| t).collect(),
        }))
    }
}

fn log_end(p: &Progress, result: &crate::Result<()>) {
    let t = p.get();
    match result {
        Ok(()) => {
            tracing::info!(task = %t.task_id, backup = %t.backup_name, bytes = t.bytes_done, shards = t.shards_done, "task succeeded")
        }
        Err(e) => {
            tracing::warn!(task = %t.task_id, backup = %t.backup_name, reason = e.reason(), error = %e, "task failed")
        }
    }
}

/// How callers prove they are the controller.
#[derive(Default)]
pub struct Auth {
    pub token: Option<String>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// TLS verifies client certificates (mutual TLS). TLS alone encrypts
    /// but authenticates nobody.
    pub client_certs: bool,
    pub insecure: bool,
}

impl Auth {
    /// Refuses to serve when no caller would have to prove anything.
    pub fn check(&self) -> Result<(), Error> {
        let authenticated = self.token.is_some() || (self.tls.is_some() && self.client_certs);
        if authenticated || self.insecure {
            return Ok(());
        }
        let why = if self.tls.is_some() {
            "TLS without --tls-client-ca lets any caller in"
        } else {
            "no authentication given"
        };
        Err(Error::Invalid(format!(
            "refusing to serve: {why}; give --tls-client-ca (mutual TLS) and/or --token-file, or --insecure for local use"
        )))
    }
}

#[derive(Clone)]
struct TokenCheck(Option<Arc<str>>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant-time compare: the token is the only secret here.
        let same = got.len() == want.len()
            && got
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0;
        if same {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// Serves the agent on `listener`; `health_listener`, when given, serves
/// only gRPC health in plaintext, for kubelet probes (they cannot do TLS).
pub async fn serve(
    listener: tokio::net::TcpListener,
    health_listener: Option<tokio::net::TcpListener>,
    service: AgentService,
    auth: Auth,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    auth.check()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<AgentService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(qdrant_agent_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let agent = AgentServer::with_interceptor(service, TokenCheck(auth.token.map(Arc::from)));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = auth.tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Invalid(format!("TLS configuration: {e}")))?;
    }
    let health_only = health_listener.map(|l| {
        let svc = health_service.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "health server stopped");
            }
        })
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = builder
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(agent)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")));
    if let Some(h) = health_only {
        h.abort();
    }
    served
}
