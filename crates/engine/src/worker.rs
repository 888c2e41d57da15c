//! The model worker: one thread owns the models and runs jobs from a bounded queue, replying
//! on oneshot channels. Keeping inference off the async runtime means a 2-second match never
//! stalls HTTP handling, and the queue bound turns overload into a clear "retry later".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use bytes::Bytes;
use candle_core::Device;
use tokio::sync::oneshot;
use wbia_lightglue_model::{weights, Aliked, Features, LightGlue, Precision, RgbImage};

use crate::store::FeatureStore;
use crate::{CacheStats, Config, Error, FeatureKey, Result};

pub(crate) enum Job {
    /// Features of a chip: from the persisted store when it has `key`, else extracted (and
    /// stored).
    Extract {
        chip: Bytes,
        key: FeatureKey,
        config: Config,
        reply: oneshot::Sender<Result<Features>>,
    },
    ExtractDecoded {
        image: RgbImage,
        config: Config,
        reply: oneshot::Sender<Result<Features>>,
    },
    Match(MatchWork),
}

/// What the worker thread needs to build its models.
pub(crate) struct Settings {
    pub weights_dir: Option<PathBuf>,
    pub device: Device,
    pub precision: Precision,
    pub match_batch: usize,
}

/// A job's feature sets as the pair-score store names them: the query's digest and each
/// database entry's.
type Digests = (String, Vec<String>);

/// Most queued jobs taken together into shared matching batches.
const MAX_JOBS_TOGETHER: usize = 16;

/// Pair scores of a query against a database; with `keys` (the feature sets' keys), stored
/// scores are reused and new ones stored. Several can share padded batches.
pub(crate) struct MatchWork {
    pub query: Arc<Features>,
    pub database: Vec<Arc<Features>>,
    pub keys: Option<(FeatureKey, Vec<FeatureKey>)>,
    pub config: Config,
    pub reply: oneshot::Sender<Result<Vec<f32>>>,
}

pub(crate) struct ModelWorker {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

impl ModelWorker {
    pub fn spawn(
        settings: Settings,
        store: Option<FeatureStore>,
        stats: Arc<CacheStats>,
        capacity: usize,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let worker_depth = depth.clone();
        std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                let mut models = Models::new(settings, store, stats);
                while let Ok(job) = rx.recv() {
                    worker_depth.fetch_sub(1, Ordering::Relaxed);
                    let mut jobs = vec![job];
                    // With batching on, matching jobs already waiting (other queries, other
                    // requests) join this one's padded batches.
                    if models.settings.match_batch > 1 && matches!(jobs[0], Job::Match(_)) {
                        while jobs.len() < MAX_JOBS_TOGETHER {
                            match rx.try_recv() {
                                Ok(next) => {
                                    worker_depth.fetch_sub(1, Ordering::Relaxed);
                                    jobs.push(next);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    let joined = jobs.len() as u64 - 1;
                    models
                        .stats
                        .match_jobs_joined
                        .fetch_add(joined, Ordering::Relaxed);
                    models.run_all(jobs);
                }
            })
            .map_err(|_| Error::WorkerGone)?;
        Ok(Self {
            tx,
            depth,
            capacity,
        })
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queues a job built around a reply channel and waits for its answer.
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::QueueFull(self.capacity));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::WorkerGone);
            }
        }
        answer.await.map_err(|_| Error::WorkerGone)
    }
}

/// Models by the settings that shape them, loaded on first use.
struct Models {
    settings: Settings,
    store: Option<FeatureStore>,
    stats: Arc<CacheStats>,
    extractors: HashMap<String, Aliked>,
    matchers: HashMap<String, LightGlue>,
}

