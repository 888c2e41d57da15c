//! Identification as a bounded stream: admission once per request, then per query
//! fetch → decode → extract → match over the database, a few chips in flight at a time, the
//! model worker fed through the request's own lane.
//!
//! Memory per request is bounded by what is in flight, not by the database size: the query's
//! features, [`CHIPS_IN_FLIGHT`] chips being fetched or decoded, and up to two match chunks of
//! features ([`Engine::match_chunk`] sets each). Everything computed goes to the cache and the
//! store, so the next query finds it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_model::Rotation;

use crate::worker::{Job, MatchWork};
use crate::{
    store, AnnotFeatures, ChipId, Config, Engine, Error, FeatureKey, MatcherSettings, Result,
    MAX_ENSEMBLE,
};

/// How long a failing store write is retried before it is given up; a PostgreSQL restart
/// takes a few seconds.
const STORE_WRITE_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between attempts of a failing store write.
const STORE_WRITE_RETRY: Duration = Duration::from_secs(1);

/// Chips one request fetches and decodes at once. Below the WBIA client's download slots, so
/// no single request can hold all of them.
pub const CHIPS_IN_FLIGHT: usize = 4;

/// A pair's score, and the clockwise turn of the query chip that gave it (the rotation
/// sweep keeps the best of four; without it the turn is always none).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PairScore {
    pub score: f32,
    pub rotation: Rotation,
    /// An ensemble's member scores, fused into `score` (empty for a single model).
    pub members: MemberScores,
}

impl PairScore {
    /// A single model's score.
    pub fn single(score: f32, rotation: Rotation) -> Self {
        Self {
            score,
            rotation,
            members: MemberScores::default(),
        }
    }
}

/// Each ensemble member's score for one pair, in the configuration's order: a fixed-size
/// array, so that a pair's score stays `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemberScores {
    len: u8,
    scores: [f32; MAX_ENSEMBLE],
}

impl MemberScores {
    /// At most [`MAX_ENSEMBLE`] scores (a configuration never has more members).
    fn new(scores: &[f32]) -> Self {
        let mut m = Self::default();
        for (slot, s) in m.scores.iter_mut().zip(scores) {
            *slot = *s;
        }
        m.len = scores.len().min(MAX_ENSEMBLE) as u8;
        m
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.scores[..self.len as usize]
    }
}

impl serde::Serialize for MemberScores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

/// A database annotation left out of a request because its chip cannot be used.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub annot: Uuid,
    /// What went wrong with its chip, for the answer and the log.
    pub reason: String,
}

/// Scores of a request whose unusable database chips were left out: `scores[q][i]` follows
/// the database order with the query left out, `None` where that annotation was skipped.
#[derive(Clone, Debug, Default)]
pub struct Identification {
    pub scores: Vec<Vec<Option<PairScore>>>,
    pub skipped: Vec<Skipped>,
}

impl Identification {
    /// Names a skipped annotation once, however many queries or members skipped it.
    fn skip(&mut self, skipped: Skipped) {
        if !self.skipped.iter().any(|k| k.annot == skipped.annot) {
            self.skipped.push(skipped);
        }
    }
}

impl Error {
    /// Whether this error is one annotation's chip being unusable for good (WBIA refused
    /// it, it is too large, it is not an image we can decode), as opposed to WBIA, the store
    /// or the service failing: only such a database annotation is skipped.
    pub fn is_unusable_chip(&self) -> bool {
        match self {
            Error::Annotation { .. } => true,
            Error::Source { cause, .. } => match cause {
                SourceError::Refused(_) | SourceError::TooLarge(_) | SourceError::ImageFile(_) => {
                    true
                }
                SourceError::Status { status, .. } => (400..500).contains(status),
                _ => false,
            },
            _ => false,
        }
    }

    /// The annotation an error is about, if it is about one.
    fn annotation(&self) -> Option<Uuid> {
        match self {
            Error::Annotation { uuid, .. } | Error::Source { uuid, .. } => Some(*uuid),
            _ => None,
        }
    }
}

/// Whether a database annotation whose chip is unusable fails the request or is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnusableChips {
    Fail,
    Skip,
}

