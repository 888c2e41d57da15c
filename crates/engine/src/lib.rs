//! The matching engine behind the service: configuration, admission, the identification
//! pipeline (chips → features → pair scores), the model worker thread, the feature cache and
//! store, and ranking. It knows nothing of HTTP: chips come from a [`ChipSource`], errors are
//! this crate's [`Error`], mapped to WBIA's codes by the server.

mod cache;
pub mod calibration;
pub mod config;
pub mod evaluate;
pub mod job_board;
pub mod metrics;
mod pairs;
pub mod pg_store;
mod pipeline;
pub mod scoring;
pub mod store;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_model::{Features, Precision};

pub use calibration::Calibration;
pub use config::{Config, ConfigDir, Fusion, ModelName, MAX_ENSEMBLE};
pub use pairs::PairMatches;
pub use pipeline::{
    Admission, Annot, Chip, ChipPixels, ChipSource, FileChips, Identification, MemberScores,
    PairScore, Progress, ProgressSnapshot, Skipped, SourceError, Ticket, UnusableChips, WbiaChip,
    CHIPS_IN_FLIGHT,
};
pub use scoring::{rank, rank_all, NameScore, QueryResult, ScoredAnnot};
pub use wbia_lightglue_model::Rotation;
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
    #[error("chip of annotation {uuid}: {cause}")]
    Source { uuid: Uuid, cause: SourceError },
    /// An image the caller sent (not an annotation's chip) that cannot be used.
    #[error("image {name}: {source}")]
    Image {
        name: String,
        source: wbia_lightglue_model::Error,
    },
    #[error("busy: {reason}; retry in {retry_after_secs} s")]
    Busy {
        reason: String,
        retry_after_secs: u64,
    },
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
    /// Requests (synchronous queries and engine jobs) admitted at once; more are refused with
    /// "busy" (HTTP 429) before any work starts.
    pub max_requests: usize,
    /// Pairs of the admitted requests (each counted whole until it ends) above which a new
    /// request is refused.
    pub max_pending_pairs: usize,
    /// Feature sets kept in memory, at most.
    pub cache_capacity: usize,
    /// Bytes of features kept in memory, at most.
    pub cache_bytes: usize,
    /// Directory of the persisted feature store (`None`: memory only).
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite in `data_dir`: features, pair scores and engine jobs
    /// shared by every replica pointed at the same database.
    pub database_url: Option<String>,
    /// Where the models run.
    pub device: candle_core::Device,
    /// Arithmetic of LightGlue's transformer layers.
    pub precision: Precision,
    /// Database annotations matched together in one padded batch. 1 matches pair by pair
    /// with adaptive depth and width, exactly as the plugin does; above 1, batches run every
    /// layer on every point (adaptivity off), which pays on a GPU.
    pub match_batch: usize,
    /// Download every chip and key features by its bytes' SHA-256, even when WBIA's image
    /// UUID, bbox and theta identify it (for a WBIA whose chips change without those changing).
    pub verify_chip_bytes: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            weights_dir: None,
            max_requests: 64,
            max_pending_pairs: 1_000_000,
            cache_capacity: Config::default().feature_cache_max_size,
            cache_bytes: 2 << 30,
            data_dir: None,
            database_url: None,
            device: candle_core::Device::Cpu,
            precision: Precision::F32,
            match_batch: 1,
            verify_chip_bytes: false,
        }
    }
}

/// What a chip is, without its bytes where WBIA can say it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ChipId {
    /// SHA-256 of the chip bytes.
    Bytes([u8; 32]),
    /// WBIA's chip of an image region: image UUID (WBIA derives it from the image content),
    /// bbox and theta; the chip rendering settings are WBIA's defaults.
    Wbia(WbiaChip),
}

/// Features are cached and stored by annotation, by the settings that shape them, by what
/// defines the chip, and by the model weights' digest: a re-rendered chip (new bbox, theta or
/// image), a changed setting or new weights never serve stale features. Public (opaque) so
/// that the [`store::FeatureStore`] can be used on its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FeatureKey {
    pub(crate) annot: Uuid,
    pub(crate) settings: String,
    pub(crate) chip: ChipId,
    pub(crate) model: Arc<str>,
}

/// Bumped when the meaning of a key's parts changes.
const KEY_VERSION: &[u8] = b"wbia-lightglue/features/v2";

impl FeatureKey {
    /// The key of a chip known by its bytes' SHA-256, for using the store directly (tools,
    /// tests); `model` is the weights' version ([`RuntimeInfo::model_version`]).
    pub fn for_chip_bytes(annot: Uuid, settings: &str, chip_sha256: [u8; 32], model: &str) -> Self {
        Self {
            annot,
            settings: settings.into(),
            chip: ChipId::Bytes(chip_sha256),
            model: model.into(),
        }
    }

