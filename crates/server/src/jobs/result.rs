//! WBIA's result documents for an identification job (docs/wbia-api.md §4): `cm_dict`,
//! `inference_dict` and the summaries Wildbook reads, as typed structs. The OpenAPI document
//! takes its schemas from these same types.

use std::collections::{BTreeMap, HashMap};

use serde::{Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use wbia_lightglue_engine::{QueryResult, ScoredAnnot};

use crate::schema::FancyUuid;
use wbia_lightglue_service::jobs::{FinishedRun, JobDocuments};
use wbia_lightglue_service::Computed;

use crate::envelope::ApiError;

/// Annotations per result marked as having a match thumbnail (WBIA renders its top 20).
const THUMBS_PER_RESULT: usize = 20;
/// Entries in `summary_annot` and `summary_name`, as WBIA writes them.
const SUMMARY_LEN: usize = 20;
/// Individuals offered for review in `inference_dict` (`make_inference`).
const REVIEW_PAIRS: usize = 4;
/// WBIA's name for an annotation without one.
const UNNAMED: &str = "____";

/// The `json_result` of a completed identification job (`query_chips_graph`, one query).
#[derive(Serialize, ToSchema)]
pub struct IdentificationResult {
    /// Keyed by the plain query annotation UUID.
    pub cm_dict: BTreeMap<String, ChipMatch>,
    pub inference_dict: Inference,
    pub query_annot_uuid_list: Vec<FancyUuid>,
    /// As requested (the query included when `include_qaid_in_daids`).
    pub database_annot_uuid_list: Vec<FancyUuid>,
    /// The request's `query_config_dict`, echoed.
    #[schema(value_type = Object)]
    pub query_config_dict: Value,
    /// The best 20 annotations.
    pub summary_annot: Vec<Summary>,
    /// The best annotation of each of the best 20 individuals.
    pub summary_name: Vec<Summary>,
    /// Not in WBIA's document, and absent when empty: database annotations left out
    /// because their chips cannot be used (WBIA would fail the whole job instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_annot_list: Vec<crate::schema::SkippedAnnotation>,
}

/// One query's chip match (`cm_dict` entry): the database in request order.
#[derive(Serialize, ToSchema)]
pub struct ChipMatch {
    pub qannot_uuid: FancyUuid,
    pub qname_uuid: NameId,
    pub qname: String,
    pub dannot_uuid_list: Vec<FancyUuid>,
    pub dname_uuid_list: Vec<NameId>,
    pub dname_list: Vec<String>,
    /// The name score on each individual's best annotation, a bare `-Infinity` on the others.
    #[schema(value_type = Vec<f32>)]
    pub score_list: Vec<NameScoreCell>,
    /// Raw scores (sum of match confidences).
    pub annot_score_list: Vec<f32>,
    pub unique_name_uuid_list: Vec<NameId>,
    pub unique_name_list: Vec<String>,
    pub name_score_list: Vec<f32>,
    /// Feature matches are not reported (always null), as in WBIA's serialised results.
    #[schema(value_type = Option<Object>)]
    pub fm_list: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub fsv_list: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub fk_list: Option<Value>,
    #[serde(rename = "H_list")]
    #[schema(value_type = Option<Object>)]
    pub h_list: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub fsv_col_lbls: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub filtnorm_aids: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub filtnorm_fxs: Option<Value>,
    /// Our thumbnail reference (`/api/query/graph/match/thumb/`).
    pub dannot_extern_reference: String,
    /// True for the 20 best candidates, which have thumbnails.
    pub dannot_extern_list: Vec<bool>,
}

/// How WBIA 4.0.4 identifies a name in a result (`convert_to_uuid` in
/// `wbia/web/apis_query.py`): the name's *text* read as a UUID when it is one (Wildbook names
/// its individuals by UUID), else the name's rowid — `-aid` for an unnamed annotation, each
/// its own individual.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum NameId {
    Text(FancyUuid),
    Rowid(i64),
}

impl NameId {
    pub fn new(text: Option<&str>, rowid: i64) -> Self {
        match text.and_then(uuid_as_python_reads_it) {
            Some(u) => NameId::Text((&u).into()),
            None => NameId::Rowid(rowid),
        }
    }
}

/// A UUID as Python's `uuid.UUID(text)` reads it: `urn:` and `uuid:` removed, braces
/// stripped from both ends, every hyphen dropped, then exactly 32 hex digits.
fn uuid_as_python_reads_it(text: &str) -> Option<Uuid> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|&c| c != '-')
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::parse_str(&hex).ok()
}

/// A `score_list` entry: a score, or WBIA's bare `-Infinity` (written by [`render`]).
pub enum NameScoreCell {
    Score(f32),
    NegativeInfinity,
}

