//! `wbia-lightglue`: ALIKED + LightGlue animal re-identification for WBIA, in Rust.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use wbia_lightglue_model::{
    load_image, parse_device, weights, Aliked, AlikedConfig, DetectOptions, LightGlue,
    MatchOptions, Precision,
};

use wbia_client::ClientOptions;
use wbia_lightglue_engine::EngineOptions;
use wbia_lightglue_server::ServerOptions;

mod bench;
mod cli;
mod evaluate;

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
    /// Match two images and print the pair score (sum of match confidences).
    Match(MatchArgs),
    /// Serve WBIA's LightGlue query endpoints over HTTP.
    Serve(ServeArgs),
    /// 1-vs-all CMC (ranks 1/5/10/20) and mAP over a labelled image folder or WBIA annotations.
    Evaluate(evaluate::EvaluateArgs),
    /// Time extraction and matching on this machine and print JSON (see scripts/bench.sh).
    Bench(bench::BenchArgs),
    /// Convert a PyTorch checkpoint (.pth) to safetensors.
    ConvertWeights { input: PathBuf, output: PathBuf },
}

/// Where and how the models run.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda`, `cuda:N`, or `auto`: the first GPU when this build has CUDA support and
    /// one answers, else the CPU.
    #[arg(long, env = "WBIA_LIGHTGLUE_DEVICE", default_value = "auto")]
    pub device: String,
    /// Arithmetic of LightGlue's transformer layers: f32, f16 (pair scores within 2% of f32)
    /// or bf16 (within 1%; on the CPU its matrix products use AVX-512 BF16 and run f32
    /// where the CPU lacks it).
    #[arg(long, env = "WBIA_LIGHTGLUE_PRECISION", default_value = "f32")]
    pub precision: Precision,
}

impl DeviceArgs {
    pub fn open(&self) -> Result<Device> {
        Ok(parse_device(&self.device)?)
    }
}

/// Largest `--match-batch`.
const MAX_MATCH_BATCH: usize = 256;

/// Options shared by every command that runs the model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// ALIKED variant: aliked-n16 (the plugin's), aliked-n16rot, aliked-n32, or aliked-t16
    /// (64-d descriptors: extraction only, no LightGlue weights take them).
    #[arg(long, default_value_t = AlikedConfig::n16().name.to_string())]
    pub model_name: String,
    /// Directory holding the converted weights.
    #[arg(long, env = weights::WEIGHTS_DIR_ENV)]
    pub weights: Option<PathBuf>,
    /// Keep at most this many keypoints per image (-1: no limit).
    #[arg(long, default_value_t = DetectOptions::default().max_num_keypoints, allow_negative_numbers = true)]
    pub max_keypoints: i64,
    /// Resize the long edge of each image to this many pixels (0: no resize).
    #[arg(long, default_value_t = DetectOptions::default().image_size)]
    pub image_size: usize,
    /// 0 takes the top `max-keypoints` maxima; above 0, every maximum over the threshold.
    #[arg(long, default_value_t = DetectOptions::default().detection_threshold)]
    pub detection_threshold: f32,
    #[command(flatten)]
    pub runtime: DeviceArgs,
}

impl ModelArgs {
    pub fn aliked_config(&self) -> DetectOptions {
        DetectOptions {
            max_num_keypoints: self.max_keypoints,
            detection_threshold: self.detection_threshold,
            image_size: self.image_size,
            ..DetectOptions::default()
        }
    }

    pub fn aliked_variant(&self) -> Result<AlikedConfig> {
        Ok(AlikedConfig::from_name(&self.model_name)?)
    }

