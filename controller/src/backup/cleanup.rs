//! A failed or deleted backup's objects: what a failure leaves behind, and
//! the discard of a deleted backup's objects before its finalizer goes.

use super::*;

/// Where a backup's objects and open uploads are when no agent is left to
/// delete them, and the command that deletes exactly those.
pub(super) fn left_behind(b: &QdrantBackup) -> String {
    let at = b.location();
    format!(
        "everything it wrote (objects and open multipart uploads) is under {}/; delete it with: qdrant-agent delete --from s3://{}/{} --name {}{}",
        b.s3_path(),
        at.bucket,
        at.prefix,
        b.name_any(),
        at.endpoint
            .as_ref()
            .map(|e| format!(" --s3-endpoint {e}"))
            .unwrap_or_default()
    )
}

/// Cancels the running tasks, waits (briefly) for them to stop, then
/// deletes the backup's objects and open uploads through any agent.
pub(super) async fn discard(
    b: &QdrantBackup,
    ctx: &Context,
    cluster: Option<&Target>,
    status: &QdrantBackupStatus,
) -> Result<Discarded, String> {
    let agents = Agents::stop(ctx, cluster, &status.tasks).await?;
    let storage = storage_of(b, ctx).await.map_err(Halt::text)?;
    let mut c = agents.any().await.map_err(Halt::text)?;
    // Only what this resource's tasks claimed (its UID in the backup's
    // ownership marker) is deleted: never a backup someone else wrote.
    c.delete_backup(crate::agent_client::long_call(DeleteBackupRequest {
        storage: Some(storage),
        backup_name: b.name_any(),
        owner: b.uid().unwrap_or_default(),
    }))
    .await
    .map(|r| Discarded::Deleted(r.into_inner().deleted_objects))
    .or_else(|s| match status_reason(&s) {
        (reason, message) if reason == "BackupNotOwned" => Ok(Discarded::NotOwned(message)),
        (_, message) => Err(message),
    })
}

/// What `discard` did.
pub(super) enum Discarded {
    Deleted(u32),
    /// The objects there were not written by this resource: left untouched.
    NotOwned(String),
}

/// Deleting the resource: running tasks are cancelled first; the objects go
/// with it when the policy is Delete, or when the backup never completed
/// (partial objects are of no use). A Completed backup with Retain keeps
/// its objects.
pub(super) async fn cleanup(b: &QdrantBackup, ctx: &Context) -> Result<Action, Error> {
    let status = status_of(b);
    let completed = status.phase == Some(OperationPhase::Completed);
    let running = status.phase == Some(OperationPhase::InProgress);
    let delete = if completed {
        b.spec.deletion_policy == DeletionPolicy::Delete
    } else {
        running && !status.tasks.is_empty()
    };
    if !delete {
        return Ok(Action::await_change());
    }
    let ns = b.namespace().unwrap_or_default();
    let cluster = Target::get(&ctx.client, &ns, &b.spec.cluster_ref).await?;
    if cluster.is_none() {
        // No agent is left to delete through: say where the data is.
        report::event(
            &ctx.recorder,
            &b.object_ref(&()),
            EventType::Warning,
            "ObjectsLeft",
            "Delete",
            format!(
                "{} is gone, so no agent can delete the backup: {}",
                b.spec.cluster_ref.describe(),
                left_behind(b)
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let (type_, reason, note) = match discard(b, ctx, cluster.as_ref(), &status)
        .await
        .map_err(Error::Retry)?
    {
        Discarded::Deleted(n) => (
            EventType::Normal,
            "Deleted",
            format!("deleted {n} objects under {}", b.s3_path()),
        ),
        // Someone else's backup sits there: it is never deleted, and this
        // resource goes without it.
        Discarded::NotOwned(why) => (
            EventType::Warning,
            "NotDeleted",
            format!("left {} untouched: {why}", b.s3_path()),
        ),
    };
    report::event(
        &ctx.recorder,
        &b.object_ref(&()),
        type_,
        reason,
        "Delete",
        note,
    )
    .await;
    Ok(Action::await_change())
}
