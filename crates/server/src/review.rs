//! `GET /api/review/query/chip/best/?aid=…` — WBIA's own form of the query (docs/wbia-api.md §2):
//! one integer `aid` against every valid annotation, answering the best individual with its
//! sex and age. We answer it when `query_config_dict` selects LightGlue, as WBIA would with the
//! plugin; any other pipeline goes to WBIA unchanged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use uuid::Uuid;
use wbia_lightglue_engine::{NameScore, QueryResult};

use crate::envelope::{self, ApiError};
use crate::params::Params;
use crate::{jobs, AppState};
use wbia_lightglue_service::RunContext;

#[utoipa::path(
    get,
    path = "/api/review/query/chip/best/",
    tag = "query",
    params(
        ("aid" = i64, Query, description = "the query annotation's rowid"),
        ("query_config_dict" = String, Query, description = r#"`{"pipeline_root": "LightGlue"}` (optionally `config_path`); other pipelines are WBIA's"#),
    ),
    responses(
        (status = 200, description = "`response`: {name, sex, age, extern: {reference, qannot_uuid, dannot_uuid}} of the best individual among every valid annotation (all null when none is named)", body = crate::schema::ErrorResponse),
        (status = 600, description = "unknown aid", body = crate::schema::ErrorResponse),
    )
)]
pub async fn chip_best_by_aid(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, query_config) = match jobs::lightglue_or_forward(&state, req).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    match best_individual(&state, &params, &query_config).await {
        Ok(v) => envelope::ok(v),
        Err(e) => e.into_response(),
    }
}

async fn best_individual(
    state: &AppState,
    params: &Params,
    query_config: &Value,
) -> Result<Value, ApiError> {
    let aid = params
        .get("aid")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("aid (an integer annotation rowid) is required"))?;
    if params
        .get("database_imgsetid")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::bad_request(
            "database_imgsetid is not supported here; the database is every valid annotation",
        ));
    }
    let config = state
        .configs
        .load(query_config.get("config_path").and_then(Value::as_str))?;
    let query = state.annotations().by_rowid(aid).await?;
    let database = state.annotations().all_but(query).await?;
    if database.is_empty() {
        return Err(ApiError::bad_request(
            "WBIA holds no other annotation to compare with",
        ));
    }
    let computed = state
        .identifier
        .identify(&[query], &database, &config, RunContext::default())
        .await?;
    let result = &computed.results[0];
    let Some(best) = result.name_scores.first() else {
        // WBIA answers all-null when no database annotation has a name.
        return Ok(json!({
            "name": null,
            "sex": null,
            "age": null,
            "extern": {"reference": null, "qannot_uuid": null, "dannot_uuid": null},
        }));
    };
    let query_name = computed.names.get(&query).cloned().flatten();
    let (sex, min_age) = sex_and_age(state, query, query_name, result, best).await?;
    // The reference our own thumbnail route renders (it was passed to WBIA, which knew it not).
    let reference = crate::jobs::thumb_reference(&config);
    state.runner.jobs().remember_reference(&reference, &config);
    Ok(json!({
        "name": best.name,
        "sex": sex,
        "age": age_class(min_age),
        "extern": {
            "reference": reference,
            "qannot_uuid": query.to_string(),
            "dannot_uuid": best.best_annot.to_string(),
        },
    }))
}

/// The individual's sex (as WBIA writes it for its best annotation) and its smallest age
/// lower bound over its annotations — the query's own included when it has that name (WBIA
/// reads the name's annotations, `get_name_aids`), WBIA's "unknown" (-1) included, so one
/// annotation of unknown age makes the age "Unknown" as in WBIA. (With no age at all WBIA
/// fails on `min([])`; we answer "Unknown".)
async fn sex_and_age(
    state: &AppState,
    query: Uuid,
    query_name: Option<String>,
    result: &QueryResult,
    best: &NameScore,
) -> Result<(Option<String>, Option<i64>), ApiError> {
    let mut name_annots: Vec<_> = result
        .ranked
        .iter()
        .filter(|s| s.name.as_deref() == Some(best.name.as_str()))
        .map(|s| s.annot)
        .collect();
    if query_name.as_deref() == Some(best.name.as_str()) {
        name_annots.push(query);
    }
    let sex = state
        .annotations()
        .sex(best.best_annot)
        .await?
        .map(|s| title_case(&s));
    let min_age = state.annotations().min_age_months(&name_annots).await?;
    Ok((sex, min_age))
}

/// WBIA's age classes from an estimated minimum age in months.
fn age_class(months: Option<i64>) -> &'static str {
    match months {
        Some(0 | 3 | 6) => "Newborn",
        Some(12) => "Yearling",
        Some(24) => "2-Year-Old",
        Some(36) => "Adult",
        _ => "Unknown",
    }
}

/// Python's `str.title()` for the ASCII words WBIA uses ("unknown sex" → "Unknown Sex").
fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if c.is_alphabetic() {
            if start {
                out.extend(c.to_uppercase());
            } else {
                out.extend(c.to_lowercase());
            }
            start = false;
        } else {
            out.push(c);
            start = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_and_ages_as_wbia_writes_them() {
        assert_eq!(title_case("unknown sex"), "Unknown Sex");
        assert_eq!(title_case("FEMALE"), "Female");
        assert_eq!(age_class(Some(3)), "Newborn");
        assert_eq!(age_class(Some(36)), "Adult");
        assert_eq!(age_class(Some(7)), "Unknown");
        assert_eq!(age_class(None), "Unknown");
        assert_eq!(age_class(Some(-1)), "Unknown");
    }
}
