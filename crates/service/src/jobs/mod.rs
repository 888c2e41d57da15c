//! Engine jobs, accepted → run → finished: a job is refused at once (never accepted only to
//! fail) when its id, callback or annotations are unusable or the engine is full; then it runs
//! in the background, its result document is rendered and kept (bounded in bytes), its final
//! state is written to the job board for the other replicas, and its callback is posted.
//! What the result document looks like is the HTTP layer's (`JobDocuments`).

mod board;
mod registry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;
use wbia_lightglue_engine::job_board::StoredJob;
use wbia_lightglue_engine::metrics::Histogram;
use wbia_lightglue_engine::{Config, Progress, Ticket};

pub use board::PUBLISH_EVERY;
pub use registry::{Job, JobStatus, JobStore, MAX_JOBS};

use crate::job_refusals::{CallbackRefused, CancelRefused, JobIdError, JobIdRefused};
use crate::{Callback, Computed, Error, Identifier, Result, RunContext, WbiaJobs};

/// What a job request asks for.
pub struct JobSpec {
    pub jobid: String,
    pub query: Uuid,
    /// `None`: every annotation of the query's species.
    pub database: Option<Vec<Uuid>>,
    /// Echo the query in the database (WBIA's `include_qaid_in_daids`); it is never scored
    /// against itself.
    pub include_query: bool,
    pub config: Config,
    /// The request's `query_config_dict`, echoed in the result.
    pub query_config: Value,
    pub callback: Option<Callback>,
}

/// A job that ran to its end, for its result document.
pub struct FinishedRun<'a> {
    pub computed: &'a Computed,
    /// WBIA's name rowid of every annotation (`None`: unnamed).
    pub name_rowids: &'a [(Uuid, Option<i64>)],
    /// The query's own name (`None`: unnamed).
    pub query_name: Option<&'a str>,
    pub queries: &'a [Uuid],
    /// The database as accepted (the query included when echoed).
    pub database: &'a [Uuid],
    pub config: &'a Config,
    pub query_config: &'a Value,
}

/// How a job's `json_result` is written: WBIA's result document, and the text of a failure.
pub trait JobDocuments: Send + Sync {
    fn completed(&self, run: &FinishedRun<'_>) -> String;
    fn failed(&self, error: Error) -> String;
}

/// Limits and policies of jobs.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Hosts a job's `callback_url` may name; `None` allows any, as WBIA does.
    pub callback_hosts: Option<Vec<String>>,
    /// With a shared store: a working job whose replica has published nothing for this long
    /// ends as `exception` when any replica reads it.
    pub job_lease: Duration,
}

/// Counters of jobs, for `/metrics`.
#[derive(Default)]
pub struct JobMetrics {
    /// Accepted to finished.
    pub job_seconds: Histogram,
    /// Callbacks delivered, and those that failed after every retry.
    pub callbacks_sent: AtomicU64,
    pub callbacks_failed: AtomicU64,
}

/// Runs engine jobs and answers for them.
pub struct JobRunner {
    identifier: Arc<Identifier>,
    jobs: JobStore,
    wbia_jobs: WbiaJobs,
    options: JobOptions,
    documents: Box<dyn JobDocuments>,
    metrics: JobMetrics,
}

impl JobRunner {
    pub fn new(
        identifier: Arc<Identifier>,
        jobs: JobStore,
        wbia_jobs: WbiaJobs,
        options: JobOptions,
        documents: Box<dyn JobDocuments>,
    ) -> Self {
        Self {
            identifier,
            jobs,
            wbia_jobs,
            options,
            documents,
            metrics: JobMetrics::default(),
        }
    }

    /// The jobs this process remembers.
    pub fn jobs(&self) -> &JobStore {
        &self.jobs
    }

    pub fn metrics(&self) -> &JobMetrics {
        &self.metrics
    }

    /// WBIA's own engine jobs, and the callbacks of ours.
    pub fn wbia_jobs(&self) -> &WbiaJobs {
        &self.wbia_jobs
    }

    /// This process's name among the replicas (jobs record who runs them).
    fn replica(&self) -> &str {
        &self.identifier.split_options().replica
    }