impl Models {
    fn new(settings: Settings, store: Option<FeatureStore>, stats: Arc<CacheStats>) -> Self {
        Self {
            settings,
            store,
            stats,
            extractors: HashMap::new(),
            matchers: HashMap::new(),
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
                chip,
                key,
                config,
                reply,
            } => {
                let _ = reply.send(self.stored_or_extract(&chip, &key, &config));
            }
            Job::ExtractDecoded {
                image,
                config,
                reply,
            } => {
                let _ = reply.send(self.extract(&image, &config));
            }
            Job::Match(w) => self.run_matches(vec![w]),
        }
    }

    fn stored_or_extract(
        &mut self,
        chip: &[u8],
        key: &FeatureKey,
        config: &Config,
    ) -> Result<Features> {
        if let Some(store) = &self.store {
            match store.get(key) {
                Ok(Some(f)) => {
                    self.stats.store_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(f);
                }
                Ok(None) => {}
                // A broken store slows us down but must not stop matching.
                Err(e) => tracing::warn!(error = %e, "feature store read failed"),
            }
        }
        let image = wbia_lightglue_model::decode_image(chip)?;
        let features = self.extract(&image, config)?;
        if let Some(store) = &self.store {
            if let Err(e) = store.put(key, &features) {
                tracing::warn!(error = %e, "feature store write failed");
            }
        }
        Ok(features)
    }

    fn extract(&mut self, image: &RgbImage, config: &Config) -> Result<Features> {
        self.stats.extractions.fetch_add(1, Ordering::Relaxed);
        let key = config.feature_key();
        if !self.extractors.contains_key(&key) {
            let dir = self.settings.weights_dir.as_deref();
            let path = weights::find_weights(dir, weights::ALIKED_FILE)?;
            let model = Aliked::from_file(path, config.aliked(), &self.settings.device)?;
            tracing::info!(settings = %key, "loaded ALIKED");
            self.extractors.insert(key.clone(), model);
        }
        Ok(self.extractors[&key].extract(image)?)
    }

    /// Matching jobs with the same matcher settings: scores from the store where it has them;
    /// every other pair of every job matched together, then stored; one reply per job.
    fn run_matches(&mut self, group: Vec<MatchWork>) {
        let Some(config) = group.first().map(|w| w.config.clone()) else {
            return;
        };
        let settings = self.matcher_settings(&config);
        let mut scores = Vec::with_capacity(group.len());
        let mut digests = Vec::with_capacity(group.len());
        for w in &group {
            let (stored, names) = self.stored_scores(w, &settings);
            scores.push(stored);
            digests.push(names);
        }
        // (job, database index) of every pair still to match.
        let todo: Vec<(usize, usize)> = scores
            .iter()
            .enumerate()
            .flat_map(|(j, s)| {
                (0..s.len())
                    .filter(|&i| s[i].is_none())
                    .map(move |i| (j, i))
            })
            .collect();
        let pairs: Vec<(&Features, &Features)> = todo
            .iter()
            .map(|&(j, i)| (group[j].query.as_ref(), group[j].database[i].as_ref()))
            .collect();
        let fresh = match self.score_pairs(&pairs, &config) {
            Ok(fresh) => fresh,
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
        let mut rows: Vec<(String, String, f32)> = Vec::new();
        for (&(j, i), s) in todo.iter().zip(fresh) {
            scores[j][i] = Some(s);
            if let Some((q, d)) = &digests[j] {
                rows.push((q.clone(), d[i].clone(), s));
            }
        }
        if let (Some(store), false) = (self.store.as_mut(), rows.is_empty()) {
            if let Err(e) = store.put_scores(&settings, &rows) {
                tracing::warn!(error = %e, "pair score store write failed");
            }
        }
        for (w, s) in group.into_iter().zip(scores) {
            let _ = w
                .reply
                .send(Ok(s.into_iter().map(|s| s.unwrap_or(0.0)).collect()));
        }
    }

    /// A job's stored pair scores (`None` where not stored) and its feature digests (`None`
    /// when there is no store or the job has no keys).
    fn stored_scores(&self, w: &MatchWork, settings: &str) -> (Vec<Option<f32>>, Option<Digests>) {
        let (Some(store), Some((qkey, dkeys))) = (self.store.as_ref(), w.keys.as_ref()) else {
            return (vec![None; w.database.len()], None);
        };
        let q = qkey.digest();
        let d: Vec<String> = dkeys.iter().map(FeatureKey::digest).collect();
        let scores: Vec<Option<f32>> = d
            .iter()
            .map(|d| {
                store.score(&q, d, settings).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "pair score store read failed");
                    None
                })
            })
            .collect();
        let hits = scores.iter().filter(|s| s.is_some()).count();
        self.stats
            .score_store_hits
            .fetch_add(hits as u64, Ordering::Relaxed);
        (scores, Some((q, d)))
    }

    /// Everything that changes a pair's score besides its two feature sets.
    fn matcher_settings(&self, config: &Config) -> String {
        let mode = if self.settings.match_batch > 1 {
            "batched"
        } else {
            "pairwise"
        };
        format!(
            "{:?}/{}/{mode}",
            config.lightglue(),
            self.settings.precision
        )
    }

    /// With `match_batch` 1: pair by pair, with the configured adaptive depth/width, exactly
    /// as the plugin scores. Above 1: padded batches of that many pairs with adaptivity off
    /// (`LightGlue::match_pairs`), for GPUs; measured slower than single pairs on CPU
    /// (BENCHMARKS.md).
    fn score_pairs(
        &mut self,
        pairs: &[(&Features, &Features)],
        config: &Config,
    ) -> Result<Vec<f32>> {
        let lg = config.lightglue();
        let key = format!("{lg:?}");
        if !self.matchers.contains_key(&key) {
            let dir = self.settings.weights_dir.as_deref();
            let path = weights::find_weights(dir, weights::LIGHTGLUE_FILE)?;
            let s = &self.settings;
            let model =
                LightGlue::from_file_with_precision(path, lg.clone(), &s.device, s.precision)?;
            tracing::info!(settings = %key, "loaded LightGlue");
            self.matchers.insert(key.clone(), model);
        }
        let matcher = &self.matchers[&key];
        self.stats
            .pairs_matched
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        if self.settings.match_batch > 1 {
            return Ok(matcher
                .match_pairs(pairs, self.settings.match_batch)?
                .iter()
                .map(|r| r.score())
                .collect());
        }
        pairs
            .iter()
            .map(|(q, d)| Ok(matcher.match_pair(q, d)?.score()))
            .collect()
    }
}