impl Serialize for NameScoreCell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NameScoreCell::Score(v) => s.serialize_f32(*v),
            NameScoreCell::NegativeInfinity => s.serialize_str(NEG_INF),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Summary {
    pub score: f32,
    pub duuid: FancyUuid,
    pub daid: i64,
}

/// `inference_dict`, what Wildbook shows for review.
#[derive(Serialize, ToSchema)]
pub struct Inference {
    pub cluster_dict: ClusterDict,
    pub annot_pair_dict: AnnotPairDict,
    #[serde(rename = "_internal_state")]
    #[schema(value_type = Option<Object>)]
    pub internal_state: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterDict {
    pub annot_uuid_list: Vec<FancyUuid>,
    pub orig_name_list: Vec<String>,
    pub new_name_list: Vec<String>,
    pub exemplar_flag_list: Vec<bool>,
    pub error_flag_list: Vec<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct AnnotPairDict {
    /// Least confident first.
    pub review_pair_list: Vec<ReviewPair>,
    pub confidence_list: Vec<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct ReviewPair {
    pub annot_uuid_key: FancyUuid,
    pub annot_uuid_1: FancyUuid,
    pub annot_uuid_2: FancyUuid,
    pub prior_matching_state: PriorMatchingState,
}

#[derive(Serialize, ToSchema)]
pub struct PriorMatchingState {
    pub p_match: f64,
    pub p_nomatch: f64,
    pub p_notcomp: f64,
}

/// `/api/engine/job/result/`'s answer.
#[derive(Serialize, ToSchema)]
pub struct JobResultResponse {
    pub status: crate::schema::Status,
    pub response: JobResult,
}

#[derive(Serialize, ToSchema)]
pub struct JobResult {
    /// `completed` or `exception` (WBIA puts the execution state here, not "ok").
    pub status: String,
    pub jobid: String,
    /// The identification result when completed; the error text (a string) on exception.
    pub json_result: IdentificationResult,
}

/// WBIA's documents of a job: the identification result, or an error's text with its code.
pub struct WbiaDocuments;

impl JobDocuments for WbiaDocuments {
    fn completed(&self, run: &FinishedRun<'_>) -> String {
        render(&identification_result(
            run.computed,
            &super::thumb_reference(run.config),
            run.name_rowids,
            run.query_name,
            run.queries,
            run.database,
            run.query_config,
        ))
    }

    fn failed(&self, error: wbia_lightglue_service::Error) -> String {
        let e = ApiError::from(error);
        format!("{} (code {})", e.message, e.code)
    }
}

/// The result document of `query_chips_graph` (docs/wbia-api.md), for the one query. Lookups
/// go through maps: a species-wide database has tens of thousands of annotations.
fn identification_result(
    c: &Computed,
    reference: &str,
    name_rowids: &[(Uuid, Option<i64>)],
    query_name: Option<&str>,
    queries: &[Uuid],
    database: &[Uuid],
    query_config: &Value,
) -> IdentificationResult {
    let q = queries[0];
    let query_name = query_name.filter(|n| !n.is_empty()).unwrap_or(UNNAMED);
    let r = &c.results[0];
    let ids = Ids::new(c, name_rowids, q, query_name);
    // WBIA echoes the annotations it searched by rowid (`sorted(daid_list + qaid_list)`).
    let mut echoed = database.to_vec();
    echoed.sort_by_key(|u| ids.aid(u));
    let summary = |entries: &mut dyn Iterator<Item = (f32, Uuid)>| -> Vec<Summary> {
        entries
            .take(SUMMARY_LEN)
            .map(|(score, annot)| Summary {
                score,
                duuid: (&annot).into(),
                daid: ids.aid(&annot),
            })
            .collect()
    };
    IdentificationResult {
        cm_dict: BTreeMap::from([(q.to_string(), chip_match(r, database, &ids, reference))]),
        inference_dict: inference(q, r, query_name),
        query_annot_uuid_list: vec![(&q).into()],
        database_annot_uuid_list: echoed.iter().map(Into::into).collect(),
        query_config_dict: query_config.clone(),
        skipped_annot_list: c.skipped.iter().map(crate::skipped_json).collect(),
        summary_annot: summary(&mut r.ranked.iter().map(|s| (s.score, s.annot))),
        summary_name: summary(&mut r.name_scores.iter().map(|n| (n.score, n.best_annot))),
    }
}

/// How a result names annotations and individuals: WBIA's rowids and name texts.
struct Ids<'a> {
    aids: HashMap<Uuid, i64>,
    name_rowids: HashMap<Uuid, i64>,
    /// Name texts of the query and of every ranked annotation (`None`: unnamed).
    names: HashMap<Uuid, Option<&'a str>>,
}

impl<'a> Ids<'a> {
    fn new(
        c: &'a Computed,
        name_rowids: &[(Uuid, Option<i64>)],
        query: Uuid,
        query_name: &'a str,
    ) -> Self {
        Self {
            aids: c.aids.iter().copied().collect(),
            name_rowids: name_rowids
                .iter()
                .filter_map(|(a, n)| n.map(|n| (*a, n)))
                .collect(),
            names: c.results[0]
                .ranked
                .iter()
                .map(|s| (s.annot, s.name.as_deref()))
                .chain([(query, Some(query_name))])
                .collect(),
        }
    }

    fn aid(&self, u: &Uuid) -> i64 {
        self.aids.get(u).copied().unwrap_or(0)
    }

    /// WBIA's name rowid; `-aid` for an unnamed annotation's own "name".
    fn nid(&self, u: &Uuid) -> i64 {
        self.name_rowids
            .get(u)
            .copied()
            .unwrap_or_else(|| -self.aid(u))
    }

    fn name_id(&self, u: &Uuid) -> NameId {
        NameId::new(self.names.get(u).copied().flatten(), self.nid(u))
    }
}

/// The query's `cm_dict` entry. It lists the database in request order (not by score), like
/// WBIA's `daid_list`.
fn chip_match(r: &QueryResult, database: &[Uuid], ids: &Ids, reference: &str) -> ChipMatch {
    let ranked: HashMap<Uuid, _> = r.ranked.iter().map(|s| (s.annot, s)).collect();
    let scored: Vec<&ScoredAnnot> = database
        .iter()
        .filter(|d| **d != r.query)
        .filter_map(|d| ranked.get(d).copied())
        .collect();
    let (score_list, names) = individuals(&scored, ids);
    let display = |name: &Option<String>| name.clone().unwrap_or_else(|| UNNAMED.into());
    let display_of = |u: &Uuid| {
        ranked
            .get(u)
            .map_or_else(|| UNNAMED.into(), |s| display(&s.name))
    };
    // Thumbnails (rendered on request) for the best annotations, as WBIA marks its top 20.
    let top: std::collections::HashSet<Uuid> = r
        .ranked
        .iter()
        .take(THUMBS_PER_RESULT)
        .map(|s| s.annot)
        .collect();
    ChipMatch {
        qannot_uuid: (&r.query).into(),
        qname_uuid: ids.name_id(&r.query),
        qname: ids.names[&r.query].unwrap_or(UNNAMED).into(),
        dannot_uuid_list: scored.iter().map(|s| (&s.annot).into()).collect(),
        dname_uuid_list: scored.iter().map(|s| ids.name_id(&s.annot)).collect(),
        dname_list: scored.iter().map(|s| display(&s.name)).collect(),
        score_list,
        annot_score_list: scored.iter().map(|s| s.score).collect(),
        unique_name_uuid_list: names.iter().map(|n| ids.name_id(&n.annot)).collect(),
        unique_name_list: names.iter().map(|n| display_of(&n.annot)).collect(),
        name_score_list: names.iter().map(|n| n.score).collect(),
        fm_list: None,
        fsv_list: None,
        fk_list: None,
        h_list: None,
        fsv_col_lbls: None,
        filtnorm_aids: None,
        filtnorm_fxs: None,
        dannot_extern_reference: reference.to_string(),
        dannot_extern_list: scored.iter().map(|s| top.contains(&s.annot)).collect(),
    }
}

/// An individual's best annotation among the scored ones, and its score.
struct BestOfName {
    key: String,
    annot: Uuid,
    score: f32,
}

/// Every individual (an unnamed annotation is one of its own) with its best annotation, by
/// name rowid as WBIA lists them; and for each scored annotation its `score_list` cell: its
/// individual's score on the best annotation, `-Infinity` on the others.
fn individuals(scored: &[&ScoredAnnot], ids: &Ids) -> (Vec<NameScoreCell>, Vec<BestOfName>) {
    let name_key = |s: &ScoredAnnot| -> String {
        match &s.name {
            Some(n) => format!("name:{n}"),
            None => format!("annot:{}", s.annot),
        }
    };
    let mut best_of_name: HashMap<String, (Uuid, f32)> = HashMap::new();
    for s in scored {
        let entry = best_of_name
            .entry(name_key(s))
            .or_insert((s.annot, s.score));
        if s.score > entry.1 {
            *entry = (s.annot, s.score);
        }
    }
    let cells = scored
        .iter()
        .map(|s| {
            let (best, score) = best_of_name[&name_key(s)];
            if best == s.annot {
                NameScoreCell::Score(score)
            } else {
                NameScoreCell::NegativeInfinity
            }
        })
        .collect();
    let mut names: Vec<BestOfName> = best_of_name
        .into_iter()
        .map(|(key, (annot, score))| BestOfName { key, annot, score })
        .collect();
    names.sort_by_cached_key(|n| (ids.nid(&n.annot), n.key.clone()));
    (cells, names)
}

/// Marker for WBIA's bare `-Infinity`, which JSON values cannot hold; [`render`] writes it.
pub const NEG_INF: &str = "__wbia_lightglue_negative_infinity__";

/// Serialises a result the way WBIA does, with bare `-Infinity` where [`NEG_INF`] stands.
pub fn render(v: &impl Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{:?}", format!("result not serialisable: {e}")))
        .replace(&format!("\"{NEG_INF}\""), "-Infinity")
}

/// `make_inference`: one review pair for each of the top 4 individuals, with
/// `p_same = expit(2·score − 1.5)` and confidence `(2·|0.5 − p_same|)²`, least confident first.
/// WBIA's formula expects scores near [0, 1]; LightGlue's raw sums (tens to hundreds) make
/// nearly every `p_same` 1, so with a calibration in the configuration `p_same` is the
/// calibrated score instead.
fn inference(q: Uuid, r: &QueryResult, query_name: &str) -> Inference {
    let mut individuals: Vec<(Uuid, f32, Option<f64>)> = r
        .name_scores
        .iter()
        .map(|n| (n.best_annot, n.score, n.calibrated))
        .collect();
    for s in r.ranked.iter().filter(|s| s.name.is_none()) {
        individuals.push((s.annot, s.score, s.calibrated));
    }
    individuals.sort_by(|a, b| b.1.total_cmp(&a.1));
    individuals.truncate(REVIEW_PAIRS);
    let mut pairs: Vec<(ReviewPair, f64)> = individuals
        .iter()
        .map(|&(d, score, calibrated)| {
            let p = calibrated.unwrap_or_else(|| 1.0 / (1.0 + (-(2.0 * score as f64 - 1.5)).exp()));
            let confidence = (2.0 * (0.5 - p).abs()).powi(2);
            let pair = ReviewPair {
                annot_uuid_key: (&q).into(),
                annot_uuid_1: (&q).into(),
                annot_uuid_2: (&d).into(),
                prior_matching_state: PriorMatchingState {
                    p_match: p,
                    p_nomatch: 1.0 - p,
                    p_notcomp: 0.0,
                },
            };
            (pair, confidence)
        })
        .collect();
    pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (review_pair_list, confidence_list) = pairs.into_iter().unzip();
    Inference {
        cluster_dict: ClusterDict {
            annot_uuid_list: vec![(&q).into()],
            orig_name_list: vec![query_name.into()],
            new_name_list: vec![r
                .name_scores
                .first()
                .map(|n| n.name.clone())
                .unwrap_or_else(|| UNNAMED.into())],
            exemplar_flag_list: vec![true],
            error_flag_list: vec![Vec::new()],
        },
        annot_pair_dict: AnnotPairDict {
            review_pair_list,
            confidence_list,
        },
        internal_state: None,
    }
}

#[cfg(test)]
mod name_ids {
    use super::*;

    /// Name texts and what Python 3.11's `uuid.UUID(text)` made of them (run on this
    /// machine; `None` where it raised `ValueError`).
    #[test]
    fn name_texts_read_as_python_reads_them() {
        let u = "6d6a1d26-83f4-4b0c-9d8e-3f1b2b8e9c11";
        for (text, python) in [
            (u.to_string(), Some(u)),
            (format!("{{{u}}}"), Some(u)),
            (format!("urn:uuid:{u}"), Some(u)),
            (u.replace('-', ""), Some(u)),
            (u.to_uppercase(), Some(u)),
            ("6d-6a1d2683f44b0c9d8e3f1b2b8e9c11".into(), Some(u)),
            ("{{6d6a1d2683f44b0c9d8e3f1b2b8e9c11}}".into(), Some(u)),
            ("turtle_a".into(), None),
            ("____".into(), None),
            (String::new(), None),
            (" 6d6a1d2683f44b0c9d8e3f1b2b8e9c11".into(), None),
            ("6d6a1d2683f44b0c9d8e3f1b2b8e9c1".into(), None),
        ] {
            assert_eq!(
                uuid_as_python_reads_it(&text)
                    .map(|u| u.to_string())
                    .as_deref(),
                python,
                "{text:?}"
            );
        }
        let named = serde_json::to_value(NameId::new(Some(u), 7)).unwrap();
        assert_eq!(named, serde_json::json!({"__UUID__": u}));
        let by_rowid = serde_json::to_value(NameId::new(Some("turtle_a"), 7)).unwrap();
        assert_eq!(by_rowid, serde_json::json!(7));
        assert_eq!(
            serde_json::to_value(NameId::new(None, -3)).unwrap(),
            serde_json::json!(-3)
        );
    }
}