    pub fn load_aliked(&self, device: &Device) -> Result<Aliked> {
        let arch = self.aliked_variant()?;
        let path = weights::find_weights(self.weights.as_deref(), arch.weights_file)?;
        Aliked::from_file_variant(&path, arch, self.aliked_config(), device)
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

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "WBIA_LIGHTGLUE_HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Port to listen on (5000, like WBIA).
    #[arg(long, env = "WBIA_LIGHTGLUE_PORT", default_value_t = 5000)]
    port: u16,
    /// Base URL of the WBIA server that holds the annotations.
    #[arg(long, env = "WBIA_URL", default_value = "http://localhost:5001")]
    wbia_url: String,
    /// Directory of JSON configurations (`config.json` is the default one; built-in defaults
    /// when absent). A request's `config_path` must lie inside it.
    #[arg(
        long,
        env = "WBIA_LIGHTGLUE_CONFIG_DIR",
        default_value = "/v_config/lightglue"
    )]
    config_dir: PathBuf,
    /// Directory holding the converted weights.
    #[arg(long, env = weights::WEIGHTS_DIR_ENV)]
    weights: Option<PathBuf>,
    /// Directory of the persisted feature store (SQLite), created if needed.
    #[arg(
        long,
        env = "WBIA_LIGHTGLUE_DATA_DIR",
        default_value = "wbia-lightglue-data"
    )]
    data_dir: PathBuf,
    /// PostgreSQL (`postgres://user:password@host:port/database`) instead of SQLite in the
    /// data directory: features, pair scores and engine jobs shared by every replica pointed
    /// at it, so any of them answers any job. Migrated at start.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// With --database-url: engine jobs of more database annotations than this are split
    /// into chunks of this many, which every replica's model worker takes.
    #[arg(long, env = "WBIA_LIGHTGLUE_CHUNK_ANNOTATIONS", default_value_t = ServerOptions::default().chunk_annotations)]
    chunk_annotations: usize,
    /// Seconds a replica may hold a chunk without renewing its lease (renewed every third of
    /// it while working); a replica that dies loses its chunk to another after at most this.
    #[arg(long, env = "WBIA_LIGHTGLUE_CHUNK_LEASE", default_value_t = ServerOptions::default().chunk_lease.as_secs())]
    chunk_lease_secs: u64,
    /// With --database-url: seconds a job's replica may go without publishing its progress
    /// (every 2 s while it lives) before any replica reading the job ends it as `exception`,
    /// naming the silent replica, instead of answering `working` for ever.
    #[arg(long, env = "WBIA_LIGHTGLUE_JOB_LEASE", default_value_t = ServerOptions::default().job_lease.as_secs())]
    job_lease_secs: u64,
    /// Where chips come from. `auto`: made here from WBIA's image files, exactly as WBIA makes
    /// the chips the plugin scores, where those files can be read (same machine, or WBIA's
    /// database mounted read-only), else downloaded from WBIA (JPEG re-encodes: scores differ
    /// from the plugin's; said once in the log, in /info and /metrics). `image-files`: never
    /// downloaded. `download`: always downloaded.
    #[arg(long, env = "WBIA_LIGHTGLUE_CHIPS", default_value = "auto")]
    chips: wbia_lightglue_service::ChipMode,
    /// WBIA's image paths as seen here, `WBIA_PREFIX=LOCAL_PREFIX`, when WBIA's database is
    /// mounted elsewhere than where WBIA has it (e.g. `/data/db=/wbia-db`).
    #[arg(long, env = "WBIA_LIGHTGLUE_WBIA_PATH_MAP")]
    wbia_path_map: Option<wbia_lightglue_service::PathMap>,
    #[command(flatten)]
    runtime: DeviceArgs,
    /// Database annotations matched in one padded batch (adaptive depth/width off; on the CPU
    /// the batch's pairs run one by one, unpadded); 1 matches pair by pair exactly as the
    /// plugin does. 0: 16 on a GPU, 1 on the CPU.
    #[arg(long, env = "WBIA_LIGHTGLUE_MATCH_BATCH", default_value_t = 0)]
    match_batch: usize,
    /// Requests (queries and engine jobs) admitted at once; more get 429 with Retry-After.
    #[arg(
        long,
        alias = "queue-capacity",
        env = "WBIA_LIGHTGLUE_MAX_REQUESTS",
        default_value_t = EngineOptions::default().max_requests
    )]
    max_requests: usize,
    /// Pairs of all admitted requests (each counted until it ends) above which new requests
    /// get 429 (one larger request is still admitted when nothing else runs).
    #[arg(
        long,
        env = "WBIA_LIGHTGLUE_MAX_PENDING_PAIRS",
        default_value_t = EngineOptions::default().max_pending_pairs
    )]
    max_pending_pairs: usize,
    /// Bytes of features kept in memory (a 2,048-keypoint set is ~1.1 MB).
    #[arg(long, env = "WBIA_LIGHTGLUE_CACHE_BYTES", default_value_t = EngineOptions::default().cache_bytes)]
    cache_bytes: usize,
    /// Largest chip accepted from WBIA, in bytes.
    #[arg(long, env = "WBIA_LIGHTGLUE_MAX_CHIP_BYTES", default_value_t = ClientOptions::default().max_chip_bytes)]
    max_chip_bytes: usize,
    /// Download every chip and key features by its bytes, instead of trusting WBIA's image
    /// UUID, bbox and theta to identify it.
    #[arg(long, env = "WBIA_LIGHTGLUE_VERIFY_CHIP_BYTES")]
    verify_chip_bytes: bool,
    /// PEM bundle of CA certificates trusted for https WBIA URLs and callbacks, besides the
    /// built-in and system roots.
    #[arg(long, env = "SSL_CERT_FILE")]
    ca_file: Option<PathBuf>,
    /// When set, the endpoints this service answers itself (not the pass-through to WBIA,
    /// not /health) want `Authorization: Bearer <token>`. Prefer the environment variable.
    #[arg(long, env = "WBIA_LIGHTGLUE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Comma-separated hosts a job's callback_url may name (default: any, as WBIA).
    #[arg(long, env = "WBIA_LIGHTGLUE_CALLBACK_HOSTS", value_delimiter = ',')]
    callback_hosts: Option<Vec<String>>,
    /// Requests passed through to WBIA at once; more get 503 with Retry-After.
    #[arg(long, env = "WBIA_LIGHTGLUE_MAX_PROXIED", default_value_t = ServerOptions::default().max_proxied)]
    max_proxied: usize,
    /// Client connections open at once; more wait in the listen backlog.
    #[arg(long, env = "WBIA_LIGHTGLUE_MAX_CONNECTIONS", default_value_t = ServerOptions::default().max_connections)]
    max_connections: usize,
    /// Seconds a connection may take to send a request head (new or idle keep-alive).
    #[arg(long, env = "WBIA_LIGHTGLUE_HEADER_READ_TIMEOUT", default_value_t = ServerOptions::default().header_read_timeout.as_secs())]
    header_read_timeout: u64,
    /// Longest pause, in seconds, within a request body (client to us) or a forwarded answer
    /// (WBIA to us).
    #[arg(long, env = "WBIA_LIGHTGLUE_BODY_IDLE_TIMEOUT", default_value_t = ServerOptions::default().body_idle_timeout.as_secs())]
    body_idle_timeout: u64,
    /// Bytes of finished job results kept for /api/engine/job/result/.
    #[arg(long, env = "WBIA_LIGHTGLUE_MAX_JOB_RESULT_BYTES", default_value_t = ServerOptions::default().max_job_result_bytes)]
    max_job_result_bytes: usize,
    /// Log lines as text (coloured only on a terminal, and not with NO_COLOR set) or as one
    /// JSON object per line, for log shippers.
    #[arg(long, env = "WBIA_LIGHTGLUE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How `serve` writes its log (standard output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` filters (default: info). Colour codes only reach a terminal: `docker logs`,
