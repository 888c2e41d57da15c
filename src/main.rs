//! `wbia-lightglue`: ALIKED + LightGlue animal re-identification for WBIA, in Rust.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use wbia_lightglue_model::{weights, Aliked, AlikedConfig};

mod cli;

#[derive(Parser)]
#[command(name = "wbia-lightglue", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect ALIKED keypoints and descriptors in one image and write them as safetensors.
    Extract(ExtractArgs),
    /// Convert a PyTorch checkpoint (.pth) to safetensors.
    ConvertWeights {
        input: PathBuf,
        output: PathBuf,
    },
}

/// Options shared by every command that runs the model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Directory holding the converted weights.
    #[arg(long, env = weights::WEIGHTS_DIR_ENV)]
    pub weights: Option<PathBuf>,
    /// Keep at most this many keypoints per image (-1: no limit).
    #[arg(long, default_value_t = 2048, allow_negative_numbers = true)]
    pub max_keypoints: i64,
    /// Resize the long edge of each image to this many pixels (0: no resize).
    #[arg(long, default_value_t = 512)]
    pub image_size: usize,
    /// 0 takes the top `max-keypoints` maxima; above 0, every maximum over the threshold.
    #[arg(long, default_value_t = 0.0)]
    pub detection_threshold: f32,
}

impl ModelArgs {
    pub fn aliked_config(&self) -> AlikedConfig {
        AlikedConfig {
            max_num_keypoints: self.max_keypoints,
            detection_threshold: self.detection_threshold,
            image_size: self.image_size,
            ..AlikedConfig::default()
        }
    }

    pub fn load_aliked(&self, device: &candle_core::Device) -> Result<Aliked> {
        let path = weights::find_weights(self.weights.as_deref(), weights::ALIKED_FILE)?;
        Aliked::from_file(&path, self.aliked_config(), device)
            .with_context(|| format!("loading {}", path.display()))
    }
}

#[derive(Args)]
struct ExtractArgs {
    image: PathBuf,
    /// Output safetensors file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Extract(args) => {
            let device = candle_core::Device::Cpu;
            let model = args.model.load_aliked(&device)?;
            let image = wbia_lightglue_model::load_image(&args.image)?;
            let start = Instant::now();
            let features = model.extract(&image)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            cli::save_features(&features, &args.output)?;
            println!(
                "{}: {} keypoints in {ms:.1} ms -> {}",
                args.image.display(),
                features.len(),
                args.output.display()
            );
        }
        Command::ConvertWeights { input, output } => {
            let n = weights::convert_pth(&input, &output)
                .with_context(|| format!("converting {}", input.display()))?;
            println!("{n} tensors -> {}", output.display());
        }
    }
    Ok(())
}
