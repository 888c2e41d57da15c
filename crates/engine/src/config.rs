//! The plugin's JSON configuration: the same keys and defaults as `wbia_lightglue/core.py`
//! (`DEFAULT_CONFIG`), missing keys defaulted, unknown keys and wrong types refused. A request's
//! `config_path` is resolved inside the configuration directory only.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use wbia_lightglue_model::{AlikedConfig, DetectOptions, MatchOptions, Rotation};

use crate::{Calibration, Error, Result};

/// Name of the configuration read when a request names none.
pub const DEFAULT_CONFIG_FILE: &str = "config.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// One ALIKED variant, as in the plugin, or a list of them: an ensemble (not in the
    /// plugin), each member extracted, stored and matched under its own keys as that single
    /// variant would be, and each pair's member scores fused by `fusion`.
    pub model_name: ModelName,
    pub max_num_keypoints: i64,
    pub detection_threshold: f64,
    pub image_size: usize,
    pub depth_confidence: f64,
    pub width_confidence: f64,
    pub filter_threshold: f64,
    pub feature_cache_max_size: usize,
    /// Not in the plugin: also match the query chip turned by 90°, 180° and 270° and keep
    /// each pair's best score, reporting the winning turn. For chips whose orientation varies
    /// (animals seen from above, flukes). Costs 4× the matching and the query's extraction,
    /// not the database's.
    pub rotation_sweep: bool,
    /// Not in the plugin: the map from raw score to P(same individual) that
    /// `wbia-lightglue evaluate --calibrate` fitted for this configuration. With it, answers
    /// carry a calibrated score beside the raw one, and Wildbook's review confidences come
    /// from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Not in the plugin: how an ensemble's member scores become the pair's score (the one
    /// that ranks, and that `calibration` maps). Ignored for a single model.
    #[serde(skip_serializing_if = "Fusion::is_default")]
    pub fusion: Fusion,
    /// Not in the plugin: each ensemble member's own calibration, in `model_name`'s order,
    /// fitted on its scores by `evaluate --calibrate`; what `fusion: "log_odds"` weighs the
    /// members by, and used by nothing else.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub member_calibrations: Vec<Calibration>,
}

/// The most members an ensemble has: the variants LightGlue can match, each at most once.
pub const MAX_ENSEMBLE: usize = 3;

/// `model_name`: one variant (a string, the plugin's form) or an ensemble (a list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ModelName {
    One(String),
    Ensemble(Vec<String>),
}

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = ModelName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("model_name as a variant's name, or a list of names (an ensemble)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ModelName, E> {
                Ok(ModelName::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<ModelName, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(ModelName::Ensemble(names))
            }
        }
        d.deserialize_any(Names)
    }
}

impl ModelName {
    /// The variants, in the configuration's order.
    pub fn names(&self) -> &[String] {
        match self {
            ModelName::One(name) => std::slice::from_ref(name),
            ModelName::Ensemble(names) => names,
        }
    }

    pub fn is_ensemble(&self) -> bool {
        matches!(self, ModelName::Ensemble(_))
    }
}

impl From<&str> for ModelName {
    fn from(name: &str) -> Self {
        ModelName::One(name.to_string())
    }
}

impl PartialEq<&str> for ModelName {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, ModelName::One(name) if name == other)
    }
}

/// `aliked-n16`, or an ensemble's names joined by `+`.
impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join("+"))
    }
}

/// How an ensemble's member scores (each a sum of match confidences) become one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// Σ sᵢ: members with more matches weigh more.
    #[default]
    Sum,
    /// Σ ln(1 + sᵢ): one member's many matches count less than agreement between members.
    LogSum,
    /// maxᵢ sᵢ: the member that sees the pair best decides.
    Max,
    /// Σ slopeᵢ · ln(1 + sᵢ), slopeᵢ from each member's calibration (`member_calibrations`):
    /// the members' calibrated log-odds summed, as if they erred independently, less their
    /// intercepts (the same for every pair, so the ranking is the log-odds sum's, and the
    /// score stays ≥ 0). A member whose scores separate identities better weighs more.
    LogOdds,
}

impl Fusion {
    fn is_default(&self) -> bool {
        *self == Fusion::default()
    }

