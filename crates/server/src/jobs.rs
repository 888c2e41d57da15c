//! The engine job API Wildbook drives (docs/wbia-api.md §3–4): start an identification job, poll its
//! status, fetch its result, and get a `jobid=<id>` callback when it is done. Jobs whose
//! `pipeline_root` is not LightGlue, and job ids that are not ours, go to WBIA unchanged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_client::fancy_uuid;
use wbia_lightglue_engine::{Config, QueryResult};

use crate::envelope::{self, ApiError};
use crate::params::Params;
use crate::{check_lists, compute, pair_count, proxy, AppState, Computed};
use wbia_lightglue_engine::Progress;

/// Finished jobs kept for status/result queries; the oldest are forgotten first.
const MAX_JOBS: usize = 10_000;
/// Annotations per result marked as having a match thumbnail (WBIA renders its top 20).
const THUMBS_PER_RESULT: usize = 20;

/// The `dannot_extern_reference` of our results, in WBIA's form (16 lowercase letters),
/// derived from the configuration; `/api/query/graph/match/thumb/` knows it as ours.
pub fn thumb_reference(config: &Config) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let digest = Sha256::digest(format!("wbia-lightglue/{text}").as_bytes());
    digest
        .iter()
        .take(16)
        .map(|b| (b'a' + b % 26) as char)
        .collect()
}

#[derive(Clone, Debug)]
struct Job {
    /// WBIA's job states: received → working → completed | exception.
    status: &'static str,
    /// `json_result`: the identification result, or the error text.
    result: Option<Value>,
    /// Stage and counts while the job works.
    progress: Option<Arc<Progress>>,
    /// Stops the job's task (`/api/engine/job/cancel/`).
    abort: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
pub struct JobStore {
    inner: Mutex<(HashMap<String, Job>, VecDeque<String>)>,
    /// Thumbnail references handed out in results.
    references: Mutex<HashSet<String>>,
}

impl JobStore {
    pub fn remember_reference(&self, reference: &str) {
        self.references
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reference.to_string());
    }

    pub fn knows_reference(&self, reference: &str) -> bool {
        self.references
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(reference)
    }

    fn set(&self, id: &str, job: Job) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (jobs, order) = &mut *guard;
        if jobs.insert(id.to_string(), job).is_none() {
            order.push_back(id.to_string());
            while order.len() > MAX_JOBS {
                if let Some(old) = order.pop_front() {
                    jobs.remove(&old);
                }
            }
        }
    }

    /// Sets a working job's final state; false (and nothing written) when it is not working
    /// any more, so that a cancel and the job's own end cannot overwrite each other.
    fn end(&self, id: &str, job: Job) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.0.get_mut(id) {
            Some(current) if current.status == "working" => {
                *current = job;
                true
            }
            _ => false,
        }
    }

    fn get(&self, id: &str) -> Option<Job> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

fn is_lightglue(query_config: &Value) -> bool {
    let root = query_config
        .get("pipeline_root")
        .or_else(|| query_config.get("proot"));
    root.and_then(Value::as_str) == Some("LightGlue")
}

/// Reads a request that names its pipeline in `query_config_dict`: a LightGlue one is ours
/// (its parameters and that dict come back); any other is WBIA's, forwarded unchanged, and
/// WBIA's response comes back as the error.
pub(crate) async fn lightglue_or_forward(
    state: &AppState,
    req: Request,
) -> Result<(Params, Value), Response> {
    let (params, parts, body) = Params::read(req)
        .await
        .map_err(IntoResponse::into_response)?;
    let query_config = params
        .get("query_config_dict")
        .cloned()
        .unwrap_or(Value::Null);
    if !is_lightglue(&query_config) {
        return Err(proxy::forward(state, &parts, body).await);
    }
    Ok((params, query_config))
}

/// `POST|GET /api/engine/query/graph/` (`start_identify_annots_query`).
pub async fn start(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, query_config) = match lightglue_or_forward(&state, req).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    match accept(&state, &params, query_config).await {
        Ok(jobid) => envelope::ok(Value::String(jobid)),
        Err(e) => e.into_response(),
    }
}