    fn hash_chip(&self, h: &mut Sha256) {
        let field = |h: &mut Sha256, bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(h, KEY_VERSION);
        field(h, self.model.as_bytes());
        match &self.chip {
            ChipId::Bytes(sha) => {
                field(h, b"bytes");
                field(h, sha);
            }
            ChipId::Wbia(c) => {
                field(h, b"wbia");
                field(h, c.image.as_bytes());
                for v in c.bbox {
                    h.update(v.to_le_bytes());
                }
                h.update(c.theta.to_bits().to_le_bytes());
                // Downloaded chips keep the keys of every earlier release.
                if c.pixels == ChipPixels::FromImage {
                    field(h, b"from-image");
                }
            }
        }
    }

    /// SHA-256 of the chip's identity and the model version: the store's chip column.
    pub(crate) fn chip_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        self.hash_chip(&mut h);
        h.finalize().into()
    }

    /// Hex SHA-256 of all the key's parts: how pair scores name their feature sets.
    pub(crate) fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.annot.as_bytes());
        h.update((self.settings.len() as u64).to_le_bytes());
        h.update(self.settings.as_bytes());
        self.hash_chip(&mut h);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Everything that changes a pair's score besides its two feature sets, written out field by
/// field (the pair-score store's `matcher` column).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MatcherSettings {
    depth_confidence: f32,
    width_confidence: f32,
    filter_threshold: f32,
    precision: Precision,
    batched: bool,
}

impl MatcherSettings {
    pub(crate) fn new(config: &Config, precision: Precision, match_batch: usize) -> Self {
        let lg = config.match_options();
        Self {
            depth_confidence: lg.depth_confidence,
            width_confidence: lg.width_confidence,
            filter_threshold: lg.filter_threshold,
            precision,
            batched: match_batch > 1,
        }
    }

    /// The store key, versioned, with the model weights' digest.
    pub(crate) fn key(&self, model: &str) -> String {
        format!(
            "lightglue/v2/{model}/depth={}/width={}/filter={}/{}/{}",
            self.depth_confidence,
            self.width_confidence,
            self.filter_threshold,
            self.precision,
            if self.batched { "batched" } else { "pairwise" }
        )
    }
}

/// Where and how the models run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeInfo {
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub precision: Precision,
    pub match_batch: usize,
    /// Per ALIKED variant (`model_name`), the digest of its weights and LightGlue's: part of
    /// every feature and score key made with that variant.
    pub model_versions: std::collections::BTreeMap<&'static str, String>,
}

impl RuntimeInfo {
    /// The weights' digest for `model_name`; a name that is no variant (refused when a
    /// configuration is read), or an ensemble (whose members are keyed each as itself), gets
    /// one that matches no stored row.
    pub fn model_version(&self, model_name: &ModelName) -> &str {
        match model_name {
            ModelName::One(name) => self
                .model_versions
                .get(name.as_str())
                .map_or("unknown-variant", String::as_str),
            ModelName::Ensemble(_) => "ensemble",
        }
    }
}

/// An annotation's features with the key they were computed under (what the pair-score store
/// needs to recognise them).
#[derive(Clone, Debug)]
pub struct AnnotFeatures {
    pub(crate) key: FeatureKey,
    pub features: Arc<Features>,
}

/// Counters, for `/metrics`.
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
    /// Chips downloaded from the chip source.
    pub chips_downloaded: AtomicU64,
    /// Bytes of chips downloaded.
    pub chip_bytes: AtomicU64,
    /// Pair scores found in the persisted store.
    pub score_store_hits: AtomicU64,
    /// Pairs run through LightGlue.
    pub pairs_matched: AtomicU64,
    /// Matching jobs that joined another job's padded batches (`match_batch` > 1).
    pub match_jobs_joined: AtomicU64,
    /// Queued jobs dropped unrun because their requester had gone.
    pub jobs_abandoned: AtomicU64,
    /// Requests refused at admission.
    pub requests_refused: AtomicU64,
    /// Store writes (feature sets or pair-score batches) given up after the store failed
    /// for longer than the write patience.
    pub store_writes_dropped: AtomicU64,
}

pub struct Engine {
    worker: ModelWorker,
    /// Device, precision, batching and model version, as `/info` reports them.
    pub runtime: RuntimeInfo,
    cache: Mutex<cache::FeatureCache>,
    store: Option<Arc<dyn store::Store>>,
    /// Split jobs' chunks, when the store is PostgreSQL and shared with other replicas.
    chunk_queue: Option<Arc<dyn job_board::ChunkQueue>>,
    job_board: Option<Arc<dyn job_board::JobBoard>>,
    /// Where a corrupt store file was moved at start.
    store_quarantined: Option<PathBuf>,
    /// The store's count of damaged rows (read without its lock).
    store_corrupt_rows: Arc<AtomicU64>,
    pub cache_stats: Arc<CacheStats>,
    /// Latency of each pipeline stage.
    pub stage_seconds: metrics::StageSeconds,
    admission: Arc<pipeline::AdmissionState>,
    verify_chip_bytes: bool,
}

