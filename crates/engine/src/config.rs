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
    pub model_name: String,
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
        // The service matches what it extracts: a variant LightGlue cannot take is refused
        // here, at load, not on the first request.
        let variant = self.aliked_variant()?;
        if !variant.matchable() {
            return Err(Error::Config(format!(
                "model_name {:?} gives {}-d descriptors and no LightGlue weights take them \
                 (it is for `wbia-lightglue extract` only); use aliked-n16, aliked-n16rot or \
                 aliked-n32",
                self.model_name, variant.dim
            )));
        }
        if self.feature_cache_max_size == 0 {
            return Err(Error::Config(
                "feature_cache_max_size must be positive".into(),
            ));
        }
        if let Some(c) = &self.calibration {
            c.validate()?;
        }
        self.aliked().validate()?;
        self.match_options().validate()?;
        Ok(())
    }

    /// The ALIKED architecture `model_name` names.
    pub fn aliked_variant(&self) -> Result<AlikedConfig> {
        Ok(AlikedConfig::from_name(&self.model_name)?)
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
