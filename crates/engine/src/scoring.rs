//! Ranking of database annotations for one query, and name scores as the plugin computes them
//! (`get_match_results`: the score of a name is the **max** over its annotations).

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;
use wbia_lightglue_model::Rotation;

use crate::{Config, MemberScores, PairScore};

/// One database annotation's score against the query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoredAnnot {
    pub annot: Uuid,
    pub score: f32,
    /// The individual's name, when WBIA knows it.
    pub name: Option<String>,
    /// Clockwise turn of the query chip that gave the score (the rotation sweep).
    pub rotation: Rotation,
    /// P(same individual) from the configuration's calibration, when it has one.
    pub calibrated: Option<f64>,
    /// An ensemble's member scores, fused into `score` (empty for a single model).
    pub members: MemberScores,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NameScore {
    pub name: String,
    pub score: f32,
    /// The annotation that gave the name its score.
    pub best_annot: Uuid,
    /// Its calibrated score, when the configuration has a calibration.
    pub calibrated: Option<f64>,
}

/// Results for one query annotation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryResult {
    pub query: Uuid,
    /// Database annotations, best first (ties keep request order); the query itself is dropped.
    pub ranked: Vec<ScoredAnnot>,
    /// Named individuals, best first.
    pub name_scores: Vec<NameScore>,
}

impl QueryResult {
    pub fn best(&self) -> Option<&ScoredAnnot> {
        self.ranked.first()
    }
}

/// Each query's scores (database order, the query left out, `None` for skipped annotations)
/// calibrated when the configuration has a calibration, and ranked with names.
pub fn rank_all(
    queries: &[Uuid],
    database: &[Uuid],
    scores: Vec<Vec<Option<PairScore>>>,
    names: &HashMap<Uuid, Option<String>>,
    config: &Config,
) -> Vec<QueryResult> {
    queries
        .iter()
        .zip(scores)
        .map(|(q, scores)| {
            let scored = database
                .iter()
                .filter(|d| *d != q)
                .zip(scores)
                .filter_map(|(d, pair)| Some((d, pair?)))
                .map(|(d, pair)| ScoredAnnot {
                    annot: *d,
                    score: pair.score,
                    name: names.get(d).cloned().flatten(),
                    rotation: pair.rotation,
                    calibrated: config
                        .calibration
                        .as_ref()
                        .map(|c| c.probability(pair.score)),
                    members: pair.members,
                })
                .collect();
            rank(*q, scored)
        })
        .collect()
}

/// Ranks scored annotations for `query`, dropping self-matches.
pub fn rank(query: Uuid, scored: Vec<ScoredAnnot>) -> QueryResult {
    let mut ranked: Vec<ScoredAnnot> = scored.into_iter().filter(|s| s.annot != query).collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut name_scores: Vec<NameScore> = Vec::new();
    for s in &ranked {
        let Some(name) = &s.name else { continue };
        // `ranked` is sorted, so the first annotation seen for a name carries its max.
        if !name_scores.iter().any(|n| &n.name == name) {
            name_scores.push(NameScore {
                name: name.clone(),
                score: s.score,
                best_annot: s.annot,
                calibrated: s.calibrated,
            });
        }
    }
    QueryResult {
        query,
        ranked,
        name_scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn scored(n: u128, score: f32, name: Option<String>) -> ScoredAnnot {
        ScoredAnnot {
            annot: u(n),
            score,
            name,
            rotation: Rotation::None,
            calibrated: None,
            members: Default::default(),
        }
    }

    #[test]
    fn ranks_drops_self_and_takes_max_per_name() {
        let scored = vec![
            scored(1, 99.0, Some("a".into())),
            scored(2, 5.0, Some("b".into())),
            scored(3, 40.0, Some("b".into())),
            scored(4, 10.0, None),
            scored(5, 20.0, Some("a".into())),
        ];
        let r = rank(u(1), scored);
        let order: Vec<u128> = r.ranked.iter().map(|s| s.annot.as_u128()).collect();
        assert_eq!(order, vec![3, 5, 4, 2]);
        assert_eq!(r.best().unwrap().annot, u(3));
        let names: Vec<(&str, f32)> = r
            .name_scores
            .iter()
            .map(|n| (n.name.as_str(), n.score))
            .collect();
        assert_eq!(names, vec![("b", 40.0), ("a", 20.0)]);
    }

    #[test]
    fn empty_database() {
        let r = rank(u(1), vec![]);
        assert!(r.best().is_none());
        assert!(r.name_scores.is_empty());
    }
}
