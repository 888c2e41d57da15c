//! WBIA's response envelope (docs/wbia-api.md): `{"status": {success, code, message, cache},
//! "response": ...}`, with the HTTP status equal to the code on errors.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// WBIA's content type for JSON (Flask's `application/json; charset=utf-8`): some clients
/// decode the body by it.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A JSON body with WBIA's content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    resp
}

pub fn ok(response: Value) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": {"success": true, "code": 200, "message": "", "cache": -1},
            "response": response,
        }),
    )
}

/// `Retry-After` when the store cannot answer: about as long as PostgreSQL takes to restart.
const STORE_RETRY_AFTER_SECS: u64 = 10;

/// An error answered in the envelope.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub message: String,
    pub response: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>, response: Value) -> Self {
        Self {
            code,
            message: message.into(),
            response,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message, Value::Null)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": {"success": false, "code": self.code, "message": self.message, "cache": -1},
            "response": self.response,
        });
        // WBIA's own codes (600–609) are valid HTTP statuses too, and Wildbook expects them.
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(status, &body);
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

impl From<wbia_lightglue_engine::Error> for ApiError {
    fn from(e: wbia_lightglue_engine::Error) -> Self {
        use wbia_lightglue_engine::{Error as E, SourceError as S};
        match &e {
            E::Busy {
                retry_after_secs, ..
            } => ApiError {
                retry_after: Some(*retry_after_secs),
                ..ApiError::new(429, e.to_string(), Value::Null)
            },
            E::Config(_) => ApiError::bad_request(e.to_string()),
            // The store is unreachable or failing (PostgreSQL down, restarting, or out of
            // connections): worth retrying soon.
            E::Store(_) => ApiError {
                retry_after: Some(STORE_RETRY_AFTER_SECS),
                ..ApiError::new(503, e.to_string(), Value::Null)
            },
            E::Annotation { .. } | E::Image { .. } => {
                ApiError::new(422, e.to_string(), Value::Null)
            }
            E::Source {
                uuid,
                cause: S::Unknown,
            } => ApiError::new(
                600,
                e.to_string(),
                json!({"missing_image_uuid_list": [], "missing_annot_uuid_list": [wbia_client::fancy_uuid(uuid)]}),
            ),
            E::Source {
                cause: S::TooLarge(_),
                ..
            } => ApiError::new(422, e.to_string(), Value::Null),
            // In `--chips image-files`: WBIA's file is not where this service looks (its mount
            // or `--wbia-path-map`), which is this deployment's fault, not WBIA's.
            E::Source {
                cause: S::ImageFile(_),
                ..
            } => ApiError::new(500, e.to_string(), Value::Null),
            E::Source { .. } => ApiError::new(502, e.to_string(), Value::Null),
            _ => ApiError::new(500, e.to_string(), Value::Null),
        }
    }
}

impl From<wbia_lightglue_service::Error> for ApiError {
    fn from(e: wbia_lightglue_service::Error) -> Self {
        use wbia_lightglue_service::Error as E;
        match e {
            E::UnknownAnnotations(missing) => ApiError::new(
                600,
                "annotations unknown to WBIA",
                json!({
                    "missing_image_uuid_list": [],
                    "missing_annot_uuid_list": missing.iter().map(wbia_client::fancy_uuid).collect::<Vec<_>>(),
                }),
            ),
            E::Wbia(e) => e.into(),
        }
    }
}

impl From<wbia_client::Error> for ApiError {
    fn from(e: wbia_client::Error) -> Self {
        use wbia_client::Error as E;
        match &e {
            E::Timeout { .. } => ApiError::new(504, e.to_string(), Value::Null),
            _ => ApiError::new(502, e.to_string(), Value::Null),
        }
    }
}
