//! A large engine job's matching split across replicas. With a shared PostgreSQL store, the
//! replica that accepted a job of more than `chunk_annotations` database annotations queues
//! it as chunks of that many; every replica's chunk worker ([`Identifier::work_chunks`]) takes chunks
//! (`FOR UPDATE SKIP LOCKED`) and matches them on its own model worker, the accepting replica's
//! included; the accepting replica merges the scores in database order. A taken chunk holds a
//! lease, renewed while it is worked on: a replica that dies mid-chunk loses it when the lease
//! expires, and another takes it again. Features and pair scores land in the shared store as
//! usual, so a chunk taken again reuses what was finished before the death.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wbia_lightglue_engine::job_board::{ChunkProgress, ChunkQueue, TakenChunk};
use wbia_lightglue_engine::{
    Annot, Config, Identification, PairScore, Progress, Rotation, Skipped, UnusableChips,
};

use crate::Identifier;

/// How long a replica waits between looks for work when none is queued, and between looks
/// at a split job's chunks.
const POLL: Duration = Duration::from_millis(500);

/// How long a split job's replica goes on looking at its chunks while the store cannot be
/// read before it ends the job as failed.
const STORE_PATIENCE: Duration = Duration::from_secs(300);

/// Counters of the chunk worker, for `/metrics`.
#[derive(Debug, Default)]
pub struct ChunkMetrics {
    /// Chunks this replica took (including ones it then finished or lost).
    pub taken: AtomicU64,
    /// Chunks this replica finished.
    pub done: AtomicU64,
    /// Chunks this replica took after another replica's lease on them expired.
    pub retaken: AtomicU64,
    /// Chunks that failed here (the job fails with the error).
    pub failed: AtomicU64,
}

/// What one chunk matches.
#[derive(Serialize, Deserialize)]
struct ChunkRequest {
    query: Uuid,
    database: Vec<Uuid>,
    config: Config,
}

/// A chunk's answer: its scores in its database order, (score, clockwise turn of the query),
/// `None` for an annotation whose chip was unusable and was skipped (named in `skipped`).
#[derive(Serialize, Deserialize)]
struct ChunkScores {
    scores: Vec<Option<(f32, u16)>>,
    skipped: Vec<Skipped>,
}

/// Why a split job could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("no shared store: a job is split only among replicas sharing PostgreSQL")]
    NoSharedStore,
    #[error(
        "the job's chunks are gone: another replica ended the job while this one could not \
         reach the store"
    )]
    ChunksGone,
    #[error("chunk {chunk} of the job failed: {error}")]
    ChunkFailed { chunk: i32, error: String },
    #[error("{scores} scores for {annotations} annotations")]
    Incomplete { scores: usize, annotations: usize },
    #[error(transparent)]
    Engine(#[from] wbia_lightglue_engine::Error),
    #[error("the store's task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

async fn blocking<T: Send + 'static>(
    store: &Arc<dyn ChunkQueue>,
    f: impl FnOnce(&dyn ChunkQueue) -> wbia_lightglue_engine::Result<T> + Send + 'static,
) -> Result<T, SplitError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(store.as_ref())).await??)
}

impl Identifier {
    /// The chunk queue, when replicas share a store.
    fn shared(&self) -> Option<Arc<dyn ChunkQueue>> {
        self.engine().chunk_queue().cloned()
    }

    /// Whether a job of `database` annotations (the query excluded) is split.
    pub(crate) fn splits(&self, database: usize) -> bool {
        self.shared().is_some() && database > self.split_options().chunk_annotations.max(1)
    }

