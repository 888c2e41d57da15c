//! WBIA's result documents for an identification job (docs/wbia-api.md §4): `cm_dict`,
//! `inference_dict` and the summaries Wildbook reads.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use uuid::Uuid;
use wbia_client::fancy_uuid;
use wbia_lightglue_engine::QueryResult;

use crate::Computed;

/// Annotations per result marked as having a match thumbnail (WBIA renders its top 20).
const THUMBS_PER_RESULT: usize = 20;

/// The result document of `query_chips_graph` (docs/wbia-api.md), for the one query.
pub(super) fn identification_result(
    c: &Computed,
    reference: &str,
    name_uuids: &[(Uuid, Option<Uuid>)],
    queries: &[Uuid],
    database: &[Uuid],
    query_config: &Value,
) -> Value {
    let q = queries[0];
    let r = &c.results[0];
    let name_uuid = |u: &Uuid| {
        name_uuids
            .iter()
            .find(|(v, _)| v == u)
            .and_then(|(_, n)| *n)
    };
    let aid = |u: &Uuid| {
        c.aids
            .iter()
            .find(|(v, _)| v == u)
            .map(|(_, a)| *a)
            .unwrap_or(0)
    };
    // Unnamed annotations each count as their own individual, with a negative id as WBIA
    // gives them (`-aid`).
    let name_id = |u: &Uuid| -> Value {
        name_uuid(u)
            .map(|n| fancy_uuid(&n))
            .unwrap_or(json!(-aid(u)))
    };
    let name_key = |u: &Uuid, name: &Option<String>| -> String {
        match name {
            Some(n) => format!("name:{n}"),
            None => format!("annot:{u}"),
        }
    };

    // cm_dict lists the database in request order (not by score), like WBIA's daid_list.
    let scored: Vec<_> = database
        .iter()
        .filter(|d| **d != q)
        .filter_map(|d| r.ranked.iter().find(|s| s.annot == *d))
        .collect();
    let mut best_of_name: HashMap<String, (Uuid, f32)> = HashMap::new();
    for s in &scored {
        let key = name_key(&s.annot, &s.name);
        let entry = best_of_name.entry(key).or_insert((s.annot, s.score));
        if s.score > entry.1 {
            *entry = (s.annot, s.score);
        }
    }
    // The best annotation of each name carries the name score; the others -Infinity.
    let score_list: Vec<Value> = scored
        .iter()
        .map(|s| {
            let (best, score) = best_of_name[&name_key(&s.annot, &s.name)];
            if best == s.annot {
                json!(score)
            } else {
                Value::String(NEG_INF.into())
            }
        })
        .collect();
    let mut names: Vec<(String, Uuid, f32)> = best_of_name
        .iter()
        .map(|(k, (u, s))| (k.clone(), *u, *s))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let display = |u: &Uuid| -> String {
        scored
            .iter()
            .find(|s| s.annot == *u)
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| "____".into())
    };

    let mut cm = Map::new();
    cm.insert("qannot_uuid".into(), fancy_uuid(&q));
    cm.insert("qname_uuid".into(), name_id(&q));
    cm.insert("qname".into(), json!("____"));
    cm.insert(
        "dannot_uuid_list".into(),
        json!(scored
            .iter()
            .map(|s| fancy_uuid(&s.annot))
            .collect::<Vec<_>>()),
    );
    cm.insert(
        "dname_uuid_list".into(),
        json!(scored.iter().map(|s| name_id(&s.annot)).collect::<Vec<_>>()),
    );
    cm.insert(
        "dname_list".into(),
        json!(scored.iter().map(|s| display(&s.annot)).collect::<Vec<_>>()),
    );
    cm.insert("score_list".into(), json!(score_list));
    cm.insert(
        "annot_score_list".into(),
        json!(scored.iter().map(|s| s.score).collect::<Vec<_>>()),
    );
    cm.insert(
        "unique_name_uuid_list".into(),
        json!(names.iter().map(|n| name_id(&n.1)).collect::<Vec<_>>()),
    );
    cm.insert(
        "unique_name_list".into(),
        json!(names.iter().map(|n| display(&n.1)).collect::<Vec<_>>()),
    );
    cm.insert(
        "name_score_list".into(),
        json!(names.iter().map(|n| n.2).collect::<Vec<_>>()),
    );
    for key in [
        "fm_list",
        "fsv_list",
        "fk_list",
        "H_list",
        "fsv_col_lbls",
        "filtnorm_aids",
        "filtnorm_fxs",
    ] {
        cm.insert(key.into(), Value::Null);
    }
    // Thumbnails (rendered on request) for the best annotations, as WBIA marks its top 20.
    let top: Vec<Uuid> = r
        .ranked
        .iter()
        .take(THUMBS_PER_RESULT)
        .map(|s| s.annot)
        .collect();
    cm.insert("dannot_extern_reference".into(), json!(reference));
    cm.insert(
        "dannot_extern_list".into(),
        json!(scored
            .iter()
            .map(|s| top.contains(&s.annot))
            .collect::<Vec<_>>()),
    );
    cm.insert("model_url".into(), Value::Null);
    cm.insert("config_url".into(), Value::Null);

    json!({
        "cm_dict": { q.to_string(): Value::Object(cm) },
        "inference_dict": inference(q, r),
        "query_annot_uuid_list": [fancy_uuid(&q)],
        "database_annot_uuid_list": database.iter().map(fancy_uuid).collect::<Vec<_>>(),
        "query_config_dict": query_config,
        "summary_annot": scored_summary(r, &aid),
        "summary_name": r.name_scores.iter().take(20).map(|n| json!({
            "score": n.score, "duuid": fancy_uuid(&n.best_annot), "daid": aid(&n.best_annot),
        })).collect::<Vec<_>>(),
    })
}

