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

    /// A failure of this service itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message, Value::Null)
    }

    /// `--api-token` is set and the request did not carry it.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message, Value::Null)
    }

    /// Too many requests are being passed through to WBIA; worth retrying in a second.
    pub fn proxy_busy(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(503, message, Value::Null)
        }
    }

    /// WBIA's 608: entries of the UUID lists that are not UUIDs, as `[position, entry]`.
    pub fn invalid_uuids(message: impl Into<String>, invalid: Vec<Value>) -> Self {
        Self::new(
            WBIA_INVALID_UUIDS,
            message,
            json!({"invalid_image_uuid_list": [], "invalid_annot_uuid_list": invalid}),
        )
    }

    /// WBIA's 601: UUIDs listed more than once, per list a map from UUID to its positions.
    pub fn duplicate_uuids(
        queries: serde_json::Map<String, Value>,
        database: serde_json::Map<String, Value>,
    ) -> Self {
        Self::new(
            WBIA_DUPLICATE_UUIDS,
            "duplicate annotation UUIDs",
            json!({"qdup_pos_map": queries, "ddup_pos_map": database}),
        )
    }

    /// WBIA's 607: a match thumbnail that cannot be made, with the request echoed.
    pub fn thumbnail_failed(message: impl Into<String>, request: Value) -> Self {
        Self::new(WBIA_THUMBNAIL_FAILED, message, request)
    }
}

/// WBIA's codes (`wbia/web/routes_ajax.py` and `web_check_uuids`, docs/wbia-api.md §1).
const WBIA_UNKNOWN_UUIDS: u16 = 600;
const WBIA_DUPLICATE_UUIDS: u16 = 601;
const WBIA_THUMBNAIL_FAILED: u16 = 607;
const WBIA_INVALID_UUIDS: u16 = 608;

/// WBIA's 600 for annotation UUIDs it does not know, each once, in request order.
fn unknown_annotations(message: String, missing: &[uuid::Uuid]) -> ApiError {
    ApiError::new(
        WBIA_UNKNOWN_UUIDS,
        message,
        json!({
            "missing_image_uuid_list": [],
            "missing_annot_uuid_list": missing.iter().map(wbia_client::fancy_uuid).collect::<Vec<_>>(),
        }),
    )
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
            } => unknown_annotations(e.to_string(), &[*uuid]),
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
            E::UnknownAnnotations(ref missing) => unknown_annotations(e.to_string(), missing),
            E::UnknownRowid(_) => ApiError::new(WBIA_UNKNOWN_UUIDS, e.to_string(), Value::Null),
            E::NoSpecies(_) | E::EmptyList | E::TooManyAnnotations { .. } => {
                ApiError::bad_request(e.to_string())
            }
            E::DuplicateUuids(found) => {
                let positions = |list: Vec<(uuid::Uuid, Vec<usize>)>| {
                    list.into_iter()
                        .map(|(uuid, at)| (uuid.to_string(), json!(at)))
                        .collect()
                };
                ApiError::duplicate_uuids(positions(found.queries), positions(found.database))
            }
            E::Wbia(e) => e.into(),
            E::Engine(e) => e.into(),
            E::Split(e) => e.into(),
            E::JobId(refused) => refused.into(),
            E::Callback(refused) => refused.into(),
            E::Task(e) => e.into(),
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

/// A blocking task that panicked or was cancelled: this service's fault.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// 413 for a multipart body over the limit, 400 for a malformed one (axum's choice).
impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        ApiError::new(
            e.status().as_u16(),
            format!("multipart body: {}", e.body_text()),
            Value::Null,
        )
    }
}

impl From<wbia_lightglue_service::job_refusals::JobIdRefused> for ApiError {
    fn from(refused: wbia_lightglue_service::job_refusals::JobIdRefused) -> Self {
        use wbia_lightglue_service::job_refusals::JobIdError as E;
        match refused.error {
            E::Invalid => ApiError::bad_request(refused.to_string()),
            E::Taken => ApiError::new(409, refused.to_string(), Value::Null),
        }
    }
}

impl From<wbia_lightglue_service::job_refusals::CallbackRefused> for ApiError {
    fn from(refused: wbia_lightglue_service::job_refusals::CallbackRefused) -> Self {
        use wbia_lightglue_service::job_refusals::CallbackRefused as E;
        match refused {
            E::NotAUrl { .. } | E::NotHttp { .. } => ApiError::bad_request(refused.to_string()),
            E::HostNotAllowed { .. } => ApiError::new(403, refused.to_string(), Value::Null),
        }
    }
}

impl From<wbia_lightglue_service::job_refusals::CancelRefused> for ApiError {
    fn from(refused: wbia_lightglue_service::job_refusals::CancelRefused) -> Self {
        use wbia_lightglue_service::job_refusals::CancelRefused as E;
        match refused {
            E::Ended { .. } | E::Elsewhere { .. } => {
                ApiError::new(409, refused.to_string(), Value::Null)
            }
            E::Unknown { .. } => ApiError::new(404, refused.to_string(), Value::Null),
        }
    }
}

impl From<wbia_lightglue_service::SplitError> for ApiError {
    fn from(e: wbia_lightglue_service::SplitError) -> Self {
        use wbia_lightglue_service::SplitError as E;
        match e {
            E::Engine(e) => e.into(),
            E::Task(e) => e.into(),
            E::ChunkFailed { .. } => ApiError::new(502, e.to_string(), Value::Null),
            E::NoSharedStore | E::ChunksGone | E::Incomplete { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}
