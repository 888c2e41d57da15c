//! A WBIA that answers with the real WBIA 4.0.4's recorded answers
//! (`tests/data/real-wbia/transcripts.json`, made by `scripts/real-wbia/record.py`), not with
//! shapes written from reading its source.
//!
//! Per-annotation getters (`/api/annot/<field>/json/?annot_uuid_list=…`) answer any list: each
//! UUID's value is taken from the recording of that getter over every annotation of the
//! recorded database, and an unknown UUID gets what WBIA answered for one (`null`, or `"____"`
//! for names and species, `-1` for ages never set…). Chips: WBIA's recorded error envelope
//! for the annotation whose image file was deleted and for unknown rowids; the others are the
//! fixture images the database was built from (the recording keeps only their digests), sent
//! as WBIA labels them. Any other request must match a recorded one exactly (method, path and
//! query, values compared as JSON): its recorded status, type and body come back. A request
//! that matches nothing is answered 599 naming it, so a test fails on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use uuid::Uuid;

/// One annotation of the recorded database (`manifest.annotations`).
#[derive(Clone, Debug)]
pub struct RecordedAnnot {
    pub aid: i64,
    pub uuid: Uuid,
    /// `"____"` when unnamed.
    pub name: String,
    pub nid: i64,
    pub species: String,
    /// The repo fixture its image was made from (`tests/fixtures/…`).
    pub fixture: String,
    pub image_uuid: Uuid,
    /// Its image's file name in WBIA's `_ibsdb/images/`.
    pub image_file: String,
    pub bbox: [i64; 4],
    pub theta: f64,
}