    /// The pair's score from its members' scores; `calibrations` are the members' (read by
    /// [`Fusion::LogOdds`] only, which needs one per member: [`Config::validate`] sees to it).
    pub fn fuse(self, scores: &[f32], calibrations: &[Calibration]) -> f32 {
        match self {
            Fusion::Sum => scores.iter().sum(),
            Fusion::LogSum => scores.iter().map(|s| s.max(0.0).ln_1p()).sum(),
            Fusion::Max => scores.iter().copied().fold(0.0, f32::max),
            Fusion::LogOdds => {
                debug_assert_eq!(
                    scores.len(),
                    calibrations.len(),
                    "one calibration per member"
                );
                scores
                    .iter()
                    .zip(calibrations)
                    .map(|(s, c)| c.slope * f64::from(s.max(0.0)).ln_1p())
                    .sum::<f64>() as f32
            }
        }
    }
}

/// The plugin's `DEFAULT_CONFIG` (kept in f64 so it prints as written).
impl Default for Config {
    fn default() -> Self {
        Self {
            model_name: "aliked-n16".into(),
            max_num_keypoints: 2048,
            detection_threshold: 0.0,
            image_size: 512,
            depth_confidence: 0.95,
            width_confidence: 0.99,
            filter_threshold: 0.1,
            feature_cache_max_size: 10_000,
            rotation_sweep: false,
            calibration: None,
            fusion: Fusion::default(),
            member_calibrations: Vec::new(),
        }
    }
}

impl Config {
    /// Parses a configuration file's text; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("{source}: {e}")))?;
        config
            .validate()
            .map_err(|e| Error::Config(format!("{source}: {e}")))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let names = self.model_name.names();
        if self.model_name.is_ensemble() {
            if names.len() < 2 {
                return Err(Error::Config(
                    "an ensemble (model_name as a list) needs at least two variants; give a \
                     single model as a string"
                        .into(),
                ));
            }
            if names.len() > MAX_ENSEMBLE {
                return Err(Error::Config(format!(
                    "an ensemble has at most {MAX_ENSEMBLE} variants, got {}",
                    names.len()
                )));
            }
            for (i, name) in names.iter().enumerate() {
                if names[..i].contains(name) {
                    return Err(Error::Config(format!("model_name lists {name:?} twice")));
                }
            }
        }
        // The service matches what it extracts: a variant LightGlue cannot take is refused
        // here, at load, not on the first request.
        for name in names {
            let variant = AlikedConfig::from_name(name)?;
            if !variant.matchable() {
                return Err(Error::Config(format!(
                    "model_name {name:?} gives {}-d descriptors and no LightGlue weights take \
                     them (it is for `wbia-lightglue extract` only); use aliked-n16, \
                     aliked-n16rot or aliked-n32",
                    variant.dim
                )));
            }
        }
        if self.feature_cache_max_size == 0 {
            return Err(Error::Config(
                "feature_cache_max_size must be positive".into(),
            ));
        }
        if let Some(c) = &self.calibration {
            c.validate()?;
        }
        self.validate_member_calibrations()?;
        self.aliked().validate()?;
        self.match_options().validate()?;
        Ok(())
    }

    /// `member_calibrations`: one per member, each valid, exactly when `fusion` is
    /// `log_odds` (elsewhere they would be saved and silently unused).
    fn validate_member_calibrations(&self) -> Result<()> {
        let members = self.model_name.names().len();
        let given = self.member_calibrations.len();
        let log_odds = self.model_name.is_ensemble() && self.fusion == Fusion::LogOdds;
        if log_odds && given != members {
            return Err(Error::Config(format!(
                "fusion \"log_odds\" needs member_calibrations, one per member ({members}), got \
                 {given}; fit them with `wbia-lightglue evaluate --calibrate`"
            )));
        }
        if !log_odds && given > 0 {
            return Err(Error::Config(
                "member_calibrations are read by an ensemble's fusion \"log_odds\" only".into(),
            ));
        }
        for c in &self.member_calibrations {
            c.validate()?;
        }
        Ok(())
    }

    /// Parses a configuration file for `evaluate --calibrate`, which fits
    /// `member_calibrations` itself: a `log_odds` ensemble may come without them. Such a
    /// configuration does not pass [`Config::validate`] and must not fuse scores until they
    /// are fitted: it is checked, and `evaluate` scores it, as [`Config::summing_members`].
    pub fn from_json_to_calibrate(text: &str, source: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("{source}: {e}")))?;
        let fitted_later =
            config.fusion == Fusion::LogOdds && config.member_calibrations.is_empty();
        let checked = if fitted_later {
            config.summing_members()
        } else {
            config.clone()
        };
        checked
            .validate()
            .map_err(|e| Error::Config(format!("{source}: {e}")))?;
        Ok(config)
    }

    /// This configuration fusing by `sum`, without member calibrations: how an ensemble is
    /// scored before its member calibrations are fitted (its members' scores are the same
    /// whatever the fusion).
    pub fn summing_members(&self) -> Config {
        Config {
            fusion: Fusion::Sum,
            member_calibrations: Vec::new(),
            ..self.clone()
        }
    }

    /// A pair's score from its members' scores, by this configuration's fusion.
    pub fn fuse(&self, members: &[f32]) -> f32 {
        self.fusion.fuse(members, &self.member_calibrations)
    }

    /// The ALIKED architecture `model_name` names; an ensemble has none (its members do).
    pub fn aliked_variant(&self) -> Result<AlikedConfig> {
        match &self.model_name {
            ModelName::One(name) => Ok(AlikedConfig::from_name(name)?),
            ModelName::Ensemble(_) => Err(Error::Config(format!(
                "{} is an ensemble: its members have variants, it has none",
                self.model_name
            ))),
        }
    }

    /// Each variant's own configuration: this one for a single model; for an ensemble, one
    /// per member with everything but the variant as here (no calibration: that maps the
    /// fused score), so a member's features and scores are those of that single model.
    pub fn members(&self) -> Vec<Config> {
        match &self.model_name {
            ModelName::One(_) => vec![self.clone()],
            ModelName::Ensemble(names) => names.iter().map(|name| self.as_member(name)).collect(),
        }
    }

    /// The single model that stands for this configuration where only one can (a match
    /// picture, a thumbnail): itself, or an ensemble's first member.
    pub fn first_member(&self) -> Config {
        match &self.model_name {
            ModelName::One(_) => self.clone(),
            ModelName::Ensemble(names) => self.as_member(&names[0]),
        }
    }

    /// This configuration for one member model: its keys and stored scores are that single
    /// model's (no calibration or fusion of the ensemble's).
    fn as_member(&self, name: &str) -> Config {
        Config {
            model_name: ModelName::One(name.to_string()),
            calibration: None,
            fusion: Fusion::default(),
            member_calibrations: Vec::new(),
            ..self.clone()
        }
    }

    pub fn aliked(&self) -> DetectOptions {
        DetectOptions {
            max_num_keypoints: self.max_num_keypoints,
            detection_threshold: self.detection_threshold as f32,
            image_size: self.image_size,
            ..DetectOptions::default()
        }
    }

    pub fn match_options(&self) -> MatchOptions {
        MatchOptions {
            depth_confidence: self.depth_confidence as f32,
            width_confidence: self.width_confidence as f32,
            filter_threshold: self.filter_threshold as f32,
        }
    }

    /// The settings that change features, and the turn of the chip they were taken from:
    /// part of every cache key (an unturned chip's key is what it was before the sweep).
    pub fn feature_key(&self, rotation: Rotation) -> String {
        let key = format!(
            "{}/k{}/t{}/s{}",
            self.model_name, self.max_num_keypoints, self.detection_threshold, self.image_size
        );
        match rotation {
            Rotation::None => key,
            turned => format!("{key}/cw{}", turned.degrees()),
        }
    }

    /// The turns a query chip is matched at: all four with the sweep on, else none.
    pub fn query_rotations(&self) -> &'static [Rotation] {
        if self.rotation_sweep {
            &Rotation::ALL
        } else {
            &Rotation::ALL[..1]
        }
    }
}