/// Marker for WBIA's bare `-Infinity`, which JSON values cannot hold; [`render`] writes it.
pub const NEG_INF: &str = "__wbia_lightglue_negative_infinity__";

/// Serialises a result the way WBIA does, with bare `-Infinity` where [`NEG_INF`] stands.
pub fn render(v: &Value) -> String {
    v.to_string()
        .replace(&format!("\"{NEG_INF}\""), "-Infinity")
}

fn scored_summary(r: &QueryResult, aid: &dyn Fn(&Uuid) -> i64) -> Vec<Value> {
    r.ranked
        .iter()
        .take(20)
        .map(|s| json!({"score": s.score, "duuid": fancy_uuid(&s.annot), "daid": aid(&s.annot)}))
        .collect()
}

/// `make_inference`: one review pair for each of the top 4 individuals, with
/// `p_same = expit(2·score − 1.5)` and confidence `(2·|0.5 − p_same|)²`, least confident first.
fn inference(q: Uuid, r: &QueryResult) -> Value {
    let mut individuals: Vec<(Uuid, f32)> = r
        .name_scores
        .iter()
        .map(|n| (n.best_annot, n.score))
        .collect();
    for s in r.ranked.iter().filter(|s| s.name.is_none()) {
        individuals.push((s.annot, s.score));
    }
    individuals.sort_by(|a, b| b.1.total_cmp(&a.1));
    individuals.truncate(4);
    let mut pairs: Vec<(Value, f64)> = individuals
        .iter()
        .map(|&(d, score)| {
            let p = 1.0 / (1.0 + (-(2.0 * score as f64 - 1.5)).exp());
            let confidence = (2.0 * (0.5 - p).abs()).powi(2);
            let pair = json!({
                "annot_uuid_key": fancy_uuid(&q),
                "annot_uuid_1": fancy_uuid(&q),
                "annot_uuid_2": fancy_uuid(&d),
                "prior_matching_state": {"p_match": p, "p_nomatch": 1.0 - p, "p_notcomp": 0.0},
            });
            (pair, confidence)
        })
        .collect();
    pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
    json!({
        "cluster_dict": {
            "annot_uuid_list": [fancy_uuid(&q)],
            "orig_name_list": ["____"],
            "new_name_list": [r.name_scores.first().map(|n| n.name.clone()).unwrap_or_else(|| "____".into())],
            "exemplar_flag_list": [true],
            "error_flag_list": [[]],
        },
        "annot_pair_dict": {
            "review_pair_list": pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            "confidence_list": pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
        },
        "_internal_state": null,
    })
}