/// Short digest of one ALIKED variant's weights and LightGlue's, so that new weights never
/// meet old features or scores. For `aliked-n16` it is the digest every earlier release keyed
/// its store with (the n16 file, then LightGlue's).
fn model_version(dir: Option<&std::path::Path>, aliked_file: &str) -> String {
    use wbia_lightglue_model::weights;
    let mut h = Sha256::new();
    for file in [aliked_file, weights::LIGHTGLUE_FILE] {
        match weights::find_weights(dir, file).and_then(|p| {
            std::fs::read(&p).map_err(|source| wbia_lightglue_model::Error::ImageIo {
                path: p.clone(),
                source,
            })
        }) {
            Ok(bytes) => h.update(Sha256::digest(&bytes)),
            // Reported when a model is first loaded; the key still differs from any real one.
            Err(_) => h.update(b"missing"),
        }
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Engine {
    /// Starts the model worker thread. Models load lazily, once per distinct configuration.
    pub fn start(options: EngineOptions) -> Result<Self> {
        if options.cache_capacity == 0 || options.cache_bytes == 0 {
            return Err(Error::Config(
                "the feature cache must hold something".into(),
            ));
        }
        let (mut store_quarantined, mut chunk_queue) = (None, None);
        let mut job_board: Option<Arc<dyn job_board::JobBoard>> = None;
        let store: Option<Arc<dyn store::Store>> = match (&options.database_url, &options.data_dir)
        {
            (Some(url), _) => {
                let pg = Arc::new(pg_store::PgStore::connect(url)?);
                chunk_queue = Some(pg.clone() as Arc<dyn job_board::ChunkQueue>);
                job_board = Some(pg.clone());
                Some(pg)
            }
            (None, Some(dir)) => {
                let sqlite = Arc::new(store::FeatureStore::open(dir)?);
                store_quarantined = sqlite.quarantined().map(Path::to_path_buf);
                job_board = Some(sqlite.clone());
                Some(sqlite)
            }
            (None, None) => None,
        };
        let store_corrupt_rows = store
            .as_ref()
            .map_or_else(Arc::default, |s| s.corrupt_rows_counter());
        let cache_stats = Arc::new(CacheStats::default());
        let match_batch = options.match_batch.max(1);
        let runtime = RuntimeInfo {
            device: wbia_lightglue_model::device_name(&options.device),
            precision: options.precision,
            match_batch,
            model_versions: wbia_lightglue_model::AlikedConfig::ALL
                .iter()
                .map(|v| {
                    let dir = options.weights_dir.as_deref();
                    (v.name, model_version(dir, v.weights_file))
                })
                .collect(),
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
                cache_stats.clone(),
            )?,
            cache: Mutex::new(cache::FeatureCache::new(
                options.cache_capacity,
                options.cache_bytes,
            )),
            store,
            chunk_queue,
            job_board,
            store_quarantined,
            store_corrupt_rows,
            cache_stats,
            stage_seconds: Default::default(),
            admission: Arc::new(pipeline::AdmissionState::new(
                options.max_requests.max(1),
                options.max_pending_pairs.max(1),
            )),
            verify_chip_bytes: options.verify_chip_bytes,
        })
    }

    /// Loads the models of `config` and runs them once, so the first request is not slow.
    pub async fn warm_up(&self, config: &Config) -> Result<()> {
        for member in config.members() {
            let image = wbia_lightglue_model::RgbImage::new(64, 48, vec![128; 64 * 48 * 3])?;
            let lane = pipeline::next_lane();
            let f = Arc::new(
                self.worker
                    .call(lane, |reply| Job::Extract {
                        image,
                        config: member.clone(),
                        reply,
                    })
                    .await??,
            );
            self.worker
                .call(lane, |reply| {
                    Job::Match(MatchWork {
                        query: f.clone(),
                        database: vec![f],
                        config: member.clone(),
                        reply,
                    })
                })
                .await??;
        }
        Ok(())
    }

    /// Feature sets in memory now, and their bytes.
    pub fn cached_features(&self) -> (usize, usize) {
        self.cache
            .lock()
            .map(|c| (c.len(), c.bytes()))
            .unwrap_or((0, 0))
    }

    /// Jobs waiting for the model worker now.
    pub fn queue_depth(&self) -> usize {
        self.worker.depth()
    }

    /// Whether the model worker thread is still running. Once it has stopped, every model
    /// call fails at once ([`Error::WorkerGone`]), so health checks should report this.
    pub fn worker_alive(&self) -> bool {
        self.worker.alive()
    }

    /// The queue of split jobs' chunks, when replicas share the store (PostgreSQL).
    pub fn chunk_queue(&self) -> Option<&Arc<dyn job_board::ChunkQueue>> {
        self.chunk_queue.as_ref()
    }

    /// Where engine jobs are kept beyond this process: the store, SQLite or PostgreSQL;
    /// `None` without one.
    pub fn job_board(&self) -> Option<&Arc<dyn job_board::JobBoard>> {
        self.job_board.as_ref()
    }

    /// Where a corrupt feature store found at start was moved (an empty one replaced it).
    pub fn store_quarantined(&self) -> Option<&Path> {
        self.store_quarantined.as_deref()
    }

    /// Feature store rows found damaged on read since start (each dropped and recomputed).
    pub fn store_corrupt_rows(&self) -> u64 {
        self.store_corrupt_rows.load(Ordering::Relaxed)
    }

    /// Requests admitted now, and their pairs.
    pub fn admitted(&self) -> (usize, usize) {
        self.admission.load()
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
