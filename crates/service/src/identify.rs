//! A request's queries scored and ranked against its database: the lists checked as WBIA
//! checks them, the request admitted, its annotations resolved once, and the engine asked to
//! score every pair, or, for a large engine job with replicas sharing PostgreSQL, the work
//! split into chunks that every replica matches (`split.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wbia_lightglue_engine::{
    rank_all, Annot, Config, Engine, Progress, QueryResult, Skipped, Ticket, UnusableChips,
};

use crate::split::ChunkMetrics;
use crate::{Annotations, Error, Result};

/// Most annotations one request may name.
/// Requests stream their chips (memory does not grow with this), so the bound is on the
/// lists and results a request carries.
pub const MAX_ANNOTS_PER_REQUEST: usize = 50_000;

/// How large engine jobs are shared among replicas.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// With a shared PostgreSQL store: engine jobs of more database annotations than this
    /// are split into chunks of this many, matched by every replica.
    pub chunk_annotations: usize,
    /// How long a replica may hold a chunk without renewing it (it renews at a third of
    /// this while working); a replica that dies loses its chunk after at most this.
    pub chunk_lease: Duration,
    /// This process's name among the replicas (host name and process id): jobs and chunks
    /// record who runs them.
    pub replica: String,
}

/// Counters of identification, for `/metrics`.
#[derive(Debug, Default)]
pub struct IdentifyMetrics {
    /// Database annotations left out of answers because their chips cannot be used.
    pub annotations_skipped: AtomicU64,
    /// Chunks of split jobs this replica has worked on.
    pub chunks: ChunkMetrics,
}

/// What one run is besides its lists: the admission it already holds from
/// [`Identifier::admit`], which checked the lists (else they are checked and admitted here),
/// where it counts its progress, and the engine job it is for (only a job is split).
#[derive(Clone, Copy, Default)]
pub struct RunContext<'a> {
    pub admitted: Option<&'a Ticket>,
    pub progress: Option<&'a Progress>,
    pub job: Option<&'a str>,
}

/// What a run produces: per query, ranked results; and what WBIA said of the annotations on
/// the way.
pub struct Computed {
    pub results: Vec<QueryResult>,
    /// Every annotation's rowid, queries first, in request order.
    pub aids: Vec<(Uuid, i64)>,
    /// Database annotations left out because their chips cannot be used.
    pub skipped: Vec<Skipped>,
    /// Every annotation's name as WBIA gave it (`None`: unnamed), queries included.
    pub names: HashMap<Uuid, Option<String>>,
}

/// UUIDs listed more than once (WBIA's 601): per list, each repeated UUID with every position
/// it has there, in the order of first appearance.
#[derive(Debug, Default, PartialEq)]
pub struct Duplicates {
    pub queries: Vec<(Uuid, Vec<usize>)>,
    pub database: Vec<(Uuid, Vec<usize>)>,
}

/// Scores annotations: the engine, WBIA's annotations, and the replicas' shared work.
pub struct Identifier {
    engine: Arc<Engine>,
    annotations: Annotations,
    split: SplitOptions,
    metrics: IdentifyMetrics,
}