/// What defines a WBIA chip besides the chip settings (WBIA's defaults): the image, the
/// annotation's box in it and its rotation, and where its pixels come from.
#[derive(Clone, Debug, PartialEq)]
pub struct WbiaChip {
    pub image: Uuid,
    /// `[xtl, ytl, w, h]` in image pixels.
    pub bbox: [i64; 4],
    /// Radians.
    pub theta: f64,
    pub pixels: ChipPixels,
}

/// Where a WBIA chip's pixels come from. The two differ (WBIA's JPEG re-encode moves scores by
/// ~8%), so features made from one are never taken for the other's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChipPixels {
    /// WBIA's `/api/annot/src/`: its lossless chip re-encoded as JPEG (quality 100, 4:2:0).
    #[default]
    Downloaded,
    /// Made here from WBIA's image file exactly as WBIA makes its own chips, bit for bit
    /// (`wbia_lightglue_model::wbia_chip`): the pixels the plugin scores.
    FromImage,
}

impl Eq for WbiaChip {}

impl std::hash::Hash for WbiaChip {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.image.hash(state);
        self.bbox.hash(state);
        self.theta.to_bits().hash(state);
        self.pixels.hash(state);
    }
}

/// A chip as a source hands it over.
#[derive(Clone, Debug)]
pub enum Chip {
    /// Encoded image bytes (JPEG, PNG…), decoded as OpenCV's `imread` decodes them.
    Encoded(Bytes),
    /// One of WBIA's image files, to be made into the annotation's chip as WBIA makes it:
    /// read with the orientation WBIA stored for the image, warped by bbox and theta.
    FromImage {
        file: Bytes,
        orientation: i64,
        bbox: [i64; 4],
        theta: f64,
    },
}

impl Chip {
    /// Bytes read or downloaded for it.
    pub fn len(&self) -> usize {
        match self {
            Chip::Encoded(b) | Chip::FromImage { file: b, .. } => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SHA-256 of everything that makes its pixels (for keying by content).
    fn digest(&self) -> [u8; 32] {
        match self {
            Chip::Encoded(b) => Sha256::digest(b).into(),
            Chip::FromImage {
                file,
                orientation,
                bbox,
                theta,
            } => {
                let mut h = Sha256::new();
                h.update(b"wbia-chip-from-image");
                h.update(orientation.to_le_bytes());
                for v in bbox {
                    h.update(v.to_le_bytes());
                }
                h.update(theta.to_bits().to_le_bytes());
                h.update(file);
                h.finalize().into()
            }
        }
    }

    /// The chip's RGB pixels (blocking: decoding and warping take milliseconds).
    pub fn pixels(&self) -> wbia_lightglue_model::Result<wbia_lightglue_model::RgbImage> {
        match self {
            Chip::Encoded(b) => wbia_lightglue_model::decode_image(b),
            Chip::FromImage {
                file,
                orientation,
                bbox,
                theta,
            } => wbia_lightglue_model::wbia_annot_chip(file, *orientation, *bbox, *theta),
        }
    }
}

/// An annotation to identify or to match against; `chip` when its source can say what the
/// chip is without sending it (then a cached or stored feature set costs no download).
#[derive(Clone, Debug)]
pub struct Annot {
    pub uuid: Uuid,
    pub chip: Option<WbiaChip>,
}

/// Why a chip could not be had, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown annotation")]
    Unknown,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("HTTP {status} from {url}")]
    Status { url: String, status: u16 },
    #[error("chip too large: {0}")]
    TooLarge(String),
    /// WBIA answered with its error envelope instead of the chip (its image file is gone,
    /// say): this annotation cannot be scored until WBIA's data is fixed.
    #[error("WBIA could not make it: {0}")]
    Refused(String),
    /// WBIA's image file for it cannot be read here.
    #[error("image file: {0}")]
    ImageFile(String),
    #[error("{0}")]
    Other(String),
}

/// Where chip bytes come from: WBIA over HTTP in the service, files for `evaluate`.
pub trait ChipSource: Sync {
    fn chip(
        &self,
        annot: Uuid,
    ) -> impl Future<Output = std::result::Result<Chip, SourceError>> + Send;
}

