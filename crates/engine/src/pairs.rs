//! One pair matched for a picture (match thumbnails): both annotations' features, found as
//! identification finds them (memory, the store, else the chip extracted), and LightGlue's
//! matches between them, not only the score, computed on the model worker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wbia_lightglue_model::{Features, MatchResult, RgbImage, Rotation};

use crate::worker::{Job, PairWork};
use crate::{Annot, ChipSource, Config, Engine, Error, Progress, Result};

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
        // An ensemble's pictures show its first member's matches.
        let first_member = config.first_member();
        let config = &first_member;
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

    /// Matches two images the caller sent (named in errors by their names), as
    /// [`Engine::match_pair`] matches chips, but nothing is cached or stored: an upload is not
    /// an annotation. Also returns the decoded images, for drawing.
    pub async fn match_images(
        &self,
        images: [(String, Bytes); 2],
        config: &Config,
    ) -> Result<(PairMatches, [RgbImage; 2])> {
        config.validate()?;
        let ticket = self.admit(1)?;
        let [(name0, bytes0), (name1, bytes1)] = images;
        let (image0, query) = self.extract_upload(&ticket, name0, bytes0, config).await?;
        let (image1, database) = self.extract_upload(&ticket, name1, bytes1, config).await?;
        let started = Instant::now();
        let result = self
            .worker
            .call(ticket.lane, |reply| {
                Job::Pair(PairWork {
                    query: query.clone(),
                    database: database.clone(),
                    config: config.clone(),
                    reply,
                })
            })
            .await??;
        self.stage_seconds.matching.since(started);
        let matches = PairMatches {
            query,
            database,
            result,
        };
        Ok((matches, [image0, image1]))
    }

    /// An uploaded image decoded (off the async threads) and extracted on the model worker.
    async fn extract_upload(
        &self,
        ticket: &crate::Ticket,
        name: String,
        bytes: Bytes,
        config: &Config,
    ) -> Result<(RgbImage, Arc<Features>)> {
        let decoded =
            tokio::task::spawn_blocking(move || wbia_lightglue_model::decode_image(&bytes))
                .await
                .map_err(|_| Error::WorkerGone)?;
        let image = decoded.map_err(|source| Error::Image {
            name: name.clone(),
            source,
        })?;
        let started = Instant::now();
        let input = image.clone();
        let features = self
            .worker
            .call(ticket.lane, |reply| Job::Extract {
                image: input,
                config: config.clone(),
                reply,
            })
            .await?
            .map_err(|e| match e {
                // The image's fault (422), not missing weights or a failing device (500).
                Error::Model(source) if crate::pipeline::chip_specific(&source) => {
                    Error::Image { name, source }
                }
                other => other,
            })?;
        self.stage_seconds.extract.since(started);
        Ok((image, Arc::new(features)))
    }
}
