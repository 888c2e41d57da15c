//! One lookup of a request's annotations in WBIA.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;
use wbia_client::WbiaClient;
use wbia_lightglue_engine::{Annot, ChipPixels, WbiaChip};

use crate::chips::{ChipMode, ChipOptions, ChipStats, ImageFile, WbiaChips};
use crate::{Error, Result};

/// An annotation as WBIA describes it.
#[derive(Clone, Debug)]
pub struct Annotation {
    pub uuid: Uuid,
    /// WBIA's rowid (`aid`): chips are downloaded by it.
    pub aid: i64,
    /// `None` when unnamed (`____`).
    pub name: Option<String>,
    /// What the chip is (image UUID, bbox, theta) and where its pixels come from; `None` when
    /// WBIA gave no identity (features are then keyed by the chip's bytes).
    pub chip: Option<WbiaChip>,
    /// WBIA's image file for it, readable here, when its chip is made from it.
    pub(crate) file: Option<ImageFile>,
}

impl Annotation {
    /// The engine's view: the UUID and the chip identity.
    pub fn annot(&self) -> Annot {
        Annot {
            uuid: self.uuid,
            chip: self.chip.clone(),
        }
    }
}

/// WBIA's annotations and their chips, as this service reaches them.
#[derive(Clone)]
pub struct Annotations {
    client: WbiaClient,
    options: ChipOptions,
    stats: Arc<ChipStats>,
}

impl Annotations {
    pub fn new(client: WbiaClient, options: ChipOptions) -> Self {
        Self {
            client,
            options,
            stats: Arc::default(),
        }
    }

    pub fn options(&self) -> &ChipOptions {
        &self.options
    }

    /// Counters of where chips came from, for `/metrics` and `/info`.
    pub fn stats(&self) -> &ChipStats {
        &self.stats
    }