/// files and pipes get plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=info".into());
    let lines = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            lines
                .with_ansi(std::io::stdout().is_terminal() && !no_color)
                .init()
        }
        LogFormat::Json => lines.json().flatten_event(true).init(),
    }
}

#[derive(Args)]
struct MatchArgs {
    image0: PathBuf,
    image1: PathBuf,
    /// Print matches, match scores and the stop layer as JSON.
    #[arg(long)]
    json: bool,
    /// Also write a picture of the matches to this PNG file: both images side by side at a
    /// common height (at most 720 px), a line per match coloured by confidence (red 0, yellow
    /// 0.5, green 1) and the score written on it.
    #[arg(long, value_name = "OUT.png")]
    png: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    matcher: MatcherArgs,
}

/// Height of `match --png` pictures; smaller images are not enlarged, so most chips keep
/// their own pixels.
const MATCH_PICTURE_HEIGHT: usize = 720;

/// LightGlue settings.
#[derive(Args, Clone)]
pub struct MatcherArgs {
    /// Early-exit confidence (-1 disables adaptive depth).
    #[arg(long, default_value_t = MatchOptions::default().depth_confidence, allow_negative_numbers = true)]
    pub depth_confidence: f32,
    /// Point-pruning confidence (-1 disables adaptive width).
    #[arg(long, default_value_t = MatchOptions::default().width_confidence, allow_negative_numbers = true)]
    pub width_confidence: f32,
    /// Minimum confidence of a match.
    #[arg(long, default_value_t = MatchOptions::default().filter_threshold)]
    pub filter_threshold: f32,
}

impl MatcherArgs {
    pub fn options(&self) -> MatchOptions {
        MatchOptions {
            depth_confidence: self.depth_confidence,
            width_confidence: self.width_confidence,
            filter_threshold: self.filter_threshold,
        }
    }
}

