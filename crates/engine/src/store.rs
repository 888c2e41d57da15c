//! Features and pair scores persisted in SQLite (the plugin's `LightGlueFeatures` and
//! `LightGlue` tables), so a restart neither re-extracts every chip nor re-matches every pair.
//! Feature rows are keyed like the in-memory cache: annotation UUID, feature settings, and a
//! digest of what defines the chip (WBIA's image UUID, bbox and theta, or the chip bytes) and of
//! the model weights. A pair score is keyed by both feature sets' keys (as digests) and the
//! matcher's settings, so a re-rendered chip, a changed setting or new weights never reuse a
//! score. Used from tokio's blocking pool, behind a mutex, never from the model thread.
//!
//! Everything here can be recomputed, so damage is never fatal and never served: a file that
//! fails `PRAGMA quick_check` (or is not a database) is moved aside and replaced by an empty
//! store, and every row carries a SHA-256 checksum, verified on read, so a damaged row is a
//! miss (deleted, counted) rather than wrong features or a wrong score.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use sha2::{Digest, Sha256};
use wbia_lightglue_model::Features;

use crate::job_board::{JobBoard, JobStatus, StoredJob};
use crate::{Error, FeatureKey, Result};

/// The store's file in the data directory.
const FILE_NAME: &str = "features.sqlite3";

/// `PRAGMA user_version` of the current tables. 0 is the unversioned schema without
/// checksums. The store is a cache, so a file of any other version has its tables dropped and
/// recreated rather than migrated: its rows are recomputed on demand.
const SCHEMA_VERSION: i64 = 2;

const CREATE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS lightglue_features (
        annot_uuid TEXT NOT NULL,
        settings TEXT NOT NULL,
        chip_sha256 BLOB NOT NULL,
        keypoints BLOB NOT NULL,
        keypoint_scores BLOB NOT NULL,
        descriptors BLOB NOT NULL,
        width REAL NOT NULL,
        height REAL NOT NULL,
        checksum BLOB NOT NULL,
        created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (annot_uuid, settings, chip_sha256)
    );
    CREATE TABLE IF NOT EXISTS lightglue_scores (
        query_features TEXT NOT NULL,
        database_features TEXT NOT NULL,
        matcher TEXT NOT NULL,
        score REAL NOT NULL,
        checksum BLOB NOT NULL,
        created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (query_features, database_features, matcher)
    );
    CREATE TABLE IF NOT EXISTS lightglue_jobs (
        jobid TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        status TEXT NOT NULL,
        progress TEXT,
        result TEXT,
        created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
    );";

/// Finished jobs the SQLite store keeps (the oldest are forgotten first), as the server's
/// own registry bounds them in memory.
const MAX_STORED_JOBS: i64 = 10_000;

/// Where features and pair scores persist: SQLite in the data directory ([`FeatureStore`],
/// one process), or PostgreSQL shared by several replicas
/// ([`crate::pg_store::PgStore`]). Both keep the same rows, checksums and keys; both are
/// called from tokio's blocking pool, never from the model thread.
pub trait Store: Send + Sync {
    /// Stored features of `key`; `None` when absent or damaged (then deleted and counted).
    fn get(&self, key: &FeatureKey) -> Result<Option<Features>>;
    /// Stores the features of `key`, replacing any.
    fn put(&self, key: &FeatureKey, f: &Features) -> Result<()>;
    /// Stored pair scores of `query` against each of `database`, in order (`None`: absent or
    /// damaged).
    fn scores(&self, query: &str, database: &[String], matcher: &str) -> Result<Vec<Option<f32>>>;
    /// Stores pair scores `(query digest, database digest, score)` together.
    fn put_scores(&self, matcher: &str, scores: &[(String, String, f32)]) -> Result<()>;
    /// Stored feature sets.
    fn len(&self) -> Result<usize>;
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Stored pair scores.
    fn score_count(&self) -> Result<usize>;
    /// The count of rows found damaged on read since open, shared for metrics.
    fn corrupt_rows_counter(&self) -> Arc<AtomicU64>;
}

pub struct FeatureStore {
    conn: Mutex<Connection>,
    /// Where a corrupt file found at open was moved.
    quarantined: Option<PathBuf>,
    /// Rows found damaged on read; shared so that metrics need not take the store's lock.
    corrupt_rows: Arc<AtomicU64>,
}

