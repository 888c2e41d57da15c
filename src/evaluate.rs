//! `wbia-lightglue evaluate`: 1-vs-all CMC and mAP over a labelled image folder (CSV) or over
//! annotations fetched from WBIA by UUID, through the engine's pipeline (the service's
//! decoding, model worker, cache and optional store).

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wbia_lightglue_engine::evaluate::{
    check_calibration, evaluate, labelled_pairs, ranking, CalibrationCheck, Evaluation,
    ScoreSummary,
};
use wbia_lightglue_engine::{
    Annot, Calibration, Chip, ChipSource, Config, Engine, EngineOptions, Error as EngineError,
    Fusion, MemberScores, Progress, SourceError, WbiaChip,
};
use wbia_lightglue_model::{render, weights, Rotation};
use wbia_lightglue_service::{Annotations, ChipOptions};

use crate::{MatcherArgs, ModelArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    /// CSV with a header row and columns `path` (relative to the CSV's folder) and `identity`.
    #[arg(long, conflicts_with = "uuids")]
    csv: Option<PathBuf>,
    /// Compare each query only with images sharing this column's value (e.g. side, viewpoint).
    #[arg(long)]
    group_column: Option<String>,
    /// File with one annotation UUID per line, fetched from `--wbia-url`; identities are the
    /// WBIA names (unnamed annotations are left out).
    #[arg(long, requires = "wbia_url")]
    uuids: Option<PathBuf>,
    #[arg(long, env = "WBIA_URL")]
    wbia_url: Option<String>,
    /// Persist features and pair scores here (SQLite, as `serve`), so that a later run over
    /// the same images extracts and matches nothing again.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Read the settings from this configuration file (the service's JSON: `model_name`,
    /// thresholds, `rotation_sweep`, `calibration`, an ensemble's `fusion` and
    /// `member_calibrations`) instead of the model and matcher flags. With a calibration in
    /// it, the calibrated scores are checked on this set (unless `--calibrate` refits the
    /// member calibrations: they change the scores that calibration maps).
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    /// Also match each query turned by 90°, 180° and 270° and keep each pair's best score.
    #[arg(long)]
    rotation_sweep: bool,
    /// Fit a calibration (raw score → probability of the same identity) on this set's pairs
    /// and write the configuration with it to this file, for the service's configuration
    /// directory. For an ensemble with `"fusion": "log_odds"`, each member's calibration is
    /// fitted too, on its own scores (`member_calibrations`, what that rule weighs members
    /// by; such a configuration may come without them here).
    #[arg(long, value_name = "OUT.json")]
    calibrate: Option<PathBuf>,
    /// Write every comparable pair to this CSV: both images, whether they are the same
    /// identity, the score and, for an ensemble, each member's score (for studying fusion
    /// rules and thresholds outside this tool).
    #[arg(long, value_name = "OUT.csv")]
    pairs: Option<PathBuf>,
    /// For each query whose best candidate is another identity, save a picture of its top
    /// candidates (matches drawn), and of its best same-identity candidate below them, in
    /// this folder.
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,
    /// Candidates per `--png` picture.
    #[arg(long, default_value_t = 3, requires = "png")]
    png_candidates: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    matcher: MatcherArgs,
}