    /// Scores `query` against `database` (the query excluded) as a split job: queued in chunks,
    /// matched by every replica, merged here in database order. Progress counts the pairs of
    /// finished chunks.
    pub(crate) async fn split_score(
        &self,
        jobid: &str,
        query: Uuid,
        database: &[Uuid],
        config: &Config,
        progress: &Progress,
    ) -> Result<Identification, SplitError> {
        let store = self.shared().ok_or(SplitError::NoSharedStore)?;
        let size = self.split_options().chunk_annotations.max(1);
        let requests: Vec<String> = database
            .chunks(size)
            .map(|chunk| {
                serde_json::to_string(&ChunkRequest {
                    query,
                    database: chunk.to_vec(),
                    config: config.clone(),
                })
                .unwrap_or_default()
            })
            .collect();
        let chunks = requests.len();
        progress.add_totals(database.len() + 1, database.len());
        let id = jobid.to_string();
        blocking(&store, move |s| s.add_chunks(&id, &requests)).await?;
        tracing::info!(
            jobid,
            chunks,
            size,
            "job split into chunks for the replicas"
        );
        let merged = wait_for_chunks(&store, jobid, chunks, progress).await;
        let id = jobid.to_string();
        let _ = blocking(&store, move |s| s.drop_chunks(&id)).await;
        merge(merged?, database.len())
    }
}