fn db_error(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

pub(crate) fn to_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SHA-256 over a row's columns, each length-prefixed, after the table's name (so no row can
/// pass for another table's, nor fields shift between columns). Key columns are included: a
/// row damaged into another key must not serve that key.
fn checksum(table: &str, fields: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for field in std::iter::once(table.as_bytes()).chain(fields.iter().copied()) {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    h.finalize().into()
}

pub(crate) fn features_checksum(
    annot: &str,
    settings: &str,
    chip: &[u8],
    blobs: [&[u8]; 3],
    width: f64,
    height: f64,
) -> [u8; 32] {
    let [kp, scores, desc] = blobs;
    checksum(
        "lightglue_features",
        &[
            annot.as_bytes(),
            settings.as_bytes(),
            chip,
            kp,
            scores,
            desc,
            &width.to_le_bytes(),
            &height.to_le_bytes(),
        ],
    )
}

pub(crate) fn score_checksum(query: &str, database: &str, matcher: &str, score: f64) -> [u8; 32] {
    checksum(
        "lightglue_scores",
        &[
            query.as_bytes(),
            database.as_bytes(),
            matcher.as_bytes(),
            &score.to_le_bytes(),
        ],
    )
}

/// Features from a row whose checksum matched; `None` (logged) when they are still invalid:
/// written wrong, not damaged since, so absent, and overwritten when recomputed.
pub(crate) fn features_of_row(
    key: &FeatureKey,
    blobs: [&[u8]; 3],
    width: f64,
    height: f64,
) -> Option<Features> {
    let [kp, scores, desc] = blobs;
    let kp = from_bytes(kp);
    let features = Features {
        keypoints: kp.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
        scores: from_bytes(scores),
        descriptors: from_bytes(desc),
        image_size: [width as f32, height as f32],
    };
    match features.validate() {
        Ok(()) => Some(features),
        Err(e) => {
            tracing::warn!(annot = %key.annot, error = %e, "ignoring an invalid stored feature row");
            None
        }
    }
}

/// A column's bytes; `None` for a value of the wrong type (damage, not an error).
fn bytes_of(v: ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => Some(b.to_vec()),
        _ => None,
    }
}

/// A REAL column (SQLite may hand back an integral REAL as an integer).
fn real_of(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Real(f) => Some(f),
        ValueRef::Integer(i) => Some(i as f64),
        _ => None,
    }
}

/// SQLite reports damage it meets while reading (a b-tree page `quick_check` passed but a
/// query trips over) as corruption; that is a miss, not a failed request.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Why opening failed: the file itself is bad (move it aside), or something a fresh file
/// would not fix (permissions, a full disk, a lock held elsewhere), which is reported.
enum OpenError {
    Corrupt(String),
    Other(rusqlite::Error),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        let environmental = matches!(
            e.sqlite_error_code(),
            Some(
                ErrorCode::CannotOpen
                    | ErrorCode::PermissionDenied
                    | ErrorCode::ReadOnly
                    | ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::OutOfMemory
                    | ErrorCode::DiskFull
                    | ErrorCode::SystemIoFailure
            )
        );
        if environmental {
            OpenError::Other(e)
        } else {
            OpenError::Corrupt(e.to_string())
        }
    }
}

/// `path` with `suffix` appended to its file name (SQLite's `-wal` and `-shm` files).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Moves a corrupt store and its WAL and shared-memory files aside (kept for inspection, as
/// `features.sqlite3.corrupt-<unix seconds>`), returning the new path. The WAL and shm files
/// must go with it: left behind, SQLite would replay the old WAL into the fresh file.
fn quarantine(path: &Path) -> Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = with_suffix(path, &format!(".corrupt-{secs}"));
    let mut target = base.clone();
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = with_suffix(&base, &format!(".{n}"));
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        match std::fs::rename(&from, with_suffix(&target, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Deleting is enough for a cache; keeping the file is only for inspection.
            Err(e) => std::fs::remove_file(&from).map_err(|_| {
                Error::Store(format!(
                    "cannot move aside or delete the corrupt {}: {e}",
                    from.display()
                ))
            })?,
        }
    }
    Ok(target)
}

