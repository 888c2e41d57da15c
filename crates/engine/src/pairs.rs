//! One pair matched for a picture (match thumbnails): both annotations' features, found as
//! identification finds them (memory, the store, else the chip extracted), and LightGlue's
//! matches between them, not only the score, computed on the model worker.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use wbia_lightglue_model::{Features, MatchResult, Rotation};

use crate::worker::Job;
use crate::{Annot, ChipSource, Config, Engine, Progress, Result};

/// A pair for the worker to match, answered with the matches.
pub(crate) struct PairWork {
    pub query: Arc<Features>,
    pub database: Arc<Features>,
    pub config: Config,
    pub reply: oneshot::Sender<Result<MatchResult>>,
}

/// What a match picture needs: both feature sets and the matches between them.
#[derive(Clone, Debug)]
pub struct PairMatches {
    pub query: Arc<Features>,
    pub database: Arc<Features>,
    /// Index pairs into `query` and `database` keypoints, with their confidences; its
    /// `score()` is the pair score identification gives (same matcher settings).
    pub result: MatchResult,
}

impl Engine {
    /// Matches `query`, its chip turned clockwise by `rotation`, against `database` under
    /// `config`, keeping the matches (query keypoints are in the turned chip's pixels).
    /// Admitted as a request of one pair (so it can be refused as busy); features computed
    /// here are cached and stored as identification's are, and theirs are reused.
    pub async fn match_pair<S: ChipSource>(
        &self,
        source: &S,
        query: &Annot,
        database: &Annot,
        config: &Config,
        rotation: Rotation,
    ) -> Result<PairMatches> {
        let ticket = self.admit(1)?;
        let progress = Progress::default();
        let turn = [rotation];
        let (mut q, d) = tokio::try_join!(
            self.features_at(&ticket, source, query, config, &progress, &turn),
            self.features_of(&ticket, source, database, config, &progress),
        )?;
        let q = q.remove(0);
        let started = Instant::now();
        let result = self
            .worker
            .call(ticket.lane, |reply| {
                Job::Pair(PairWork {
                    query: q.features.clone(),
                    database: d.features.clone(),
                    config: config.clone(),
                    reply,
                })
            })
            .await??;
        self.stage_seconds.matching.since(started);
        Ok(PairMatches {
            query: q.features,
            database: d.features,
            result,
        })
    }
}