pub struct Replay {
    pub transcripts: Value,
    pub annots: Vec<RecordedAnnot>,
    /// The UUID the recording used for "unknown to WBIA".
    pub unknown: Uuid,
    /// Per getter path: each recorded annotation's value, and the unknown UUID's.
    getters: HashMap<String, (HashMap<Uuid, Value>, Value)>,
    /// The same for per-image getters (`image_uuid_list`); `null` for images not recorded.
    image_getters: HashMap<String, (HashMap<Uuid, Value>, Value)>,
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Replay {
    pub fn load() -> Self {
        let transcripts = super::transcripts();
        let annots: Vec<RecordedAnnot> = transcripts["manifest"]["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| RecordedAnnot {
                aid: a["aid"].as_i64().unwrap(),
                uuid: a["annot_uuid"].as_str().unwrap().parse().unwrap(),
                name: a["name"].as_str().unwrap().to_string(),
                nid: a["nid"].as_i64().unwrap(),
                species: a["species"].as_str().unwrap().to_string(),
                fixture: a["fixture"].as_str().unwrap().to_string(),
                image_uuid: a["image_uuid"].as_str().unwrap().parse().unwrap(),
                image_file: a["image_file"].as_str().unwrap().to_string(),
                bbox: serde_json::from_value(a["bbox"].clone()).unwrap(),
                theta: a["theta"].as_f64().unwrap(),
            })
            .collect();
        let unknown = transcripts["unknown_uuid"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut getters = HashMap::new();
        let entries = transcripts["entries"].as_array().unwrap();
        for known in entries {
            let name = known["name"].as_str().unwrap();
            let Some(short) = name.strip_suffix("_known") else {
                continue;
            };
            let path = known["request"]["path"].as_str().unwrap().to_string();
            let listed = uuid_list(&known["request"]["query"]["annot_uuid_list"]);
            let answers = known["response"]["json"]["response"].as_array().unwrap();
            assert_eq!(listed.len(), answers.len(), "{name}");
            let unknown_answer = entries
                .iter()
                .find(|e| e["name"] == format!("{short}_unknown"))
                .map(|e| e["response"]["json"]["response"][0].clone())
                .unwrap_or_else(|| panic!("no recording of {short} for an unknown UUID"));
            let table = listed.into_iter().zip(answers.iter().cloned()).collect();
            getters.insert(path, (table, unknown_answer));
        }
        assert!(
            getters.len() >= 10,
            "per-annotation getters recorded: {}",
            getters.len()
        );
        // Per-image getters: recorded once over every image of the database.
        let mut image_getters = HashMap::new();
        for entry in entries {
            let query = &entry["request"]["query"];
            if entry["request"]["method"] != "GET" || !query["image_uuid_list"].is_string() {
                continue;
            }
            let path = entry["request"]["path"].as_str().unwrap().to_string();
            let listed = uuid_list(&query["image_uuid_list"]);
            let answers = entry["response"]["json"]["response"].as_array().unwrap();
            assert_eq!(listed.len(), answers.len(), "{}", entry["name"]);
            let table: HashMap<Uuid, Value> =
                listed.into_iter().zip(answers.iter().cloned()).collect();
            image_getters.insert(path, (table, Value::Null));
        }
        Replay {
            transcripts,
            annots,
            unknown,
            getters,
            image_getters,
        }
    }

    pub fn annot(&self, label_aid: i64) -> &RecordedAnnot {
        self.annots.iter().find(|a| a.aid == label_aid).unwrap()
    }

    /// The recorded entry for `aid`'s chip.
    fn chip_entry(&self, aid: &str) -> Option<&Value> {
        let path = format!("/api/annot/src/{aid}/");
        self.entries()
            .find(|e| e["request"]["path"] == path && e["request"]["query"].is_null())
    }

    fn entries(&self) -> impl Iterator<Item = &Value> {
        self.transcripts["entries"].as_array().unwrap().iter()
    }

    fn answer(&self, req: &Request) -> Response {
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if req.method() == "GET" {
            let by_annot = self.getters.get(&path).zip(query.get("annot_uuid_list"));
            let by_image = self
                .image_getters
                .get(&path)
                .zip(query.get("image_uuid_list"));
            if let Some(((table, unknown), list)) = by_annot.or(by_image) {
                let values: Vec<Value> = uuid_list(&Value::String(list.clone()))
                    .iter()
                    .map(|u| table.get(u).unwrap_or(unknown).clone())
                    .collect();
                return json_answer(
                    200,
                    "application/json; charset=utf-8",
                    &json!({"status": {"success": true, "code": 200, "message": "", "cache": -1}, "response": values}),
                );
            }
            if path == "/api/annot/uuid/" {
                let aids: Vec<i64> = serde_json::from_str(&query["aid_list"]).unwrap();
                let values: Vec<Value> = aids
                    .iter()
                    .map(|aid| {
                        self.annots
                            .iter()
                            .find(|a| a.aid == *aid)
                            .map_or(Value::Null, |a| wbia_client::fancy_uuid(&a.uuid))
                    })
                    .collect();
                return json_answer(
                    200,
                    "application/json; charset=utf-8",
                    &json!({"status": {"success": true, "code": 200, "message": "", "cache": -1}, "response": values}),
                );
            }
            if let Some(aid) = path
                .strip_prefix("/api/annot/src/")
                .and_then(|rest| rest.strip_suffix('/'))
                .filter(|_| query.is_empty())
            {
                let entry = self
                    .chip_entry(aid)
                    .or_else(|| {
                        self.entries()
                            .find(|e| e["name"] == "annot_src_unknown_aid")
                    })
                    .unwrap();
                let response = &entry["response"];
                let kind = response["content_type"].as_str().unwrap();
                if response["json"].is_object() {
                    return json_answer(200, kind, &response["json"]);
                }
                let aid: i64 = aid.parse().unwrap();
                let fixture = repo().join("tests/fixtures").join(&self.annot(aid).fixture);
                return (
                    [("content-type", kind.to_string())],
                    std::fs::read(fixture).unwrap(),
                )
                    .into_response();
            }
        }
        let matched = self.entries().find(|e| {
            let r = &e["request"];
            r["method"] == req.method().as_str()
                && r["path"] == path.as_str()
                && same_query(&r["query"], &query)
                && r["form"].is_null()
                && r["body"].is_null()
        });
        match matched {
            Some(e) if e["response"]["json"].is_object() || e["response"]["json"].is_array() => {
                let response = &e["response"];
                json_answer(
                    response["status"].as_u64().unwrap() as u16,
                    response["content_type"].as_str().unwrap(),
                    &response["json"],
                )
            }
            _ => (
                axum::http::StatusCode::from_u16(599).unwrap(),
                format!("no recorded answer for {} {}", req.method(), req.uri()),
            )
                .into_response(),
        }
    }
}

/// UUIDs of a recorded or sent `annot_uuid_list` (fancy or plain).
fn uuid_list(v: &Value) -> Vec<Uuid> {
    let list: Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| wbia_client::uuid_from_value(u).unwrap())
        .collect()
}

/// Whether a request's query equals a recorded one, each value compared as JSON when it
/// parses as JSON (so `[1,6]` equals `[1, 6]`).
fn same_query(recorded: &Value, sent: &HashMap<String, String>) -> bool {
    let recorded: HashMap<String, String> = match recorded {
        Value::Null => HashMap::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
        _ => return false,
    };
    let as_json = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.into()));
    recorded.len() == sent.len()
        && recorded
            .iter()
            .all(|(k, v)| sent.get(k).is_some_and(|s| as_json(s) == as_json(v)))
}

fn json_answer(status: u16, content_type: &str, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Serves the replay on loopback; its base URL.
pub async fn serve(replay: Arc<Replay>) -> (String, Arc<Replay>) {
    let app = Router::new()
        .fallback(|State(r): State<Arc<Replay>>, req: Request| async move { r.answer(&req) })
        .with_state(replay.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), replay)
}
