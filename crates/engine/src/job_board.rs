//! Engine jobs as the store keeps them, so that a job's state and result outlive the process
//! that ran it: in SQLite for one process (answered after a restart, as WBIA keeps its jobs),
//! in PostgreSQL for replicas (answered by any of them). The server's job registry holds the
//! jobs it runs; the board is where they are published and where others are looked up.

use std::time::Duration;

use crate::Result;

/// WBIA's job states (`received` is never observable here: jobs are working when accepted).
/// The board's `status` column holds [`JobStatus::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Working,
    Completed,
    Exception,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Working => "working",
            JobStatus::Completed => "completed",
            JobStatus::Exception => "exception",
        }
    }

    /// A status column's text; anything else is a row this code never wrote.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "working" => Ok(JobStatus::Working),
            "completed" => Ok(JobStatus::Completed),
            "exception" => Ok(JobStatus::Exception),
            other => Err(crate::Error::Store(format!(
                "a job's status is {other:?}, not working, completed or exception"
            ))),
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the board holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredJob {
    /// The process (replica) that accepted and runs the job.
    pub replica: String,
    pub status: JobStatus,
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
        status: JobStatus,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_written_and_nothing_else_is_read() {
        for s in [
            JobStatus::Working,
            JobStatus::Completed,
            JobStatus::Exception,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()).unwrap(), s);
        }
        for bad in ["", "received", "Completed", "done"] {
            assert!(JobStatus::parse(bad).is_err(), "{bad}");
        }
    }
}
