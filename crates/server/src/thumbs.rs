//! `GET /api/query/graph/match/thumb/` (docs/wbia-api.md §2): the match thumbnail Wildbook shows
//! beside each candidate. For references our results handed out we render it here: the two
//! chips side by side (the plugin's thumbnail) for `clean`, WBIA's default, and with
//! LightGlue's matches drawn over them for `matches` and for `heatmask`, the version Wildbook
//! asks for (we have no heat mask; the matches are our evidence). Other references are WBIA's.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wbia_client::uuid_from_value;
use wbia_lightglue_engine::Config;
use wbia_lightglue_model::render;

use crate::envelope::ApiError;
use crate::jobs::thumb_reference;
use crate::params::Params;
use crate::{proxy, AppState};

/// Height of a thumbnail in pixels (smaller chips are not enlarged).
const THUMB_HEIGHT: usize = 400;
const VERSIONS: [&str; 5] = ["clean", "matches", "heatmask", "match", "mask"];

/// Whether a version has the matches drawn: WBIA's `clean` is the chips alone; `matches` is
/// what WBIA draws matches on, and `heatmask` is the only version Wildbook requests
/// (`ia/MatchResult.java`, `iaResults.jsp`), so without matches there Wildbook users would
/// never see them.
fn draws_matches(version: &str) -> bool {
    version != "clean"
}

#[utoipa::path(
    get,
    path = "/api/query/graph/match/thumb/",
    tag = "query",
    params(
        ("extern_reference" = String, Query, description = "`dannot_extern_reference` of a result"),
        ("query_annot_uuid" = String, Query),
        ("database_annot_uuid" = String, Query),
        ("version" = String, Query, description = "clean (default): the two chips side by side; matches or heatmask (aliases match, mask): the same with a line per LightGlue match, coloured by confidence (red 0, yellow 0.5, green 1), and the score written on it"),
    ),
    responses(
        (status = 200, description = "JPEG", content_type = "image/jpeg"),
        (status = 429, description = "busy: the pair could not be admitted for matching", body = crate::schema::ErrorResponse),
        (status = 607, description = "cannot render (e.g. unknown annotation)", body = crate::schema::ErrorResponse),
    )
)]
pub async fn match_thumb(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let reference = params.string("extern_reference").unwrap_or_default();
    // A reference this process handed out, else one of the configuration directory's (made
    // before a restart, or by another replica sharing the directory), recomputed here.
    let config = state
        .runner
        .jobs()
        .reference_config(&reference)
        .or_else(|| {
            state
                .configs
                .all()
                .into_iter()
                .map(|(_, config)| config)
                .find(|c| thumb_reference(c) == reference)
        });
    let Some(config) = config else {
        return proxy::forward(&state, &parts, body).await;
    };
    match render_thumb(&state, &params, &config).await {
        Ok(jpeg) => ([("content-type", "image/jpeg")], jpeg).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn render_thumb(
    state: &AppState,
    params: &Params,
    config: &Config,
) -> Result<Vec<u8>, ApiError> {
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
        ApiError::thumbnail_failed(
            format!("cannot render the match thumbnail: {cause}"),
            json!({
                "reference": params.get("extern_reference").cloned().unwrap_or(Value::Null),
                "qannot_uuid": q.to_string(),
                "dannot_uuid": d.to_string(),
                "version": version,
            }),
        )
    };
    // The chips as identification has them (made from WBIA's image files where readable),
    // keyed as identification keys them: the features of the job that handed out this
    // reference are found, not recomputed.
    let chips = state
        .identifier
        .chip_pair(q, d)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let pair = if draws_matches(&version) {
        let matched = state
            .identifier
            .match_chip_pair(&chips, config)
            .await
            .map_err(|e| match e {
                wbia_lightglue_service::Error::Engine(
                    busy @ wbia_lightglue_engine::Error::Busy { .. },
                ) => ApiError::from(busy),
                other => failed(other.to_string()),
            })?;
        Some(matched)
    } else {
        None
    };
    let [qchip, dchip] = chips.chips;
    let rendered = tokio::task::spawn_blocking(move || {
        let (a, b) = (qchip.pixels()?, dchip.pixels()?);
        let picture = match &pair {
            Some(p) => {
                render::draw_matches(&a, &p.query, &b, &p.database, &p.result, THUMB_HEIGHT)?
            }
            None => render::side_by_side(&a, &b, THUMB_HEIGHT)?,
        };
        render::encode_jpeg(&picture, 90.0)
    })
    .await
    .map_err(|e| failed(e.to_string()))?;
    rendered.map_err(|e| failed(e.to_string()))
}
