//! Engine jobs as the store keeps them, so that a job's state and result outlive the process
//! that ran it: in SQLite for one process (answered after a restart, as WBIA keeps its jobs),
//! in PostgreSQL for replicas (answered by any of them). The server's job registry holds the
//! jobs it runs; the board is where they are published and where others are looked up.

use std::time::Duration;

use crate::Result;

/// A job as the board holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredJob {
    /// The process (replica) that accepted and runs the job.
    pub replica: String,
    /// `working`, `completed` or `exception`.
    pub status: String,
    /// Progress as JSON, while working.
    pub progress: Option<String>,
    /// `json_result` as rendered, once ended.
    pub result: Option<String>,
}

pub trait JobBoard: Send + Sync {
    /// Claims `jobid` for `replica`: `false` when the board holds a job by that id (ids are
    /// never reused).
    fn claim_job(&self, jobid: &str, replica: &str) -> Result<bool>;

    /// Writes a job's state (by the replica that runs it).
    fn update_job(
        &self,
        jobid: &str,
        status: &str,
        progress: Option<&str>,
        result: Option<&str>,
    ) -> Result<()>;

    /// A job's state. Where other processes run jobs (PostgreSQL), a `working` job whose
    /// replica has written nothing for `lease` is ended as `exception` first.
    fn job(&self, jobid: &str, lease: Duration) -> Result<Option<StoredJob>>;

    /// Every job id on the board.
    fn job_ids(&self) -> Result<Vec<String>>;
}

/// The `json_result` of a job that ended because the process running it stopped.
pub(crate) fn stopped_result(why: &str) -> String {
    serde_json::Value::String(why.to_string()).to_string()
}
