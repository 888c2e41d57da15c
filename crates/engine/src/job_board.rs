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

/// A chunk of a split job, as a replica takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TakenChunk {
    pub jobid: String,
    pub chunk: i32,
    /// What to match (the job's own encoding).
    pub request: String,
    /// 1 the first time; more when a replica died holding it (its lease expired).
    pub attempts: i32,
}

/// A chunk's state, as the job's replica polls it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkState {
    pub chunk: i32,
    pub progress: ChunkProgress,
}

/// Where a chunk is (the `state` column, with `scores` or `error`).
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkProgress {
    /// Queued, or given back by a busy replica.
    Pending,
    /// A replica works on it under a lease.
    Taken,
    /// Matched: the chunk's answer as its worker wrote it.
    Done {
        scores: String,
    },
    Failed {
        error: String,
    },
}

/// A split job's chunks, queued for every replica sharing the store (PostgreSQL): the accepting
/// replica queues them and watches them, any replica takes one under a lease, renews it while
/// it works and records the outcome; a chunk whose lease expires is taken again.
pub trait ChunkQueue: Send + Sync {
    /// Queues a job's chunks (`requests[i]` is chunk i).
    fn add_chunks(&self, jobid: &str, requests: &[String]) -> Result<()>;

    /// Takes the oldest chunk that is pending or whose lease has expired, for `owner`, for
    /// `lease`; no two replicas get the same one. Chunks of jobs that have ended are left.
    fn take_chunk(&self, owner: &str, lease: Duration) -> Result<Option<TakenChunk>>;

    /// Extends `owner`'s lease on a chunk; `false` when it is no longer its own.
    fn renew_chunk(&self, jobid: &str, chunk: i32, owner: &str, lease: Duration) -> Result<bool>;

    /// Records a chunk's outcome (`scores`, or `error`) if `owner` still holds it.
    fn end_chunk(
        &self,
        jobid: &str,
        chunk: i32,
        owner: &str,
        outcome: std::result::Result<&str, &str>,
    ) -> Result<bool>;

    /// Gives a taken chunk back untouched (its replica is busy): pending again, at once.
    fn release_chunk(&self, jobid: &str, chunk: i32, owner: &str) -> Result<()>;

    /// Every chunk of a job, in order.
    fn chunks(&self, jobid: &str) -> Result<Vec<ChunkState>>;

    /// Forgets a job's chunks (merged, or the job ended).
    fn drop_chunks(&self, jobid: &str) -> Result<()>;
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