    /// Every annotation of `uuids` (in that order): rowid, name, chip identity and, unless
    /// chips are downloaded, WBIA's image file and the orientation WBIA stored for it. All
    /// UUIDs WBIA does not know are reported at once ([`Error::UnknownAnnotations`]).
    /// Without the identity getters (or for an annotation lacking an image) a chip is
    /// downloaded and keyed by its bytes.
    pub async fn resolve(&self, uuids: &[Uuid]) -> Result<Vec<Annotation>> {
        let aids = self.known_aids(uuids).await?;
        let names = self.client.annot_names(uuids).await?;
        let identities = match self.client.annot_chip_identities(uuids).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "WBIA gave no chip identities; keying features by chip bytes");
                vec![None; uuids.len()]
            }
        };
        let files = match self.options.mode {
            ChipMode::Download => vec![None; uuids.len()],
            ChipMode::Auto | ChipMode::ImageFiles => self.image_files(uuids, &identities).await,
        };
        Ok(uuids
            .iter()
            .zip(aids.into_iter().flatten())
            .zip(names)
            .zip(identities)
            .zip(files)
            .map(|((((&uuid, aid), name), identity), file)| {
                let pixels = match (self.options.mode, &file) {
                    (ChipMode::Download, _) | (ChipMode::Auto, None) => ChipPixels::Downloaded,
                    (ChipMode::ImageFiles, _) | (ChipMode::Auto, Some(_)) => ChipPixels::FromImage,
                };
                let chip = identity.map(|(image, bbox, theta)| WbiaChip {
                    image,
                    bbox,
                    theta,
                    pixels,
                });
                Annotation {
                    uuid,
                    aid,
                    name,
                    // A chip made from the file needs its bbox and theta.
                    file: file.filter(|_| chip.is_some()),
                    chip,
                }
            })
            .collect())
    }

    /// WBIA's image file of each annotation that has a chip identity, where it can be read
    /// here (after the path map), with its stored orientation. What cannot be had is `None`,
    /// counted and, the first time, logged.
    async fn image_files(
        &self,
        uuids: &[Uuid],
        identities: &[Option<(Uuid, [i64; 4], f64)>],
    ) -> Vec<Option<ImageFile>> {
        let fallback = |reason: String| {
            self.stats.fell_back(uuids.len() as u64, &reason);
            vec![None; uuids.len()]
        };
        let paths = match self.client.annot_image_paths(uuids).await {
            Ok(paths) => paths,
            Err(e) => return fallback(format!("WBIA did not give image paths: {e}")),
        };
        let mut images: Vec<Uuid> = identities.iter().flatten().map(|id| id.0).collect();
        images.sort();
        images.dedup();
        let orientations = match self.client.image_orientations(&images).await {
            Ok(o) => o,
            Err(e) => return fallback(format!("WBIA did not give image orientations: {e}")),
        };
        let orientation: HashMap<Uuid, i64> = images
            .into_iter()
            .zip(orientations)
            .filter_map(|(image, o)| Some((image, o?)))
            .collect();
        let wanted: Vec<Option<(PathBuf, i64)>> = paths
            .iter()
            .zip(identities)
            .map(|(path, identity)| {
                let path = self.options.local_path(path.as_deref()?);
                Some((path, *orientation.get(&identity.as_ref()?.0)?))
            })
            .collect();
        // One blocking task looks at every file (a species holds tens of thousands).
        let checked = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|w| {
                    let (path, orientation) = w?;
                    match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => Some(Ok(ImageFile { path, orientation })),
                        Ok(_) => Some(Err(format!("{} is not a file", path.display()))),
                        Err(e) => Some(Err(format!("{}: {e}", path.display()))),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut files = Vec::with_capacity(uuids.len());
        for found in checked {
            match found {
                Some(Ok(file)) => {
                    self.stats.made_from_image();
                    files.push(Some(file));
                }
                Some(Err(reason)) => {
                    self.stats.fell_back(1, &reason);
                    files.push(None);
                }
                None => {
                    self.stats
                        .fell_back(1, "WBIA gave no image file for an annotation");
                    files.push(None);
                }
            }
        }
        files.resize_with(uuids.len(), || None);
        files
    }

    /// Refuses `uuids` before any work when WBIA does not know some of them, as WBIA's
    /// `web_check_uuids` does ([`Error::UnknownAnnotations`]).
    pub async fn check_known(&self, uuids: &[Uuid]) -> Result<()> {
        self.known_aids(uuids).await.map(drop)
    }

    /// The rowid of each of `uuids`, or every unknown one at once, each once, in order.
    async fn known_aids(&self, uuids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let aids = self.client.annot_aids(uuids).await?;
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<Uuid> = uuids
            .iter()
            .zip(&aids)
            .filter(|(u, aid)| aid.is_none() && seen.insert(**u))
            .map(|(u, _)| *u)
            .collect();
        if missing.is_empty() {
            Ok(aids)
        } else {
            Err(Error::UnknownAnnotations(missing))
        }
    }

    /// The annotation whose rowid is `aid` (WBIA's GET form of chip/best names its query so).
    pub async fn by_rowid(&self, aid: i64) -> Result<Uuid> {
        let found = self
            .client
            .annot_uuids_by_aid(&[aid])
            .await?
            .pop()
            .flatten();
        found.ok_or(Error::UnknownRowid(aid))
    }

    /// Every annotation WBIA holds but `query`.
    pub async fn all_but(&self, query: Uuid) -> Result<Vec<Uuid>> {
        let mut all = self.client.all_annot_uuids().await?;
        all.retain(|u| *u != query);
        Ok(all)
    }

    /// Every annotation WBIA holds of `query`'s species, `query` excluded: an engine job's
    /// database when it names none, as in WBIA.
    pub async fn same_species(&self, query: Uuid) -> Result<Vec<Uuid>> {
        let species = self.client.annot_species(&[query]).await?.pop().flatten();
        let species = species.ok_or(Error::NoSpecies(query))?;
        let others = self.all_but(query).await?;
        let species_of = self.client.annot_species(&others).await?;
        let database: Vec<Uuid> = others
            .into_iter()
            .zip(species_of)
            .filter(|(_, s)| s.as_deref() == Some(species.as_str()))
            .map(|(u, _)| u)
            .collect();
        tracing::info!(%query, %species, annotations = database.len(), "species-wide database");
        Ok(database)
    }

    /// WBIA's name rowid of each annotation (a job result's name ids); `None` where WBIA
    /// gives none.
    pub async fn name_rowids(&self, uuids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        Ok(self.client.annot_name_rowids(uuids).await?)
    }

    /// WBIA's sex text of one annotation (`None` when it has none).
    pub async fn sex(&self, uuid: Uuid) -> Result<Option<String>> {
        Ok(self.client.annot_sex_texts(&[uuid]).await?.pop().flatten())
    }

    /// The smallest lower bound of age in months over `uuids`, WBIA's "unknown" (-1)
    /// included; `None` when none has one.
    pub async fn min_age_months(&self, uuids: &[Uuid]) -> Result<Option<i64>> {
        let ages = self.client.annot_age_months_min(uuids).await?;
        Ok(ages.into_iter().flatten().min())
    }

    /// A chip source for the engine over `annots`.
    pub fn chips(&self, annots: &[Annotation]) -> WbiaChips {
        WbiaChips::new(&self.client, &self.options, annots)
    }
}