/// Counters of admitted work (requests, and the pairs they score, until they end).
pub(crate) struct AdmissionState {
    requests: AtomicUsize,
    pairs: AtomicUsize,
    max_requests: usize,
    max_pairs: usize,
    gate: Mutex<()>,
}

impl AdmissionState {
    pub(crate) fn new(max_requests: usize, max_pairs: usize) -> Self {
        Self {
            requests: AtomicUsize::new(0),
            pairs: AtomicUsize::new(0),
            max_requests,
            max_pairs,
            gate: Mutex::new(()),
        }
    }

    pub(crate) fn load(&self) -> (usize, usize) {
        (
            self.requests.load(Ordering::Relaxed),
            self.pairs.load(Ordering::Relaxed),
        )
    }
}

/// A request's admission: while it lives, the request counts against the limits; dropping it
/// (request done, failed, cancelled or abandoned) gives its share back.
pub struct Ticket {
    state: Arc<AdmissionState>,
    pairs: usize,
    pub(crate) lane: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.requests.fetch_sub(1, Ordering::Relaxed);
        self.state.pairs.fetch_sub(self.pairs, Ordering::Relaxed);
    }
}

/// The limits, for the documentation of a refusal.
pub struct Admission;

impl Admission {
    /// Seconds a refused client is asked to wait.
    pub const RETRY_AFTER_SECS: u64 = 5;
}

static NEXT_LANE: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_lane() -> u64 {
    NEXT_LANE.fetch_add(1, Ordering::Relaxed)
}

/// How far a request has got, per stage, with an estimate of the time left (for job status).
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    chips_total: AtomicU64,
    chips_fetched: AtomicU64,
    chips_cached: AtomicU64,
    extracted: AtomicU64,
    pairs_total: AtomicU64,
    pairs_scored: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            chips_total: AtomicU64::new(0),
            chips_fetched: AtomicU64::new(0),
            chips_cached: AtomicU64::new(0),
            extracted: AtomicU64::new(0),
            pairs_total: AtomicU64::new(0),
            pairs_scored: AtomicU64::new(0),
        }
    }
}

/// A copy of [`Progress`] at one moment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgressSnapshot {
    /// `lookup` while the annotations are resolved (before the pipeline knows its totals),
    /// `features` while chips are fetched and extracted before any pair is scored, then
    /// `match`.
    pub stage: &'static str,
    /// Annotations whose features are needed.
    pub chips_total: u64,
    /// Chips downloaded.
    pub chips_fetched: u64,
    /// Feature sets found in the cache or the store (no download, no extraction).
    pub chips_cached: u64,
    /// Feature sets computed.
    pub extracted: u64,
    pub pairs_total: u64,
    pub pairs_scored: u64,
    pub elapsed_secs: f64,
    /// Seconds left at the rate pairs have been scored so far; null before the first.
    pub eta_secs: Option<f64>,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (scored, total) = (load(&self.pairs_scored), load(&self.pairs_total));
        let elapsed = self.started.elapsed().as_secs_f64();
        ProgressSnapshot {
            stage: match (load(&self.chips_total), scored) {
                (0, _) => "lookup",
                (_, 0) => "features",
                _ => "match",
            },
            chips_total: load(&self.chips_total),
            chips_fetched: load(&self.chips_fetched),
            chips_cached: load(&self.chips_cached),
            extracted: load(&self.extracted),
            pairs_total: total,
            pairs_scored: scored,
            elapsed_secs: elapsed,
            eta_secs: (scored > 0)
                .then(|| elapsed / scored as f64 * total.saturating_sub(scored) as f64),
        }
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts pairs scored elsewhere (by other replicas, for a split job).
    pub fn add_pairs_scored(&self, n: usize) {
        Self::add(&self.pairs_scored, n);
    }

    /// Counts the pairs and chips a request will need, when it does not run through
    /// [`Engine::identify`] here (a split job).
    pub fn add_totals(&self, chips: usize, pairs: usize) {
        Self::add(&self.chips_total, chips);
        Self::add(&self.pairs_total, pairs);
    }
}