/// Validates the request, resolves its database, admits it (or answers 429 now, never later
/// as a failed job), records the job and runs it in the background.
async fn accept(
    state: &Arc<AppState>,
    params: &Params,
    query_config: Value,
) -> Result<String, ApiError> {
    let queries = params.uuid_list("query_annot_uuid_list")?;
    if queries.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "query_annot_uuid_list must hold exactly one annotation, not {}",
            queries.len()
        )));
    }
    // A null or absent list means every annotation of the query's species, as in WBIA
    // (docs/wbia-api.md); resolved before admission, which needs the pair count.
    let listed = params
        .get("database_annot_uuid_list")
        .is_some_and(|v| !v.is_null());
    if !listed
        && params
            .get("database_imgsetid")
            .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::bad_request(
            "database_imgsetid is not supported here: send database_annot_uuid_list, or neither \
             to match against every annotation of the query's species",
        ));
    }
    let database = if listed {
        Some(params.uuid_list("database_annot_uuid_list")?)
    } else {
        None
    };
    let config_path = query_config.get("config_path").and_then(Value::as_str);
    let config = state.configs.load(config_path)?;
    // WBIA appends the query to the database by default (include_qaid_in_daids); it is echoed
    // in database_annot_uuid_list but never scored against itself.
    let reference = thumb_reference(&config);
    state.jobs.remember_reference(&reference);
    let include_query = params
        .get("include_qaid_in_daids")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let jobid = params
        .string("jobid")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let callback = params.string("callback_url").map(|url| {
        let method = params
            .string("callback_method")
            .unwrap_or_else(|| "POST".into());
        (url, method)
    });
    let mut database = match database {
        Some(list) => list,
        None => same_species(state, queries[0]).await?,
    };
    if include_query && !database.contains(&queries[0]) {
        database.push(queries[0]);
    }
    check_lists(&queries, &database)?;
    if state
        .jobs
        .get(&jobid)
        .is_some_and(|j| j.status == "working")
    {
        return Err(ApiError::new(
            409,
            format!("job {jobid} is working; choose another jobid"),
            Value::Null,
        ));
    }
    let ticket = state.engine.admit(pair_count(&queries, &database))?;
    let accepted = std::time::Instant::now();
    let progress = Arc::new(Progress::default());
    let task_state = state.clone();
    let id = jobid.clone();
    let task_progress = progress.clone();
    // Registered before it can finish, so that its final state is never overwritten.
    let slot = Arc::new(tokio::sync::Notify::new());
    let registered = slot.clone();
    let task = tokio::spawn(async move {
        registered.notified().await;
        let state = task_state;
        let outcome = async {
            let computed = compute(
                &state,
                Some(&ticket),
                &queries,
                &database,
                &config,
                Some(&task_progress),
            )
            .await?;
            // Only the job result reports name UUIDs; the synchronous endpoint does not need them.
            let annots: Vec<Uuid> = computed.aids.iter().map(|(u, _)| *u).collect();
            let name_uuids = state.wbia.annot_name_uuids(&annots).await?;
            let name_uuids: Vec<(Uuid, Option<Uuid>)> =
                annots.into_iter().zip(name_uuids).collect();
            Ok::<_, ApiError>((computed, name_uuids))
        }
        .await;
        drop(ticket);
        let job = match outcome {
            Ok((c, name_uuids)) => Job {
                status: "completed",
                result: Some(identification_result(
                    &c,
                    &reference,
                    &name_uuids,
                    &queries,
                    &database,
                    &query_config,
                )),
                progress: None,
                abort: None,
            },
            Err(e) => Job {
                status: "exception",
                result: Some(Value::String(format!("{} (code {})", e.message, e.code))),
                progress: None,
                abort: None,
            },
        };
        state.metrics.job_seconds.since(accepted);
        finish(&state, &id, job, callback).await;
    });
    state.jobs.set(
        &jobid,
        Job {
            status: "working",
            result: None,
            progress: Some(progress),
            abort: Some(task.abort_handle()),
        },
    );
    slot.notify_one();
    Ok(jobid)
}

