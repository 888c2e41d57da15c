//! The model worker: one thread owns the models and runs only them. Jobs arrive through a
//! fair queue with one lane per request, served round-robin, so a 1-vs-1 query admitted behind
//! a 1-vs-5,000 job waits for a few of that job's work units, not for the job. Nothing is
//! refused here: admission happens per request (`Engine::admit`) and each request keeps a
//! bounded number of jobs queued, so the queue is bounded by admitted requests × that number.
//! Decoding and store I/O happen elsewhere (on tokio's blocking pool).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use candle_core::Device;
use tokio::sync::oneshot;
use wbia_lightglue_model::{
    weights, Aliked, Features, LightGlue, MatchResult, Precision, RgbImage,
};

use crate::{CacheStats, Config, Error, MatcherSettings, Result};

/// A pair for the worker to match, answered with the matches.
pub(crate) struct PairWork {
    pub query: Arc<Features>,
    pub database: Arc<Features>,
    pub config: Config,
    pub reply: oneshot::Sender<Result<MatchResult>>,
}

pub(crate) enum Job {
    Extract {
        image: RgbImage,
        config: Config,
        reply: oneshot::Sender<Result<Features>>,
    },
    Match(MatchWork),
    /// One pair with its matches, not only its score (for match pictures).
    Pair(PairWork),
}

impl Job {
    /// Whoever asked has gone (client disconnected, job cancelled): the work is dropped.
    fn abandoned(&self) -> bool {
        match self {
            Job::Extract { reply, .. } => reply.is_closed(),
            Job::Match(w) => w.reply.is_closed(),
            Job::Pair(w) => w.reply.is_closed(),
        }
    }
}

/// What the worker thread needs to build its models.
pub(crate) struct Settings {
    pub weights_dir: Option<PathBuf>,
    pub device: Device,
    pub precision: Precision,
    pub match_batch: usize,
}

/// Most queued matching jobs taken together into shared padded batches.
const MAX_JOBS_TOGETHER: usize = 16;

/// Pair scores of a query against a database. Several can share padded batches.
pub(crate) struct MatchWork {
    pub query: Arc<Features>,
    pub database: Vec<Arc<Features>>,
    pub config: Config,
    pub reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// Jobs in lanes (one per request), taken round-robin.
#[derive(Default)]
struct FairQueue {
    state: Mutex<Lanes>,
    wake: Condvar,
}

#[derive(Default)]
struct Lanes {
    lanes: VecDeque<(u64, VecDeque<Job>)>,
    len: usize,
    closed: bool,
}

impl FairQueue {
    fn push(&self, lane: u64, job: Job) -> Result<()> {
        let mut s = self.state.lock().map_err(|_| Error::WorkerGone)?;
        if s.closed {
            return Err(Error::WorkerGone);
        }
        match s.lanes.iter_mut().find(|(id, _)| *id == lane) {
            Some((_, jobs)) => jobs.push_back(job),
            None => s.lanes.push_back((lane, VecDeque::from([job]))),
        }
        s.len += 1;
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// The next job in round-robin order; waits when empty, `None` once closed.
    fn pop(&self, wait: bool) -> Option<Job> {
        let mut s = self.state.lock().ok()?;
        loop {
            if let Some((lane, mut jobs)) = s.lanes.pop_front() {
                let job = jobs.pop_front();
                if !jobs.is_empty() {
                    s.lanes.push_back((lane, jobs));
                }
                s.len -= usize::from(job.is_some());
                return job;
            }
            if s.closed || !wait {
                return None;
            }
            s = self.wake.wait(s).ok()?;
        }
    }

    fn len(&self) -> usize {
        self.state.lock().map(|s| s.len).unwrap_or(0)
    }

    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
        }
        self.wake.notify_all();
    }

    /// Closes the queue and takes out every job still queued. Under one lock, so no job can
    /// slip in after; a poisoned lock is still drained (its callers must not wait forever).
    fn close_and_drain(&self) -> Vec<Job> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed = true;
        s.len = 0;
        let jobs = std::mem::take(&mut s.lanes)
            .into_iter()
            .flat_map(|(_, jobs)| jobs)
            .collect();
        drop(s);
        self.wake.notify_all();
        jobs
    }
}

/// Owned by the worker thread and dropped when it ends, however it ends (its loop returning,
/// or a panic outside the per-batch `catch_unwind`): marks the worker dead and fails the
/// jobs still queued. Without it those callers would wait forever, later calls would queue
/// behind a thread that is gone, and the service would still look healthy.
struct Liveness {
    alive: Arc<AtomicBool>,
    queue: Arc<FairQueue>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        // Dropping the jobs drops their reply senders: each caller gets `WorkerGone`.
        let failed = self.queue.close_and_drain().len();
        if std::thread::panicking() {
            tracing::error!(
                jobs_failed = failed,
                "the model worker thread panicked and stopped: model calls now fail"
            );
        } else {
            tracing::info!(jobs_failed = failed, "the model worker thread stopped");
        }
    }
}

pub(crate) struct ModelWorker {
    queue: Arc<FairQueue>,
    /// False once the worker thread has ended.
    alive: Arc<AtomicBool>,
}