impl Engine {
    /// Admits a request that will score `pairs` pairs, or refuses it ([`Error::Busy`]) when
    /// `max_requests` requests are already admitted or the pairs of the admitted requests
    /// (counted whole until each ends) would pass `max_pending_pairs`. Once admitted, a
    /// request never fails for lack of queue space.
    pub fn admit(&self, pairs: usize) -> Result<Ticket> {
        let state = &self.admission;
        let _gate = state.gate.lock().map_err(|_| Error::WorkerGone)?;
        let (requests, pending) = state.load();
        // A request larger than the whole budget is still admitted when nothing else runs.
        let over_pairs = pending > 0 && pending + pairs > state.max_pairs;
        if requests >= state.max_requests || over_pairs {
            Engine::count(&self.cache_stats.requests_refused, 1);
            return Err(Error::Busy {
                reason: format!(
                    "{requests} requests admitted (limit {}), {pending} pairs pending (limit {})",
                    state.max_requests, state.max_pairs
                ),
                retry_after_secs: Admission::RETRY_AFTER_SECS,
            });
        }
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.pairs.fetch_add(pairs, Ordering::Relaxed);
        Ok(Ticket {
            state: state.clone(),
            pairs,
            lane: next_lane(),
        })
    }

    /// Pairs per matching job: a GPU batch, or a few pairs on the CPU so that other requests'
    /// work interleaves every few seconds.
    fn match_chunk(&self) -> usize {
        self.runtime.match_batch.max(4)
    }

