//! Features and pair scores persisted in SQLite (the plugin's `LightGlueFeatures` and
//! `LightGlue` tables), so a restart neither re-extracts every chip nor re-matches every pair.
//! Feature rows are keyed like the in-memory cache: annotation UUID, feature settings, and a
//! digest of what defines the chip (WBIA's image UUID, bbox and theta, or the chip bytes) and of
//! the model weights. A pair score is keyed by both feature sets' keys (as digests) and the
//! matcher's settings, so a re-rendered chip, a changed setting or new weights never reuse a
//! score. Used from tokio's blocking pool, behind a mutex, never from the model thread.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use wbia_lightglue_model::Features;

use crate::{Error, FeatureKey, Result};

pub struct FeatureStore {
    conn: Connection,
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

fn to_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl FeatureStore {
    /// Opens (creating if needed) `features.sqlite3` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("data directory {}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("features.sqlite3")).map_err(db_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS lightglue_features (
                 annot_uuid TEXT NOT NULL,
                 settings TEXT NOT NULL,
                 chip_sha256 BLOB NOT NULL,
                 keypoints BLOB NOT NULL,
                 keypoint_scores BLOB NOT NULL,
                 descriptors BLOB NOT NULL,
                 width REAL NOT NULL,
                 height REAL NOT NULL,
                 created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 PRIMARY KEY (annot_uuid, settings, chip_sha256)
             );
             CREATE TABLE IF NOT EXISTS lightglue_scores (
                 query_features TEXT NOT NULL,
                 database_features TEXT NOT NULL,
                 matcher TEXT NOT NULL,
                 score REAL NOT NULL,
                 created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                 PRIMARY KEY (query_features, database_features, matcher)
             );",
        )
        .map_err(db_error)?;
        Ok(Self { conn })
    }

    pub(crate) fn get(&self, key: &FeatureKey) -> Result<Option<Features>> {
        let row = self
            .conn
            .query_row(
                "SELECT keypoints, keypoint_scores, descriptors, width, height
                 FROM lightglue_features
                 WHERE annot_uuid = ?1 AND settings = ?2 AND chip_sha256 = ?3",
                params![key.annot.to_string(), key.settings, &key.chip_digest()[..]],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, f64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error)?;
        let Some((kp, scores, desc, w, h)) = row else {
            return Ok(None);
        };
        let kp = from_bytes(&kp);
        let features = Features {
            keypoints: kp.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
            scores: from_bytes(&scores),
            descriptors: from_bytes(&desc),
            image_size: [w as f32, h as f32],
        };
        // A damaged row is treated as absent (and will be overwritten), not trusted.
        match features.validate() {
            Ok(()) => Ok(Some(features)),
            Err(e) => {
                tracing::warn!(annot = %key.annot, error = %e, "ignoring a damaged stored feature row");
                Ok(None)
            }
        }
    }

    pub(crate) fn put(&self, key: &FeatureKey, f: &Features) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO lightglue_features
                 (annot_uuid, settings, chip_sha256, keypoints, keypoint_scores, descriptors, width, height)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key.annot.to_string(),
                    key.settings,
                    &key.chip_digest()[..],
                    to_bytes(f.keypoints.iter().flatten().copied()),
                    to_bytes(f.scores.iter().copied()),
                    to_bytes(f.descriptors.iter().copied()),
                    f.image_size[0] as f64,
                    f.image_size[1] as f64,
                ],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// A stored pair score, if any.
    pub(crate) fn score(&self, query: &str, database: &str, matcher: &str) -> Result<Option<f32>> {
        self.conn
            .query_row(
                "SELECT score FROM lightglue_scores
                 WHERE query_features = ?1 AND database_features = ?2 AND matcher = ?3",
                params![query, database, matcher],
                |r| r.get::<_, f64>(0),
            )
            .optional()
            .map(|s| s.filter(|s| s.is_finite()).map(|s| s as f32))
            .map_err(db_error)
    }

    /// Stores pair scores `(query digest, database digest, score)` in one transaction.
    pub(crate) fn put_scores(
        &mut self,
        matcher: &str,
        scores: &[(String, String, f32)],
    ) -> Result<()> {
        let tx = self.conn.transaction().map_err(db_error)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO lightglue_scores
                     (query_features, database_features, matcher, score) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(db_error)?;
            for (q, d, score) in scores {
                insert
                    .execute(params![q, d, matcher, *score as f64])
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)
    }

    /// Stored pair scores.
    pub fn score_count(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM lightglue_scores", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(db_error)
    }

    pub fn len(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM lightglue_features", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(db_error)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChipId;
    use uuid::Uuid;

    #[test]
    fn round_trip_and_key_parts_matter() {
        let dir = std::env::temp_dir().join(format!("wbia-lg-store-{}", Uuid::new_v4()));
        let store = FeatureStore::open(&dir).unwrap();
        let f = Features {
            keypoints: vec![[1.5, 2.5], [3.0, 4.0]],
            scores: vec![0.5, 0.25],
            descriptors: (0..256).map(|i| i as f32 / 256.0).collect(),
            image_size: [640.0, 480.0],
        };
        let key = FeatureKey {
            annot: Uuid::from_u128(7),
            settings: "s".into(),
            chip: ChipId::Bytes([1; 32]),
            model: "m".into(),
        };
        assert!(store.get(&key).unwrap().is_none());
        store.put(&key, &f).unwrap();
        assert_eq!(store.get(&key).unwrap(), Some(f.clone()));
        let other_chip = FeatureKey {
            chip: ChipId::Bytes([2; 32]),
            ..key.clone()
        };
        assert!(store.get(&other_chip).unwrap().is_none());
        let wbia_chip = |theta: f64| FeatureKey {
            chip: ChipId::Wbia(crate::WbiaChip {
                image: Uuid::from_u128(9),
                bbox: [1, 2, 30, 40],
                theta,
            }),
            ..key.clone()
        };
        store.put(&wbia_chip(0.0), &f).unwrap();
        assert!(store.get(&wbia_chip(0.0)).unwrap().is_some());
        assert!(store.get(&wbia_chip(0.5)).unwrap().is_none());
        let new_weights = FeatureKey {
            model: "m2".into(),
            ..key.clone()
        };
        assert!(store.get(&new_weights).unwrap().is_none());
        drop(store);
        let reopened = FeatureStore::open(&dir).unwrap();
        assert_eq!(reopened.get(&key).unwrap(), Some(f));
        assert_eq!(reopened.len().unwrap(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pair_scores_round_trip_by_every_key_part() {
        let dir = std::env::temp_dir().join(format!("wbia-lg-scores-{}", Uuid::new_v4()));
        let mut store = FeatureStore::open(&dir).unwrap();
        store
            .put_scores(
                "m1",
                &[
                    ("q".into(), "d1".into(), 12.5),
                    ("q".into(), "d2".into(), 0.0),
                ],
            )
            .unwrap();
        assert_eq!(store.score("q", "d1", "m1").unwrap(), Some(12.5));
        assert_eq!(store.score("q", "d2", "m1").unwrap(), Some(0.0));
        assert_eq!(store.score("q", "d1", "m2").unwrap(), None);
        assert_eq!(store.score("d1", "q", "m1").unwrap(), None);
        drop(store);
        let reopened = FeatureStore::open(&dir).unwrap();
        assert_eq!(reopened.score("q", "d1", "m1").unwrap(), Some(12.5));
        assert_eq!(reopened.score_count().unwrap(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