impl Drop for ModelWorker {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl ModelWorker {
    pub fn spawn(settings: Settings, stats: Arc<CacheStats>) -> Result<Self> {
        Self::spawn_with(move |jobs| {
            let mut models = Models::new(settings, stats);
            while let Some(job) = jobs.pop(true) {
                let mut batch = vec![job];
                // With batching on, matching jobs already waiting (other queries, other
                // requests) join this one's padded batches.
                if models.settings.match_batch > 1 && matches!(batch[0], Job::Match(_)) {
                    while batch.len() < MAX_JOBS_TOGETHER {
                        match jobs.pop(false) {
                            Some(next) => batch.push(next),
                            None => break,
                        }
                    }
                }
                let (live, gone): (Vec<Job>, Vec<Job>) =
                    batch.into_iter().partition(|j| !j.abandoned());
                models
                    .stats
                    .jobs_abandoned
                    .fetch_add(gone.len() as u64, Ordering::Relaxed);
                if live.len() > 1 {
                    models
                        .stats
                        .match_jobs_joined
                        .fetch_add(live.len() as u64 - 1, Ordering::Relaxed);
                }
                // A panic in a model (a candle assertion, say) fails this batch's callers
                // (their reply channels drop) instead of ending the thread for everyone.
                let run = std::panic::AssertUnwindSafe(|| models.run_all(live));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a model job panicked; its callers get an error");
                }
            }
        })
    }

    /// Starts the worker thread running `body` over the queue, with its [`Liveness`] guard.
    fn spawn_with(body: impl FnOnce(&FairQueue) + Send + 'static) -> Result<Self> {
        let queue = Arc::new(FairQueue::default());
        let alive = Arc::new(AtomicBool::new(true));
        let liveness = Liveness {
            alive: alive.clone(),
            queue: queue.clone(),
        };
        std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                let liveness = liveness;
                body(&liveness.queue);
            })
            .map_err(|_| Error::WorkerGone)?;
        Ok(Self { queue, alive })
    }

    /// Whether the worker thread is still running.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Jobs waiting for the worker now.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Queues a job in `lane` and waits for its answer. Dropping the returned future (a
    /// client that went away) leaves the job to be skipped, not run.
    pub async fn call<T>(
        &self,
        lane: u64,
        make: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T> {
        // Fails fast once the thread is gone (the closed queue refuses the job as well).
        if !self.alive() {
            return Err(Error::WorkerGone);
        }
        let (reply, answer) = oneshot::channel();
        self.queue.push(lane, make(reply))?;
        answer.await.map_err(|_| Error::WorkerGone)
    }
}

/// The models, loaded on first use: one ALIKED per variant and one LightGlue (in the worker's
/// precision); detection and matching thresholds come with each call.
struct Models {
    settings: Settings,
    stats: Arc<CacheStats>,
    extractors: HashMap<String, Aliked>,
    matcher: Option<LightGlue>,
}

impl Models {
    fn new(settings: Settings, stats: Arc<CacheStats>) -> Self {
        Self {
            settings,
            stats,
            extractors: HashMap::new(),
            matcher: None,
        }
    }

    /// Runs jobs taken from the queue together: matching jobs with the same matcher settings
    /// share batches, the others run one by one.
    fn run_all(&mut self, jobs: Vec<Job>) {
        let mut work = Vec::new();
        for job in jobs {
            match job {
                Job::Match(w) => work.push(w),
                other => self.run(other),
            }
        }
        while !work.is_empty() {
            let settings = self.matcher_settings(&work[0].config);
            let (group, rest): (Vec<_>, Vec<_>) = work
                .into_iter()
                .partition(|w| self.matcher_settings(&w.config) == settings);
            work = rest;
            self.run_matches(group);
        }
    }

    fn run(&mut self, job: Job) {
        // A reply nobody waits for any more (client gone) is simply dropped.
        match job {
            Job::Extract {
                image,
                config,
                reply,
            } => {
                let _ = reply.send(self.extract(&image, &config));
            }
            Job::Match(w) => self.run_matches(vec![w]),
            Job::Pair(w) => {
                let answer = self.match_one(&w.query, &w.database, &w.config);
                let _ = w.reply.send(answer);
            }
        }
    }

    /// One model per ALIKED variant, whatever the detection settings (they are per call).
    fn extract(&mut self, image: &RgbImage, config: &Config) -> Result<Features> {
        self.stats.extractions.fetch_add(1, Ordering::Relaxed);
        let arch = config.aliked_variant()?;
        if !self.extractors.contains_key(arch.name) {
            let dir = self.settings.weights_dir.as_deref();
            let path = weights::find_weights(dir, arch.weights_file)?;
            let model =
                Aliked::from_file_variant(path, arch, config.aliked(), &self.settings.device)?;
            tracing::info!(variant = arch.name, "loaded ALIKED");
            self.extractors.insert(arch.name.to_string(), model);
        }
        Ok(self.extractors[arch.name].extract_with(image, &config.aliked())?)
    }

