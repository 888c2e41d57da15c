//! `GET /api/query/graph/match/thumb/` (docs/wbia-api.md §2): the match thumbnail Wildbook shows
//! beside each candidate. For references our results handed out we render the plugin's
//! thumbnail, the two chips side by side, for every version; other references are WBIA's.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wbia_client::uuid_from_value;
use wbia_lightglue_model::{decode_image, render};

use crate::envelope::ApiError;
use crate::jobs::thumb_reference;
use crate::params::Params;
use crate::{proxy, AppState};

/// Height of a thumbnail in pixels (smaller chips are not enlarged).
const THUMB_HEIGHT: usize = 400;
const VERSIONS: [&str; 5] = ["clean", "matches", "heatmask", "match", "mask"];

#[utoipa::path(
    get,
    path = "/api/query/graph/match/thumb/",
    tag = "query",
    params(
        ("extern_reference" = String, Query, description = "`dannot_extern_reference` of a result"),
        ("query_annot_uuid" = String, Query),
        ("database_annot_uuid" = String, Query),
        ("version" = String, Query, description = "clean, matches or heatmask (aliases match, mask): all the two chips side by side"),
    ),
    responses(
        (status = 200, description = "JPEG", content_type = "image/jpeg"),
        (status = 607, description = "cannot render (e.g. unknown annotation)", body = crate::openapi::ErrorResponse),
    )
)]
pub async fn match_thumb(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let reference = params.string("extern_reference").unwrap_or_default();
    // References outlive a restart only for the default configuration, recomputed here.
    let ours = state.jobs.knows_reference(&reference)
        || state
            .configs
            .load(None)
            .is_ok_and(|c| thumb_reference(&c) == reference);
    if !ours {
        return proxy::forward(&state, &parts, body).await;
    }
    match render_thumb(&state, &params).await {
        Ok(jpeg) => ([("content-type", "image/jpeg")], jpeg).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn render_thumb(state: &AppState, params: &Params) -> Result<Vec<u8>, ApiError> {
    let version = params.string("version").unwrap_or_else(|| "clean".into());
    if !VERSIONS.contains(&version.as_str()) {
        return Err(ApiError::bad_request(format!(
            "version {version:?} is not one of {VERSIONS:?}"
        )));
    }
    let uuid = |key: &str| {
        params
            .get(key)
            .and_then(uuid_from_value)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be an annotation UUID")))
    };
    let (q, d) = (uuid("query_annot_uuid")?, uuid("database_annot_uuid")?);
    // WBIA's code for a thumbnail it cannot make, with the request echoed.
    let failed = |cause: String| {
        ApiError::new(
            607,
            format!("cannot render the match thumbnail: {cause}"),
            json!({
                "reference": params.get("extern_reference").cloned().unwrap_or(Value::Null),
                "qannot_uuid": q.to_string(),
                "dannot_uuid": d.to_string(),
                "version": version,
            }),
        )
    };
    let (qchip, dchip) = tokio::try_join!(state.wbia.chip(q), state.wbia.chip(d))
        .map_err(|e| failed(e.to_string()))?;
    let rendered = tokio::task::spawn_blocking(move || {
        let (a, b) = (decode_image(&qchip)?, decode_image(&dchip)?);
        render::encode_jpeg(&render::side_by_side(&a, &b, THUMB_HEIGHT)?, 90.0)
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    rendered.map_err(|e| failed(e.to_string()))
}
