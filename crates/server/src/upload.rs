//! `POST /api/lightglue/match/`: two images matched under a configuration and answered as a
//! match picture (PNG) or as the matches (JSON). The images are uploaded (for looking at what
//! LightGlue sees in two photos without registering them in WBIA; nothing is cached or
//! stored), or are two annotations' chips from WBIA, named by UUID (what a query of one
//! against the other matches, with its features and score cached and stored as usual).

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use wbia_lightglue_model::{render, RgbImage};

use crate::envelope::{self, ApiError};
use crate::AppState;

/// Largest upload accepted (both images and the other fields together).
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// Height of the picture (smaller images are not enlarged).
const PICTURE_HEIGHT: usize = 720;

/// What the JSON form answers.
#[derive(Serialize, ToSchema)]
pub struct UploadMatch {
    /// Sum of match confidences, as identification scores a pair.
    #[serde(serialize_with = "crate::schema::shortest")]
    pub score: f32,
    /// P(same individual) from the configuration's calibration; null without one.
    pub calibrated_score: Option<f64>,
    /// Keypoints of image0 and image1.
    pub num_keypoints: [usize; 2],
    /// Index pairs (image0 keypoint, image1 keypoint).
    pub matches: Vec<[usize; 2]>,
    /// Confidence of each match.
    pub match_scores: Vec<f32>,
    /// Each match's two keypoints, `[[x0, y0], [x1, y1]]` in the images' (or chips') pixels.
    pub match_keypoints: Vec<[[f32; 2]; 2]>,
    /// Transformer layers run (adaptive depth).
    pub stop_layer: usize,
}

/// The fields of the upload.
#[derive(Default)]
struct Upload {
    images: [Option<Bytes>; 2],
    annotations: [Option<Uuid>; 2],
    config_path: Option<String>,
    format: Option<String>,
}

/// What is matched: two uploaded images, or two annotations' chips.
enum Sides {
    Images([(String, Bytes); 2]),
    Annotations([Uuid; 2]),
}

impl Upload {
    /// Both sides of one kind.
    fn sides(&mut self) -> Result<Sides, ApiError> {
        let missing = |name: &str| ApiError::bad_request(format!("missing field {name}"));
        match (&mut self.images, self.annotations) {
            ([None, None], [Some(a), Some(b)]) => Ok(Sides::Annotations([a, b])),
            ([image0, image1], [None, None]) => Ok(Sides::Images([
                (
                    "image0".to_string(),
                    image0.take().ok_or_else(|| missing("image0"))?,
                ),
                (
                    "image1".to_string(),
                    image1.take().ok_or_else(|| missing("image1"))?,
                ),
            ])),
            ([None, None], _) => Err(ApiError::bad_request(
                "give both annot_uuid_0 and annot_uuid_1 (or image0 and image1)",
            )),
            _ => Err(ApiError::bad_request(
                "give two images (image0, image1) or two annotations (annot_uuid_0, \
                 annot_uuid_1), not both",
            )),
        }
    }
}

async fn read(mut multipart: Multipart) -> Result<Upload, ApiError> {
    let mut upload = Upload::default();
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image0" | "image1" => {
                let slot = &mut upload.images[usize::from(name == "image1")];
                if slot.is_some() {
                    return Err(ApiError::bad_request(format!("{name} given twice")));
                }
                *slot = Some(field.bytes().await?);
            }
            "annot_uuid_0" | "annot_uuid_1" => {
                let slot = &mut upload.annotations[usize::from(name == "annot_uuid_1")];
                if slot.is_some() {
                    return Err(ApiError::bad_request(format!("{name} given twice")));
                }
                let text = field.text().await?;
                let uuid = Uuid::parse_str(text.trim()).map_err(|e| {
                    let shown: String = text.chars().take(64).collect();
                    ApiError::bad_request(format!("{name} {shown:?} is not a UUID: {e}"))
                })?;
                *slot = Some(uuid);
            }
            "config_path" => upload.config_path = Some(field.text().await?),
            "format" => upload.format = Some(field.text().await?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field {other:?} (expected image0 and image1, or annot_uuid_0 and \
                     annot_uuid_1; config_path, format)"
                )))
            }
        }
    }
    Ok(upload)
}

