//! 1-vs-all identification metrics, as the plugin's `lightglue_evaluate` computes them: each
//! annotation queries all others (optionally only those in its group, e.g. the same side);
//! CMC counts a hit at rank r when the query's identity is among the first r; the denominator
//! is every query, so queries without a same-identity partner count as misses. Average
//! precision (not in the plugin; its tests define it this way) is the mean of precision@k over
//! the ranks k of the true matches, averaged over queries that have at least one.

use serde::Serialize;

pub const CMC_RANKS: [usize; 4] = [1, 5, 10, 20];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub queries: usize,
    /// Queries with at least one same-identity candidate.
    pub queries_with_match: usize,
    /// (rank, fraction of queries with a hit within it).
    pub cmc: Vec<(usize, f64)>,
    pub mean_average_precision: f64,
}

/// `scores[i][j]`: score of annotation i against j (the diagonal is ignored);
/// `groups`: candidates are restricted to the query's group when given.
pub fn evaluate(
    scores: &[Vec<f32>],
    identities: &[String],
    groups: Option<&[String]>,
) -> Evaluation {
    let n = identities.len();
    let mut hits = [0usize; CMC_RANKS.len()];
    let (mut ap_sum, mut with_match) = (0.0f64, 0usize);
    for i in 0..n {
        let mut candidates: Vec<usize> = (0..n)
            .filter(|&j| j != i && groups.is_none_or(|g| g[j] == g[i]))
            .collect();
        // argsort(-row), stable for ties.
        candidates.sort_by(|&a, &b| scores[i][b].total_cmp(&scores[i][a]));
        let relevant: Vec<bool> = candidates
            .iter()
            .map(|&j| identities[j] == identities[i])
            .collect();
        if let Some(first) = relevant.iter().position(|&r| r) {
            for (h, &r) in hits.iter_mut().zip(&CMC_RANKS) {
                if first < r {
                    *h += 1;
                }
            }
            with_match += 1;
            let mut found = 0usize;
            let mut precision_sum = 0.0;
            for (k, &r) in relevant.iter().enumerate() {
                if r {
                    found += 1;
                    precision_sum += found as f64 / (k + 1) as f64;
                }
            }
            ap_sum += precision_sum / found as f64;
        }
    }
    Evaluation {
        queries: n,
        queries_with_match: with_match,
        cmc: CMC_RANKS
            .iter()
            .zip(hits)
            .map(|(&r, h)| (r, if n == 0 { 0.0 } else { h as f64 / n as f64 }))
            .collect(),
        mean_average_precision: if with_match == 0 {
            0.0
        } else {
            ap_sum / with_match as f64
        },
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
}
