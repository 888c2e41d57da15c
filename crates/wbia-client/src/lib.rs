//! A small client for the parts of WBIA's HTTP API this service reads: annotation UUID → rowid,
//! chip bytes, annotation names, heartbeat (shapes in `docs/wbia-api.md`).
//!
//! Every call has connect and per-attempt timeouts; chip downloads are bounded in number, in
//! size and in total time; requests that fail with a 5xx status, a timeout or a connection
//! error are retried with exponential backoff, others are not. Errors name the annotation and
//! say which of timeout, unreachable or HTTP status it was.
//!
//! TLS is rustls: https URLs are verified against the bundled Mozilla roots, the operating
//! system's store, and the PEM bundle in [`ClientOptions::ca_file`] (by convention the file
//! named by `SSL_CERT_FILE`), so a WBIA or Wildbook behind a private CA, or with a
//! self-signed certificate listed in that bundle, works (`tls.rs`).

mod forward;
pub mod json;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use forward::{BodyStream, ForwardBody, Forwarded};
pub use json::{fancy_uuid, parse_lenient, uuid_from_value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WBIA at {url} is unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("WBIA did not answer {url} within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("WBIA answered HTTP {status} for {url}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("WBIA error {code} for {url}: {message}")]
    Wbia {
        url: String,
        code: i64,
        message: String,
    },
    #[error("unexpected reply from {url}: {detail}")]
    BadReply { url: String, detail: String },
    #[error("TLS setup: {detail}")]
    Tls { detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Timeouts, concurrency and retry policy.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Most chip downloads in flight at once.
    pub max_concurrent_downloads: usize,
    /// Retries after the first attempt, for 5xx, timeouts and connection errors only.
    pub retries: u32,
    pub initial_backoff: Duration,
    /// Longest one chip may take, all attempts and backoffs together.
    pub chip_deadline: Duration,
    /// Largest chip body accepted (from `Content-Length`, and while streaming).
    pub max_chip_bytes: usize,
    /// Extra trusted CA certificates (a PEM bundle), besides the built-in and system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Pass-through: longest time with nothing moving either way (an idle timeout: a large
    /// upload or download may take as long as it keeps moving).
    pub forward_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max_concurrent_downloads: 8,
            retries: 3,
            initial_backoff: Duration::from_millis(200),
            chip_deadline: Duration::from_secs(150),
            max_chip_bytes: 32 << 20,
            ca_file: None,
            forward_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Client for one WBIA server.
#[derive(Clone)]
pub struct WbiaClient {
    base: String,
    /// WBIA's API: total timeout per attempt, redirects followed.
    http: reqwest::Client,
    /// Pass-through: idle timeout only, redirects handed back to the caller unfollowed.
    forwarding: reqwest::Client,
    /// Job callbacks: total timeout, no redirects (a callback goes where it was told, or nowhere).
    callbacks: reqwest::Client,
    downloads: Arc<Semaphore>,
    options: ClientOptions,
}

/// Whether a failed attempt is worth repeating.
enum Attempt<T> {
    Done(T),
    Retry(Error),
    Fail(Error),
}

/// The certificates of a PEM bundle; a file without any is an error at start, not at the
/// first https request.
fn read_ca_bundle(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let bad = |detail: String| Error::Tls {
        detail: format!("CA bundle {}: {detail}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

impl WbiaClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self> {
        let bundle = match &options.ca_file {
            Some(path) => read_ca_bundle(path)?,
            None => Vec::new(),
        };
        let tls = tls::client_config(bundle).map_err(|detail| Error::Tls { detail })?;
        let builder = || {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls.clone())
                .connect_timeout(options.connect_timeout)
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build().map_err(|e| Error::Tls {
                detail: e.to_string(),
            })
        };
        let http = built(builder().timeout(options.timeout))?;
        // Its idle timeout is `forward`'s own (reqwest's read timeout ignores upload progress).
        let forwarding = built(builder().redirect(reqwest::redirect::Policy::none()))?;
        let callbacks = built(
            builder()
                .timeout(options.timeout)
                .redirect(reqwest::redirect::Policy::none()),
        )?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            forwarding,
            callbacks,
            downloads: Arc::new(Semaphore::new(options.max_concurrent_downloads.max(1))),
            options,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let mut backoff = self.options.initial_backoff;
        let mut tries = 0;
        loop {
            match attempt().await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) if tries >= self.options.retries => return Err(e),
                Attempt::Retry(e) => {
                    tracing::warn!(error = %e, attempt = tries + 1, "retrying WBIA request");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    tries += 1;
                }
            }
        }
    }

    async fn send(&self, url: &str, query: &[(&str, String)]) -> Attempt<reqwest::Response> {
        match self.http.get(url).query(query).send().await {
            Ok(resp) if resp.status().is_server_error() => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                Attempt::Retry(Error::Status {
                    url: url.to_string(),
                    status,
                    body: truncate(&body),
                })
            }
            Ok(resp) if !resp.status().is_success() && resp.status().as_u16() != 600 => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                Attempt::Fail(Error::Status {
                    url: url.to_string(),
                    status,
                    body: truncate(&body),
                })
            }
            Ok(resp) => Attempt::Done(resp),
            Err(e) => Attempt::Retry(self.transport_error(url, &e)),
        }
    }

    /// A timeout says so; anything else (refused, reset, DNS) is "unreachable" with its cause.
    fn transport_error(&self, url: &str, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout {
                url: url.to_string(),
                secs: self.options.timeout.as_secs(),
            };
        }
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        Error::Unreachable {
            url: url.to_string(),
            cause,
        }
    }

    /// GET a JSON endpoint and unwrap WBIA's `{"status": ..., "response": ...}` envelope.
    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let url = self.url(path);
        let text = self
            .with_retries(|| async {
                match self.send(&url, query).await {
                    Attempt::Done(resp) => match resp.text().await {
                        Ok(t) => Attempt::Done(t),
                        Err(e) => Attempt::Retry(Error::Unreachable {
                            url: url.clone(),
                            cause: e.to_string(),
                        }),
                    },
                    Attempt::Retry(e) => Attempt::Retry(e),
                    Attempt::Fail(e) => Attempt::Fail(e),
                }
            })
            .await?;
        unwrap_envelope(&url, &text)
    }

    /// WBIA's own engine job ids (`GET /api/engine/job/`): jobs of its other pipelines.
    pub async fn job_ids(&self) -> Result<Vec<String>> {
        let url = self.url("/api/engine/job/");
        let v = self.get_json("/api/engine/job/", &[]).await?;
        let ids = v.as_array().ok_or_else(|| Error::BadReply {
            url: url.clone(),
            detail: format!("not a list of job ids: {}", truncate(&v.to_string())),
        })?;
        Ok(ids
            .iter()
            .filter_map(|id| id.as_str().map(String::from))
            .collect())
    }

    /// `GET /api/test/heartbeat/`: true when WBIA answers.
    pub async fn heartbeat(&self) -> bool {
        let url = self.url("/api/test/heartbeat/");
        match self.send(&url, &[]).await {
            Attempt::Done(resp) => resp
                .text()
                .await
                .ok()
                .and_then(|t| unwrap_envelope(&url, &t).ok())
                .is_some_and(|v| v == Value::Bool(true)),
            _ => false,
        }
    }

    /// Annotation rowids (`aid`) for UUIDs; `None` for UUIDs WBIA does not know.
    pub async fn annot_aids(&self, uuids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let path = "/api/annot/rowid/uuid/json/";
        let v = self.annot_getter(path, uuids).await?;
        Ok(v.iter().map(Value::as_i64).collect())
    }

    /// Name texts of annotations; `None` for unnamed ones (`"____"`) or unknown UUIDs.
    pub async fn annot_names(&self, uuids: &[Uuid]) -> Result<Vec<Option<String>>> {
        let v = self
            .annot_getter("/api/annot/name/text/json/", uuids)
            .await?;
        Ok(v.iter()
            .map(|n| {
                n.as_str()
                    .filter(|s| !s.is_empty() && *s != "____")
                    .map(str::to_string)
            })
            .collect())
    }

    /// Every valid annotation's UUID (`GET /api/annot/json/`, docs/wbia-api.md §5).
    pub async fn all_annot_uuids(&self) -> Result<Vec<Uuid>> {
        let path = "/api/annot/json/";
        let v = self.get_json(path, &[]).await?;
        let bad = |detail: String| Error::BadReply {
            url: self.url(path),
            detail,
        };
        let list = v
            .as_array()
            .ok_or_else(|| bad(format!("expected a list, got {}", truncate(&v.to_string()))))?;
        list.iter()
            .map(|u| uuid_from_value(u).ok_or_else(|| bad(format!("not an annotation UUID: {u}"))))
            .collect()
    }

    /// Species of annotations (`/api/annot/species/json/`). WBIA 4.0.4 answers `"____"` both
    /// for an annotation without a species and for an unknown UUID (recorded), and so does
    /// this: a species-wide search from such a query is over the others without one, as in
    /// WBIA.
    pub async fn annot_species(&self, uuids: &[Uuid]) -> Result<Vec<Option<String>>> {
        let v = self.annot_getter("/api/annot/species/json/", uuids).await?;
        Ok(v.iter()
            .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect())
    }

    /// Annotation UUIDs for rowids (`GET /api/annot/uuid/?aid_list=`); `None` for unknown aids.
    pub async fn annot_uuids_by_aid(&self, aids: &[i64]) -> Result<Vec<Option<Uuid>>> {
        let path = "/api/annot/uuid/";
        let list = serde_json::to_string(aids).unwrap_or_else(|_| "[]".into());
        match self.get_json(path, &[("aid_list", list)]).await? {
            Value::Array(items) if items.len() == aids.len() => {
                Ok(items.iter().map(uuid_from_value).collect())
            }
            other => Err(Error::BadReply {
                url: self.url(path),
                detail: format!(
                    "expected a list of {}, got {}",
                    aids.len(),
                    truncate(&other.to_string())
                ),
            }),
        }
    }

    /// Sex of each annotation's individual as WBIA writes it (`/api/annot/sex/text/json/`).
    pub async fn annot_sex_texts(&self, uuids: &[Uuid]) -> Result<Vec<Option<String>>> {
        let v = self
            .annot_getter("/api/annot/sex/text/json/", uuids)
            .await?;
        Ok(v.iter().map(|s| s.as_str().map(str::to_string)).collect())
    }

    /// Lower bound of each annotation's estimated age in months
    /// (`/api/annot/age/months/min/json/`); `None` where unset.
    pub async fn annot_age_months_min(&self, uuids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let v = self
            .annot_getter("/api/annot/age/months/min/json/", uuids)
            .await?;
        Ok(v.iter().map(Value::as_i64).collect())
    }

    /// Name rowids of annotations (`/api/annot/name/rowid/json/`): WBIA gives an unnamed
    /// annotation `-aid`, each its own individual; `None` for unknown UUIDs.
    pub async fn annot_name_rowids(&self, uuids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let v = self
            .annot_getter("/api/annot/name/rowid/json/", uuids)
            .await?;
        Ok(v.iter().map(Value::as_i64).collect())
    }

    /// Paths of the annotations' image files as WBIA knows them
    /// (`/api/annot/image/file/path/json/`: `<dbdir>/_ibsdb/images/<image uuid>.<ext>`, WBIA's
    /// own copy); `None` for unknown UUIDs.
    pub async fn annot_image_paths(&self, uuids: &[Uuid]) -> Result<Vec<Option<String>>> {
        let v = self
            .annot_getter("/api/annot/image/file/path/json/", uuids)
            .await?;
        Ok(v.iter().map(|p| p.as_str().map(str::to_string)).collect())
    }

    /// The orientation WBIA stored for each image (`/api/image/orientation/json/`), which
    /// decides how it reads the file for chips; `None` for unknown UUIDs.
    pub async fn image_orientations(&self, images: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let v = self
            .getter("/api/image/orientation/json/", "image_uuid_list", images)
            .await?;
        Ok(v.iter().map(Value::as_i64).collect())
    }

    /// Posts `jobid=<id>` to a job's callback URL, as WBIA's job engine does (docs/wbia-api.md §3.2):
    /// a form body for POST and PUT, a query parameter for GET. Redirects are not followed;
    /// 5xx answers, timeouts and connection errors are retried with the client's backoff.
    pub async fn job_callback(&self, url: &str, method: &str, jobid: &str) -> Result<()> {
        self.job_callback_with(url, method, &[("jobid", jobid)])
            .await
    }

    /// A job callback with these form fields (WBIA sends `jobid`; with `callback_detailed`
    /// also `status` and `json_result`).
    pub async fn job_callback_with(
        &self,
        url: &str,
        method: &str,
        form: &[(&str, &str)],
    ) -> Result<()> {
        self.with_retries(|| async {
            let request = match method.to_ascii_uppercase().as_str() {
                "GET" => self.callbacks.get(url).query(form),
                "PUT" => self.callbacks.put(url).form(form),
                _ => self.callbacks.post(url).form(form),
            };
            let resp = match request.send().await {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(self.transport_error(url, &e)),
            };
            let status = resp.status();
            if status.is_success() {
                return Attempt::Done(());
            }
            let error = Error::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: truncate(&resp.text().await.unwrap_or_default()),
            };
            if status.is_server_error() {
                Attempt::Retry(error)
            } else {
                Attempt::Fail(error)
            }
        })
        .await
    }

    async fn annot_getter(&self, path: &str, uuids: &[Uuid]) -> Result<Vec<Value>> {
        self.getter(path, "annot_uuid_list", uuids).await
    }

    /// A WBIA getter over a list of UUIDs passed as `param`: one value per UUID.
    async fn getter(&self, path: &str, param: &str, uuids: &[Uuid]) -> Result<Vec<Value>> {
        // The list travels in the query string: chunks keep URLs well under server limits.
        const CHUNK: usize = 200;
        let mut out = Vec::with_capacity(uuids.len());
        for chunk in uuids.chunks(CHUNK) {
            let query = [(param, json::uuid_list_param(chunk))];
            match self.get_json(path, &query).await? {
                Value::Array(items) if items.len() == chunk.len() => out.extend(items),
                other => {
                    return Err(Error::BadReply {
                        url: self.url(path),
                        detail: format!(
                            "expected a list of {}, got {}",
                            chunk.len(),
                            truncate(&other.to_string())
                        ),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Chip bytes for an annotation whose rowid is already known. Each attempt holds one of
    /// the client's download slots only while it runs (not through the backoff), times out on
    /// its own, and all attempts together stop `chip_deadline` after the first one started
    /// (waiting for a slot before that does not count: it is other requests' time).
    pub async fn chip_by_aid(&self, uuid: Uuid, aid: i64) -> Result<Bytes> {
        let url = self.url(&format!("/api/annot/src/{aid}/"));
        tracing::debug!(%uuid, aid, "downloading chip");
        let first_attempt = std::sync::OnceLock::new();
        let timed_out = || Error::Timeout {
            url: url.clone(),
            secs: self.options.chip_deadline.as_secs(),
        };
        self.with_retries(|| async {
            let Ok(_permit) = self.downloads.acquire().await else {
                return Attempt::Fail(Error::Unreachable {
                    url: url.clone(),
                    cause: "client shut down".into(),
                });
            };
            let deadline = *first_attempt
                .get_or_init(|| tokio::time::Instant::now() + self.options.chip_deadline);
            match tokio::time::timeout_at(deadline, self.chip_attempt(&url)).await {
                Ok(attempt) => attempt,
                Err(_) => Attempt::Fail(timed_out()),
            }
        })
        .await
    }

    /// One download of a chip (the caller holds a slot).
    async fn chip_attempt(&self, url: &str) -> Attempt<Bytes> {
        let resp = match self.send(url, &[]).await {
            Attempt::Done(r) => r,
            Attempt::Retry(e) => return Attempt::Retry(e),
            Attempt::Fail(e) => return Attempt::Fail(e),
        };
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        match self.capped_body(url, resp).await {
            // Route errors come back as an envelope with HTTP 200 (docs/wbia-api.md); WBIA
            // 4.0.4 labels it `text/html`, so a body that opens like JSON is read as one too
            // (no image format starts with `{`).
            Ok(body) if is_json || body.trim_ascii_start().starts_with(b"{") => {
                match unwrap_envelope(url, &String::from_utf8_lossy(&body)) {
                    Ok(_) => Attempt::Fail(Error::BadReply {
                        url: url.to_string(),
                        detail: "JSON instead of image bytes".into(),
                    }),
                    Err(e) => Attempt::Fail(e),
                }
            }
            Ok(body) => Attempt::Done(body),
            Err(e @ Error::TooLarge { .. }) => Attempt::Fail(e),
            Err(e) => Attempt::Retry(e),
        }
    }

    /// The body, refused as soon as it passes `max_chip_bytes` (declared or streamed).
    async fn capped_body(&self, url: &str, mut resp: reqwest::Response) -> Result<Bytes> {
        let limit = self.options.max_chip_bytes;
        let too_large = || Error::TooLarge {
            url: url.to_string(),
            limit,
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => return Err(self.transport_error(url, &e)),
            }
        }
    }

    /// What defines each annotation's chip besides WBIA's chip settings: image UUID, bbox and
    /// theta, three bulk getters (chunked). `None` for annotations WBIA has no image for.
    pub async fn annot_chip_identities(
        &self,
        uuids: &[Uuid],
    ) -> Result<Vec<Option<(Uuid, [i64; 4], f64)>>> {
        let images = self
            .annot_getter("/api/annot/image/uuid/json/", uuids)
            .await?;
        let bboxes = self.annot_getter("/api/annot/bbox/json/", uuids).await?;
        let thetas = self.annot_getter("/api/annot/theta/json/", uuids).await?;
        Ok(images
            .iter()
            .zip(&bboxes)
            .zip(&thetas)
            .map(|((image, bbox), theta)| {
                let image = uuid_from_value(image)?;
                let b: Vec<i64> = bbox
                    .as_array()?
                    .iter()
                    .map(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.round() as i64)))
                    .collect::<Option<_>>()?;
                let bbox: [i64; 4] = b.try_into().ok()?;
                Some((image, bbox, theta.as_f64().unwrap_or(0.0)))
            })
            .collect())
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy drops them
/// in both directions, together with every header the `Connection` header names.
/// `Proxy-Authorization` and `Proxy-Authenticate` are for this hop too.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// `headers` without the hop-by-hop ones ([`HOP_BY_HOP`] and those named in `Connection`).
pub fn end_to_end_headers(headers: &reqwest::header::HeaderMap) -> reqwest::header::HeaderMap {
    let named: Vec<String> = headers
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    let mut out = reqwest::header::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || named.iter().any(|n| n == name_str) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The `response` of a WBIA envelope, or its error.
fn unwrap_envelope(url: &str, text: &str) -> Result<Value> {
    let v = parse_lenient(text).map_err(|e| Error::BadReply {
        url: url.to_string(),
        detail: format!("not JSON ({e}): {}", truncate(text)),
    })?;
    let status = &v["status"];
    if status["success"] == Value::Bool(true) {
        return Ok(v["response"].clone());
    }
    if status.is_object() {
        return Err(Error::Wbia {
            url: url.to_string(),
            code: status["code"].as_i64().unwrap_or(500),
            message: status["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    Err(Error::BadReply {
        url: url.to_string(),
        detail: format!("no WBIA envelope: {}", truncate(text)),
    })
}

fn truncate(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
