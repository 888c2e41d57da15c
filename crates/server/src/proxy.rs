//! Pass-through: every request this service does not answer goes to WBIA unchanged (method,
//! path, query, end-to-end headers, body) and WBIA's answer comes back unchanged (status,
//! end-to-end headers, body), so Wildbook can use this service's URL as its WBIA URL.
//!
//! Bodies stream both ways (an image upload or a large download is never held whole in
//! memory), time out only when nothing moves (`ClientOptions::forward_idle_timeout` upstream,
//! in either direction; the server's body timeout downstream), and at most [`crate::ServerOptions::max_proxied`]
//! requests are forwarded at once; beyond that the answer is 503 with `Retry-After`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use wbia_client::ForwardBody;

use crate::envelope::ApiError;
use crate::AppState;

pub async fn pass_through(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let stream = body
        .into_data_stream()
        .map(|piece| piece.map_err(std::io::Error::other));
    forward(&state, &parts, ForwardBody::Stream(Box::pin(stream))).await
}

/// Forwards a request whose body is streaming or already read.
pub async fn forward(state: &AppState, parts: &Parts, body: impl Into<ForwardBody>) -> Response {
    let Ok(permit) = state.proxy_slots.clone().try_acquire_owned() else {
        state.metrics.proxy_refused.fetch_add(1, Ordering::Relaxed);
        return ApiError::proxy_busy(format!(
            "{} requests are being passed through to WBIA already; retry shortly",
            state.options.max_proxied
        ))
        .into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    tracing::debug!(method = %parts.method, path, "passing through to WBIA");
    state.metrics.proxied.fetch_add(1, Ordering::Relaxed);
    let upstream = match state
        .wbia
        .forward(parts.method.clone(), path, &parts.headers, body.into())
        .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let status = upstream.status;
    // Content-Length stays: the client can then tell a body cut short by a failing WBIA.
    let headers = wbia_client::end_to_end_headers(&upstream.headers);
    // The slot is held until the body has been sent (or the client went away).
    let stream = upstream.body.map(move |chunk| {
        let _held = &permit;
        chunk.map_err(|e| {
            tracing::warn!(error = %e, "WBIA's answer broke off while passing it through");
            e
        })
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
