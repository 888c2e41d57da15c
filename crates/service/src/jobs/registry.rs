//! The engine jobs this service knows: their state, progress and rendered result, bounded in
//! number and in bytes. A job id names one job for as long as it is remembered: it is never
//! given to a second job, so no client can replace another's result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use wbia_lightglue_engine::{Config, Progress};

/// Jobs remembered for status/result queries; the oldest finished ones are forgotten first.
pub const MAX_JOBS: usize = 10_000;
pub use wbia_lightglue_engine::job_board::JobStatus;

use crate::job_refusals::{valid_jobid, JobIdError};

#[derive(Clone, Debug)]
pub struct Job {
    pub status: JobStatus,
    /// `json_result` rendered as WBIA writes it: the identification result, or the error
    /// text as a JSON string. Kept as text: it is what is sent, and what is counted.
    pub result: Option<Arc<str>>,
    /// Stage and counts while the job works.
    pub progress: Option<Arc<Progress>>,
    /// Stops the job's task (`/api/engine/job/cancel/`).
    pub abort: Option<tokio::task::AbortHandle>,
}

impl Job {
    pub fn working(progress: Arc<Progress>, abort: tokio::task::AbortHandle) -> Self {
        Self {
            status: JobStatus::Working,
            result: None,
            progress: Some(progress),
            abort: Some(abort),
        }
    }

    pub fn ended(status: JobStatus, result: String) -> Self {
        Self {
            status,
            result: Some(result.into()),
            progress: None,
            abort: None,
        }
    }

    fn bytes(&self) -> usize {
        self.result.as_ref().map_or(0, |r| r.len())
    }
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Job>,
    /// Ids in the order they were accepted.
    order: VecDeque<String>,
    /// Bytes of all results held.
    bytes: usize,
}

pub struct JobStore {
    inner: Mutex<Jobs>,
    max_bytes: usize,
    /// Thumbnail references handed out in results, with the configuration each stands for
    /// (match pictures are matched under it).
    references: Mutex<HashMap<String, Config>>,
}

impl Default for JobStore {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl JobStore {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
            references: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn remember_reference(&self, reference: &str, config: &Config) {
        self.references
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reference.to_string(), config.clone());
    }

    pub fn knows_reference(&self, reference: &str) -> bool {
        self.reference_config(reference).is_some()
    }

    /// The configuration of a reference handed out since start.
    pub fn reference_config(&self, reference: &str) -> Option<Config> {
        self.references
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()
    }

    /// Whether `id` could be given to a new job now.
    pub fn check_new(&self, id: &str) -> Result<(), JobIdError> {
        if !valid_jobid(id) {
            return Err(JobIdError::Invalid);
        }
        if self.lock().by_id.contains_key(id) {
            return Err(JobIdError::Taken);
        }
        Ok(())
    }

    /// Records a new job under `id`, unless the id is taken.
    pub fn insert(&self, id: &str, job: Job) -> Result<(), JobIdError> {
        if !valid_jobid(id) {
            return Err(JobIdError::Invalid);
        }
        let mut jobs = self.lock();
        if jobs.by_id.contains_key(id) {
            return Err(JobIdError::Taken);
        }
        jobs.bytes += job.bytes();
        jobs.by_id.insert(id.to_string(), job);
        jobs.order.push_back(id.to_string());
        self.evict(&mut jobs);
        Ok(())
    }

    /// Sets a working job's final state; false (and nothing written) when it is not working
    /// any more, so that a cancel and the job's own end cannot overwrite each other.
    pub fn end(&self, id: &str, job: Job) -> bool {
        let mut jobs = self.lock();
        let added = job.bytes();
        let Some(current) = jobs.by_id.get_mut(id) else {
            return false;
        };
        if current.status != JobStatus::Working {
            return false;
        }
        let removed = current.bytes();
        *current = job;
        jobs.bytes = jobs.bytes + added - removed;
        // Finished jobs are forgotten in the order they finished: the newest result is the
        // one its client is about to fetch.
        if let Some(at) = jobs.order.iter().position(|o| o == id) {
            jobs.order.remove(at);
        }
        jobs.order.push_back(id.to_string());
        self.evict(&mut jobs);
        true
    }

    /// Forgets the finished jobs that finished first while there are too many or their
    /// results hold too many bytes. Working jobs stay (admission bounds how many there are),
    /// and so does the newest entry (the runner keeps a single result under the bound).
    fn evict(&self, jobs: &mut Jobs) {
        let mut position = 0;
        while (jobs.order.len() > MAX_JOBS || jobs.bytes > self.max_bytes)
            && position + 1 < jobs.order.len()
        {
            let id = &jobs.order[position];
            if jobs.by_id[id].status == JobStatus::Working {
                position += 1;
                continue;
            }
            let id = jobs.order.remove(position).expect("in range");
            if let Some(job) = jobs.by_id.remove(&id) {
                jobs.bytes -= job.bytes();
                tracing::debug!(jobid = %id, "finished job forgotten (job store full)");
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest result the store holds.
    pub fn max_result_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes of the results held.
    pub fn result_bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().by_id.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(text: &str) -> Job {
        Job::ended(JobStatus::Completed, text.to_string())
    }

    #[test]
    fn an_id_is_never_given_twice() {
        let store = JobStore::new(usize::MAX);
        store.insert("a", done("1")).unwrap();
        assert_eq!(store.insert("a", done("2")), Err(JobIdError::Taken));
        assert_eq!(store.check_new("a"), Err(JobIdError::Taken));
        assert_eq!(store.get("a").unwrap().result.as_deref(), Some("1"));
        // A finished job is not ended again.
        assert!(!store.end("a", done("3")));
        assert_eq!(store.get("a").unwrap().result.as_deref(), Some("1"));
    }

    #[test]
    fn results_are_bounded_in_bytes_oldest_finished_first() {
        let store = JobStore::new(100);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let abort = rt.block_on(async { tokio::spawn(async {}).abort_handle() });
        store
            .insert("w", Job::working(Arc::default(), abort))
            .unwrap();
        for i in 0..10 {
            store
                .insert(&format!("d{i}"), done(&"x".repeat(30)))
                .unwrap();
            assert!(store.result_bytes() <= 100, "{}", store.result_bytes());
        }
        // Three 30-byte results fit; the working job is kept although it is the oldest.
        assert_eq!(store.ids(), ["d7", "d8", "d9", "w"]);
        assert!(store.end("w", done(&"y".repeat(50))));
        assert!(store.result_bytes() <= 100);
        assert_eq!(store.ids(), ["d9", "w"]);
        // The newest result is kept whatever it costs (the runner bounds it); the rest go.
        store.insert("big", done(&"z".repeat(100))).unwrap();
        assert_eq!(store.ids(), ["big"]);
        assert_eq!(store.result_bytes(), 100);
    }

    #[test]
    fn at_most_max_jobs_are_remembered() {
        let store = JobStore::new(usize::MAX);
        for i in 0..MAX_JOBS + 5 {
            store.insert(&format!("j{i}"), done("r")).unwrap();
        }
        assert_eq!(store.len(), MAX_JOBS);
        assert!(store.get("j0").is_none());
        assert!(store.get(&format!("j{}", MAX_JOBS + 4)).is_some());
    }
}
