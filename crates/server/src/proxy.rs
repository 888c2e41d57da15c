//! Pass-through: every request this service does not answer goes to WBIA unchanged (method,
//! path, query, headers, body) and WBIA's answer comes back unchanged (status, headers, body),
//! so Wildbook can use this service's URL as its WBIA URL.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::envelope::ApiError;
use crate::AppState;

/// Largest request body forwarded (image uploads to WBIA go through here).
const MAX_FORWARD_BODY: usize = 256 * 1024 * 1024;

pub async fn pass_through(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_FORWARD_BODY).await {
        Ok(body) => forward(&state, &parts, body).await,
        Err(e) => ApiError::new(413, format!("request body: {e}"), serde_json::Value::Null)
            .into_response(),
    }
}

/// Forwards an already-read request.
pub async fn forward(state: &AppState, parts: &Parts, body: Bytes) -> Response {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    tracing::debug!(method = %parts.method, path, "passing through to WBIA");
    let upstream = match state
        .wbia
        .forward(parts.method.clone(), path, &parts.headers, body)
        .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    for hop in [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "content-length",
    ] {
        headers.remove(hop);
    }
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
