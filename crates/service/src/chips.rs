//! Chips: made here from WBIA's image files, as WBIA makes the chips the plugin scores, or
//! downloaded from WBIA (its JPEG re-encodes) where the files cannot be read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use uuid::Uuid;
use wbia_client::WbiaClient;
use wbia_lightglue_engine::{Chip, ChipPixels, ChipSource, SourceError, WbiaChip};

use crate::Annotation;

/// Where chips come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChipMode {
    /// From WBIA's image files where they can be read here, else downloaded.
    #[default]
    Auto,
    /// Only from WBIA's image files: an annotation whose file cannot be read has no chip.
    ImageFiles,
    /// Always downloaded from WBIA (`/api/annot/src/`: JPEG re-encodes of its chips).
    Download,
}

impl FromStr for ChipMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "image-files" => Ok(Self::ImageFiles),
            "download" => Ok(Self::Download),
            other => Err(format!(
                "{other:?} is not a chip source (auto, image-files, download)"
            )),
        }
    }
}

/// WBIA's image paths as seen here: the prefix WBIA answers replaced by where its database is
/// mounted (`/data/db=/wbia-db`, say); paths without the prefix are used as they are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathMap {
    pub wbia: String,
    pub local: PathBuf,
}

impl FromStr for PathMap {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((wbia, local)) if !wbia.is_empty() && !local.is_empty() => Ok(Self {
                wbia: wbia.to_string(),
                local: PathBuf::from(local),
            }),
            _ => Err(format!(
                "{s:?} is not WBIA_PREFIX=LOCAL_PREFIX (e.g. /data/db=/wbia-db)"
            )),
        }
    }
}

/// How chips are had.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChipOptions {
    pub mode: ChipMode,
    pub path_map: Option<PathMap>,
    /// Largest image file read for a chip (a camera JPEG is a few MB).
    pub max_image_bytes: u64,
}

impl Default for ChipOptions {
    fn default() -> Self {
        Self {
            mode: ChipMode::default(),
            path_map: None,
            max_image_bytes: 256 << 20,
        }
    }
}

impl ChipOptions {
    /// Where WBIA's `path` is here.
    pub fn local_path(&self, path: &str) -> PathBuf {
        if let Some(map) = &self.path_map {
            if let Some(rest) = path.strip_prefix(map.wbia.as_str()) {
                // Only at a component boundary: `/data/db` does not map `/data/dbx/…`.
                if rest.is_empty() || rest.starts_with('/') || map.wbia.ends_with('/') {
                    return map.local.join(rest.trim_start_matches('/'));
                }
            }
        }
        PathBuf::from(path)
    }
}

/// Counters of where chips came from.
#[derive(Debug, Default)]
pub struct ChipStats {
    /// Annotations whose chip is made here from WBIA's image file.
    pub from_images: AtomicU64,
    /// Annotations whose image file could not be read here (downloaded instead in `auto`).
    pub unreadable: AtomicU64,
    last_unreadable: Mutex<Option<String>>,
    warned: AtomicBool,
}

impl ChipStats {
    pub(crate) fn made_from_image(&self) {
        self.from_images.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fell_back(&self, annotations: u64, reason: &str) {
        self.unreadable.fetch_add(annotations, Ordering::Relaxed);
        if let Ok(mut last) = self.last_unreadable.lock() {
            *last = Some(reason.to_string());
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                "WBIA's image files cannot be read here: such chips are downloaded from WBIA \
                 (JPEG re-encodes, scores differ from the plugin's); mount WBIA's database \
                 read-only, with --wbia-path-map if the mount point differs (said once)"
            );
        }
    }

    /// Why the last image file could not be read, if one could not.
    pub fn last_unreadable(&self) -> Option<String> {
        self.last_unreadable.lock().ok().and_then(|l| l.clone())
    }
}

/// WBIA's image file for an annotation and the orientation WBIA stored for the image.
#[derive(Clone, Debug)]
pub(crate) struct ImageFile {
    pub(crate) path: PathBuf,
    pub(crate) orientation: i64,
}

/// How one annotation's chip is had.
struct Source {
    aid: i64,
    chip: Option<WbiaChip>,
    file: Option<ImageFile>,
}

/// The engine's chip source over resolved annotations.
pub struct WbiaChips {
    client: WbiaClient,
    max_image_bytes: u64,
    annots: HashMap<Uuid, Source>,
}

impl WbiaChips {
    pub(crate) fn new(client: &WbiaClient, options: &ChipOptions, annots: &[Annotation]) -> Self {
        Self {
            client: client.clone(),
            max_image_bytes: options.max_image_bytes,
            annots: annots
                .iter()
                .map(|a| {
                    let source = Source {
                        aid: a.aid,
                        chip: a.chip.clone(),
                        file: a.file.clone(),
                    };
                    (a.uuid, source)
                })
                .collect(),
        }
    }
}

impl ChipSource for WbiaChips {
    async fn chip(&self, annot: Uuid) -> Result<Chip, SourceError> {
        let source = self.annots.get(&annot).ok_or(SourceError::Unknown)?;
        match (&source.chip, &source.file) {
            (Some(chip), Some(file)) => {
                let bytes = read_capped(&file.path, self.max_image_bytes).await?;
                Ok(Chip::FromImage {
                    file: bytes,
                    orientation: file.orientation,
                    bbox: chip.bbox,
                    theta: chip.theta,
                })
            }
            (Some(chip), None) if chip.pixels == ChipPixels::FromImage => Err(
                SourceError::ImageFile("WBIA's image file cannot be read here".into()),
            ),
            _ => self
                .client
                .chip_by_aid(annot, source.aid)
                .await
                .map(Chip::Encoded)
                .map_err(source_error),
        }
    }
}

async fn read_capped(path: &Path, limit: u64) -> Result<Bytes, SourceError> {
    let unreadable = |e: std::io::Error| SourceError::ImageFile(format!("{}: {e}", path.display()));
    let size = tokio::fs::metadata(path).await.map_err(unreadable)?.len();
    if size > limit {
        return Err(SourceError::TooLarge(format!(
            "{} holds {size} bytes, more than {limit}",
            path.display()
        )));
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(unreadable)
}

/// The engine's terms for what went wrong downloading a chip.
fn source_error(e: wbia_client::Error) -> SourceError {
    use wbia_client::Error as E;
    match e {
        E::Timeout { .. } => SourceError::Timeout(e.to_string()),
        E::Unreachable { .. } => SourceError::Unreachable(e.to_string()),
        E::Status { url, status, .. } => SourceError::Status { url, status },
        E::TooLarge { .. } => SourceError::TooLarge(e.to_string()),
        E::Wbia { message, .. } => SourceError::Refused(message),
        other => SourceError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_at_component_boundaries() {
        let options = ChipOptions {
            path_map: Some("/data/db=/wbia-db".parse().unwrap()),
            ..ChipOptions::default()
        };
        let local = |p: &str| options.local_path(p);
        assert_eq!(
            local("/data/db/_ibsdb/images/a.jpg"),
            Path::new("/wbia-db/_ibsdb/images/a.jpg")
        );
        assert_eq!(local("/data/dbx/a.jpg"), Path::new("/data/dbx/a.jpg"));
        assert_eq!(local("/elsewhere/a.jpg"), Path::new("/elsewhere/a.jpg"));
        assert!("nothing".parse::<PathMap>().is_err());
        assert!("=/x".parse::<PathMap>().is_err());
        assert_eq!("download".parse::<ChipMode>(), Ok(ChipMode::Download));
        assert!("jpeg".parse::<ChipMode>().is_err());
    }
}
