//! `wbia-lightglue bench`: the timings `scripts/bench.sh` sets beside the PyTorch reference's
//! (`scripts/reference/bench_reference.py`), with the same keys and the same inputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Map, Value};
use wbia_lightglue_model::{device_name, load_image, Features, MatchOptions, RgbImage};

use crate::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// Image for the extraction timing.
    #[arg(long, default_value = "tests/fixtures/lightglue/sacre_coeur1.jpg")]
    image: PathBuf,
    /// Directory of the fixture images (the sacre_coeur pair and the 1-vs-N database).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Database size for 1-vs-N.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Pairs per padded batch in batched 1-vs-N.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Batched 1-vs-N in padded batches even where the matcher would run the pairs one by one
    /// (the CPU's host layers), to time what padding costs there.
    #[arg(long)]
    padded: bool,
    #[arg(long)]
    skip_1vn: bool,
    /// Keypoint counts to time matching at (for profiling one size).
    #[arg(long, value_delimiter = ',', default_values_t = [2048, 512])]
    sizes: Vec<i64>,
    /// Time extraction once instead of `--repeat` times (for profiling matching).
    #[arg(long)]
    skip_extract: bool,
    /// Matching modes to time: adaptive, full.
    #[arg(long, value_delimiter = ',', default_values_t = ["adaptive".to_string(), "full".to_string()])]
    modes: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
}

const DB_IMAGES: [&str; 11] = [
    "lightglue/sacre_coeur1.jpg",
    "lightglue/sacre_coeur2.jpg",
    "lightglue/DSC_0410.JPG",
    "lightglue/DSC_0411.JPG",
    "opencv/graf1.png",
    "opencv/graf3.png",
    "turtles/turtle_a1.jpg",
    "turtles/turtle_a2.jpg",
    "turtles/turtle_b3.jpg",
    "turtles/turtle_b4.jpg",
    "wbia/2014_000001.jpg",
];

/// Median and all run times in milliseconds, after one untimed warm-up.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, Vec<f64>)> {
    f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Ok((median, times))
}

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