/// Opens `path`, checks it, and brings its tables to [`SCHEMA_VERSION`].
fn connect(path: &Path) -> std::result::Result<Connection, OpenError> {
    let conn = Connection::open(path)?;
    // Another connection's write briefly locks the file; wait rather than call it damage.
    conn.busy_timeout(Duration::from_secs(5))?;
    // Reads every page of the tables' b-trees: O(file size), once per start.
    let problems = conn
        .prepare("PRAGMA quick_check")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if problems != ["ok"] {
        let mut reason = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
        reason.truncate(500);
        return Err(OpenError::Corrupt(reason));
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;",
    )?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        conn.execute_batch(CREATE_TABLES)?;
    } else {
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('lightglue_features', 'lightglue_scores')",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 {
            tracing::info!(
                path = %path.display(),
                from = version,
                to = SCHEMA_VERSION,
                "feature store of another schema version: its rows are dropped and recomputed"
            );
        }
        conn.execute_batch(&format!(
            "BEGIN;
             DROP TABLE IF EXISTS lightglue_features;
             DROP TABLE IF EXISTS lightglue_scores;
             {CREATE_TABLES}
             PRAGMA user_version = {SCHEMA_VERSION};
             COMMIT;"
        ))?;
    }
    Ok(conn)
}

impl FeatureStore {
    /// Opens (creating if needed) `features.sqlite3` in `dir`. A corrupt file (failing
    /// `PRAGMA quick_check`, not a database, unreadable schema) is moved aside and replaced by
    /// an empty store, so a damaged cache never stops the service; [`Self::quarantined`]
    /// says where it went. Errors only for what a fresh file would not fix (an unwritable
    /// directory, a full disk, a file locked by another process).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("data directory {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let (conn, quarantined) = match connect(&path) {
            Ok(conn) => (conn, None),
            Err(OpenError::Other(e)) => return Err(db_error(e)),
            Err(OpenError::Corrupt(reason)) => {
                let moved = quarantine(&path)?;
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %moved.display(),
                    %reason,
                    "the feature store is corrupt: moved aside, starting an empty one"
                );
                let conn = connect(&path).map_err(|e| match e {
                    OpenError::Corrupt(reason) => Error::Store(reason),
                    OpenError::Other(e) => db_error(e),
                })?;
                (conn, Some(moved))
            }
        };
        // Jobs still `working` in the file were running when the last process stopped: they
        // will never finish, and say so instead of staying `working`.
        let stopped = crate::job_board::stopped_result(
            "the service stopped while this job ran; start the job again (what it had \
             computed is stored and reused)",
        );
        conn.execute(
            "UPDATE lightglue_jobs SET status = 'exception', progress = NULL, result = ?1,
                 updated = CURRENT_TIMESTAMP
             WHERE status = 'working'",
            [&stopped],
        )
        .map_err(db_error)?;
        Ok(Self {
            conn: Mutex::new(conn),
            quarantined,
            corrupt_rows: Arc::default(),
        })
    }

    /// Where a corrupt store file found at open was moved (an empty store replaced it), so
    /// the server can report it; `None` when the file was sound.
    pub fn quarantined(&self) -> Option<&Path> {
        self.quarantined.as_deref()
    }

    /// Rows found damaged on read since open (each dropped and recomputed on demand).
    pub fn corrupt_rows(&self) -> u64 {
        self.corrupt_rows.load(Ordering::Relaxed)
    }

    /// The connection; a panic while it was held leaves nothing half-done (every write is
    /// one statement or one transaction), so a poisoned lock is taken as is.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts and logs a damaged row, then deletes it (when SQLite still can) so that it is
    /// rewritten on the next computation instead of being reported on every read.
    fn drop_damaged(&self, what: &str, delete: rusqlite::Result<usize>) {
        self.corrupt_rows.fetch_add(1, Ordering::Relaxed);
        match delete {
            Ok(_) => tracing::warn!(row = what, "dropped a damaged feature store row"),
            Err(e) => {
                tracing::warn!(row = what, error = %e, "a damaged feature store row could not be deleted")
            }
        }
    }

    /// Stored features of `key`; `None` when absent or damaged (then deleted and counted).
    pub fn get(&self, key: &FeatureKey) -> Result<Option<Features>> {
        let annot = key.annot.to_string();
        let chip = key.chip_digest();
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT keypoints, keypoint_scores, descriptors, width, height, checksum
                 FROM lightglue_features
                 WHERE annot_uuid = ?1 AND settings = ?2 AND chip_sha256 = ?3",
                params![annot, key.settings, &chip[..]],
                |r| {
                    Ok((|| {
                        Some((
                            bytes_of(r.get_ref(0).ok()?)?,
                            bytes_of(r.get_ref(1).ok()?)?,
                            bytes_of(r.get_ref(2).ok()?)?,
                            real_of(r.get_ref(3).ok()?)?,
                            real_of(r.get_ref(4).ok()?)?,
                            bytes_of(r.get_ref(5).ok()?)?,
                        ))
                    })())
                },
            )
            .optional();
        let row = match row {
            Ok(None) => return Ok(None),
            Ok(Some(row)) => row,
            Err(e) if is_damage(&e) => {
                self.drop_damaged("features (unreadable)", Err(e));
                return Ok(None);
            }
            Err(e) => return Err(db_error(e)),
        };
        let verified = row.filter(|(kp, scores, desc, w, h, sum)| {
            features_checksum(&annot, &key.settings, &chip, [kp, scores, desc], *w, *h)[..]
                == sum[..]
        });
        let Some((kp, scores, desc, w, h, _)) = verified else {
            let delete = conn.execute(
                "DELETE FROM lightglue_features
                 WHERE annot_uuid = ?1 AND settings = ?2 AND chip_sha256 = ?3",
                params![annot, key.settings, &chip[..]],
            );
            self.drop_damaged("features", delete);
            return Ok(None);
        };
        Ok(features_of_row(key, [&kp, &scores, &desc], w, h))
    }

    /// Stores the features of `key`, replacing any.
    pub fn put(&self, key: &FeatureKey, f: &Features) -> Result<()> {
        let annot = key.annot.to_string();
        let chip = key.chip_digest();
        let kp = to_bytes(f.keypoints.iter().flatten().copied());
        let scores = to_bytes(f.scores.iter().copied());
        let desc = to_bytes(f.descriptors.iter().copied());
        let (w, h) = (f.image_size[0] as f64, f.image_size[1] as f64);
        let sum = features_checksum(&annot, &key.settings, &chip, [&kp, &scores, &desc], w, h);
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO lightglue_features
                 (annot_uuid, settings, chip_sha256, keypoints, keypoint_scores, descriptors,
                  width, height, checksum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    annot,
                    key.settings,
                    &chip[..],
                    kp,
                    scores,
                    desc,
                    w,
                    h,
                    &sum[..]
                ],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// A stored pair score, if any; `None` too when damaged (then deleted and counted).
    pub fn score(&self, query: &str, database: &str, matcher: &str) -> Result<Option<f32>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT score, checksum FROM lightglue_scores
                 WHERE query_features = ?1 AND database_features = ?2 AND matcher = ?3",
                params![query, database, matcher],
                |r| {
                    Ok((|| {
                        Some((real_of(r.get_ref(0).ok()?)?, bytes_of(r.get_ref(1).ok()?)?))
                    })())
                },
            )
            .optional();
        let row = match row {
            Ok(None) => return Ok(None),
            Ok(Some(row)) => row,
            Err(e) if is_damage(&e) => {
                self.drop_damaged("pair score (unreadable)", Err(e));
                return Ok(None);
            }
            Err(e) => return Err(db_error(e)),
        };
        match row {
            Some((score, sum))
                if score_checksum(query, database, matcher, score)[..] == sum[..] =>
            {
                Ok(Some(score).filter(|s| s.is_finite()).map(|s| s as f32))
            }
            _ => {
                let delete = conn.execute(
                    "DELETE FROM lightglue_scores
                     WHERE query_features = ?1 AND database_features = ?2 AND matcher = ?3",
                    params![query, database, matcher],
                );
                self.drop_damaged("pair score", delete);
                Ok(None)
            }
        }
    }

    /// Stores pair scores `(query digest, database digest, score)` in one transaction.
    pub fn put_scores(&self, matcher: &str, scores: &[(String, String, f32)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_error)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO lightglue_scores
                     (query_features, database_features, matcher, score, checksum)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db_error)?;
            for (q, d, score) in scores {
                // + 0.0 turns -0.0 into 0.0: SQLite keeps an integral REAL as an integer, so a
                // -0.0 would come back as 0 and fail its checksum.
                let score = *score as f64 + 0.0;
                let sum = score_checksum(q, d, matcher, score);
                insert
                    .execute(params![q, d, matcher, score, &sum[..]])
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)
    }

    /// Stored pair scores.
    pub fn score_count(&self) -> Result<usize> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM lightglue_scores", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(db_error)
    }

    pub fn len(&self) -> Result<usize> {
        self.conn()
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

impl JobBoard for FeatureStore {
    fn claim_job(&self, jobid: &str, replica: &str) -> Result<bool> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM lightglue_jobs WHERE jobid IN (
                 SELECT jobid FROM lightglue_jobs WHERE status <> 'working'
                 ORDER BY updated DESC, rowid DESC LIMIT -1 OFFSET ?1)",
            [MAX_STORED_JOBS],
        )
        .map_err(db_error)?;
        let inserted = conn
            .execute(
                "INSERT INTO lightglue_jobs (jobid, replica, status) VALUES (?1, ?2, 'working')
                 ON CONFLICT (jobid) DO NOTHING",
                [jobid, replica],
            )
            .map_err(db_error)?;
        Ok(inserted == 1)
    }

    fn update_job(
        &self,
        jobid: &str,
        status: JobStatus,
        progress: Option<&str>,
        result: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE lightglue_jobs SET status = ?2, progress = ?3, result = ?4,
                     updated = CURRENT_TIMESTAMP
                 WHERE jobid = ?1",
                rusqlite::params![jobid, status.as_str(), progress, result],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// One process runs every job of this file, so no lease applies: jobs of a process that
    /// stopped were ended at open.
    fn job(&self, jobid: &str, _lease: Duration) -> Result<Option<StoredJob>> {
        let row = self
            .conn()
            .query_row(
                "SELECT replica, status, progress, result FROM lightglue_jobs WHERE jobid = ?1",
                [jobid],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error)?;
        row.map(|(replica, status, progress, result)| {
            Ok(StoredJob {
                replica,
                status: JobStatus::parse(&status)?,
                progress,
                result,
            })
        })
        .transpose()
    }

    fn job_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT jobid FROM lightglue_jobs ORDER BY jobid")
            .map_err(db_error)?;
        let ids = statement
            .query_map([], |r| r.get(0))
            .map_err(db_error)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(db_error)?;
        Ok(ids)
    }
}

