//! `spec.verify`: after the commit, one agent reads every object back and
//! checks its sha256 against the manifest; the backup's Verified condition
//! says how that went.

use super::*;

pub(super) fn verify_request(
    b: &QdrantBackup,
    storage: &StorageTarget,
    task_id: &str,
) -> pb::StartVerifyRequest {
    pb::StartVerifyRequest {
        task_id: task_id.to_string(),
        storage: Some(storage.clone()),
        backup_name: b.name_any(),
        concurrency: 0,
    }
}

/// `spec.verify`: the manifest is written; one agent now reads the backup
/// back. The backup stays InProgress until the check passes.
pub(super) async fn start_verify(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    mut status: QdrantBackupStatus,
    attempt: u32,
) -> Result<Action, Halt> {
    if attempt > MAX_ATTEMPTS {
        return Err(Halt::fail(
            "AgentLost",
            format!("the verification was lost {MAX_ATTEMPTS} times"),
        ));
    }
    let (seen, _) = agents.survey_some(&[], &b.spec.cluster_ref.name).await?;
    // Another pod than the last try's, when there is one.
    let pick = &seen[(attempt as usize - 1) % seen.len()];
    let uid = b.uid().unwrap_or_default();
    let task = tasks::task(
        pick.pod.clone(),
        format!("verify-{uid}-{attempt}"),
        pick.instance_id.clone(),
        attempt,
        std::iter::empty(),
    );
    let message = format!(
        "reading every object back from the store (agent of pod {})",
        pick.pod
    );
    status.verification = Some(Verification {
        task: task.clone(),
        completion_time: None,
        objects: 0,
        bytes: 0,
    });
    status.conditions = vec![report::ready(
        false,
        "Verifying",
        message.clone(),
        (ctx.now)(),
        &status.conditions,
        b.metadata.generation,
    )];
    operation::announce(b, ctx, &status, EventType::Normal, "Verifying", message).await?;
    let start = Start::Verify(verify_request(b, storage, &task.task_id));
    agents.start_each(vec![(&task, start)]).await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Follows the verification task: Completed when it passes; a backup that
/// does not check out fails (and is deleted as any failed backup).
pub(super) async fn follow_verify(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    mut status: QdrantBackupStatus,
) -> Result<Action, Halt> {
    let Some(mut v) = status.verification.clone() else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let start = Start::Verify(verify_request(b, storage, &v.task.task_id));
    let task = match agents.observe(&v.task, ctx.follow_window, start).await {
        Observed::Lost(why) => {
            tracing::warn!(backup = %b.name_any(), why, "verification lost; starting it again");
            let next = v.task.attempt + 1;
            return start_verify(b, ctx, agents, storage, status, next).await;
        }
        Observed::Task(t) => t,
    };
    v.objects = task.shards_done;
    v.bytes = task.bytes_done;
    match task.phase() {
        TaskPhase::Succeeded => {
            v.task.state = AgentTaskState::Succeeded;
            v.completion_time = Some(Time((ctx.now)()));
            let message = format!(
                "{}; verified by the agent of pod {}",
                summary(b, &status),
                v.task.pod
            );
            status.verification = Some(v);
            Ok(operation::completed(b, ctx, status, message).await?)
        }
        TaskPhase::Failed | TaskPhase::Cancelled => {
            v.task.state = AgentTaskState::Failed;
            v.completion_time = Some(Time((ctx.now)()));
            let pod = v.task.pod.clone();
            status.verification = Some(v);
            operation::write(ctx, b, &status).await?;
            let reason = if task.error_reason.is_empty() {
                "VerificationFailed".to_string()
            } else {
                task.error_reason.clone()
            };
            Err(Halt::fail(
                reason,
                format!(
                    "the backup did not check out (agent of pod {pod}): {}",
                    task.error
                ),
            ))
        }
        _ => {
            status.verification = Some(v);
            operation::write(ctx, b, &status).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}