#[utoipa::path(
    post,
    path = "/api/lightglue/match/",
    tag = "query",
    request_body(
        content_type = "multipart/form-data",
        description = "`image0`, `image1`: JPEG or PNG files (64 MiB in all at most), or `annot_uuid_0`, `annot_uuid_1`: two annotations whose chips come from WBIA (the first as the query); `config_path`: a configuration in the config directory (default config.json); `format`: `png` (default) or `json`"
    ),
    responses(
        (status = 200, description = "`png`: image0 and image1 side by side (at most 720 px high), a line per match coloured by confidence (red 0, yellow 0.5, green 1), the score written on it; headers `x-lightglue-score` and `x-lightglue-matches`. `json`: the matches in the envelope", content_type = "image/png"),
        (status = 400, description = "a missing image or annotation, images and annotations mixed, an unknown field or format, a bad config_path", body = crate::schema::ErrorResponse),
        (status = 413, description = "upload larger than 64 MiB"),
        (status = 422, description = "an image that cannot be decoded (named)", body = crate::schema::ErrorResponse),
        (status = 429, description = "busy", body = crate::schema::ErrorResponse),
        (status = 502, description = "WBIA unreachable or failing for a chip", body = crate::schema::ErrorResponse),
        (status = 600, description = "annotation UUIDs unknown to WBIA", body = crate::schema::ErrorResponse),
    )
)]
pub async fn match_upload(
    State(state): State<Arc<AppState>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return ApiError::bad_request(format!("expected a multipart/form-data body: {e}"))
                .into_response()
        }
    };
    match answer(&state, multipart).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn answer(state: &AppState, multipart: Multipart) -> Result<Response, ApiError> {
    let mut upload = read(multipart).await?;
    let json = match upload.format.as_deref().map(str::trim) {
        None | Some("") | Some("png") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not png or json"
            )))
        }
    };
    let sides = upload.sides()?;
    let config = state.configs.load(upload.config_path.as_deref())?;
    let (pair, pixels) = match sides {
        Sides::Images(images) => {
            let (pair, pixels) = state.engine().match_images(images, &config).await?;
            (pair, Pixels::Decoded(pixels))
        }
        Sides::Annotations([a, b]) => {
            let chips = state.identifier.chip_pair(a, b).await?;
            let pair = state.identifier.match_chip_pair(&chips, &config).await?;
            (pair, Pixels::Chips(chips.chips, [a, b]))
        }
    };
    let score = pair.result.score();
    if json {
        return Ok(envelope::ok(
            serde_json::to_value(UploadMatch {
                score,
                calibrated_score: config.calibration.as_ref().map(|c| c.probability(score)),
                num_keypoints: [pair.query.len(), pair.database.len()],
                matches: pair.result.matches.iter().map(|&[i, j]| [i, j]).collect(),
                match_scores: pair.result.scores.clone(),
                match_keypoints: pair
                    .result
                    .matches
                    .iter()
                    .map(|&[i, j]| [pair.query.keypoints[i], pair.database.keypoints[j]])
                    .collect(),
                stop_layer: pair.result.stop_layer,
            })
            .unwrap_or_default(),
        ));
    }
    let matches = pair.result.matches.len();
    let png = tokio::task::spawn_blocking(move || {
        let [left, right] = pixels.decoded()?;
        let drawn = render::draw_matches(
            &left,
            &pair.query,
            &right,
            &pair.database,
            &pair.result,
            PICTURE_HEIGHT,
        )
        .and_then(|picture| render::encode_png(&picture));
        drawn.map_err(|e| ApiError::internal(e.to_string()))
    })
    .await??;
    Ok((
        [
            ("content-type", "image/png".to_string()),
            ("x-lightglue-score", score.to_string()),
            ("x-lightglue-matches", matches.to_string()),
        ],
        png,
    )
        .into_response())
}

/// The two images to draw on: decoded already (uploads), or two annotations' chips, decoded
/// only when drawn (their features may have come from the cache without decoding them).
enum Pixels {
    Decoded([RgbImage; 2]),
    Chips([wbia_lightglue_engine::Chip; 2], [Uuid; 2]),
}

impl Pixels {
    /// An undecodable chip is named as an undecodable upload is (422).
    fn decoded(self) -> Result<[RgbImage; 2], wbia_lightglue_engine::Error> {
        match self {
            Self::Decoded(images) => Ok(images),
            Self::Chips([a, b], [ua, ub]) => {
                let decode = |chip: wbia_lightglue_engine::Chip, uuid: Uuid| {
                    chip.pixels()
                        .map_err(|source| wbia_lightglue_engine::Error::Image {
                            name: format!("the chip of annotation {uuid}"),
                            source,
                        })
                };
                Ok([decode(a, ua)?, decode(b, ub)?])
            }
        }
    }
}
