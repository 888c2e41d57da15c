//! The matching engine behind the service: configuration, the model worker thread and its
//! bounded queue, the feature cache, and ranking. It knows nothing of HTTP.

pub mod config;
pub mod evaluate;
pub mod scoring;
pub mod store;
mod worker;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_model::{Features, Precision};

pub use config::{Config, ConfigDir};
pub use scoring::{rank, NameScore, QueryResult, ScoredAnnot};
use worker::{Job, MatchWork, ModelWorker};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] wbia_lightglue_model::Error),
    #[error("annotation {uuid}: {source}")]
    Annotation {
        uuid: Uuid,
        source: wbia_lightglue_model::Error,
    },
    #[error("the model queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("the model worker has stopped")]
    WorkerGone,
    #[error("feature store: {0}")]
    Store(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Directory with the converted weights (`None`: the model crate's search path).
    pub weights_dir: Option<PathBuf>,
    /// Jobs that may wait for the model worker before requests are refused.
    pub queue_capacity: usize,
    /// Feature sets kept in memory.
    pub cache_capacity: usize,
    /// Directory of the persisted feature store (`None`: memory only).
    pub data_dir: Option<PathBuf>,
    /// Where the models run.
    pub device: candle_core::Device,
    /// Arithmetic of LightGlue's transformer layers.
    pub precision: Precision,
    /// Database annotations matched together in one padded batch. 1 matches pair by pair
    /// with adaptive depth and width, exactly as the plugin does; above 1, batches run every
    /// layer on every point (adaptivity off), which pays on a GPU.
    pub match_batch: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            weights_dir: None,
            queue_capacity: 64,
            cache_capacity: Config::default().feature_cache_max_size,
            data_dir: None,
            device: candle_core::Device::Cpu,
            precision: Precision::F32,
            match_batch: 1,
        }
    }
}

/// Features are cached by annotation, by the settings that shape them, and by the SHA-256 of
/// the chip bytes: a chip that WBIA re-renders (new bbox, theta or image) has new bytes and so
/// a new key, and is never served stale features.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FeatureKey {
    pub(crate) annot: Uuid,
    pub(crate) settings: String,
    pub(crate) chip: [u8; 32],
}

/// Where and how the models run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeInfo {
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub precision: Precision,
    pub match_batch: usize,
}

impl FeatureKey {
    /// Hex SHA-256 of the key's parts: how pair scores name their feature sets.
    pub(crate) fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.annot.as_bytes());
        h.update((self.settings.len() as u64).to_le_bytes());
        h.update(self.settings.as_bytes());
        h.update(self.chip);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An annotation's features with the key they were computed under (what the pair-score store
/// needs to recognise them).
#[derive(Clone, Debug)]
pub struct AnnotFeatures {
    pub(crate) key: FeatureKey,
    pub features: Arc<Features>,
}

/// Cache counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Found in memory.
    pub hits: AtomicU64,
    /// Not in memory.
    pub misses: AtomicU64,
    /// Not in memory but in the persisted store.
    pub store_hits: AtomicU64,
    /// Computed by ALIKED.
    pub extractions: AtomicU64,
    /// Pair scores found in the persisted store.
    pub score_store_hits: AtomicU64,
    /// Pairs run through LightGlue.
    pub pairs_matched: AtomicU64,
    /// Matching jobs that joined another job's padded batches (`match_batch` > 1).
    pub match_jobs_joined: AtomicU64,
}

pub struct Engine {
    worker: ModelWorker,
    /// Device, precision and batching, as `/info` reports them.
    pub runtime: RuntimeInfo,
    cache: Mutex<lru::LruCache<FeatureKey, AnnotFeatures>>,
    pub cache_stats: Arc<CacheStats>,
}

impl Engine {
    /// Starts the model worker thread. Models load lazily, once per distinct configuration.
    pub fn start(options: EngineOptions) -> Result<Self> {
        let capacity = NonZeroUsize::new(options.cache_capacity)
            .ok_or_else(|| Error::Config("cache capacity must be positive".into()))?;
        let store = match &options.data_dir {
            Some(dir) => Some(store::FeatureStore::open(dir)?),
            None => None,
        };
        let cache_stats = Arc::new(CacheStats::default());
        let match_batch = options.match_batch.max(1);
        let runtime = RuntimeInfo {
            device: wbia_lightglue_model::device_name(&options.device),
            precision: options.precision,
            match_batch,
        };
        Ok(Self {
            runtime,
            worker: ModelWorker::spawn(
                worker::Settings {
                    weights_dir: options.weights_dir,
                    device: options.device,
                    precision: options.precision,
                    match_batch,
                },
                store,
                cache_stats.clone(),
                options.queue_capacity.max(1),
            )?,
            cache: Mutex::new(lru::LruCache::new(capacity)),
            cache_stats,
        })
    }

    /// Loads the models of `config` and runs them once, so the first request is not slow.
    pub async fn warm_up(&self, config: &Config) -> Result<()> {
        let image = wbia_lightglue_model::RgbImage::new(64, 48, vec![128; 64 * 48 * 3])?;
        let f = Arc::new(
            self.worker
                .call(|reply| Job::ExtractDecoded {
                    image,
                    config: config.clone(),
                    reply,
                })
                .await??,
        );
        self.worker
            .call(|reply| {
                Job::Match(MatchWork {
                    query: f.clone(),
                    database: vec![f],
                    keys: None,
                    config: config.clone(),
                    reply,
                })
            })
            .await??;
        Ok(())
    }

    pub fn cached_features(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Features of an annotation's chip, from the cache or computed on the worker.
    pub async fn features(
        &self,
        annot: Uuid,
        chip: Bytes,
        config: &Config,
    ) -> Result<AnnotFeatures> {
        let key = FeatureKey {
            annot,
            settings: config.feature_key(),
            chip: Sha256::digest(&chip).into(),
        };
        if let Some(f) = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(&key).cloned())
        {
            self.cache_stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(f);
        }
        self.cache_stats.misses.fetch_add(1, Ordering::Relaxed);
        let features = self
            .worker
            .call(|reply| Job::Extract {
                chip,
                key: key.clone(),
                config: config.clone(),
                reply,
            })
            .await?
            .map_err(|source| match source {
                Error::Model(source) => Error::Annotation {
                    uuid: annot,
                    source,
                },
                other => other,
            })?;
        let features = AnnotFeatures {
            key: key.clone(),
            features: Arc::new(features),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(key, features.clone());
        }
        Ok(features)
    }

    /// Pair scores (sum of match confidences) of one query against each database entry;
    /// pairs scored before (persisted store) are not matched again.
    pub async fn scores(
        &self,
        query: &AnnotFeatures,
        database: &[AnnotFeatures],
        config: &Config,
    ) -> Result<Vec<f32>> {
        let keys = (
            query.key.clone(),
            database.iter().map(|d| d.key.clone()).collect(),
        );
        self.worker
            .call(|reply| {
                Job::Match(MatchWork {
                    query: query.features.clone(),
                    database: database.iter().map(|d| d.features.clone()).collect(),
                    keys: Some(keys),
                    config: config.clone(),
                    reply,
                })
            })
            .await?
    }

    /// Jobs waiting for the worker now.
    pub fn queue_depth(&self) -> usize {
        self.worker.depth()
    }
}
