//! Two annotations looked at together: their chips fetched once (for a picture) and their
//! matches, keyed, cached and stored as identification keys them, so that a pair a job scored
//! is not extracted again.

use std::collections::HashMap;

use uuid::Uuid;
use wbia_lightglue_engine::{Chip, ChipSource, Config, PairMatches, Rotation, SourceError};

use crate::{Annotation, Identifier, Result};

/// Two annotations and their chips.
pub struct ChipPair {
    pub annotations: [Annotation; 2],
    pub chips: [Chip; 2],
}

/// The two chips already had, for the engine (no second download or read).
struct Fetched(HashMap<Uuid, Chip>);

impl ChipSource for Fetched {
    async fn chip(&self, annot: Uuid) -> std::result::Result<Chip, SourceError> {
        self.0.get(&annot).cloned().ok_or(SourceError::Unknown)
    }
}

impl Identifier {
    /// Resolves two annotations and fetches their chips (made from WBIA's image files where
    /// readable, as identification has them).
    pub async fn chip_pair(&self, first: Uuid, second: Uuid) -> Result<ChipPair> {
        let resolved = self.annotations().resolve(&[first, second]).await?;
        let chips = self.annotations().chips(&resolved);
        let named = |uuid| move |cause| wbia_lightglue_engine::Error::Source { uuid, cause };
        let (a, b) = tokio::try_join!(
            async { chips.chip(first).await.map_err(named(first)) },
            async { chips.chip(second).await.map_err(named(second)) },
        )?;
        // `resolve` answers one annotation per UUID asked for, or fails.
        let annotations: [Annotation; 2] = resolved
            .try_into()
            .map_err(|_| crate::Error::UnknownAnnotations(vec![first, second]))?;
        Ok(ChipPair {
            annotations,
            chips: [a, b],
        })
    }

    /// The pair's matches under `config` (an ensemble's first member), the first annotation
    /// as the query, unturned.
    pub async fn match_chip_pair(&self, pair: &ChipPair, config: &Config) -> Result<PairMatches> {
        let [a, b] = &pair.annotations;
        let source = Fetched(HashMap::from([
            (a.uuid, pair.chips[0].clone()),
            (b.uuid, pair.chips[1].clone()),
        ]));
        Ok(self
            .engine()
            .match_pair(&source, &a.annot(), &b.annot(), config, Rotation::None)
            .await?)
    }
}