/// Records a job's end, unless it has ended already (cancelled meanwhile), and then posts the
/// callback, as WBIA's engine does.
async fn finish(state: &AppState, id: &str, job: Job, callback: Option<(String, String)>) {
    let status = job.status;
    if !state.jobs.end(id, job) {
        return;
    }
    tracing::info!(jobid = %id, status, "job finished");
    if let Some((url, method)) = callback {
        if let Err(e) = state.wbia.job_callback(&url, &method, id).await {
            tracing::warn!(jobid = %id, error = %e, "callback failed");
        }
    }
}

/// `/api/engine/job/cancel/?jobid=` (ours; WBIA has no such call): stops a working job. Its
/// queued model work is dropped unrun and it ends as `exception`, "cancelled by request"; no
/// callback is posted (whoever cancelled knows).
pub async fn cancel(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let params = match Params::read(req).await {
        Ok((params, _, _)) => params,
        Err(e) => return e.into_response(),
    };
    let Some(id) = jobid_of(&params) else {
        return ApiError::bad_request("missing parameter jobid").into_response();
    };
    let cancelled = Job {
        status: "exception",
        result: Some(Value::String("cancelled by request".into())),
        progress: None,
        abort: None,
    };
    let abort = state.jobs.get(&id).and_then(|j| j.abort);
    if state.jobs.end(&id, cancelled) {
        if let Some(abort) = abort {
            abort.abort();
        }
        tracing::info!(jobid = %id, "job cancelled");
        return envelope::ok(json!({"jobid": id, "jobstatus": "exception", "cancelled": true}));
    }
    match state.jobs.get(&id) {
        Some(job) => ApiError::new(
            409,
            format!("job {id} is {} and cannot be cancelled", job.status),
            Value::Null,
        )
        .into_response(),
        None => ApiError::new(404, format!("no job {id} here"), Value::Null).into_response(),
    }
}

/// Every annotation WBIA holds of the query's species, the query excluded.
async fn same_species(state: &AppState, query: Uuid) -> Result<Vec<Uuid>, ApiError> {
    let species = match state.wbia.annot_species(&[query]).await?.pop().flatten() {
        Some(s) => s,
        None => {
            return Err(ApiError::bad_request(format!(
                "annotation {query} has no species, so there is no species-wide database; \
                 send database_annot_uuid_list"
            )))
        }
    };
    let all = state.wbia.all_annot_uuids().await?;
    let species_of = state.wbia.annot_species(&all).await?;
    let database: Vec<Uuid> = all
        .into_iter()
        .zip(species_of)
        .filter(|(u, s)| *u != query && s.as_deref() == Some(species.as_str()))
        .map(|(u, _)| u)
        .collect();
    tracing::info!(%query, %species, annotations = database.len(), "species-wide database");
    Ok(database)
}

fn jobid_of(params: &Params) -> Option<String> {
    params.string("jobid")
}

/// `/api/engine/job/status/`.
pub async fn status(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(id) = jobid_of(&params) else {
        return proxy::forward(&state, &parts, body).await;
    };
    match state.jobs.get(&id) {
        Some(job) => {
            let mut status = json!({"status": "ok", "jobid": id, "jobstatus": job.status});
            // Not in WBIA's answer; Wildbook ignores keys it does not read.
            if let Some(p) = &job.progress {
                status["progress"] = serde_json::to_value(p.snapshot()).unwrap_or(Value::Null);
            }
            envelope::ok(status)
        }
        None => proxy::forward(&state, &parts, body).await,
    }
}

/// `/api/engine/job/result/`.
pub async fn result(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (params, parts, body) = match Params::read(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let job = jobid_of(&params).and_then(|id| state.jobs.get(&id).map(|j| (id, j)));
    match job {
        Some((id, job)) => {
            let body = json!({
                "status": {"success": true, "code": 200, "message": "", "cache": -1},
                "response": {
                    // WBIA reports the execution status here ("completed" / "exception"), not
                    // "ok" (docs/wbia-api.md).
                    "status": job.status,
                    "jobid": id,
                    "json_result": job.result,
                },
            });
            (
                [("content-type", "application/json; charset=utf-8")],
                render(&body),
            )
                .into_response()
        }
        None => proxy::forward(&state, &parts, body).await,
    }
}

/// `/api/engine/job/`: our job ids.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    envelope::ok(json!(state.jobs.ids()))
}

