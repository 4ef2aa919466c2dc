//! A failed restore: the agents' tasks cancelled, and the collections it
//! replaced or created undone (the staged ones dropped, the previous ones put
//! back), before the failure is written.

use super::*;

/// Cancels the running tasks, then deletes the collections this restore
/// created through one agent (a Rollback task, which needs neither the
/// backup nor its manifest). The agent deletes only collections that carry
/// this restore's marker: one that existed before, or that another party
/// created meanwhile, is never touched.
pub(super) async fn undo(
    r: &QdrantRestore,
    ctx: &Context,
    cluster: Option<&Target>,
    status: &QdrantRestoreStatus,
) -> Result<(), String> {
    let agents = Agents::stop(ctx, cluster, &status.tasks).await?;
    if decide::rollback_targets(r, status).is_empty() {
        return Ok(());
    }
    let pod = agents
        .pods
        .first()
        .ok_or("the target cluster has no ready pod")?
        .name
        .clone();
    // A fresh task id per try: a finished rollback task is not run again.
    let attempt = format!("rollback-{}", (ctx.now)().as_second());
    let req = decide::rollback_request(r, status, &task_id(r, &attempt, &pod));
    let mut c = agents.connect(&pod).await?;
    let task_ref = pb::TaskRef {
        task_id: req.task_id.clone(),
    };
    c.start_restore(req)
        .await
        .map_err(|s| status_reason(&s).1)?;
    let mut s = c
        .watch_task(task_ref)
        .await
        .map_err(|s| status_reason(&s).1)?
        .into_inner();
    let last = tokio::time::timeout(Duration::from_secs(120), async {
        let mut last = None;
        while let Some(Ok(t)) = s.next().await {
            last = Some(t);
        }
        last
    })
    .await
    .ok()
    .flatten();
    match last {
        Some(t) if t.phase() == TaskPhase::Succeeded => Ok(()),
        Some(t) => Err(t.error),
        None => Err("the rollback did not finish within 120s".into()),
    }
}

/// Ends the restore as Failed once what it created is deleted again. The
/// failure is written first (stage RollingBack, its reason and message), so
/// a rollback that cannot finish now is retried with backoff until it does,
/// and never forgotten.
pub(super) async fn fail(
    r: &QdrantRestore,
    ctx: &Context,
    cluster: Option<&Target>,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let previous = status_of(r);
    let targets = decide::rollback_targets(r, &previous);
    if cluster.is_none() && !targets.is_empty() {
        let message =
            format!("{message}; its cluster was deleted, so there is nothing to roll back");
        return operation::failed(r, ctx, reason, message).await;
    }
    if targets.is_empty() {
        if previous.stage.is_some() {
            // Nothing was being created: only stop the tasks.
            let _ = Agents::stop(ctx, cluster, &previous.tasks).await;
        }
        return operation::failed(r, ctx, reason, message).await;
    }
    let mut status = previous.clone();
    if previous.stage != Some(RestoreStage::RollingBack) {
        status.stage = Some(RestoreStage::RollingBack);
        status.error = Some(message.clone());
        status.conditions = vec![report::ready(
            false,
            reason,
            format!("{message}; deleting the collections it created"),
            (ctx.now)(),
            &previous.conditions,
            r.metadata.generation,
        )];
        operation::write(ctx, r, &status).await?;
    }
    match undo(r, ctx, cluster, &previous).await {
        Ok(()) => {
            let message = format!(
                "{message}; rolled back: of {}, what this restore created is deleted and nothing it did not create was touched",
                targets.join(", ")
            );
            let rolled_back = QdrantRestore {
                status: Some(status),
                ..r.clone()
            };
            operation::failed(&rolled_back, ctx, reason, message).await
        }
        Err(e) => {
            report::event(
                &ctx.recorder,
                &r.object_ref(&()),
                EventType::Warning,
                "RollbackRetrying",
                "Restore",
                format!(
                    "deleting the collections it created (of {}) failed; retrying: {e}",
                    targets.join(", ")
                ),
            )
            .await;
            Err(Error::Retry(format!(
                "rollback of restore {}: {e}",
                r.name_any()
            )))
        }
    }
}

/// A restore rolling back goes on with that, whatever else happens.
pub(super) async fn roll_back(
    r: &QdrantRestore,
    ctx: &Context,
    cluster: Option<&Target>,
) -> Result<Action, Error> {
    let status = status_of(r);
    let reason = status
        .conditions
        .first()
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "Failed".into());
    let message = status.error.clone().unwrap_or_default();
    fail(r, ctx, cluster, &reason, message).await
}
