//! `qdrant.agent.v1.Agent`: each call checks its input, then hands work to
//! the backup and restore modules as a registered task, or answers from
//! Qdrant and the store directly.

use super::convert::{self, check_input, fingerprint, shard_placements, to_status};
use super::tasks::Registry;
use crate::backup;
use crate::error::Error;
use crate::node::{Node, Target};
use crate::progress::{Progress, is_terminal, now};
use crate::restore;
use crate::store::{self, Location, S3Config};
use futures::Stream;
use qdrant_agent_proto::v1::agent_server::Agent;
use qdrant_agent_proto::v1::*;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub struct AgentService {
    node: Node,
    s3_defaults: S3Config,
    tasks: Arc<Registry>,
    allow_local_targets: bool,
}

impl AgentService {
    pub fn new(node: Node, s3_defaults: S3Config) -> Self {
        Self {
            tasks: Arc::new(Registry::new(node.name.clone())),
            node,
            s3_defaults,
            allow_local_targets: false,
        }
    }

    /// The task registry, for shutting down.
    pub(super) fn registry(&self) -> Arc<Registry> {
        self.tasks.clone()
    }

    /// Accept `file://` storage targets over gRPC (a trusted local setup).
    pub fn allow_local_targets(mut self, allow: bool) -> Self {
        self.allow_local_targets = allow;
        self
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
            self.tasks
                .register(id, kind, backup_name, fingerprint(storage, rest))?;
        let Some(cancel) = cancel else {
            return Ok(Response::new(progress.get()));
        };
        let target = self.target(storage).await;
        let node = self.node.clone();
        let p = progress.clone();
        tokio::spawn(finish_when_done(p.clone(), async move {
            match target {
                Ok(t) => work(node, t, p, cancel).await,
                Err(e) => Err(e),
            }
        }));
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
            Some(_) => {
                let n = self.node.clone();
                tokio::task::spawn_blocking(move || n.snapshots_free())
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            }
            None => 0,
        };
        let running = self.tasks.running();
        Ok(Response::new(StatusResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: self.tasks.instance_id.clone(),
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
        let breq = convert::backup_request(&r);
        // A part size the agent's memory budget cannot hold is refused now.
        breq.upload.check().map_err(convert::to_status)?;
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
        let rreq = convert::restore_request(&r);
        let mut rest = r.clone();
        rest.storage = None;
        self.start(&r.task_id, TaskKind::Restore, &r.backup_name, r.storage.as_ref(), &rest, move |node, t, p, cancel| async move {
            restore::run(&node, &t, &rreq, &p, &cancel).await
        })
        .await
    }

    async fn start_verify(
        &self,
        req: Request<StartVerifyRequest>,
    ) -> Result<Response<Task>, Status> {
        let r = req.into_inner();
        let concurrency = match r.concurrency {
            0 => crate::defaults::RESTORE_CONCURRENCY,
            n => (n as usize).min(16),
        };
        let mut rest = r.clone();
        rest.storage = None;
        let name = r.backup_name.clone();
        self.start(
            &r.task_id,
            TaskKind::Verify,
            &r.backup_name,
            r.storage.as_ref(),
            &rest,
            move |_node, t, p, cancel| async move {
                crate::verify::run(&t, &name, concurrency, &p, &cancel).await
            },
        )
        .await
    }

    async fn start_drain(&self, req: Request<StartDrainRequest>) -> Result<Response<Task>, Status> {
        let r = req.into_inner();
        let dreq = crate::drain::DrainRequest {
            leaving: r.leaving_peer_ids.clone(),
            staying: r.staying_peer_ids.clone(),
            rebalance: r.rebalance,
        };
        if (dreq.leaving.is_empty() && !dreq.rebalance)
            || dreq.staying.is_empty()
            || dreq.leaving.iter().any(|p| dreq.staying.contains(p))
        {
            return Err(to_status(Error::Invalid(
                "a drain needs leaving and staying peers, none of them both".into(),
            )));
        }
        let (progress, cancel) =
            self.tasks
                .register(&r.task_id, TaskKind::Drain, "", fingerprint(None, &r))?;
        let Some(cancel) = cancel else {
            return Ok(Response::new(progress.get()));
        };
        let node = self.node.clone();
        let p = progress.clone();
        tokio::spawn(finish_when_done(p.clone(), async move {
            crate::drain::run(&node, &dreq, &p, &cancel).await
        }));
        Ok(Response::new(progress.get()))
    }

    async fn get_task(&self, req: Request<TaskRef>) -> Result<Response<Task>, Status> {
        Ok(Response::new(
            self.tasks.find(&req.into_inner().task_id)?.get(),
        ))
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(&self, req: Request<TaskRef>) -> Result<Response<TaskStream>, Status> {
        let rx = self.tasks.find(&req.into_inner().task_id)?.subscribe();
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
        Ok(Response::new(self.tasks.cancel(&req.into_inner().task_id)?))
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
        let key = crate::manifest::commit(&*target.store, &target.prefix, &m, &r.owner)
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
        let mut m = crate::manifest::read(&*target.store, &target.prefix, &r.backup_name)
            .await
            .map_err(to_status)?;
        if r.collections_only {
            m = crate::manifest::summary(&m);
        }
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
        let n = crate::manifest::delete_backup(
            &*target.store,
            &target.prefix,
            &r.backup_name,
            &r.owner,
        )
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

    async fn get_disk(
        &self,
        _: Request<GetDiskRequest>,
    ) -> Result<Response<GetDiskResponse>, Status> {
        let Some(dir) = self.node.storage_dir.clone() else {
            return Ok(Response::new(GetDiskResponse::default()));
        };
        // A walk of the collections' files: off the async threads.
        let seen = tokio::task::spawn_blocking(move || crate::node::disk(&dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match seen {
            Some((free_bytes, total_bytes, collections_bytes)) => GetDiskResponse {
                seen: true,
                free_bytes,
                total_bytes,
                collections_bytes,
            },
            None => GetDiskResponse::default(),
        }))
    }

    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Ok(Response::new(ListTasksResponse {
            tasks: self.tasks.all(),
        }))
    }
}

/// Runs a task's work and ends its progress with the result, whatever
/// happens: a panic in the work ends the task Failed (reason Internal)
/// rather than leaving it Running for ever.
async fn finish_when_done(
    p: Progress,
    work: impl std::future::Future<Output = crate::Result<()>> + Send + 'static,
) {
    let metrics = crate::metrics::get();
    let started = std::time::Instant::now();
    metrics.tasks_running.inc();
    let result = match tokio::spawn(work).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(Error::Internal(
            "the task stopped on an internal error (a panic); see the agent's log".into(),
        )),
        Err(_) => Err(Error::Cancelled),
    };
    metrics.tasks_running.dec();
    let kind = match TaskKind::try_from(p.get().kind) {
        Ok(TaskKind::Backup) => "backup",
        Ok(TaskKind::Restore) => "restore",
        Ok(TaskKind::Verify) => "verify",
        Ok(TaskKind::Drain) => "drain",
        _ => "unknown",
    };
    let outcome = match &result {
        Ok(()) => "succeeded",
        Err(Error::Cancelled) => "cancelled",
        Err(_) => "failed",
    };
    metrics
        .tasks
        .get_or_create(&crate::metrics::TaskLabel {
            kind: kind.into(),
            result: outcome.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    log_end(&p, &result);
    p.finish(result.as_ref().map(|_| ()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_ends_failed_instead_of_running_for_ever() {
        let registry = Registry::new("pod-0".into());
        let (p, _) = registry
            .register("t", TaskKind::Backup, "b", String::new())
            .unwrap();
        finish_when_done(p.clone(), async { panic!("a bug") }).await;
        let t = p.get();
        assert_eq!(t.phase(), TaskPhase::Failed);
        assert_eq!(t.error_reason, "Internal");
        assert!(t.error.contains("panic"), "{}", t.error);
    }
}