/// Reads configurations from one directory (WBIA's `/v_config/lightglue`).
#[derive(Clone, Debug)]
pub struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The configuration for a request. `None` reads `config.json` in the directory, or the
    /// built-in defaults when that file does not exist. A given path may be relative to the
    /// directory or absolute inside it; `..` and symlinks that leave the directory are refused.
    pub fn load(&self, config_path: Option<&str>) -> Result<Config> {
        let requested = match config_path.map(str::trim).filter(|p| !p.is_empty()) {
            None => {
                let default = self.dir.join(DEFAULT_CONFIG_FILE);
                if !default.exists() {
                    return Ok(Config::default());
                }
                return self.read(&default, DEFAULT_CONFIG_FILE);
            }
            Some(p) => p,
        };
        let path = Path::new(requested);
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::Config(format!(
                "config_path {requested:?} may not contain '..'"
            )));
        }
        let relative = if path.is_absolute() {
            path.strip_prefix(&self.dir).map_err(|_| {
                Error::Config(format!(
                    "config_path {requested:?} is outside the configuration directory {}",
                    self.dir.display()
                ))
            })?
        } else {
            path
        };
        let candidate = self.dir.join(relative);
        let root = self.dir.canonicalize().map_err(|e| {
            Error::Config(format!(
                "configuration directory {}: {e}",
                self.dir.display()
            ))
        })?;
        let resolved = candidate
            .canonicalize()
            .map_err(|e| Error::Config(format!("config_path {requested:?}: {e}")))?;
        if !resolved.starts_with(&root) {
            return Err(Error::Config(format!(
                "config_path {requested:?} resolves outside the configuration directory"
            )));
        }
        self.read(&resolved, requested)
    }

    /// Every configuration in the directory that loads (the built-in defaults first, when
    /// there is no `config.json`), with its file name.
    pub fn all(&self) -> Vec<(Option<String>, Config)> {
        let mut found = Vec::new();
        if !self.dir.join(DEFAULT_CONFIG_FILE).exists() {
            found.push((None, Config::default()));
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return found;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            if let Ok(config) = self.load(Some(&name)) {
                found.push((Some(name), config));
            }
        }
        found
    }

    fn read(&self, path: &Path, name: &str) -> Result<Config> {
        let meta = std::fs::metadata(path).map_err(|e| Error::Config(format!("{name}: {e}")))?;
        if meta.len() > 1 << 20 {
            return Err(Error::Config(format!("{name}: larger than 1 MiB")));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{name}: {e}")))?;
        Config::from_json(&text, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wbia-lg-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn defaults_agree_with_the_model_crate() {
        let c = Config::default();
        assert_eq!(c.aliked(), DetectOptions::default());
        assert_eq!(c.match_options(), MatchOptions::default());
    }

    #[test]
    fn missing_keys_take_defaults() {
        let c = Config::from_json(r#"{"max_num_keypoints": 1024}"#, "t").unwrap();
        assert_eq!(c.max_num_keypoints, 1024);
        assert_eq!(c.image_size, 512);
        assert_eq!(c.feature_cache_max_size, 10_000);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = Config::from_json(r#"{"max_keypoints": 1}"#, "x.json").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::from_json(r#"{"image_size": "big"}"#, "x.json").unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
        let t16 = Config::from_json(r#"{"model_name": "aliked-t16"}"#, "x").unwrap_err();
        assert!(t16.to_string().contains("64-d"), "{t16}");
        assert!(Config::from_json(r#"{"model_name": "aliked-n64"}"#, "x").is_err());
        for name in ["aliked-n16", "aliked-n16rot", "aliked-n32"] {
            let json = format!(r#"{{"model_name": "{name}"}}"#);
            assert_eq!(Config::from_json(&json, "x").unwrap().model_name, name);
        }
        assert!(Config::from_json(r#"{"depth_confidence": 7}"#, "x").is_err());
    }

    #[test]
    fn all_lists_the_loadable_configurations() {
        let dir = temp_dir("all");
        std::fs::write(dir.join("b.json"), r#"{"image_size": 1024}"#).unwrap();
        std::fs::write(dir.join("a.json"), r#"{"max_num_keypoints": 256}"#).unwrap();
        std::fs::write(dir.join("broken.json"), "{").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a configuration").unwrap();
        let all = ConfigDir::new(&dir).all();
        let names: Vec<Option<&str>> = all.iter().map(|(n, _)| n.as_deref()).collect();
        // No config.json: the built-in defaults first; the broken file is left out.
        assert_eq!(names, [None, Some("a.json"), Some("b.json")]);
        assert_eq!(all[2].1.image_size, 1024);
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let names: Vec<_> = ConfigDir::new(&dir)
            .all()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names[0].as_deref(), Some("a.json"));
        assert!(names.contains(&Some("config.json".into())));
        assert!(ConfigDir::new("/nonexistent/lightglue").all().len() == 1);
    }

    #[test]
    fn absent_directory_gives_defaults() {
        let dir = ConfigDir::new("/nonexistent/v_config/lightglue");
        assert_eq!(dir.load(None).unwrap(), Config::default());
    }

    #[test]
    fn config_path_stays_inside_the_directory() {
        let dir = temp_dir("inside");
        std::fs::write(dir.join("highres.json"), r#"{"image_size": 1024}"#).unwrap();
        let outside = temp_dir("outside");
        std::fs::write(outside.join("evil.json"), "{}").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.join("evil.json"), dir.join("link.json")).unwrap();
        let configs = ConfigDir::new(&dir);

        assert_eq!(configs.load(Some("highres.json")).unwrap().image_size, 1024);
        let absolute = dir.join("highres.json");
        assert_eq!(
            configs
                .load(Some(absolute.to_str().unwrap()))
                .unwrap()
                .image_size,
            1024
        );
        assert!(configs.load(Some("../outside/evil.json")).is_err());
        assert!(configs
            .load(Some(outside.join("evil.json").to_str().unwrap()))
            .is_err());
        #[cfg(unix)]
        assert!(configs.load(Some("link.json")).is_err());
        assert!(configs.load(Some("missing.json")).is_err());
    }
}