/// Watches a split job's chunks until every one is done (their answers, in chunk order) or
/// one failed, counting finished pairs into `progress`. The store restarting or briefly
/// unreachable does not end the job (the chunks are still there, and the replicas go on
/// matching them) unless it lasts [`STORE_PATIENCE`].
async fn wait_for_chunks(
    store: &Arc<dyn ChunkQueue>,
    jobid: &str,
    chunks: usize,
    progress: &Progress,
) -> Result<Vec<ChunkScores>, SplitError> {
    let mut counted = 0usize;
    let mut unreadable_since = None;
    loop {
        let id = jobid.to_string();
        let states = match blocking(store, move |s| s.chunks(&id)).await {
            Ok(states) => {
                unreadable_since = None;
                states
            }
            Err(e) => {
                let since = *unreadable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= STORE_PATIENCE {
                    return Err(e);
                }
                tracing::warn!(jobid, error = %e, "could not read the job's chunks; retrying");
                tokio::time::sleep(POLL * 4).await;
                continue;
            }
        };
        if states.len() != chunks {
            // Deleted by a replica that found this job silent for longer than its lease.
            return Err(SplitError::ChunksGone);
        }
        for c in &states {
            if let ChunkProgress::Failed { error } = &c.progress {
                return Err(SplitError::ChunkFailed {
                    chunk: c.chunk,
                    error: error.clone(),
                });
            }
        }
        let done: Vec<ChunkScores> = states
            .iter()
            .filter_map(|c| match &c.progress {
                ChunkProgress::Done { scores } => serde_json::from_str(scores).ok(),
                _ => None,
            })
            .collect();
        let scored: usize = done.iter().map(|c| c.scores.len()).sum();
        progress.add_pairs_scored(scored.saturating_sub(counted));
        counted = counted.max(scored);
        if done.len() == chunks {
            return Ok(done);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The chunks' answers as one identification, in database order.
fn merge(chunks: Vec<ChunkScores>, annotations: usize) -> Result<Identification, SplitError> {
    let mut found = Identification::default();
    let mut scores = Vec::with_capacity(annotations);
    for chunk in chunks {
        scores.extend(chunk.scores.into_iter().map(|s| {
            s.map(|(score, turn)| {
                PairScore::single(score, Rotation::from_degrees(turn).unwrap_or_default())
            })
        }));
        found.skipped.extend(chunk.skipped);
    }
    if scores.len() != annotations {
        return Err(SplitError::Incomplete {
            scores: scores.len(),
            annotations,
        });
    }
    found.scores.push(scores);
    Ok(found)
}

impl Identifier {
    /// This replica's chunk worker: takes queued chunks of any replica's split jobs and matches
    /// them, until the process ends. Started by `serve` when the store is shared.
    pub async fn work_chunks(self: Arc<Self>) {
        let Some(store) = self.shared() else { return };
        let lease = self.split_options().chunk_lease;
        loop {
            let owner = self.split_options().replica.clone();
            let taken = blocking(&store, move |s| s.take_chunk(&owner, lease)).await;
            let chunk = match taken {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for chunks");
                    tokio::time::sleep(POLL * 4).await;
                    continue;
                }
            };
            let metrics = &self.metrics().chunks;
            metrics.taken.fetch_add(1, Ordering::Relaxed);
            if chunk.attempts > 1 {
                metrics.retaken.fetch_add(1, Ordering::Relaxed);
                tracing::info!(jobid = %chunk.jobid, chunk = chunk.chunk, "took a chunk whose replica stopped renewing it");
            }
            let renewer = tokio::spawn(self.clone().renew(store.clone(), chunk.clone()));
            let outcome = self.match_chunk(&chunk).await;
            renewer.abort();
            let (jobid, n, owner) = (
                chunk.jobid.clone(),
                chunk.chunk,
                self.split_options().replica.clone(),
            );
            let ended = match outcome {
                Ok(scores) => {
                    let text = serde_json::to_string(&scores).unwrap_or_default();
                    blocking(&store, move |s| s.end_chunk(&jobid, n, &owner, Ok(&text))).await
                }
                Err(ChunkFailure::Busy) => {
                    // Busy here: back to the queue for a replica with room.
                    let released =
                        blocking(&store, move |s| s.release_chunk(&jobid, n, &owner)).await;
                    tokio::time::sleep(POLL * 4).await;
                    released.map(|()| false)
                }
                Err(ChunkFailure::Failed(message)) => {
                    metrics.failed.fetch_add(1, Ordering::Relaxed);
                    blocking(&store, move |s| {
                        s.end_chunk(&jobid, n, &owner, Err(&message))
                    })
                    .await
                }
            };
            match ended {
                Ok(true) => {
                    metrics.done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not record a chunk"),
            }
        }
    }

    /// Renews a chunk's lease at a third of its length while it is worked on.
    async fn renew(self: Arc<Self>, store: Arc<dyn ChunkQueue>, chunk: TakenChunk) {
        let lease = self.split_options().chunk_lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let (jobid, n, owner) = (
                chunk.jobid.clone(),
                chunk.chunk,
                self.split_options().replica.clone(),
            );
            if let Ok(false) =
                blocking(&store, move |s| s.renew_chunk(&jobid, n, &owner, lease)).await
            {
                tracing::warn!(jobid = %chunk.jobid, chunk = chunk.chunk, "lost a chunk's lease");
                return;
            }
        }
    }

    /// One chunk, matched here: chips from WBIA, features and pair scores through the engine and
    /// the shared store.
    async fn match_chunk(&self, chunk: &TakenChunk) -> Result<ChunkScores, ChunkFailure> {
        let request: ChunkRequest = serde_json::from_str(&chunk.request)
            .map_err(|e| ChunkFailure::Failed(format!("chunk request: {e}")))?;
        let mut all = vec![request.query];
        all.extend(&request.database);
        let resolved = self.annotations().resolve(&all).await?;
        let annots: Vec<Annot> = resolved.iter().map(|a| a.annot()).collect();
        let source = self.annotations().chips(&resolved);
        let ticket = self.engine().admit(request.database.len())?;
        let found = self
            .engine()
            .identify_all(
                &ticket,
                &source,
                &annots[..1],
                &annots[1..],
                &request.config,
                &Progress::default(),
                UnusableChips::Skip,
            )
            .await?;
        let scores = found
            .scores
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.map(|p| (p.score, p.rotation.degrees())))
            .collect();
        Ok(ChunkScores {
            scores,
            skipped: found.skipped,
        })
    }
}

/// Why a chunk was not matched here.
enum ChunkFailure {
    /// This replica is full: the chunk goes back to the queue for another.
    Busy,
    /// The chunk fails, and with it the job, with this reason.
    Failed(String),
}

impl From<wbia_lightglue_engine::Error> for ChunkFailure {
    fn from(e: wbia_lightglue_engine::Error) -> Self {
        match e {
            wbia_lightglue_engine::Error::Busy { .. } => Self::Busy,
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<crate::Error> for ChunkFailure {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Engine(e) => e.into(),
            other => Self::Failed(other.to_string()),
        }
    }
}
