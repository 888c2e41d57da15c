//! ALIKED keypoints/descriptors and LightGlue matching, implemented in candle.
//!
//! This crate knows nothing about HTTP, async runtimes or WBIA: it turns decoded images into
//! [`Features`] and pairs of features into matches and a score, on any candle device.

pub mod aliked;
pub mod cpu;
pub mod device;
mod error;
pub mod image;
pub mod lightglue;
pub mod ops;
pub mod render;
pub mod wbia_chip;
pub mod weights;

pub use aliked::{Aliked, AlikedConfig, DetectOptions, Features};
pub use device::{device_name, parse_device};
pub use error::{Error, Result};
pub use image::{decode_image, load_image, RgbImage, Rotation};
pub use lightglue::{LightGlue, MatchOptions, MatchResult, Precision};
pub use wbia_chip::{wbia_annot_chip, wbia_chip, wbia_read_image};
