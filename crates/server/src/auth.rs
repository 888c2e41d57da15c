//! The optional bearer token (`--api-token`): when set, the endpoints this service answers
//! itself want `Authorization: Bearer <token>`; probes and the pass-through to WBIA do not
//! (WBIA has its own access control, and Wildbook cannot send our token).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::envelope::ApiError;
use crate::AppState;

pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.options.api_token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| same_secret(g, expected)) {
        return next.run(req).await;
    }
    state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
    let mut response = ApiError::unauthorized(
        "this endpoint needs Authorization: Bearer <token> (the service's --api-token)",
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares digests byte by byte without stopping early, so the time taken says nothing about
/// how much of a guess was right.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3cret "));
        assert!(!same_secret("", "s3cret"));
        assert!(!same_secret("S3cret", "s3cret"));
    }
}
