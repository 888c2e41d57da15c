//! Request parameters the way WBIA decodes them (docs/wbia-api.md §1.1): query string, then form
//! fields (urlencoded or multipart), then a JSON object body, later sources winning; each
//! value parsed as JSON when it is JSON, a bare string otherwise.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde_json::Value;
use uuid::Uuid;
use wbia_client::uuid_from_value;

use crate::envelope::ApiError;

/// Largest request body accepted (form fields only; no uploads).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Params(HashMap<String, Value>);

impl Params {
    /// Reads the body (up to [`MAX_BODY`]) and decodes; also returns the request's parts and
    /// body so that a request that is not ours can be passed to WBIA unchanged.
    pub async fn read(req: Request) -> Result<(Self, Parts, Bytes), ApiError> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
        let params = Self::parse(&parts, body.clone()).await?;
        Ok((params, parts, body))
    }

    async fn parse(parts: &Parts, body: Bytes) -> Result<Self, ApiError> {
        let mut params = Params::default();
        if let Some(query) = parts.uri.query() {
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                params.insert(&k, &v)?;
            }
        }
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("multipart/form-data") {
            // The multipart parser wants a request; hand it the already-read body.
            let req = Request::from_parts(parts.clone(), Body::from(body));
            let mut multipart = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?
            {
                let name = field.name().unwrap_or_default().to_string();
                let text = field
                    .text()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("multipart field {name}: {e}")))?;
                params.insert(&name, &text)?;
            }
            return Ok(params);
        }
        if body.is_empty() {
            return Ok(params);
        }
        if content_type.starts_with("application/x-www-form-urlencoded") {
            for (k, v) in form_urlencoded::parse(&body) {
                params.insert(&k, &v)?;
            }
        } else {
            match wbia_client::parse_lenient(&String::from_utf8_lossy(&body)) {
                Ok(Value::Object(map)) => params.0.extend(map),
                _ => {
                    return Err(ApiError::bad_request(
                        "the body must be form fields or a JSON object".to_string(),
                    ))
                }
            }
        }
        Ok(params)
    }

    /// One field, decoded like WBIA's `_process_input`.
    fn insert(&mut self, key: &str, raw: &str) -> Result<(), ApiError> {
        if self.0.contains_key(key) {
            return Err(ApiError::bad_request(format!(
                "parameter {key} given twice"
            )));
        }
        let mut text = raw.to_string();
        if text.contains(',') && !text.contains(['[', ']', '{', '}']) {
            text = format!("[{text}]");
        }
        let value =
            wbia_client::parse_lenient(&text).unwrap_or_else(|_| Value::String(raw.to_string()));
        self.0.insert(key.to_string(), value);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn string(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// A list of annotation UUIDs: JSON list of strings or `{"__UUID__"}` objects, or one UUID.
    pub fn uuid_list(&self, key: &str) -> Result<Vec<Uuid>, ApiError> {
        Ok(self.uuid_lists(&[key])?.remove(0))
    }

    /// Several UUID lists at once. Entries that are not UUIDs are reported together, as WBIA's
    /// `web_check_uuids` reports them: 608 with `[position, value]` pairs, positions counted
    /// over the lists one after the other. (WBIA also refuses plain-string UUIDs with 608;
    /// they are accepted here.)
    pub fn uuid_lists(&self, keys: &[&str]) -> Result<Vec<Vec<Uuid>>, ApiError> {
        let mut lists = Vec::with_capacity(keys.len());
        let mut invalid = Vec::new();
        let mut position = 0;
        for key in keys {
            let value = self
                .get(key)
                .ok_or_else(|| ApiError::bad_request(format!("missing parameter {key}")))?;
            let items = match value {
                Value::Array(items) => items.clone(),
                Value::String(s) => s
                    .split(',')
                    .map(|p| Value::String(p.trim().to_string()))
                    .collect(),
                single => vec![single.clone()],
            };
            let mut uuids = Vec::with_capacity(items.len());
            for item in &items {
                match uuid_from_value(item) {
                    Some(u) => uuids.push(u),
                    None => invalid.push(serde_json::json!([position, item])),
                }
                position += 1;
            }
            lists.push(uuids);
        }
        if !invalid.is_empty() {
            return Err(ApiError::invalid_uuids(
                format!("{}: invalid UUIDs", keys.join(", ")),
                invalid,
            ));
        }
        Ok(lists)
    }
}