    /// Scores each query against every database annotation but itself; `scores[q][i]`
    /// follows the database order with the query left out. With the rotation sweep on, each
    /// score is the best over the query's turns ([`Engine::identify_with_rotations`]).
    pub async fn identify<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        queries: &[Annot],
        database: &[Annot],
        config: &Config,
        progress: &Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let scored = self
            .identify_with_rotations(ticket, source, queries, database, config, progress)
            .await?;
        Ok(scored
            .into_iter()
            .map(|row| row.into_iter().map(|p| p.score).collect())
            .collect())
    }

    /// Computes (or finds) a query's features at every turn `config` matches it at, so that
    /// they are in the cache and the store before others need them: a split job's replicas
    /// then read the query's features instead of each extracting them.
    pub async fn prepare_query<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        query: &Annot,
        config: &Config,
        progress: &Progress,
    ) -> Result<()> {
        for member in config.members() {
            self.features_at(
                ticket,
                source,
                query,
                &member,
                progress,
                member.query_rotations(),
            )
            .await?;
        }
        Ok(())
    }

    /// [`Engine::identify`] with the query turn that gave each score (always
    /// [`Rotation::None`] with the sweep off).
    pub async fn identify_with_rotations<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        queries: &[Annot],
        database: &[Annot],
        config: &Config,
        progress: &Progress,
    ) -> Result<Vec<Vec<PairScore>>> {
        let found = self
            .identify_all(
                ticket,
                source,
                queries,
                database,
                config,
                progress,
                UnusableChips::Fail,
            )
            .await?;
        // Nothing is skipped when skipping is off: every pair has its score.
        Ok(found
            .scores
            .into_iter()
            .map(|row| row.into_iter().flatten().collect())
            .collect())
    }

    /// [`Engine::identify_with_rotations`] where `unusable` says what a database annotation
    /// whose chip cannot be used does: fail the request, or be skipped (named in the
    /// answer). A query's own chip failing always fails. An ensemble runs each member as that
    /// single model would run (its own keys, cache entries and stored scores), one after the
    /// other, and fuses each pair's member scores ([`crate::Fusion`]); the turn reported is the
    /// first member's.
    #[allow(clippy::too_many_arguments)]
    pub async fn identify_all<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        queries: &[Annot],
        database: &[Annot],
        config: &Config,
        progress: &Progress,
        unusable: UnusableChips,
    ) -> Result<Identification> {
        let mut runs = Vec::new();
        for member in config.members() {
            runs.push(
                self.identify_one_model(
                    ticket, source, queries, database, &member, progress, unusable,
                )
                .await?,
            );
        }
        // A single model's run is the answer as it is (no member scores).
        if !config.model_name.is_ensemble() {
            if let Some(single) = runs.pop() {
                return Ok(single);
            }
        }
        Ok(fuse(runs, config))
    }

    #[allow(clippy::too_many_arguments)]
    async fn identify_one_model<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        queries: &[Annot],
        database: &[Annot],
        config: &Config,
        progress: &Progress,
        unusable: UnusableChips,
    ) -> Result<Identification> {
        let mut distinct: Vec<Uuid> = queries.iter().map(|a| a.uuid).collect();
        distinct.extend(database.iter().map(|a| a.uuid));
        distinct.sort();
        distinct.dedup();
        Progress::add(&progress.chips_total, distinct.len());
        let pairs: usize = queries
            .iter()
            .map(|q| database.iter().filter(|d| d.uuid != q.uuid).count())
            .sum();
        Progress::add(&progress.pairs_total, pairs);

        let rotations = config.query_rotations();
        let mut found = Identification::default();
        for q in queries {
            let turned = self
                .features_at(ticket, source, q, config, progress, rotations)
                .await?;
            let query: Vec<(Rotation, AnnotFeatures)> =
                rotations.iter().copied().zip(turned).collect();
            let others: Vec<&Annot> = database.iter().filter(|d| d.uuid != q.uuid).collect();
            let (scores, skipped) = self
                .score_against(ticket, source, &query, &others, config, progress, unusable)
                .await?;
            for s in skipped {
                found.skip(s);
            }
            found.scores.push(scores);
        }
        Ok(found)
    }

    /// One query (at each of its turns) against a database: features stream in (a few chips
    /// at a time) while earlier chunks are matched.
    #[allow(clippy::too_many_arguments)]
    async fn score_against<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        query: &[(Rotation, AnnotFeatures)],
        database: &[&Annot],
        config: &Config,
        progress: &Progress,
        unusable: UnusableChips,
    ) -> Result<(Vec<Option<PairScore>>, Vec<Skipped>)> {
        let chunk = self.match_chunk();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<AnnotFeatures>)>(chunk);
        // Indexed, not iterated by reference: a closure that borrows its argument into the
        // future it returns would not be `Send` for every lifetime, which a spawned job needs.
        let lookup = move |i: usize| async move {
            let f = self
                .features_of(ticket, source, database[i], config, progress)
                .await;
            (i, f)
        };
        let produce = async move {
            let mut features = futures::stream::iter(0..database.len())
                .map(lookup)
                .buffered(CHIPS_IN_FLIGHT);
            while let Some((i, f)) = features.next().await {
                let failed = f.is_err();
                if tx.send((i, f)).await.is_err() || (failed && unusable == UnusableChips::Fail) {
                    break;
                }
            }
        };
        let consume = async {
            let mut scores: Vec<Option<PairScore>> = vec![None; database.len()];
            let mut skipped = Vec::new();
            let mut batch = Vec::with_capacity(chunk);
            let mut positions = Vec::with_capacity(chunk);
            loop {
                let next = rx.recv().await;
                let done = next.is_none();
                match next {
                    Some((i, Ok(f))) => {
                        batch.push(f);
                        positions.push(i);
                    }
                    Some((i, Err(e)))
                        if unusable == UnusableChips::Skip && e.is_unusable_chip() =>
                    {
                        let annot = e.annotation().unwrap_or(database[i].uuid);
                        tracing::warn!(%annot, error = %e, "skipping a database annotation whose chip is unusable");
                        skipped.push(Skipped {
                            annot,
                            reason: e.to_string(),
                        });
                        Progress::add(&progress.pairs_scored, 1);
                    }
                    Some((_, Err(e))) => return Err(e),
                    None => {}
                }
                if batch.len() == chunk || (done && !batch.is_empty()) {
                    let best = self.best_scores(ticket, query, &batch, config).await?;
                    for (&i, score) in positions.iter().zip(best) {
                        scores[i] = Some(score);
                    }
                    Progress::add(&progress.pairs_scored, batch.len());
                    batch.clear();
                    positions.clear();
                }
                if done {
                    return Ok::<_, Error>((scores, skipped));
                }
            }
        };
        // The consumer decides: when it ends (done, or failed), a producer still waiting on a
        // slow chip is dropped with it rather than awaited.
        tokio::select! {
            scores = consume => scores,
            never = async { produce.await; std::future::pending().await } => never,
        }
    }

    /// Each database annotation's best score over the query's turns (the first turn wins a
    /// tie, so without a sweep, or when turning does not help, the turn is none).
    async fn best_scores(
        &self,
        ticket: &Ticket,
        query: &[(Rotation, AnnotFeatures)],
        database: &[AnnotFeatures],
        config: &Config,
    ) -> Result<Vec<PairScore>> {
        let mut best = vec![PairScore::single(f32::NEG_INFINITY, Rotation::None); database.len()];
        for (rotation, turned) in query {
            let rotation = *rotation;
            let scores = self.scores(ticket, turned, database, config).await?;
            for (b, score) in best.iter_mut().zip(scores) {
                if score > b.score {
                    *b = PairScore::single(score, rotation);
                }
            }
        }
        Ok(best)
    }

    /// An annotation's features: from memory, else the store, else its chip, downloaded
    /// (unless the key needs no bytes and is found), decoded off the model thread, extracted.
    pub(crate) async fn features_of<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        annot: &Annot,
        config: &Config,
        progress: &Progress,
    ) -> Result<AnnotFeatures> {
        let mut turned = self
            .features_at(ticket, source, annot, config, progress, &[Rotation::None])
            .await?;
        Ok(turned.remove(0))
    }

    /// An annotation's features with its chip turned by each of `rotations` (in that order),
    /// as [`Engine::features_of`] finds them: the chip is downloaded and decoded at most once,
    /// and only the turns not remembered are extracted.
    pub(crate) async fn features_at<S: ChipSource>(
        &self,
        ticket: &Ticket,
        source: &S,
        annot: &Annot,
        config: &Config,
        progress: &Progress,
        rotations: &[Rotation],
    ) -> Result<Vec<AnnotFeatures>> {
        let key_for = |chip: ChipId, rotation: Rotation| FeatureKey {
            annot: annot.uuid,
            settings: config.feature_key(rotation),
            chip,
            model: self.runtime.model_version(&config.model_name).into(),
        };
        let mut found: Vec<Option<AnnotFeatures>> = vec![None; rotations.len()];
        let known = match (&annot.chip, self.verify_chip_bytes) {
            (Some(chip), false) => Some(ChipId::Wbia(chip.clone())),
            _ => None,
        };
        if let Some(chip) = &known {
            if self
                .recall(&mut found, rotations, |r| key_for(chip.clone(), r))
                .await
            {
                Progress::add(&progress.chips_cached, 1);
                return Ok(found.into_iter().flatten().collect());
            }
        }
        let started = Instant::now();
        let fetched = source
            .chip(annot.uuid)
            .await
            .map_err(|cause| Error::Source {
                uuid: annot.uuid,
                cause,
            })?;
        self.stage_seconds.fetch.since(started);
        Engine::count(&self.cache_stats.chips_downloaded, 1);
        Engine::count(&self.cache_stats.chip_bytes, fetched.len());
        Progress::add(&progress.chips_fetched, 1);
        let chip = match known {
            Some(chip) => chip,
            None => {
                let chip = ChipId::Bytes(fetched.digest());
                if self
                    .recall(&mut found, rotations, |r| key_for(chip.clone(), r))
                    .await
                {
                    Progress::add(&progress.chips_cached, 1);
                    return Ok(found.into_iter().flatten().collect());
                }
                chip
            }
        };
        let started = Instant::now();
        let image = tokio::task::spawn_blocking(move || fetched.pixels())
            .await
            .map_err(|_| Error::WorkerGone)?
            .map_err(|source| Error::Annotation {
                uuid: annot.uuid,
                source,
            })?;
        self.stage_seconds.decode.since(started);
        let image = Arc::new(image);
        for (slot, &rotation) in found.iter_mut().zip(rotations) {
            if slot.is_some() {
                continue;
            }
            let turned = match rotation {
                Rotation::None => (*image).clone(),
                _ => {
                    let image = image.clone();
                    tokio::task::spawn_blocking(move || image.rotated(rotation))
                        .await
                        .map_err(|_| Error::WorkerGone)??
                }
            };
            let features = self.extract(ticket, annot, turned, config).await?;
            Progress::add(&progress.extracted, 1);
            let features = AnnotFeatures {
                key: key_for(chip.clone(), rotation),
                features: Arc::new(features),
            };
            self.keep(&features).await;
            *slot = Some(features);
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Fills the empty slots of `found` from memory or the store; whether all are filled.
    async fn recall(
        &self,
        found: &mut [Option<AnnotFeatures>],
        rotations: &[Rotation],
        key: impl Fn(Rotation) -> FeatureKey,
    ) -> bool {
        for (slot, &rotation) in found.iter_mut().zip(rotations) {
            if slot.is_none() {
                *slot = self.remembered(&key(rotation)).await;
            }
        }
        found.iter().all(Option::is_some)
    }

    /// One chip's features, computed on the model worker in the request's lane.
    async fn extract(
        &self,
        ticket: &Ticket,
        annot: &Annot,
        image: wbia_lightglue_model::RgbImage,
        config: &Config,
    ) -> Result<wbia_lightglue_model::Features> {
        let started = Instant::now();
        let features = self
            .worker
            .call(ticket.lane, |reply| Job::Extract {
                image,
                config: config.clone(),
                reply,
            })
            .await?
            .map_err(|e| match e {
                // What this chip caused is the annotation's fault (422); missing weights or a
                // failing device are the service's (500).
                Error::Model(source) if chip_specific(&source) => Error::Annotation {
                    uuid: annot.uuid,
                    source,
                },
                other => other,
            })?;
        self.stage_seconds.extract.since(started);
        Ok(features)
    }

    /// From the cache, else from the store (then cached).
    async fn remembered(&self, key: &FeatureKey) -> Option<AnnotFeatures> {
        if let Some(f) = self.cache.lock().ok().and_then(|mut c| c.get(key)) {
            Engine::count(&self.cache_stats.hits, 1);
            return Some(f);
        }
        Engine::count(&self.cache_stats.misses, 1);
        let store = self.store.clone()?;
        let lookup = key.clone();
        let stored = tokio::task::spawn_blocking(move || store.get(&lookup))
            .await
            .ok()?;
        let stored = match stored {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(error = %e, "feature store read failed");
                return None;
            }
        };
        Engine::count(&self.cache_stats.store_hits, 1);
        let f = AnnotFeatures {
            key: key.clone(),
            features: Arc::new(stored),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(key.clone(), f.clone());
        }
        Some(f)
    }

    /// Into the cache and the store (a failing store slows later requests, it fails none).
    async fn keep(&self, f: &AnnotFeatures) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(f.key.clone(), f.clone());
        }
        let (key, features) = (f.key.clone(), f.features.clone());
        self.write_patiently("feature set", move |store| store.put(&key, &features))
            .await;
    }

    /// Runs a store write, retrying it once a second while it fails, for up to
    /// [`STORE_WRITE_PATIENCE`]: a store that restarts within that loses nothing (the request
    /// waits for it); one that stays down costs each write that long, fails no request, and
    /// the write is given up (counted, then recomputed when next needed).
    async fn write_patiently<F>(&self, what: &'static str, write: F)
    where
        F: Fn(&dyn store::Store) -> Result<()> + Send + Sync + 'static,
    {
        let Some(store) = self.store.clone() else {
            return;
        };
        let write = Arc::new(write);
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            let (s, w) = (store.clone(), write.clone());
            match tokio::task::spawn_blocking(move || w(s.as_ref())).await {
                Ok(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(what, failures, "store write landed after retries");
                    }
                    return;
                }
                Ok(Err(e)) if started.elapsed() < STORE_WRITE_PATIENCE => {
                    if failures == 0 {
                        tracing::warn!(what, error = %e, "store write failed; retrying");
                    }
                    failures += 1;
                    tokio::time::sleep(STORE_WRITE_RETRY).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(what, error = %e, failures, "store write given up");
                    Engine::count(&self.cache_stats.store_writes_dropped, 1);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Pair scores of a query against a chunk: stored ones reused, the rest matched on the
    /// worker (in this request's lane) and stored.
    async fn scores(
        &self,
        ticket: &Ticket,
        query: &AnnotFeatures,
        database: &[AnnotFeatures],
        config: &Config,
    ) -> Result<Vec<f32>> {
        let settings =
            MatcherSettings::new(config, self.runtime.precision, self.runtime.match_batch)
                .key(self.runtime.model_version(&config.model_name));
        let q = query.key.digest();
        let d: Vec<String> = database.iter().map(|f| f.key.digest()).collect();
        let mut scores: Vec<Option<f32>> = vec![None; database.len()];
        if let Some(store) = self.store.clone() {
            let (q, d, s) = (q.clone(), d.clone(), settings.clone());
            let stored = tokio::task::spawn_blocking(move || store.scores(&q, &d, &s)).await;
            match stored {
                Ok(Ok(stored)) => scores = stored,
                Ok(Err(e)) => tracing::warn!(error = %e, "pair score store read failed"),
                Err(_) => {}
            }
        }
        let hits = scores.iter().filter(|s| s.is_some()).count();
        Engine::count(&self.cache_stats.score_store_hits, hits);
        let todo: Vec<usize> = (0..database.len())
            .filter(|&i| scores[i].is_none())
            .collect();
        if todo.is_empty() {
            return Ok(scores.into_iter().flatten().collect());
        }
        let started = Instant::now();
        let fresh = self
            .worker
            .call(ticket.lane, |reply| {
                Job::Match(MatchWork {
                    query: query.features.clone(),
                    database: todo.iter().map(|&i| database[i].features.clone()).collect(),
                    config: config.clone(),
                    reply,
                })
            })
            .await??;
        self.stage_seconds.matching.since(started);
        let rows: Vec<(String, String, f32)> = todo
            .iter()
            .zip(&fresh)
            .map(|(&i, &s)| (q.clone(), d[i].clone(), s))
            .collect();
        for (&i, s) in todo.iter().zip(fresh) {
            scores[i] = Some(s);
        }
        self.write_patiently("pair scores", move |store| {
            store.put_scores(&settings, &rows)
        })
        .await;
        Ok(scores.into_iter().map(|s| s.unwrap_or(0.0)).collect())
    }
}

pub(crate) fn chip_specific(e: &wbia_lightglue_model::Error) -> bool {
    use wbia_lightglue_model::Error as M;
    matches!(
        e,
        M::Decode(_)
            | M::UnsupportedFormat
            | M::ImageTooLarge { .. }
            | M::ImageTooSmall { .. }
            | M::InvalidFeatures(_)
    )
}

/// One identification from an ensemble's member runs (same queries and database, in the
/// configuration's order): a pair has a score when every member has one; an annotation
/// skipped by any member is skipped (all members read the same chip, so they skip alike).
fn fuse(runs: Vec<Identification>, config: &Config) -> Identification {
    let mut fused = Identification::default();
    for run in &runs {
        for s in &run.skipped {
            fused.skip(s.clone());
        }
    }
    let Some(first) = runs.first() else {
        return fused;
    };
    for (q, row) in first.scores.iter().enumerate() {
        let fused_row = (0..row.len())
            .map(|i| {
                let pairs: Option<Vec<PairScore>> = runs
                    .iter()
                    .map(|run| run.scores.get(q)?.get(i).copied().flatten())
                    .collect();
                let pairs = pairs?;
                let members: Vec<f32> = pairs.iter().map(|p| p.score).collect();
                Some(PairScore {
                    score: config.fuse(&members),
                    rotation: pairs[0].rotation,
                    members: MemberScores::new(&members),
                })
            })
            .collect();
        fused.scores.push(fused_row);
    }
    fused
}

/// Chips from files (for `evaluate` and tests): annotation UUID → path.
pub struct FileChips(pub std::collections::HashMap<Uuid, std::path::PathBuf>);

impl ChipSource for FileChips {
    async fn chip(&self, annot: Uuid) -> std::result::Result<Chip, SourceError> {
        let path = self.0.get(&annot).ok_or(SourceError::Unknown)?.clone();
        tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read(path)
        })
        .await
        .map_err(|e| SourceError::Other(e.to_string()))?
        .map(|b| Chip::Encoded(Bytes::from(b)))
        .map_err(|e| SourceError::Other(format!("{}: {e}", path.display())))
    }
}
