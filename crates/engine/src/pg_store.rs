//! The store on PostgreSQL, for several replicas sharing one database: the same rows, keys and
//! checksums as the SQLite store (`store.rs`), plus the engine jobs' state, so that any replica
//! answers any job's status and result. Schema migrations are versioned and embedded
//! (refinery, `migrations/postgres/`), run at connect under an advisory lock so that replicas
//! starting together do not race. Connections come from a pool (r2d2) and every statement runs
//! under a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use wbia_lightglue_model::Features;

use crate::job_board::{
    ChunkProgress, ChunkQueue, ChunkState, JobBoard, JobStatus, StoredJob, TakenChunk,
};
use crate::store::{features_checksum, features_of_row, score_checksum, to_bytes, Store};
use crate::{Error, FeatureKey, Result};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Connections per replica: the blocking pool's store calls and the job handlers.
const POOL_SIZE: u32 = 8;
/// Longest wait for a connection, and for a new one to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any statement may run before PostgreSQL cancels it.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;
/// Any constant: the advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x6c69_6768_7467_6c75;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

fn db_error(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("PostgreSQL: {e}"))
}

impl ChunkProgress {
    fn from_row(state: &str, scores: Option<String>, error: Option<String>) -> Self {
        match (state, scores) {
            ("pending", _) => Self::Pending,
            ("taken", _) => Self::Taken,
            ("done", Some(scores)) => Self::Done { scores },
            ("failed", _) => Self::Failed {
                error: error.unwrap_or_else(|| "unknown error".into()),
            },
            (other, _) => Self::Failed {
                error: format!("the chunk's row holds an unreadable state {other:?}"),
            },
        }
    }
}

pub struct PgStore {
    /// `None` only while dropping (see `Drop`).
    pool: Option<Pool>,
    corrupt_rows: Arc<AtomicU64>,
}

impl Drop for PgStore {
    /// A `postgres::Client` closes its connection by blocking on a runtime of its own, which
    /// panics on a thread that is running tokio (the server's last reference to the store
    /// usually goes as `serve` returns inside `block_on`), and a panic in a destructor
    /// during shutdown aborts: exit 139 on every `docker stop`. The pool, and with it every
    /// idle connection, is therefore closed on a plain thread of its own.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), applies the
    /// migrations this build has not yet applied, and keeps a pool of connections. Fails when
    /// the server cannot be reached, so a misconfigured replica stops at start.
    pub fn connect(url: &str) -> Result<Self> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("database URL: {e}")))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"))
            .application_name("wbia-lightglue");
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .connection_timeout(CONNECT_TIMEOUT)
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(db_error)?;
        let mut conn = pool.get().map_err(db_error)?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db_error)?;
        let migrated = embedded::migrations::runner().run(&mut *conn);
        conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .map_err(db_error)?;
        let report = migrated.map_err(db_error)?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "PostgreSQL schema migrated");
        }
        drop(conn);
        Ok(Self {
            pool: Some(pool),
            corrupt_rows: Arc::default(),
        })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        let pool = self.pool.as_ref().expect("the pool lives until drop");
        pool.get().map_err(db_error)
    }

    fn count(&self, table: &str) -> Result<usize> {
        let row = self
            .conn()?
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .map_err(db_error)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    fn drop_damaged(&self, what: &str) {
        self.corrupt_rows.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(row = what, "dropped a damaged feature store row");
    }
}