fn round2(v: f64) -> Value {
    json!((v * 100.0).round() / 100.0)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = args.model.runtime.open()?;
    let mut res = Map::new();
    res.insert("device".into(), json!(device_name(&device)));
    res.insert("precision".into(), json!(args.model.runtime.precision));
    res.insert(
        "threads".into(),
        json!(std::env::var("RAYON_NUM_THREADS").ok()),
    );
    res.insert("repeat".into(), json!(args.repeat));

    let extractor = args.model.load_aliked(&device)?;
    let image = load_image(&args.image)?;
    let extract_repeat = if args.skip_extract { 0 } else { args.repeat };
    let (median, times) = timed(extract_repeat, || Ok(extractor.extract(&image)?))?;
    res.insert("extract_image".into(), json!(args.image));
    res.insert("extract_ms".into(), round2(median));
    res.insert("extract_chips_per_s".into(), round2(1e3 / median));
    res.insert(
        "extract_ms_all".into(),
        json!(times.iter().map(|t| round2(*t)).collect::<Vec<_>>()),
    );
    res.insert("peak_rss_mb_after_extract".into(), json!(peak_rss_mb()));
    eprintln!("extract: {median:.1} ms");

    let fixture = |p: &str| -> Result<RgbImage> { Ok(load_image(args.fixtures.join(p))?) };
    let sc = [fixture(DB_IMAGES[0])?, fixture(DB_IMAGES[1])?];
    let extract_pair = |max: i64| -> Result<(Features, Features)> {
        let mut model = args.model.clone();
        model.max_keypoints = max;
        let e = model.load_aliked(&device)?;
        Ok((e.extract(&sc[0])?, e.extract(&sc[1])?))
    };
    let pairs = args
        .sizes
        .iter()
        .map(|&k| Ok((k, extract_pair(k)?)))
        .collect::<Result<Vec<_>>>()?;
    let modes = args
        .modes
        .iter()
        .map(|mode| match mode.as_str() {
            "adaptive" => Ok(("adaptive", MatchOptions::default())),
            "full" => Ok(("full", MatchOptions::full())),
            other => anyhow::bail!("unknown mode {other:?} (adaptive or full)"),
        })
        .collect::<Result<Vec<_>>>()?;
    let matcher = args.model.load_lightglue(&device)?;
    for (mode, options) in &modes {
        for (k, (f0, f1)) in &pairs {
            let out = matcher.match_pair(f0, f1, options)?;
            let (median, times) = timed(args.repeat, || Ok(matcher.match_pair(f0, f1, options)?))?;
            let key = format!("match_ms_{k}_{mode}");
            res.insert(key.clone(), round2(median));
            res.insert(
                format!("{key}_all"),
                json!(times.iter().map(|t| round2(*t)).collect::<Vec<_>>()),
            );
            res.insert(format!("matches_{k}_{mode}"), json!(out.matches.len()));
            res.insert(format!("stop_{k}_{mode}"), json!(out.stop_layer));
            eprintln!(
                "{key}: {median:.1} ms ({} matches, stop {})",
                out.matches.len(),
                out.stop_layer
            );
        }
    }
    res.insert("peak_rss_mb_after_match".into(), json!(peak_rss_mb()));

    if !args.skip_1vn {
        let db_feats = DB_IMAGES
            .iter()
            .map(|p| Ok(extractor.extract(&fixture(p)?)?))
            .collect::<Result<Vec<_>>>()?;
        let db: Vec<&Features> = (0..args.n).map(|i| &db_feats[i % db_feats.len()]).collect();
        let query = &extractor.extract(&sc[0])?;

        // Seconds to match the query against every database entry, pair by pair.
        let sequential = |options: &MatchOptions| -> Result<f64> {
            let start = Instant::now();
            for f in &db {
                matcher.match_pair(query, f, options)?;
            }
            let dt = start.elapsed().as_secs_f64();
            eprintln!(
                "1-vs-{} sequential {}: {:.2} pairs/s",
                args.n,
                if options.depth_confidence > 0.0 {
                    "adaptive"
                } else {
                    "full"
                },
                args.n as f64 / dt
            );
            Ok(dt)
        };
        let adaptive = MatchOptions::default();
        matcher.match_pair(query, db[1], &adaptive)?;
        let dt = sequential(&adaptive)?;
        res.insert("one_vs_n_n".into(), json!(args.n));
        res.insert("one_vs_n_mode".into(), json!("adaptive"));
        res.insert("one_vs_n_total_s".into(), round2(dt));
        res.insert("one_vs_n_pairs_per_s".into(), json!(args.n as f64 / dt));

        let full = MatchOptions::full();
        let dt = sequential(&full)?;
        res.insert("one_vs_n_full_total_s".into(), round2(dt));
        res.insert(
            "one_vs_n_full_pairs_per_s".into(),
            json!(args.n as f64 / dt),
        );

        let pairs: Vec<(&Features, &Features)> = db.iter().map(|d| (query, *d)).collect();
        let batched = |pairs: &[(&Features, &Features)]| {
            if args.padded {
                matcher.match_pairs_padded(pairs, args.batch_size, &full)
            } else {
                matcher.match_pairs(pairs, args.batch_size, &full)
            }
        };
        // Warm-up: one batch (allocations, kernel loading on a GPU).
        batched(&pairs[..args.batch_size.min(pairs.len())])?;
        let start = Instant::now();
        batched(&pairs)?;
        let dt = start.elapsed().as_secs_f64();
        res.insert("one_vs_n_batched_padded".into(), json!(args.padded));
        res.insert("one_vs_n_batched_batch_size".into(), json!(args.batch_size));
        res.insert("one_vs_n_batched_total_s".into(), round2(dt));
        res.insert(
            "one_vs_n_batched_pairs_per_s".into(),
            json!(args.n as f64 / dt),
        );
        res.insert("peak_rss_mb_after_1vn".into(), json!(peak_rss_mb()));
        eprintln!(
            "1-vs-{} batched full: {:.2} pairs/s",
            args.n,
            args.n as f64 / dt
        );
    }
    println!("{}", Value::Object(res));
    Ok(())
}