struct Item {
    label: String,
    identity: String,
    group: Option<String>,
    /// Key of the item in the engine (its chip comes from [`EvalChips`]).
    uuid: Uuid,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Where evaluation chips come from: image files (CSV), or WBIA (made from its image files
/// where they can be read here, as the service makes them, else downloaded).
struct EvalChips {
    files: HashMap<Uuid, PathBuf>,
    wbia: Option<wbia_lightglue_service::WbiaChips>,
    /// WBIA's chip identities, so that a chip is had once, not once per pair.
    identities: HashMap<Uuid, WbiaChip>,
}

impl ChipSource for EvalChips {
    async fn chip(&self, annot: Uuid) -> std::result::Result<Chip, SourceError> {
        if let Some(path) = self.files.get(&annot).cloned() {
            let read = tokio::task::spawn_blocking(move || {
                std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
            });
            return match read.await {
                Ok(Ok(bytes)) => Ok(Chip::Encoded(Bytes::from(bytes))),
                Ok(Err(e)) => Err(SourceError::Other(e)),
                Err(e) => Err(SourceError::Other(e.to_string())),
            };
        }
        match &self.wbia {
            Some(chips) => chips.chip(annot).await,
            None => Err(SourceError::Unknown),
        }
    }
}

/// A stable key for an image file: its canonical path's SHA-256, as a UUID (so a `--data-dir`
/// store recognises the file in a later run, from any working directory).
fn file_uuid(path: &Path) -> Uuid {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let digest = Sha256::digest(path.to_string_lossy().as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Reads a simple CSV (no quoted fields); images are checked to exist, decoded later.
fn read_csv(path: &Path, group_column: Option<&str>) -> Result<(Vec<Item>, EvalChips)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (p, id) = match (col("path"), col("identity")) {
        (Some(p), Some(i)) => (p, i),
        _ => bail!(
            "{}: the header needs `path` and `identity` columns, got {header:?}",
            path.display()
        ),
    };
    let group = match group_column {
        Some(g) => Some(col(g).with_context(|| format!("no column {g:?} in {header:?}"))?),
        None => None,
    };
    let root = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    let mut files = HashMap::new();
    for (n, line) in lines.enumerate() {
        if line.contains('"') {
            bail!(
                "{} line {}: quoted fields are not supported",
                path.display(),
                n + 2
            );
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| -> Result<String> {
            fields.get(i).map(|s| s.to_string()).with_context(|| {
                format!(
                    "{} line {}: missing column {}",
                    path.display(),
                    n + 2,
                    header[i]
                )
            })
        };
        let rel = field(p)?;
        let file = root.join(&rel);
        if !file.is_file() {
            bail!("image {rel}: no such file under {}", root.display());
        }
        let uuid = file_uuid(&file);
        if files.insert(uuid, file).is_some() {
            bail!("{} line {}: {rel} is listed twice", path.display(), n + 2);
        }
        items.push(Item {
            label: rel,
            identity: field(id)?,
            group: group.map(&field).transpose()?,
            uuid,
        });
    }
    let chips = EvalChips {
        files,
        wbia: None,
        identities: HashMap::new(),
    };
    Ok((items, chips))
}

async fn read_wbia(uuids: &Path, url: &str) -> Result<(Vec<Item>, EvalChips)> {
    let text =
        std::fs::read_to_string(uuids).with_context(|| format!("reading {}", uuids.display()))?;
    let list: Vec<Uuid> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| Uuid::parse_str(l).with_context(|| format!("not a UUID: {l}")))
        .collect::<Result<_>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = list.iter().find(|u| !seen.insert(**u)) {
        bail!("{}: annotation {dup} is listed twice", uuids.display());
    }
    let client = wbia_client::WbiaClient::new(url, Default::default())?;
    let annotations = Annotations::new(client, ChipOptions::default());
    let resolved = match annotations.resolve(&list).await {
        Ok(resolved) => resolved,
        Err(wbia_lightglue_service::Error::UnknownAnnotations(missing)) => {
            bail!("annotation {} is not known to WBIA at {url}", missing[0])
        }
        Err(e) => return Err(e.into()),
    };
    let mut items = Vec::new();
    for a in &resolved {
        // Unnamed annotations have no identity to score against.
        let Some(identity) = a.name.clone() else {
            continue;
        };
        items.push(Item {
            label: a.uuid.to_string(),
            identity,
            group: None,
            uuid: a.uuid,
        });
    }
    let chips = EvalChips {
        files: HashMap::new(),
        wbia: Some(annotations.chips(&resolved)),
        // Without WBIA's identity getters, chips are keyed by their bytes.
        identities: resolved
            .iter()
            .filter_map(|a| Some((a.uuid, a.chip.clone()?)))
            .collect(),
    };
    Ok((items, chips))
}

pub fn run(args: &EvaluateArgs) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run_async(args))
}

/// Every comparable pair scored once (swapping the images moves the score by < 4e-6
/// relative), through the engine's pipeline: the same decoding, cache and (with
/// `--data-dir`) store as the service, chips streamed rather than all held in memory.
async fn run_async(args: &EvaluateArgs) -> Result<()> {
    let (items, chips) = match (&args.csv, &args.uuids, &args.wbia_url) {
        (Some(csv), _, _) => read_csv(csv, args.group_column.as_deref())?,
        (None, Some(uuids), Some(url)) => read_wbia(uuids, url).await?,
        _ => bail!("give --csv FILE, or --uuids FILE with --wbia-url URL"),
    };
    if items.len() < 2 {
        bail!("need at least two labelled images, got {}", items.len());
    }
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let source = path.display().to_string();
            if args.calibrate.is_some() {
                Config::from_json_to_calibrate(&text, &source)?
            } else {
                Config::from_json(&text, &source)?
            }
        }
        None => {
            let lg = args.matcher.options();
            Config {
                model_name: args.model.model_name.as_str().into(),
                max_num_keypoints: args.model.max_keypoints,
                detection_threshold: as_written(args.model.detection_threshold),
                image_size: args.model.image_size,
                depth_confidence: as_written(lg.depth_confidence),
                width_confidence: as_written(lg.width_confidence),
                filter_threshold: as_written(lg.filter_threshold),
                ..Config::default()
            }
        }
    };
    config.rotation_sweep |= args.rotation_sweep;
    // The engine fuses by `config`; an ensemble's fused scores are recomputed below from
    // the members' once `--calibrate` has fitted their calibrations, so it is asked for
    // plain sums until then.
    let members_fitted_here = args.calibrate.is_some() && config.model_name.is_ensemble();
    let scoring_config = if members_fitted_here {
        config.summing_members()
    } else {
        config.clone()
    };
    scoring_config.validate()?;
    // Weights are looked for now, so that a missing file is named before any work.
    let mut descriptor_dims = 0;
    for member in config.members() {
        let arch = member.aliked_variant()?;
        weights::find_weights(args.model.weights.as_deref(), arch.weights_file)?;
        descriptor_dims += arch.dim;
    }
    weights::find_weights(args.model.weights.as_deref(), weights::LIGHTGLUE_FILE)?;
    if let Some(dir) = &args.png {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let device = args.model.runtime.open()?;
    let n = items.len();
    // Every feature set stays in memory (each is needed against every later item): ~1.1 MB
    // at 2,048 keypoints, per ensemble member.
    let members = config.model_name.names().len();
    let per_keypoint = (2 + 1) * 4 * members + descriptor_dims * 4;
    let keypoints = usize::try_from(config.max_num_keypoints).unwrap_or(20_000);
    let engine = Engine::start(EngineOptions {
        weights_dir: args.model.weights.clone(),
        data_dir: args.data_dir.clone(),
        device,
        precision: args.model.runtime.precision,
        max_pending_pairs: usize::MAX,
        cache_capacity: (n * members).max(1),
        cache_bytes: (n * (keypoints * per_keypoint + 256 * members)).max(1 << 20),
        ..EngineOptions::default()
    })?;

    let comparable = |i: usize, j: usize| items[i].group == items[j].group;
    let later: Vec<Vec<usize>> = (0..n)
        .map(|i| (i + 1..n).filter(|&j| comparable(i, j)).collect())
        .collect();
    let pairs: usize = later.iter().map(Vec::len).sum();
    let ticket = engine.admit(pairs)?;
    let annot = |i: usize| Annot {
        uuid: items[i].uuid,
        chip: chips.identities.get(&items[i].uuid).cloned(),
    };
    let label = |e: EngineError| -> anyhow::Error {
        let uuid = match &e {
            EngineError::Annotation { uuid, .. } | EngineError::Source { uuid, .. } => Some(*uuid),
            _ => None,
        };
        match uuid.and_then(|u| items.iter().find(|i| i.uuid == u)) {
            Some(item) => anyhow::Error::new(e).context(format!("image {}", item.label)),
            None => e.into(),
        }
    };
    let progress = bar(pairs, "match");
    let started = std::time::Instant::now();
    let mut scores = vec![vec![0f32; n]; n];
    // An ensemble's member scores per pair (both orders); nothing for a single model.
    let mut member_scores: Vec<Vec<MemberScores>> = if config.model_name.is_ensemble() {
        vec![vec![MemberScores::default(); n]; n]
    } else {
        Vec::new()
    };
    // The query turn that gave each score, as seen from the row's item.
    let mut turns = vec![vec![Rotation::None; n]; n];
    for (i, others) in later.iter().enumerate() {
        if others.is_empty() {
            continue;
        }
        let database: Vec<Annot> = others.iter().map(|&j| annot(j)).collect();
        let got = engine
            .identify_with_rotations(
                &ticket,
                &chips,
                &[annot(i)],
                &database,
                &scoring_config,
                &Progress::default(),
            )
            .await
            .map_err(label)?;
        anyhow::ensure!(
            got[0].len() == others.len(),
            "scores for {} of {} pairs",
            got[0].len(),
            others.len()
        );
        for (&j, s) in others.iter().zip(&got[0]) {
            scores[i][j] = s.score;
            scores[j][i] = s.score;
            if !member_scores.is_empty() {
                member_scores[i][j] = s.members;
                member_scores[j][i] = s.members;
            }
            turns[i][j] = s.rotation;
            // Turning i one way against j is turning j the other way against i.
            turns[j][i] = s.rotation.inverse();
        }
        progress.inc(others.len() as u64);
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let timing = Timing {
        pairs,
        matched: engine
            .cache_stats
            .pairs_matched
            .load(std::sync::atomic::Ordering::Relaxed),
        seconds,
        ms_per_pair: seconds * 1000.0 / pairs.max(1) as f64,
    };

    let identities: Vec<String> = items.iter().map(|i| i.identity.clone()).collect();
    let groups: Option<Vec<String>> = args.group_column.as_ref().map(|_| {
        items
            .iter()
            .map(|i| i.group.clone().unwrap_or_default())
            .collect()
    });
    if members_fitted_here {
        // Only `log_odds` reads member calibrations; other rules keep none they would ignore.
        config.member_calibrations = if config.fusion == Fusion::LogOdds {
            let names = config.model_name.names();
            (0..members)
                .map(|m| {
                    let member: Vec<Vec<f32>> = member_scores
                        .iter()
                        .map(|row| {
                            row.iter()
                                .map(|s| s.as_slice().get(m).copied().unwrap_or(0.0))
                                .collect()
                        })
                        .collect();
                    Calibration::fit(&labelled_pairs(&member, &identities, groups.as_deref()))
                        .with_context(|| format!("calibrating member {}", names[m]))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        config.validate()?;
        for (i, row) in member_scores.iter().enumerate() {
            for (j, members) in row.iter().enumerate() {
                if i != j && comparable(i, j) {
                    scores[i][j] = config.fuse(members.as_slice());
                }
            }
        }
    }
    if let Some(path) = &args.pairs {
        write_pairs(path, &items, &scores, &member_scores, &config)?;
    }
    let result = evaluate(&scores, &identities, groups.as_deref());
    let pairs = labelled_pairs(&scores, &identities, groups.as_deref());
    // Refitted member weights change the fused scores the given calibration was fitted on.
    let reweighted = members_fitted_here && config.fusion == Fusion::LogOdds;
    let checked = config
        .calibration
        .as_ref()
        .filter(|_| !reweighted)
        .map(|c| check_calibration(c, &pairs));
    let fitted = match &args.calibrate {
        Some(out) => {
            let calibration = Calibration::fit(&pairs)?;
            let saved = Config {
                calibration: Some(calibration.clone()),
                ..config.clone()
            };
            std::fs::write(out, serde_json::to_string_pretty(&saved)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("calibration written to {}", out.display());
            Some((calibration.clone(), check_calibration(&calibration, &pairs)))
        }
        None => None,
    };
    if let Some(dir) = &args.png {
        let pictures = Pictures {
            engine: &engine,
            chips: &chips,
            config: &config,
            items: &items,
            annot: &annot,
        };
        let saved = pictures
            .failures(dir, &scores, &turns, groups.as_deref(), args.png_candidates)
            .await?;
        eprintln!("{saved} pictures of failed queries in {}", dir.display());
    }
    let report = Report {
        evaluation: &result,
        calibration_check: checked.as_ref(),
        fitted_calibration: fitted.as_ref().map(|f| &f.0),
        fitted_calibration_check: fitted.as_ref().map(|f| &f.1),
        timing,
    };
    print(&report, args.json)
}

/// `--pairs`: each comparable pair once (in input order), with the members' scores.
fn write_pairs(
    path: &Path,
    items: &[Item],
    scores: &[Vec<f32>],
    member_scores: &[Vec<MemberScores>],
    config: &Config,
) -> Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let names = config.model_name.names();
    let mut header = vec!["query", "candidate", "same_identity", "score"];
    if config.model_name.is_ensemble() {
        header.extend(names.iter().map(String::as_str));
    }
    writeln!(out, "{}", header.join(","))?;
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            if items[i].group != items[j].group {
                continue;
            }
            write!(
                out,
                "{},{},{},{}",
                items[i].label,
                items[j].label,
                items[i].identity == items[j].identity,
                scores[i][j]
            )?;
            let members = member_scores
                .get(i)
                .map_or(&[][..], |row| row[j].as_slice());
            for s in members {
                write!(out, ",{s}")?;
            }
            writeln!(out)?;
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// What `evaluate` prints.
#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    evaluation: &'a Evaluation,
    /// The configuration's calibration, scored on this set.
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration_check: Option<&'a CalibrationCheck>,
    /// The calibration `--calibrate` fitted, and how it fits the set it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    fitted_calibration: Option<&'a Calibration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fitted_calibration_check: Option<&'a CalibrationCheck>,
    timing: Timing,
}

/// How long scoring took (extraction included), for time per pair: only meaningful when
/// `matched` equals `pairs` (nothing came from the store).
#[derive(serde::Serialize)]
struct Timing {
    pairs: usize,
    /// Pairs run through LightGlue in this run (an ensemble counts each member's).
    matched: u64,
    seconds: f64,
    ms_per_pair: f64,
}

/// What `--png` needs to draw a query's candidates.
struct Pictures<'a, F: Fn(usize) -> Annot> {
    engine: &'a Engine,
    chips: &'a EvalChips,
    config: &'a Config,
    items: &'a [Item],
    annot: &'a F,
}

impl<F: Fn(usize) -> Annot> Pictures<'_, F> {
    /// One PNG per query whose best candidate is another identity: its top `top` candidates
    /// and, when it has one further down, its best same-identity candidate; each panel the
    /// query (turned as its score was found) beside the candidate with the matches drawn.
    async fn failures(
        &self,
        dir: &Path,
        scores: &[Vec<f32>],
        turns: &[Vec<Rotation>],
        groups: Option<&[String]>,
        top: usize,
    ) -> Result<usize> {
        let mut saved = 0;
        for (i, item) in self.items.iter().enumerate() {
            let ranked = ranking(scores, i, groups);
            let same = |j: &usize| self.items[*j].identity == item.identity;
            let Some(first_hit) = ranked.iter().position(same) else {
                continue;
            };
            if first_hit == 0 {
                continue;
            }
            let mut shown: Vec<usize> = (0..ranked.len().min(top.max(1))).collect();
            if first_hit >= shown.len() {
                shown.push(first_hit);
            }
            let mut panels = Vec::with_capacity(shown.len());
            for rank in shown {
                let j = ranked[rank];
                let candidate = &self.items[j];
                let verdict = if same(&j) { "same" } else { "other" };
                let label = format!(
                    "{} (id {}) rank {}: {} (id {}, {verdict}) score {:.2} turn {}",
                    item.label,
                    item.identity,
                    rank + 1,
                    candidate.label,
                    candidate.identity,
                    scores[i][j],
                    turns[i][j].degrees()
                );
                panels.push((label, self.panel(i, j, turns[i][j]).await?));
            }
            let picture = render::labelled_column(&panels)?;
            let name = format!("{:04}-{}.png", i, sanitize(&item.label));
            let path = dir.join(name);
            std::fs::write(&path, render::encode_png(&picture)?)
                .with_context(|| format!("writing {}", path.display()))?;
            saved += 1;
        }
        Ok(saved)
    }

    /// The query (item `i`, turned) beside candidate `j`, with their matches.
    async fn panel(
        &self,
        i: usize,
        j: usize,
        turn: Rotation,
    ) -> Result<wbia_lightglue_model::RgbImage> {
        let (q, d) = ((self.annot)(i), (self.annot)(j));
        let pair = self
            .engine
            .match_pair(self.chips, &q, &d, self.config, turn)
            .await?;
        let image = |uuid| async move {
            let chip = self
                .chips
                .chip(uuid)
                .await
                .map_err(|e| anyhow::anyhow!("chip of {uuid}: {e}"))?;
            Ok::<_, anyhow::Error>(chip.pixels()?)
        };
        let query = image(q.uuid).await?.rotated(turn)?;
        let candidate = image(d.uuid).await?;
        Ok(render::draw_matches(
            &query,
            &pair.query,
            &candidate,
            &pair.database,
            &pair.result,
            PICTURE_HEIGHT,
        )?)
    }
}

/// The f64 that prints as the f32 does (0.95, not 0.949999988079071), so a configuration
/// written by `--calibrate` reads as the flags were given.
fn as_written(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Height of each `--png` panel.
const PICTURE_HEIGHT: usize = 360;

/// A file name from a label: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn print(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let e = report.evaluation;
    println!(
        "queries: {} ({} with a same-identity candidate)",
        e.queries, e.queries_with_match
    );
    for ((rank, value), (_, low, high)) in e.cmc.iter().zip(&e.cmc_interval) {
        println!("CMC@{rank:<2} {value:.4}  (95% interval {low:.4} – {high:.4})");
    }
    let (low, high) = e.mean_average_precision_interval;
    println!(
        "mAP    {:.4}  (95% interval {low:.4} – {high:.4})",
        e.mean_average_precision
    );
    let t = &report.timing;
    println!(
        "{} pairs scored in {:.1} s: {:.1} ms per pair, {} matched here",
        t.pairs, t.seconds, t.ms_per_pair, t.matched
    );
    let range = |what: &str, s: &Option<ScoreSummary>| {
        if let Some(s) = s {
            println!(
                "{what} raw scores ({} pairs): min {:.2}, median {:.2}, p95 {:.2}, max {:.2}",
                s.pairs, s.min, s.median, s.p95, s.max
            );
        }
    };
    range("same-identity", &e.genuine_scores);
    range("other-identity", &e.impostor_scores);
    let check = |what: &str, c: &CalibrationCheck| {
        println!(
            "{what}: Brier {:.4} (prior alone {:.4}), log loss {:.4}, mean p same-identity \
             {:.3}, other-identity {:.3}",
            c.brier, c.brier_of_prior, c.log_loss, c.mean_genuine, c.mean_impostor
        );
    };
    if let Some(c) = report.calibration_check {
        check("configured calibration on this set", c);
    }
    if let (Some(fit), Some(c)) = (report.fitted_calibration, report.fitted_calibration_check) {
        println!(
            "fitted calibration: p = 1 / (1 + exp(-({:.4} * ln(1 + score) + {:.4}))) on {} \
             same- and {} other-identity pairs",
            fit.slope, fit.intercept, fit.genuine_pairs, fit.impostor_pairs
        );
        check("fitted calibration on this set", c);
    }
    Ok(())
}
