//! 1-vs-all identification metrics, as the plugin's `lightglue_evaluate` computes them: each
//! annotation queries all others (optionally only those in its group, e.g. the same side);
//! CMC counts a hit at rank r when the query's identity is among the first r; the denominator
//! is every query, so queries without a same-identity partner count as misses. Average
//! precision (not in the plugin; its tests define it this way) is the mean of precision@k over
//! the ranks k of the true matches, averaged over queries that have at least one.

use serde::Serialize;

use crate::Calibration;

pub const CMC_RANKS: [usize; 4] = [1, 5, 10, 20];

/// Resamplings behind every interval `evaluate` reports.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// SplitMix64: a seeded, dependency-free generator, good enough to draw resampled queries.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z as u128 * n as u128) >> 64) as usize
    }
}

/// The 2.5th and 97.5th percentiles of `statistic` over resamplings of `n` queries.
fn bootstrap(n: usize, statistic: impl Fn(&[usize]) -> f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut rng = SplitMix(0x5EED);
    let mut sample = vec![0usize; n];
    let mut values: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            for s in sample.iter_mut() {
                *s = rng.below(n);
            }
            statistic(&sample)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
    (at(0.025), at(0.975))
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub queries: usize,
    /// Queries with at least one same-identity candidate.
    pub queries_with_match: usize,
    /// (rank, fraction of queries with a hit within it).
    pub cmc: Vec<(usize, f64)>,
    pub mean_average_precision: f64,
    /// 95% intervals of `cmc` (rank, low, high) and of `mean_average_precision`, from
    /// [`BOOTSTRAP_RESAMPLES`] resamplings of the queries with replacement (percentile
    /// method, fixed seed): on sets of a few dozen queries they span tens of points.
    pub cmc_interval: Vec<(usize, f64, f64)>,
    pub mean_average_precision_interval: (f64, f64),
    /// Per query (input order), the 0-based rank of its first same-identity candidate
    /// (`None`: no such candidate): what paired comparisons between models need.
    pub first_hit: Vec<Option<usize>>,
    /// Raw scores of the comparable same-identity pairs (each pair once).
    pub genuine_scores: Option<ScoreSummary>,
    /// Raw scores of the comparable different-identity pairs.
    pub impostor_scores: Option<ScoreSummary>,
}

/// The spread of a set of raw scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreSummary {
    pub pairs: usize,
    pub min: f32,
    pub median: f32,
    /// 95th percentile (nearest rank).
    pub p95: f32,
    pub max: f32,
}

impl ScoreSummary {
    pub fn of(scores: &[f32]) -> Option<Self> {
        let mut sorted = scores.to_vec();
        sorted.sort_by(f32::total_cmp);
        let n = sorted.len();
        let at = |q: f64| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| Self {
            pairs: n,
            min: sorted[0],
            median: at(0.5),
            p95: at(0.95),
            max: sorted[n - 1],
        })
    }
}

/// Every comparable pair once (i < j, same group when groups are given), with its raw
/// score and whether both sides are the same identity: what a calibration is fitted on.
pub fn labelled_pairs(
    scores: &[Vec<f32>],
    identities: &[String],
    groups: Option<&[String]>,
) -> Vec<(f32, bool)> {
    let n = identities.len();
    (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .filter(|&(i, j)| groups.is_none_or(|g| g[i] == g[j]))
        .map(|(i, j)| (scores[i][j], identities[i] == identities[j]))
        .collect()
}

/// The candidates of query `i`, best first (ties in index order), restricted to its group.
pub fn ranking(scores: &[Vec<f32>], i: usize, groups: Option<&[String]>) -> Vec<usize> {
    let mut candidates: Vec<usize> = (0..scores.len())
        .filter(|&j| j != i && groups.is_none_or(|g| g[j] == g[i]))
        .collect();
    // argsort(-row), stable for ties.
    candidates.sort_by(|&a, &b| scores[i][b].total_cmp(&scores[i][a]));
    candidates
}

/// How well a calibration's probabilities fit a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationCheck {
    pub pairs: usize,
    /// Mean squared error of the probabilities (0 is perfect).
    pub brier: f64,
    /// The Brier score of always answering this set's genuine share: what a useful
    /// calibration beats.
    pub brier_of_prior: f64,
    /// Mean cross-entropy, probabilities clamped to [1e-12, 1 - 1e-12].
    pub log_loss: f64,
    pub mean_genuine: f64,
    pub mean_impostor: f64,
}

