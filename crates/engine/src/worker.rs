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
    /// Pair scores; with `keys` (the feature sets' keys), stored scores are reused and new
    /// ones stored.
    Match {
        query: Arc<Features>,
        database: Vec<Arc<Features>>,
        keys: Option<(FeatureKey, Vec<FeatureKey>)>,
        config: Config,
        reply: oneshot::Sender<Result<Vec<f32>>>,
    },
}

/// What the worker thread needs to build its models.
pub(crate) struct Settings {
    pub weights_dir: Option<PathBuf>,
    pub device: Device,
    pub precision: Precision,
    pub match_batch: usize,
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
                    models.run(job);
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
            Job::Match {
                query,
                database,
                keys,
                config,
                reply,
            } => {
                let _ = reply.send(self.stored_or_match(&query, &database, keys, &config));
            }
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

    /// Scores from the store where it has them; the rest matched, then stored.
    fn stored_or_match(
        &mut self,
        query: &Arc<Features>,
        database: &[Arc<Features>],
        keys: Option<(FeatureKey, Vec<FeatureKey>)>,
        config: &Config,
    ) -> Result<Vec<f32>> {
        let (Some(store), Some((qkey, dkeys))) = (self.store.as_ref(), keys) else {
            return self.match_all(query, database, config);
        };
        let matcher = self.matcher_settings(config);
        let q = qkey.digest();
        let digests: Vec<String> = dkeys.iter().map(FeatureKey::digest).collect();
        let mut scores: Vec<Option<f32>> = digests
            .iter()
            .map(|d| match store.score(&q, d, &matcher) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "pair score store read failed");
                    None
                }
            })
            .collect();
        let hits = scores.iter().filter(|s| s.is_some()).count();
        self.stats
            .score_store_hits
            .fetch_add(hits as u64, Ordering::Relaxed);
        let todo: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_none()).collect();
        if !todo.is_empty() {
            let subset: Vec<Arc<Features>> = todo.iter().map(|&i| database[i].clone()).collect();
            let fresh = self.match_all(query, &subset, config)?;
            let rows: Vec<(String, String, f32)> = todo
                .iter()
                .zip(&fresh)
                .map(|(&i, &s)| (q.clone(), digests[i].clone(), s))
                .collect();
            for (&i, s) in todo.iter().zip(fresh) {
                scores[i] = Some(s);
            }
            if let Some(store) = self.store.as_mut() {
                if let Err(e) = store.put_scores(&matcher, &rows) {
                    tracing::warn!(error = %e, "pair score store write failed");
                }
            }
        }
        Ok(scores.into_iter().map(|s| s.unwrap_or(0.0)).collect())
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
    /// as the plugin scores. Above 1: padded batches of that many database annotations with
    /// adaptivity off (`LightGlue::match_batch`), for GPUs; measured slower than single pairs
    /// on CPU (BENCHMARKS.md).
    fn match_all(
        &mut self,
        query: &Features,
        database: &[Arc<Features>],
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
            .fetch_add(database.len() as u64, Ordering::Relaxed);
        if self.settings.match_batch > 1 {
            let refs: Vec<&Features> = database.iter().map(|f| f.as_ref()).collect();
            return Ok(matcher
                .match_batch(query, &refs, self.settings.match_batch)?
                .iter()
                .map(|r| r.score())
                .collect());
        }
        database
            .iter()
            .map(|f| Ok(matcher.match_pair(query, f)?.score()))
            .collect()
    }
}