    /// Validates the request, resolves its database, admits it (or refuses it now, never
    /// later as a failed job), claims its id on the job board and runs it in the background.
    pub async fn accept(self: &Arc<Self>, spec: JobSpec) -> Result<String> {
        self.jobs
            .check_new(&spec.jobid)
            .map_err(|e| JobIdRefused::new(&spec.jobid, e))?;
        if let Some(callback) = &spec.callback {
            self.check_callback(&callback.url)?;
        }
        let annotations = self.identifier.annotations();
        // Unknown annotations are refused now, as WBIA's `web_check_uuids` does (600), not
        // accepted as a job that can only fail.
        let mut known = vec![spec.query];
        known.extend(spec.database.iter().flatten());
        annotations.check_known(&known).await?;
        // A null or absent list means every annotation of the query's species, as in WBIA;
        // resolved before admission, which needs the pair count.
        let mut database = match spec.database {
            Some(list) => list,
            None => annotations.same_species(spec.query).await?,
        };
        if spec.include_query && !database.contains(&spec.query) {
            database.push(spec.query);
        }
        let queries = vec![spec.query];
        let ticket = self.identifier.admit(&queries, &database)?;
        // Unique across replicas too (a no-op without a shared store).
        if !self.claim(&spec.jobid).await? {
            return Err(JobIdRefused::new(&spec.jobid, JobIdError::Taken).into());
        }
        let run = Run {
            jobid: spec.jobid,
            queries,
            database,
            config: spec.config,
            query_config: spec.query_config,
            callback: spec.callback,
        };
        self.spawn(run, ticket)
    }