impl ChunkQueue for PgStore {
    /// Queues a job's chunks (`requests[i]` is chunk i).
    fn add_chunks(&self, jobid: &str, requests: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_error)?;
        for (i, request) in requests.iter().enumerate() {
            tx.execute(
                "INSERT INTO lightglue_chunks (jobid, chunk, request) VALUES ($1, $2, $3)",
                &[&jobid, &(i as i32), request],
            )
            .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    /// Takes the oldest chunk that is pending or whose lease has expired, for `owner`, for
    /// `lease` (others skip the row while it is being taken: no two replicas get it). Chunks
    /// of jobs that have ended (cancelled, failed) are left alone.
    fn take_chunk(&self, owner: &str, lease: Duration) -> Result<Option<TakenChunk>> {
        let row = self
            .conn()?
            .query_opt(
                "UPDATE lightglue_chunks c
                 SET state = 'taken', owner = $1, attempts = attempts + 1,
                     lease_until = now() + make_interval(secs => $2)
                 WHERE (c.jobid, c.chunk) = (
                     SELECT o.jobid, o.chunk FROM lightglue_chunks o
                     WHERE (o.state = 'pending' OR (o.state = 'taken' AND o.lease_until < now()))
                       AND NOT EXISTS (SELECT 1 FROM lightglue_jobs j
                                       WHERE j.jobid = o.jobid AND j.status <> 'working')
                     ORDER BY o.jobid, o.chunk
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING c.jobid, c.chunk, c.request, c.attempts",
                &[&owner, &lease.as_secs_f64()],
            )
            .map_err(db_error)?;
        Ok(row.map(|r| TakenChunk {
            jobid: r.get(0),
            chunk: r.get(1),
            request: r.get(2),
            attempts: r.get(3),
        }))
    }

    /// Extends `owner`'s lease on a chunk it is still working on; `false` when it is no
    /// longer its own (its lease expired and another replica took it).
    fn renew_chunk(&self, jobid: &str, chunk: i32, owner: &str, lease: Duration) -> Result<bool> {
        let n = self
            .conn()?
            .execute(
                "UPDATE lightglue_chunks SET lease_until = now() + make_interval(secs => $4)
                 WHERE jobid = $1 AND chunk = $2 AND owner = $3 AND state = 'taken'",
                &[&jobid, &chunk, &owner, &lease.as_secs_f64()],
            )
            .map_err(db_error)?;
        Ok(n == 1)
    }

    /// Records a chunk's outcome (`scores`, or `error`) if `owner` still holds it.
    fn end_chunk(
        &self,
        jobid: &str,
        chunk: i32,
        owner: &str,
        outcome: std::result::Result<&str, &str>,
    ) -> Result<bool> {
        let (state, scores, error) = match outcome {
            Ok(scores) => ("done", Some(scores), None),
            Err(error) => ("failed", None, Some(error)),
        };
        let n = self
            .conn()?
            .execute(
                "UPDATE lightglue_chunks SET state = $4, scores = $5, error = $6, lease_until = NULL
                 WHERE jobid = $1 AND chunk = $2 AND owner = $3 AND state = 'taken'",
                &[&jobid, &chunk, &owner, &state, &scores, &error],
            )
            .map_err(db_error)?;
        Ok(n == 1)
    }

    /// Gives a taken chunk back untouched (its replica is busy): pending again, at once.
    fn release_chunk(&self, jobid: &str, chunk: i32, owner: &str) -> Result<()> {
        self.conn()?
            .execute(
                "UPDATE lightglue_chunks SET state = 'pending', owner = NULL, lease_until = NULL,
                     attempts = attempts - 1
                 WHERE jobid = $1 AND chunk = $2 AND owner = $3 AND state = 'taken'",
                &[&jobid, &chunk, &owner],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// Every chunk of a job, in order.
    fn chunks(&self, jobid: &str) -> Result<Vec<ChunkState>> {
        let rows = self
            .conn()?
            .query(
                "SELECT chunk, state, scores, error FROM lightglue_chunks
                 WHERE jobid = $1 ORDER BY chunk",
                &[&jobid],
            )
            .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| ChunkState {
                chunk: r.get(0),
                progress: ChunkProgress::from_row(r.get(1), r.get(2), r.get(3)),
            })
            .collect())
    }

    /// Forgets a job's chunks (merged, or the job ended).
    fn drop_chunks(&self, jobid: &str) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM lightglue_chunks WHERE jobid = $1", &[&jobid])
            .map_err(db_error)?;
        Ok(())
    }
}

impl JobBoard for PgStore {
    /// Records a new job under `jobid` for `replica`, unless any replica has one by that id
    /// (then `false`: ids are never reused).
    fn claim_job(&self, jobid: &str, replica: &str) -> Result<bool> {
        let inserted = self
            .conn()?
            .execute(
                "INSERT INTO lightglue_jobs (jobid, replica, status) VALUES ($1, $2, 'working')
                 ON CONFLICT (jobid) DO NOTHING",
                &[&jobid, &replica],
            )
            .map_err(db_error)?;
        Ok(inserted == 1)
    }