/// The result document of `query_chips_graph` (docs/wbia-api.md), for the one query.
fn identification_result(
    c: &Computed,
    reference: &str,
    name_uuids: &[(Uuid, Option<Uuid>)],
    queries: &[Uuid],
    database: &[Uuid],
    query_config: &Value,
) -> Value {
    let q = queries[0];
    let r = &c.results[0];
    let name_uuid = |u: &Uuid| {
        name_uuids
            .iter()
            .find(|(v, _)| v == u)
            .and_then(|(_, n)| *n)
    };
    let aid = |u: &Uuid| {
        c.aids
            .iter()
            .find(|(v, _)| v == u)
            .map(|(_, a)| *a)
            .unwrap_or(0)
    };
    // Unnamed annotations each count as their own individual, with a negative id as WBIA
    // gives them (`-aid`).
    let name_id = |u: &Uuid| -> Value {
        name_uuid(u)
            .map(|n| fancy_uuid(&n))
            .unwrap_or(json!(-aid(u)))
    };
    let name_key = |u: &Uuid, name: &Option<String>| -> String {
        match name {
            Some(n) => format!("name:{n}"),
            None => format!("annot:{u}"),
        }
    };

    // cm_dict lists the database in request order (not by score), like WBIA's daid_list.
    let scored: Vec<_> = database
        .iter()
        .filter(|d| **d != q)
        .filter_map(|d| r.ranked.iter().find(|s| s.annot == *d))
        .collect();
    let mut best_of_name: HashMap<String, (Uuid, f32)> = HashMap::new();
    for s in &scored {
        let key = name_key(&s.annot, &s.name);
        let entry = best_of_name.entry(key).or_insert((s.annot, s.score));
        if s.score > entry.1 {
            *entry = (s.annot, s.score);
        }
    }
    // The best annotation of each name carries the name score; the others -Infinity.
    let score_list: Vec<Value> = scored
        .iter()
        .map(|s| {
            let (best, score) = best_of_name[&name_key(&s.annot, &s.name)];
            if best == s.annot {
                json!(score)
            } else {
                Value::String(NEG_INF.into())
            }
        })
        .collect();
    let mut names: Vec<(String, Uuid, f32)> = best_of_name
        .iter()
        .map(|(k, (u, s))| (k.clone(), *u, *s))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let display = |u: &Uuid| -> String {
        scored
            .iter()
            .find(|s| s.annot == *u)
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| "____".into())
    };

    let mut cm = Map::new();
    cm.insert("qannot_uuid".into(), fancy_uuid(&q));
    cm.insert("qname_uuid".into(), name_id(&q));
    cm.insert("qname".into(), json!("____"));
    cm.insert(
        "dannot_uuid_list".into(),
        json!(scored
            .iter()
            .map(|s| fancy_uuid(&s.annot))
            .collect::<Vec<_>>()),
    );
    cm.insert(
        "dname_uuid_list".into(),
        json!(scored.iter().map(|s| name_id(&s.annot)).collect::<Vec<_>>()),
    );
    cm.insert(
        "dname_list".into(),
        json!(scored.iter().map(|s| display(&s.annot)).collect::<Vec<_>>()),
    );
    cm.insert("score_list".into(), json!(score_list));
    cm.insert(
        "annot_score_list".into(),
        json!(scored.iter().map(|s| s.score).collect::<Vec<_>>()),
    );
    cm.insert(
        "unique_name_uuid_list".into(),
        json!(names.iter().map(|n| name_id(&n.1)).collect::<Vec<_>>()),
    );
    cm.insert(
        "unique_name_list".into(),
        json!(names.iter().map(|n| display(&n.1)).collect::<Vec<_>>()),
    );
    cm.insert(
        "name_score_list".into(),
        json!(names.iter().map(|n| n.2).collect::<Vec<_>>()),
    );
    for key in [
        "fm_list",
        "fsv_list",
        "fk_list",
        "H_list",
        "fsv_col_lbls",
        "filtnorm_aids",
        "filtnorm_fxs",
    ] {
        cm.insert(key.into(), Value::Null);
    }
    // Thumbnails (rendered on request) for the best annotations, as WBIA marks its top 20.
    let top: Vec<Uuid> = r
        .ranked
        .iter()
        .take(THUMBS_PER_RESULT)
        .map(|s| s.annot)
        .collect();
    cm.insert("dannot_extern_reference".into(), json!(reference));
    cm.insert(
        "dannot_extern_list".into(),
        json!(scored
            .iter()
            .map(|s| top.contains(&s.annot))
            .collect::<Vec<_>>()),
    );
    cm.insert("model_url".into(), Value::Null);
    cm.insert("config_url".into(), Value::Null);

    json!({
        "cm_dict": { q.to_string(): Value::Object(cm) },
        "inference_dict": inference(q, r),
        "query_annot_uuid_list": [fancy_uuid(&q)],
        "database_annot_uuid_list": database.iter().map(fancy_uuid).collect::<Vec<_>>(),
        "query_config_dict": query_config,
        "summary_annot": scored_summary(r, &aid),
        "summary_name": r.name_scores.iter().take(20).map(|n| json!({
            "score": n.score, "duuid": fancy_uuid(&n.best_annot), "daid": aid(&n.best_annot),
        })).collect::<Vec<_>>(),
    })
}