    /// Matching jobs with the same matcher settings: every pair of every job matched
    /// together; one reply per job.
    fn run_matches(&mut self, group: Vec<MatchWork>) {
        let Some(config) = group.first().map(|w| w.config.clone()) else {
            return;
        };
        let pairs: Vec<(&Features, &Features)> = group
            .iter()
            .flat_map(|w| w.database.iter().map(|d| (w.query.as_ref(), d.as_ref())))
            .collect();
        let scores = match self.score_pairs(&pairs, &config) {
            Ok(scores) => scores,
            // One job's bad input must not fail the others: alone, each gets its own answer.
            Err(_) if group.len() > 1 => {
                for w in group {
                    self.run_matches(vec![w]);
                }
                return;
            }
            Err(e) => {
                if let Some(w) = group.into_iter().next() {
                    let _ = w.reply.send(Err(e));
                }
                return;
            }
        };
        let mut scores = scores.into_iter();
        for w in group {
            let mine: Vec<f32> = scores.by_ref().take(w.database.len()).collect();
            let _ = w.reply.send(Ok(mine));
        }
    }

    /// One pair's matches, computed as `score_pairs` scores it (so the picture's score is the
    /// pair's score).
    fn match_one(&mut self, q: &Features, d: &Features, config: &Config) -> Result<MatchResult> {
        let batch = self.settings.match_batch;
        let options = config.match_options();
        let matcher = self.matcher()?;
        let mut result = if batch > 1 {
            matcher.match_pairs(&[(q, d)], batch, &options)?
        } else {
            vec![matcher.match_pair(q, d, &options)?]
        };
        self.stats.pairs_matched.fetch_add(1, Ordering::Relaxed);
        Ok(result.pop().unwrap_or_default())
    }

    fn matcher_settings(&self, config: &Config) -> MatcherSettings {
        MatcherSettings::new(config, self.settings.precision, self.settings.match_batch)
    }

    /// With `match_batch` 1: pair by pair, with the configured adaptive depth/width, exactly
    /// as the plugin scores. Above 1: adaptivity off (`LightGlue::match_pairs`): padded
    /// batches of that many pairs on a GPU, pair by pair at full depth on the CPU, where
    /// padding has nothing to win (BENCHMARKS.md, 1-vs-N).
    fn score_pairs(
        &mut self,
        pairs: &[(&Features, &Features)],
        config: &Config,
    ) -> Result<Vec<f32>> {
        self.stats
            .pairs_matched
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        let batch = self.settings.match_batch;
        let options = config.match_options();
        let matcher = self.matcher()?;
        if batch > 1 {
            return Ok(matcher
                .match_pairs(pairs, batch, &options)?
                .iter()
                .map(|r| r.score())
                .collect());
        }
        pairs
            .iter()
            .map(|(q, d)| Ok(matcher.match_pair(q, d, &options)?.score()))
            .collect()
    }

    /// The LightGlue, loaded on first use.
    fn matcher(&mut self) -> Result<&LightGlue> {
        let model = match self.matcher.take() {
            Some(model) => model,
            None => {
                let s = &self.settings;
                let dir = s.weights_dir.as_deref();
                let path = weights::find_weights(dir, weights::LIGHTGLUE_FILE)?;
                let model = LightGlue::from_file_with_precision(path, &s.device, s.precision)?;
                if model.precision() == s.precision {
                    tracing::info!(precision = %s.precision, "loaded LightGlue");
                } else {
                    tracing::warn!(
                        requested = %s.precision,
                        precision = %model.precision(),
                        "loaded LightGlue: this CPU has no AVX-512 BF16, matching in f32"
                    );
                }
                model
            }
        };
        Ok(self.matcher.insert(model))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    fn extract(reply: oneshot::Sender<Result<Features>>) -> Job {
        Job::Extract {
            image: RgbImage::new(1, 1, vec![0; 3]).unwrap(),
            config: Config::default(),
            reply,
        }
    }

    /// A worker thread that dies outside `catch_unwind` with a job queued: the job's caller
    /// and every later caller get `WorkerGone` at once, and the worker reports itself dead.
    #[tokio::test]
    async fn a_dead_worker_fails_calls_at_once_and_says_so() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let worker = Arc::new(
            ModelWorker::spawn_with(move |_| {
                let _ = wait.recv();
                panic!("the model worker dies outside catch_unwind (expected by this test)");
            })
            .unwrap(),
        );
        assert!(worker.alive());
        let queued = tokio::spawn({
            let worker = worker.clone();
            async move { worker.call(1, extract).await }
        });
        while worker.depth() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go.send(()).unwrap();
        let answer = timeout(Duration::from_secs(10), queued)
            .await
            .expect("a job queued when the worker died must not hang")
            .unwrap();
        assert!(matches!(answer, Err(Error::WorkerGone)), "{answer:?}");
        assert!(!worker.alive());
        let later = timeout(Duration::from_secs(1), worker.call(2, extract))
            .await
            .expect("a call after the worker died must not hang");
        assert!(matches!(later, Err(Error::WorkerGone)), "{later:?}");
        assert_eq!(worker.depth(), 0);
    }
}