    /// Writes a job's state (by its replica).
    fn update_job(
        &self,
        jobid: &str,
        status: JobStatus,
        progress: Option<&str>,
        result: Option<&str>,
    ) -> Result<()> {
        self.conn()?
            .execute(
                "UPDATE lightglue_jobs SET status = $2, progress = $3, result = $4, updated = now()
                 WHERE jobid = $1",
                &[&jobid, &status.as_str(), &progress, &result],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// A job's shared state. A `working` job whose replica has written nothing for `lease`
    /// (it publishes progress every few seconds while it lives) lost that replica, killed or
    /// cut off from the database: whichever replica reads it first ends it here as
    /// `exception` with the reason, and deletes its chunks, so that no job stays `working`
    /// for ever and nothing of it is left behind. Should the replica come back, a job it ran
    /// whole may still land its result; a split job finds its chunks gone and ends as
    /// `exception` there too.
    fn job(&self, jobid: &str, lease: Duration) -> Result<Option<StoredJob>> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_error)?;
        let abandoned = tx
            .execute(
                "UPDATE lightglue_jobs SET status = 'exception', progress = NULL,
                     result = to_json('replica ' || replica || ' stopped running this job (no \
                     word from it for ' || $2 || ' s: it died or lost the database); \
                     start the job again')::text,
                     updated = now()
                 WHERE jobid = $1 AND status = 'working'
                     AND updated < now() - make_interval(secs => $3)",
                &[
                    &jobid,
                    &format!("{:.0}", lease.as_secs_f64()),
                    &lease.as_secs_f64(),
                ],
            )
            .map_err(db_error)?;
        if abandoned == 1 {
            tx.execute("DELETE FROM lightglue_chunks WHERE jobid = $1", &[&jobid])
                .map_err(db_error)?;
        }
        let row = tx
            .query_opt(
                "SELECT replica, status, progress, result FROM lightglue_jobs WHERE jobid = $1",
                &[&jobid],
            )
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        if abandoned == 1 {
            tracing::warn!(
                jobid,
                "a job's replica went silent: the job ended as exception"
            );
        }
        row.map(|r| {
            Ok(StoredJob {
                replica: r.get(0),
                status: JobStatus::parse(r.get(1))?,
                progress: r.get(2),
                result: r.get(3),
            })
        })
        .transpose()
    }