impl ModelArgs {
    pub fn load_lightglue(&self, device: &Device) -> Result<LightGlue> {
        let path = weights::find_weights(self.weights.as_deref(), weights::LIGHTGLUE_FILE)?;
        LightGlue::from_file_with_precision(&path, device, self.runtime.precision)
            .with_context(|| format!("loading {}", path.display()))
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    use wbia_lightglue_engine::{ConfigDir, Engine};
    init_logging(args.log_format);
    let device = args.runtime.open()?;
    let match_batch = match (args.match_batch, device.is_cuda()) {
        (0, true) => 16,
        (0, false) => 1,
        (n, _) => n,
    };
    // Each batch item pads to the largest feature set: 256 × 2048 keypoints is already
    // several GiB of activations.
    if match_batch > MAX_MATCH_BATCH {
        anyhow::bail!("--match-batch {match_batch}: at most {MAX_MATCH_BATCH}");
    }
    let configs = ConfigDir::new(&args.config_dir);
    // Fail fast on a broken default configuration rather than on the first request.
    let default = configs.load(None)?;
    let engine = Engine::start(EngineOptions {
        weights_dir: args.weights.clone(),
        max_requests: args.max_requests,
        max_pending_pairs: args.max_pending_pairs,
        cache_capacity: default.feature_cache_max_size,
        cache_bytes: args.cache_bytes,
        data_dir: Some(args.data_dir.clone()),
        database_url: args.database_url.clone().filter(|u| !u.is_empty()),
        device,
        precision: args.runtime.precision,
        match_batch,
        verify_chip_bytes: args.verify_chip_bytes,
    })?;
    tracing::info!(runtime = ?engine.runtime, "model worker started");
    if let Some(moved) = engine.store_quarantined() {
        tracing::warn!(
            moved_to = %moved.display(),
            "the feature store was corrupt: set aside, starting with an empty one (features are recomputed)"
        );
    }
    let wbia = wbia_client::WbiaClient::new(
        &args.wbia_url,
        wbia_client::ClientOptions {
            max_chip_bytes: args.max_chip_bytes,
            ca_file: args.ca_file.clone(),
            forward_idle_timeout: std::time::Duration::from_secs(args.body_idle_timeout),
            ..Default::default()
        },
    )?;
    let options = wbia_lightglue_server::ServerOptions {
        api_token: args.api_token.clone().filter(|t| !t.is_empty()),
        callback_hosts: args.callback_hosts.clone(),
        max_proxied: args.max_proxied,
        max_connections: args.max_connections,
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout),
        body_idle_timeout: std::time::Duration::from_secs(args.body_idle_timeout),
        max_job_result_bytes: args.max_job_result_bytes,
        chunk_annotations: args.chunk_annotations.max(1),
        chunk_lease: std::time::Duration::from_secs(args.chunk_lease_secs.max(1)),
        job_lease: std::time::Duration::from_secs(args.job_lease_secs.max(3)),
        chips: wbia_lightglue_service::ChipOptions {
            mode: args.chips,
            path_map: args.wbia_path_map.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let state = std::sync::Arc::new(wbia_lightglue_server::AppState::new(
        engine, wbia, configs, options,
    ));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(wbia_lightglue_server::serve(
        state,
        std::net::SocketAddr::new(args.host, args.port),
    ))?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Extract(args) => {
            let device = args.model.runtime.open()?;
            let model = args.model.load_aliked(&device)?;
            let image = load_image(&args.image)?;
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
        Command::Match(args) => {
            let device = args.model.runtime.open()?;
            let extractor = args.model.load_aliked(&device)?;
            let matcher = args.model.load_lightglue(&device)?;
            let (image0, image1) = (load_image(&args.image0)?, load_image(&args.image1)?);
            let f0 = extractor.extract(&image0)?;
            let f1 = extractor.extract(&image1)?;
            let result = matcher.match_pair(&f0, &f1, &args.matcher.options())?;
            if let Some(path) = &args.png {
                let picture = wbia_lightglue_model::render::draw_matches(
                    &image0,
                    &f0,
                    &image1,
                    &f1,
                    &result,
                    MATCH_PICTURE_HEIGHT,
                )?;
                std::fs::write(path, wbia_lightglue_model::render::encode_png(&picture)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if args.json {
                let out = serde_json::json!({
                    "score": result.score(),
                    "num_keypoints": [f0.len(), f1.len()],
                    "matches": result.matches,
                    "match_scores": result.scores,
                    "stop_layer": result.stop_layer,
                });
                println!("{out}");
            } else {
                println!("{}", result.score());
            }
        }
        Command::Bench(args) => bench::run(&args)?,
        Command::Serve(args) => serve(args)?,
        Command::Evaluate(args) => evaluate::run(&args)?,
        Command::ConvertWeights { input, output } => {
            let n = weights::convert_pth(&input, &output)
                .with_context(|| format!("converting {}", input.display()))?;
            println!("{n} tensors -> {}", output.display());
        }
    }
    Ok(())
}
