//! Engine jobs on the engine's job board (`wbia_lightglue_engine::job_board`): the process
//! that accepts a job claims its id there (ids are never reused, across replicas and
//! restarts) and writes its result when it ends; with PostgreSQL it also publishes its progress
//! every [`PUBLISH_EVERY`] while it works, and any other replica answers status, result and
//! the job list from there. With SQLite the board outlives the process: finished jobs are
//! answered after a restart. Without a store every call here is a no-op.

use std::sync::Arc;
use std::time::Duration;

use wbia_lightglue_engine::job_board::{JobBoard, JobStatus, StoredJob};
use wbia_lightglue_engine::Progress;

use super::JobRunner;
use crate::{Error, Result};

/// How often a working job's progress is written for the other replicas.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// How long a job's final state is offered to an unreachable store before this replica
/// gives up on sharing it (its own answers for the job are unaffected).
const FINAL_PUBLISH_PATIENCE: Duration = Duration::from_secs(300);

impl JobRunner {
    /// Runs `f` on the job board off the async threads; `None` without one.
    async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn JobBoard) -> wbia_lightglue_engine::Result<T> + Send + 'static,
    ) -> Option<Result<T>> {
        let store = self.identifier.engine().job_board()?.clone();
        Some(
            match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
                Ok(answer) => answer.map_err(Error::from),
                Err(e) => Err(Error::Task(e)),
            },
        )
    }

    /// Claims `jobid` for this replica: `Ok(false)` when any replica has a job by that id.
    pub(super) async fn claim(&self, jobid: &str) -> Result<bool> {
        let (id, replica) = (jobid.to_string(), self.replica().to_string());
        self.on_store(move |s| s.claim_job(&id, &replica))
            .await
            .unwrap_or(Ok(true))
    }

    /// Writes a job's state for the other replicas; a failure is logged (this replica still
    /// answers for the job itself).
    pub(super) async fn publish(
        &self,
        jobid: &str,
        status: JobStatus,
        progress: Option<String>,
        result: Option<Arc<str>>,
    ) {
        let id = jobid.to_string();
        let written = self
            .on_store(move |s| s.update_job(&id, status, progress.as_deref(), result.as_deref()))
            .await;
        if let Some(Err(e)) = written {
            tracing::warn!(jobid, error = %e, "could not share the job's state");
        }
    }

    /// Writes a job's final state, retrying while the store cannot be reached (PostgreSQL
    /// restarting): the other replicas would otherwise see the job `working` until its lease
    /// lapses and then report it failed although it completed.
    pub(super) async fn publish_final(
        &self,
        jobid: &str,
        status: JobStatus,
        result: Option<Arc<str>>,
    ) {
        let started = std::time::Instant::now();
        let mut failures = 0u32;
        loop {
            let (id, r) = (jobid.to_string(), result.clone());
            let written = self
                .on_store(move |store| store.update_job(&id, status, None, r.as_deref()))
                .await;
            match written {
                None | Some(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(jobid, failures, "the job's final state is shared at last");
                    }
                    return;
                }
                Some(Err(e)) => {
                    if failures == 0 {
                        tracing::warn!(jobid, error = %e, "could not share the job's final state; retrying");
                    }
                    failures += 1;
                    if started.elapsed() >= FINAL_PUBLISH_PATIENCE {
                        tracing::error!(jobid, failures, "gave up sharing the job's final state");
                        return;
                    }
                    tokio::time::sleep(PUBLISH_EVERY).await;
                }
            }
        }
    }

    /// Publishes a working job's progress until the job's task ends (the caller aborts this).
    pub(super) async fn publish_progress(self: Arc<Self>, jobid: String, progress: Arc<Progress>) {
        if self.identifier.engine().chunk_queue().is_none() {
            return;
        }
        loop {
            tokio::time::sleep(PUBLISH_EVERY).await;
            let snapshot = serde_json::to_string(&progress.snapshot()).ok();
            self.publish(&jobid, JobStatus::Working, snapshot, None)
                .await;
        }
    }

    /// A job another replica runs, as it last published it; `exception` once that replica has
    /// been silent for [`super::JobOptions::job_lease`].
    pub(super) async fn lookup(&self, jobid: &str) -> Option<StoredJob> {
        let (id, lease) = (jobid.to_string(), self.options.job_lease);
        match self.on_store(move |s| s.job(&id, lease)).await? {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(jobid, error = %e, "could not read the shared job");
                None
            }
        }
    }

    /// Every job id on the board (every replica's, and earlier processes'); `None` without one.
    pub(super) async fn board_ids(&self) -> Option<Result<Vec<String>>> {
        self.on_store(|s| s.job_ids()).await
    }
}