/// Scores `calibration` on labelled pairs (usually not the ones it was fitted on).
pub fn check_calibration(calibration: &Calibration, pairs: &[(f32, bool)]) -> CalibrationCheck {
    let n = pairs.len().max(1) as f64;
    let genuine = pairs.iter().filter(|p| p.1).count();
    let share = genuine as f64 / n;
    let (mut brier, mut log_loss, mut sum_genuine, mut sum_impostor) = (0.0, 0.0, 0.0, 0.0);
    for &(score, same) in pairs {
        let p = calibration.probability(score);
        let target = f64::from(u8::from(same));
        brier += (p - target).powi(2);
        let clamped = p.clamp(1e-12, 1.0 - 1e-12);
        log_loss -= if same {
            clamped.ln()
        } else {
            (1.0 - clamped).ln()
        };
        if same {
            sum_genuine += p;
        } else {
            sum_impostor += p;
        }
    }
    CalibrationCheck {
        pairs: pairs.len(),
        brier: brier / n,
        brier_of_prior: share * (1.0 - share),
        log_loss: log_loss / n,
        mean_genuine: sum_genuine / genuine.max(1) as f64,
        mean_impostor: sum_impostor / (pairs.len() - genuine).max(1) as f64,
    }
}

/// `scores[i][j]`: score of annotation i against j (the diagonal is ignored);
/// `groups`: candidates are restricted to the query's group when given.
pub fn evaluate(
    scores: &[Vec<f32>],
    identities: &[String],
    groups: Option<&[String]>,
) -> Evaluation {
    let n = identities.len();
    let pairs = labelled_pairs(scores, identities, groups);
    let split =
        |same: bool| -> Vec<f32> { pairs.iter().filter(|p| p.1 == same).map(|p| p.0).collect() };
    // Per query: the rank of its first true match and its average precision.
    let mut first_hit = Vec::with_capacity(n);
    let mut average_precision = Vec::with_capacity(n);
    for i in 0..n {
        let candidates = ranking(scores, i, groups);
        let relevant: Vec<bool> = candidates
            .iter()
            .map(|&j| identities[j] == identities[i])
            .collect();
        first_hit.push(relevant.iter().position(|&r| r));
        let mut found = 0usize;
        let mut precision_sum = 0.0;
        for (k, &r) in relevant.iter().enumerate() {
            if r {
                found += 1;
                precision_sum += found as f64 / (k + 1) as f64;
            }
        }
        average_precision.push((found > 0).then(|| precision_sum / found as f64));
    }
    let cmc_of = |rank: usize, queries: &[usize]| -> f64 {
        let hits = queries
            .iter()
            .filter(|&&q| first_hit[q].is_some_and(|f| f < rank))
            .count();
        if queries.is_empty() {
            0.0
        } else {
            hits as f64 / queries.len() as f64
        }
    };
    let map_of = |queries: &[usize]| -> f64 {
        let aps: Vec<f64> = queries
            .iter()
            .filter_map(|&q| average_precision[q])
            .collect();
        if aps.is_empty() {
            0.0
        } else {
            aps.iter().sum::<f64>() / aps.len() as f64
        }
    };
    let all: Vec<usize> = (0..n).collect();
    Evaluation {
        queries: n,
        queries_with_match: first_hit.iter().flatten().count(),
        cmc: CMC_RANKS.iter().map(|&r| (r, cmc_of(r, &all))).collect(),
        mean_average_precision: map_of(&all),
        cmc_interval: CMC_RANKS
            .iter()
            .map(|&r| {
                let (low, high) = bootstrap(n, |sample| cmc_of(r, sample));
                (r, low, high)
            })
            .collect(),
        mean_average_precision_interval: bootstrap(n, map_of),
        first_hit,
        genuine_scores: ScoreSummary::of(&split(true)),
        impostor_scores: ScoreSummary::of(&split(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn perfect_and_imperfect_rankings() {
        // a0 ranks its partner a1 second (after b2); others are perfect.
        let scores = vec![
            vec![0.0, 5.0, 9.0, 1.0],
            vec![5.0, 0.0, 1.0, 1.0],
            vec![1.0, 1.0, 0.0, 8.0],
            vec![1.0, 1.0, 8.0, 0.0],
        ];
        let e = evaluate(&scores, &ids(&["a", "a", "b", "b"]), None);
        assert_eq!(e.queries, 4);
        assert_eq!(e.cmc[0], (1, 0.75));
        assert_eq!(e.cmc[1], (5, 1.0));
        // AP: a0 → 1/2, others 1.
        assert!((e.mean_average_precision - 3.5 / 4.0).abs() < 1e-12);
        // Genuine pairs (0,1) and (2,3); impostors (0,2) (0,3) (1,2) (1,3).
        let g = e.genuine_scores.unwrap();
        assert_eq!((g.pairs, g.min, g.median, g.max), (2, 5.0, 5.0, 8.0));
        let i = e.impostor_scores.unwrap();
        assert_eq!(
            (i.pairs, i.min, i.median, i.p95, i.max),
            (4, 1.0, 1.0, 9.0, 9.0)
        );
    }

    #[test]
    fn lonely_queries_count_as_misses_and_groups_restrict_candidates() {
        let scores = vec![
            vec![0.0, 1.0, 2.0],
            vec![1.0, 0.0, 2.0],
            vec![2.0, 2.0, 0.0],
        ];
        let e = evaluate(&scores, &ids(&["a", "a", "c"]), None);
        assert_eq!(e.queries_with_match, 2);
        assert_eq!(e.cmc[0].1, 0.0); // both a's rank c first; c has no partner
        assert_eq!(e.cmc[1].1, 2.0 / 3.0);
        // Put c in its own group: the a's now only see each other.
        let groups = ids(&["left", "left", "right"]);
        let e = evaluate(&scores, &ids(&["a", "a", "c"]), Some(&groups));
        assert_eq!(e.cmc[0].1, 2.0 / 3.0);
        assert_eq!(e.mean_average_precision, 1.0);
    }

    #[test]
    fn intervals_contain_the_estimate_and_narrow_with_more_queries() {
        // Identities in pairs; query i finds its partner first unless i % 3 == 0 (rank 2).
        let set = |pairs: usize| {
            let n = 2 * pairs;
            let ids: Vec<String> = (0..n).map(|i| format!("id{}", i / 2)).collect();
            let scores: Vec<Vec<f32>> = (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| match () {
                            _ if i % 3 == 0 && j == (i + 2) % n => 9.0,
                            _ if i / 2 == j / 2 => 5.0,
                            _ => 1.0,
                        })
                        .collect()
                })
                .collect();
            evaluate(&scores, &ids, None)
        };
        let (small, large) = (set(15), set(300));
        for e in [&small, &large] {
            let (_, rank1) = e.cmc[0];
            let (_, low, high) = e.cmc_interval[0];
            assert!(low <= rank1 && rank1 <= high, "{low} {rank1} {high}");
            assert!(low < high);
            assert_eq!(e.first_hit.len(), e.queries);
            let (low, high) = e.mean_average_precision_interval;
            assert!(low <= e.mean_average_precision && e.mean_average_precision <= high);
        }
        let width = |e: &Evaluation| e.cmc_interval[0].2 - e.cmc_interval[0].1;
        assert!(
            width(&large) < width(&small) / 2.0,
            "{} {}",
            width(&large),
            width(&small)
        );
        // Every query has its partner by rank 2: rank 5's interval is exactly 1.
        assert_eq!(small.cmc_interval[1], (5, 1.0, 1.0));
        assert_eq!(small.first_hit[0], Some(1));
        assert_eq!(small.first_hit[1], Some(0));
    }

    #[test]
    fn calibration_check_against_the_prior() {
        let pairs = [(100.0, true), (2.0, false), (3.0, false), (1.0, false)];
        let c = Calibration::fit(&pairs).unwrap();
        let check = check_calibration(&c, &pairs);
        assert_eq!(check.pairs, 4);
        assert!((check.brier_of_prior - 0.1875).abs() < 1e-12);
        assert!(check.brier < check.brier_of_prior);
        assert!(check.mean_genuine > 0.5 && check.mean_impostor < 0.5);
        assert!(check.log_loss > 0.0);
    }
}