impl Store for FeatureStore {
    fn get(&self, key: &FeatureKey) -> Result<Option<Features>> {
        FeatureStore::get(self, key)
    }

    fn put(&self, key: &FeatureKey, f: &Features) -> Result<()> {
        FeatureStore::put(self, key, f)
    }

    fn scores(&self, query: &str, database: &[String], matcher: &str) -> Result<Vec<Option<f32>>> {
        database
            .iter()
            .map(|d| self.score(query, d, matcher))
            .collect()
    }

    fn put_scores(&self, matcher: &str, scores: &[(String, String, f32)]) -> Result<()> {
        FeatureStore::put_scores(self, matcher, scores)
    }

    fn len(&self) -> Result<usize> {
        FeatureStore::len(self)
    }

    fn score_count(&self) -> Result<usize> {
        FeatureStore::score_count(self)
    }

    fn corrupt_rows_counter(&self) -> Arc<AtomicU64> {
        self.corrupt_rows.clone()
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
        let chip_of = |theta: f64, pixels| FeatureKey {
            chip: ChipId::Wbia(crate::WbiaChip {
                image: Uuid::from_u128(9),
                bbox: [1, 2, 30, 40],
                theta,
                pixels,
            }),
            ..key.clone()
        };
        let wbia_chip = |theta: f64| chip_of(theta, crate::ChipPixels::Downloaded);
        store.put(&wbia_chip(0.0), &f).unwrap();
        assert!(store.get(&wbia_chip(0.0)).unwrap().is_some());
        assert!(store.get(&wbia_chip(0.5)).unwrap().is_none());
        // WBIA's JPEG re-encode and the chip made from its image file: never one key.
        let made = chip_of(0.0, crate::ChipPixels::FromImage);
        assert!(store.get(&made).unwrap().is_none());
        assert_ne!(made.digest(), wbia_chip(0.0).digest());
        assert_ne!(made.chip_digest(), wbia_chip(0.0).chip_digest());
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
        let store = FeatureStore::open(&dir).unwrap();
        store
            .put_scores(
                "m1",
                &[
                    ("q".into(), "d1".into(), 12.5),
                    ("q".into(), "d2".into(), 0.0),
                    // What an empty float sum gives; SQLite keeps it as the integer 0.
                    ("q".into(), "d3".into(), -0.0),
                    ("q".into(), "d4".into(), 0.1234567),
                ],
            )
            .unwrap();
        assert_eq!(store.score("q", "d1", "m1").unwrap(), Some(12.5));
        assert_eq!(store.score("q", "d2", "m1").unwrap(), Some(0.0));
        assert_eq!(store.score("q", "d3", "m1").unwrap(), Some(0.0));
        assert_eq!(store.score("q", "d4", "m1").unwrap(), Some(0.1234567));
        assert_eq!(store.corrupt_rows(), 0);
        assert_eq!(store.score("q", "d1", "m2").unwrap(), None);
        assert_eq!(store.score("d1", "q", "m1").unwrap(), None);
        drop(store);
        let reopened = FeatureStore::open(&dir).unwrap();
        assert_eq!(reopened.score("q", "d1", "m1").unwrap(), Some(12.5));
        assert_eq!(reopened.score_count().unwrap(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