    /// A callback must be an http(s) URL and, when `--callback-hosts` is set, name one of them.
    fn check_callback(&self, url: &str) -> std::result::Result<(), CallbackRefused> {
        let parsed = reqwest::Url::parse(url).map_err(|e| CallbackRefused::NotAUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CallbackRefused::NotHttp {
                url: url.to_string(),
            });
        }
        if let Some(allowed) = &self.options.callback_hosts {
            let host = parsed.host_str().unwrap_or_default();
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
                return Err(CallbackRefused::HostNotAllowed {
                    host: host.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Registers the job as working and runs it in the background.
    fn spawn(self: &Arc<Self>, run: Run, ticket: Ticket) -> Result<String> {
        let jobid = run.jobid.clone();
        let progress = Arc::new(Progress::default());
        let runner = self.clone();
        let task_progress = progress.clone();
        // Registered before it can finish, so that its final state is never overwritten.
        let slot = Arc::new(tokio::sync::Notify::new());
        let registered = slot.clone();
        let task = tokio::spawn(async move {
            registered.notified().await;
            let accepted = Instant::now();
            let publisher = tokio::spawn(
                runner
                    .clone()
                    .publish_progress(run.jobid.clone(), task_progress.clone()),
            );
            let job = runner.execute(&run, ticket, &task_progress).await;
            runner.metrics.job_seconds.since(accepted);
            publisher.abort();
            runner.finish(&run.jobid, job, run.callback.as_ref()).await;
        });
        if let Err(e) = self
            .jobs
            .insert(&jobid, Job::working(progress, task.abort_handle()))
        {
            // Taken since the check above by a request racing this one.
            task.abort();
            return Err(JobIdRefused::new(&jobid, e).into());
        }
        slot.notify_one();
        Ok(jobid)
    }

    /// Runs one job to its end: its result document, or the error it ended with.
    async fn execute(&self, run: &Run, ticket: Ticket, progress: &Progress) -> Job {
        let context = RunContext {
            admitted: Some(&ticket),
            progress: Some(progress),
            job: Some(&run.jobid),
        };
        let outcome = async {
            let computed = self
                .identifier
                .identify(&run.queries, &run.database, &run.config, context)
                .await?;
            // Only the job result reports name ids; the synchronous endpoint does not need them.
            let annots: Vec<Uuid> = computed.aids.iter().map(|(u, _)| *u).collect();
            let nids = self.identifier.annotations().name_rowids(&annots).await?;
            let name_rowids: Vec<(Uuid, Option<i64>)> = annots.into_iter().zip(nids).collect();
            Ok::<_, Error>((computed, name_rowids))
        }
        .await;
        drop(ticket);
        let failed =
            |text: String| Job::ended(JobStatus::Exception, Value::String(text).to_string());
        let (computed, name_rowids) = match outcome {
            Ok(found) => found,
            Err(e) => return failed(self.documents.failed(e)),
        };
        // WBIA reports the query's own name (`qname`, `orig_name_list`).
        let query_name = computed.names.get(&run.queries[0]).cloned().flatten();
        let rendered = self.documents.completed(&FinishedRun {
            computed: &computed,
            name_rowids: &name_rowids,
            query_name: query_name.as_deref(),
            queries: &run.queries,
            database: &run.database,
            config: &run.config,
            query_config: &run.query_config,
        });
        let limit = self.jobs.max_result_bytes();
        if rendered.len() > limit {
            return failed(format!(
                "the result takes {} bytes, more than this service keeps for one job ({limit}, \
                 --max-job-result-bytes); send a smaller database",
                rendered.len()
            ));
        }
        Job::ended(JobStatus::Completed, rendered)
    }

    /// Records a job's end, unless it has ended already (cancelled meanwhile), and then posts
    /// the callback, as WBIA's engine does.
    async fn finish(&self, id: &str, job: Job, callback: Option<&Callback>) {
        let status = job.status;
        let result = job.result.clone();
        if !self.jobs.end(id, job) {
            return;
        }
        self.publish_final(id, status, result.clone()).await;
        tracing::info!(jobid = %id, status = status.as_str(), "job finished");
        let Some(callback) = callback else { return };
        let rendered = result.as_deref().unwrap_or("null");
        match self
            .wbia_jobs
            .announce(callback, id, status.as_str(), rendered)
            .await
        {
            Ok(()) => {
                self.metrics.callbacks_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .callbacks_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(jobid = %id, error = %e, "callback failed after retries");
            }
        }
    }

    /// Ends working job `id` as cancelled, or says why it cannot be.
    pub async fn cancel(&self, id: &str) -> std::result::Result<(), CancelRefused> {
        let cancelled = Job::ended(
            JobStatus::Exception,
            Value::String("cancelled by request".into()).to_string(),
        );
        let abort = self.jobs.get(id).and_then(|j| j.abort);
        let result = cancelled.result.clone();
        if self.jobs.end(id, cancelled) {
            if let Some(abort) = abort {
                abort.abort();
            }
            self.publish(id, JobStatus::Exception, None, result).await;
            tracing::info!(jobid = %id, "job cancelled");
            return Ok(());
        }
        let jobid = id.to_string();
        if let Some(job) = self.jobs.get(id) {
            return Err(CancelRefused::Ended {
                jobid,
                status: job.status,
            });
        }
        Err(match self.lookup(id).await {
            Some(job) if job.status != JobStatus::Working => CancelRefused::Ended {
                jobid,
                status: job.status,
            },
            Some(job) => CancelRefused::Elsewhere {
                jobid,
                replica: job.replica,
                status: job.status,
            },
            None => CancelRefused::Unknown { jobid },
        })
    }

    /// A job this process runs or ran, else as the job board has it (another replica's, or
    /// an earlier process's); `None` when neither knows it.
    pub async fn find(&self, id: &str) -> Option<FoundJob> {
        if let Some(job) = self.jobs.get(id) {
            return Some(FoundJob::Here(job));
        }
        self.lookup(id).await.map(FoundJob::OnBoard)
    }

    /// Every job id this process and the job board know (every replica's), sorted.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let mut ids = self.jobs.ids();
        if let Some(all) = self.board_ids().await {
            ids.extend(all?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// Where a job was found.
pub enum FoundJob {
    Here(Job),
    /// As its replica last published it.
    OnBoard(StoredJob),
}

/// One accepted job: what it matches and how, and what its result echoes.
struct Run {
    jobid: String,
    queries: Vec<Uuid>,
    database: Vec<Uuid>,
    config: Config,
    query_config: Value,
    callback: Option<Callback>,
}