impl Identifier {
    pub fn new(engine: Arc<Engine>, annotations: Annotations, split: SplitOptions) -> Self {
        Self {
            engine,
            annotations,
            split,
            metrics: IdentifyMetrics::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn annotations(&self) -> &Annotations {
        &self.annotations
    }

    pub fn split_options(&self) -> &SplitOptions {
        &self.split
    }

    pub fn metrics(&self) -> &IdentifyMetrics {
        &self.metrics
    }

    /// Checks the lists ([`check_lists`]) and admits a run of them now (the engine's `Busy`
    /// when full), for a job that must be refused at once rather than fail later.
    pub fn admit(&self, queries: &[Uuid], database: &[Uuid]) -> Result<Ticket> {
        check_lists(queries, database)?;
        Ok(self.engine.admit(pair_count(queries, database))?)
    }

    /// Scores and ranks `queries` against `database`, each query against the database minus
    /// itself: chips stream through fetch → decode → extract → match, and those whose
    /// features are cached or stored (keyed by WBIA's image UUID, bbox and theta) are not
    /// fetched. All unknown annotations are reported at once (600). A job of one query with
    /// a shared store and more than `chunk_annotations` others is split across replicas.
    pub async fn identify(
        &self,
        queries: &[Uuid],
        database: &[Uuid],
        config: &Config,
        run: RunContext<'_>,
    ) -> Result<Computed> {
        let own_ticket;
        let ticket = match run.admitted {
            Some(t) => t,
            None => {
                own_ticket = self.admit(queries, database)?;
                &own_ticket
            }
        };
        let mut all: Vec<Uuid> = queries.to_vec();
        all.extend(database.iter().filter(|u| !queries.contains(u)));
        let resolved = self.annotations.resolve(&all).await?;
        let aids: Vec<(Uuid, i64)> = resolved.iter().map(|a| (a.uuid, a.aid)).collect();
        let annot_of: HashMap<Uuid, Annot> = resolved.iter().map(|a| (a.uuid, a.annot())).collect();
        let annots =
            |list: &[Uuid]| -> Vec<Annot> { list.iter().map(|u| annot_of[u].clone()).collect() };
        let source = self.annotations.chips(&resolved);
        let own_progress = Progress::default();
        let progress = run.progress.unwrap_or(&own_progress);
        let others: Vec<Uuid> = match queries {
            [query] => others(*query, database),
            _ => Vec::new(),
        };
        let found = match run.job {
            Some(jobid) if queries.len() == 1 && self.splits(others.len()) => {
                // In the shared store before the chunks are queued: no replica extracts it
                // again.
                let annot = &annots(queries)[0];
                self.engine
                    .prepare_query(ticket, &source, annot, config, progress)
                    .await?;
                self.split_score(jobid, queries[0], &others, config, progress)
                    .await?
            }
            _ => {
                self.engine
                    .identify_all(
                        ticket,
                        &source,
                        &annots(queries),
                        &annots(database),
                        config,
                        progress,
                        UnusableChips::Skip,
                    )
                    .await?
            }
        };
        if !found.skipped.is_empty() {
            self.metrics
                .annotations_skipped
                .fetch_add(found.skipped.len() as u64, Ordering::Relaxed);
        }
        let names: HashMap<Uuid, Option<String>> =
            resolved.into_iter().map(|a| (a.uuid, a.name)).collect();
        let results = rank_all(queries, database, found.scores, &names, config);
        Ok(Computed {
            results,
            aids,
            skipped: found.skipped,
            names,
        })
    }
}

/// The database without the query.
fn others(query: Uuid, database: &[Uuid]) -> Vec<Uuid> {
    database.iter().filter(|d| **d != query).copied().collect()
}

/// What WBIA checks of a request's lists before any work: non-empty, not too long, no
/// duplicates (601).
pub fn check_lists(queries: &[Uuid], database: &[Uuid]) -> Result<()> {
    if queries.is_empty() || database.is_empty() {
        return Err(Error::EmptyList);
    }
    if queries.len() + database.len() > MAX_ANNOTS_PER_REQUEST {
        return Err(Error::TooManyAnnotations {
            max: MAX_ANNOTS_PER_REQUEST,
        });
    }
    let duplicates = Duplicates {
        queries: repeated(queries),
        database: repeated(database),
    };
    if duplicates.queries.is_empty() && duplicates.database.is_empty() {
        return Ok(());
    }
    Err(Error::DuplicateUuids(duplicates))
}

/// Each UUID listed more than once, with its positions, in the order of first appearance.
fn repeated(list: &[Uuid]) -> Vec<(Uuid, Vec<usize>)> {
    let mut positions: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, u) in list.iter().enumerate() {
        positions.entry(*u).or_default().push(i);
    }
    let mut repeated: Vec<(Uuid, Vec<usize>)> =
        positions.into_iter().filter(|(_, p)| p.len() > 1).collect();
    repeated.sort_by_key(|(_, p)| p[0]);
    repeated
}

/// Pairs a request scores: each query against the database minus itself.
pub fn pair_count(queries: &[Uuid], database: &[Uuid]) -> usize {
    queries
        .iter()
        .map(|q| database.iter().filter(|d| *d != q).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[test]
    fn lists_are_checked_as_wbia_checks_them() {
        let (q, d) = (ids(1), ids(4));
        assert!(check_lists(&q, &d).is_ok());
        assert!(matches!(check_lists(&[], &d), Err(Error::EmptyList)));
        assert!(matches!(check_lists(&q, &[]), Err(Error::EmptyList)));
        let long = ids(MAX_ANNOTS_PER_REQUEST as u128);
        assert!(matches!(
            check_lists(&q, &long),
            Err(Error::TooManyAnnotations {
                max: MAX_ANNOTS_PER_REQUEST
            })
        ));
        let (a, b) = (Uuid::from_u128(7), Uuid::from_u128(9));
        let database = vec![b, a, a, b, Uuid::from_u128(3), a];
        match check_lists(&q, &database) {
            Err(Error::DuplicateUuids(found)) => assert_eq!(
                found,
                Duplicates {
                    queries: vec![],
                    database: vec![(b, vec![0, 3]), (a, vec![1, 2, 5])],
                }
            ),
            _ => panic!("duplicates not reported"),
        }
    }

    #[test]
    fn a_query_is_never_paired_with_itself() {
        let d = ids(5);
        assert_eq!(pair_count(&d[..1], &d), 4);
        assert_eq!(pair_count(&d[..2], &d[2..]), 6);
        assert_eq!(others(d[0], &d), d[1..].to_vec());
    }
}