    /// Every job id any replica has recorded.
    fn job_ids(&self) -> Result<Vec<String>> {
        let rows = self
            .conn()?
            .query("SELECT jobid FROM lightglue_jobs ORDER BY jobid", &[])
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Store for PgStore {
    fn get(&self, key: &FeatureKey) -> Result<Option<Features>> {
        let annot = key.annot.to_string();
        let chip = key.chip_digest();
        let mut conn = self.conn()?;
        let row = conn
            .query_opt(
                "SELECT keypoints, keypoint_scores, descriptors, width, height, checksum
                 FROM lightglue_features
                 WHERE annot_uuid = $1 AND settings = $2 AND chip_sha256 = $3",
                &[&annot, &key.settings, &&chip[..]],
            )
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let (kp, scores, desc): (Vec<u8>, Vec<u8>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        let (w, h, sum): (f64, f64, Vec<u8>) = (row.get(3), row.get(4), row.get(5));
        let expected = features_checksum(&annot, &key.settings, &chip, [&kp, &scores, &desc], w, h);
        if expected[..] != sum[..] {
            conn.execute(
                "DELETE FROM lightglue_features
                 WHERE annot_uuid = $1 AND settings = $2 AND chip_sha256 = $3",
                &[&annot, &key.settings, &&chip[..]],
            )
            .map_err(db_error)?;
            self.drop_damaged("features");
            return Ok(None);
        }
        Ok(features_of_row(key, [&kp, &scores, &desc], w, h))
    }

    fn put(&self, key: &FeatureKey, f: &Features) -> Result<()> {
        let annot = key.annot.to_string();
        let chip = key.chip_digest();
        let kp = to_bytes(f.keypoints.iter().flatten().copied());
        let scores = to_bytes(f.scores.iter().copied());
        let desc = to_bytes(f.descriptors.iter().copied());
        let (w, h) = (f.image_size[0] as f64, f.image_size[1] as f64);
        let sum = features_checksum(&annot, &key.settings, &chip, [&kp, &scores, &desc], w, h);
        self.conn()?
            .execute(
                "INSERT INTO lightglue_features
                 (annot_uuid, settings, chip_sha256, keypoints, keypoint_scores, descriptors,
                  width, height, checksum)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (annot_uuid, settings, chip_sha256) DO UPDATE SET
                  keypoints = EXCLUDED.keypoints, keypoint_scores = EXCLUDED.keypoint_scores,
                  descriptors = EXCLUDED.descriptors, width = EXCLUDED.width,
                  height = EXCLUDED.height, checksum = EXCLUDED.checksum, created = now()",
                &[
                    &annot,
                    &key.settings,
                    &&chip[..],
                    &kp,
                    &scores,
                    &desc,
                    &w,
                    &h,
                    &&sum[..],
                ],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// One query for the whole chunk: `database_features = ANY($2)`.
    fn scores(&self, query: &str, database: &[String], matcher: &str) -> Result<Vec<Option<f32>>> {
        let mut conn = self.conn()?;
        let rows = conn
            .query(
                "SELECT database_features, score, checksum FROM lightglue_scores
                 WHERE query_features = $1 AND database_features = ANY($2) AND matcher = $3",
                &[&query, &database, &matcher],
            )
            .map_err(db_error)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let (d, score, sum): (String, f64, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            if score_checksum(query, &d, matcher, score)[..] == sum[..] && score.is_finite() {
                found.insert(d, score as f32);
            } else {
                conn.execute(
                    "DELETE FROM lightglue_scores
                     WHERE query_features = $1 AND database_features = $2 AND matcher = $3",
                    &[&query, &d, &matcher],
                )
                .map_err(db_error)?;
                self.drop_damaged("pair score");
            }
        }
        Ok(database.iter().map(|d| found.get(d).copied()).collect())
    }

    fn put_scores(&self, matcher: &str, scores: &[(String, String, f32)]) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_error)?;
        let insert = tx
            .prepare(
                "INSERT INTO lightglue_scores
                 (query_features, database_features, matcher, score, checksum)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (query_features, database_features, matcher) DO UPDATE SET
                  score = EXCLUDED.score, checksum = EXCLUDED.checksum, created = now()",
            )
            .map_err(db_error)?;
        for (q, d, score) in scores {
            // As in SQLite: a plain 0 for -0.0, so the checksum covers what is read back.
            let score = *score as f64 + 0.0;
            let sum = score_checksum(q, d, matcher, score);
            tx.execute(&insert, &[q, d, &matcher, &score, &&sum[..]])
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)
    }

    fn len(&self) -> Result<usize> {
        self.count("lightglue_features")
    }

    fn score_count(&self) -> Result<usize> {
        self.count("lightglue_scores")
    }

    fn corrupt_rows_counter(&self) -> Arc<AtomicU64> {
        self.corrupt_rows.clone()
    }
}