/// Marker for WBIA's bare `-Infinity`, which JSON values cannot hold; [`render`] writes it.
pub const NEG_INF: &str = "__wbia_lightglue_negative_infinity__";

/// Serialises a result the way WBIA does, with bare `-Infinity` where [`NEG_INF`] stands.
pub fn render(v: &Value) -> String {
    v.to_string()
        .replace(&format!("\"{NEG_INF}\""), "-Infinity")
}

fn scored_summary(r: &QueryResult, aid: &dyn Fn(&Uuid) -> i64) -> Vec<Value> {
    r.ranked
        .iter()
        .take(20)
        .map(|s| json!({"score": s.score, "duuid": fancy_uuid(&s.annot), "daid": aid(&s.annot)}))
        .collect()
}

/// `make_inference`: one review pair for each of the top 4 individuals, with
/// `p_same = expit(2·score − 1.5)` and confidence `(2·|0.5 − p_same|)²`, least confident first.
fn inference(q: Uuid, r: &QueryResult) -> Value {
    let mut individuals: Vec<(Uuid, f32)> = r
        .name_scores
        .iter()
        .map(|n| (n.best_annot, n.score))
        .collect();
    for s in r.ranked.iter().filter(|s| s.name.is_none()) {
        individuals.push((s.annot, s.score));
    }
    individuals.sort_by(|a, b| b.1.total_cmp(&a.1));
    individuals.truncate(4);
    let mut pairs: Vec<(Value, f64)> = individuals
        .iter()
        .map(|&(d, score)| {
            let p = 1.0 / (1.0 + (-(2.0 * score as f64 - 1.5)).exp());
            let confidence = (2.0 * (0.5 - p).abs()).powi(2);
            let pair = json!({
                "annot_uuid_key": fancy_uuid(&q),
                "annot_uuid_1": fancy_uuid(&q),
                "annot_uuid_2": fancy_uuid(&d),
                "prior_matching_state": {"p_match": p, "p_nomatch": 1.0 - p, "p_notcomp": 0.0},
            });
            (pair, confidence)
        })
        .collect();
    pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
    json!({
        "cluster_dict": {
            "annot_uuid_list": [fancy_uuid(&q)],
            "orig_name_list": ["____"],
            "new_name_list": [r.name_scores.first().map(|n| n.name.clone()).unwrap_or_else(|| "____".into())],
            "exemplar_flag_list": [true],
            "error_flag_list": [[]],
        },
        "annot_pair_dict": {
            "review_pair_list": pairs.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            "confidence_list": pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
        },
        "_internal_state": null,
    })
}
