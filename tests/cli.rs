//! The `wbia-lightglue` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wbia-lightglue"))
}

/// The output of a run that must succeed (its stderr shown if it did not).
fn succeeded(run: Output) -> Output {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

/// The stderr of a run that must fail.
fn failed(run: Output) -> String {
    assert!(!run.status.success(), "should have failed");
    String::from_utf8_lossy(&run.stderr).into_owned()
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

#[test]
fn extract_writes_the_documented_tensors() {
    let out = std::env::temp_dir().join(format!(
        "wbia-lightglue-cli-{}.safetensors",
        std::process::id()
    ));
    let run = bin()
        .args([
            "extract",
            fixture("turtles/turtle_b3.jpg").to_str().unwrap(),
            "-o",
        ])
        .arg(&out)
        .args(["--max-keypoints", "300"])
        .output()
        .unwrap();
    let run = succeeded(run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("300 keypoints"), "{stdout}");

    let tensors = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(tensors["keypoints"].dims(), &[300, 2]);
    assert_eq!(tensors["keypoint_scores"].dims(), &[300]);
    assert_eq!(tensors["descriptors"].dims(), &[300, 128]);
    let size = tensors["image_size"].to_vec1::<f32>().unwrap();
    assert_eq!(size, vec![589.0, 518.0]);
}

/// Every variant extracts from the command line with its own descriptor width; aliked-t16's
/// 64-d features are written, and `match` refuses them with a clear error.
#[test]
fn extract_and_match_take_model_name() {
    for (variant, dim) in [
        ("aliked-n16rot", 128),
        ("aliked-n32", 128),
        ("aliked-t16", 64),
    ] {
        let out = std::env::temp_dir().join(format!(
            "wbia-lightglue-cli-{variant}-{}.safetensors",
            std::process::id()
        ));
        let run = bin()
            .args(["extract", "--model-name", variant, "--max-keypoints", "100"])
            .arg(fixture("turtles/turtle_b3.jpg"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        succeeded(run);
        let tensors = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(tensors["descriptors"].dims(), &[100, dim], "{variant}");
    }
    let refused = bin()
        .args([
            "match",
            "--model-name",
            "aliked-t16",
            "--max-keypoints",
            "64",
        ])
        .arg(fixture("turtles/turtle_b3.jpg"))
        .arg(fixture("turtles/turtle_b4.jpg"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("64-d descriptors"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let unknown = bin()
        .args(["extract", "--model-name", "aliked-x", "-o", "/dev/null"])
        .arg(fixture("turtles/turtle_b3.jpg"))
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("aliked-n16rot"));
}

#[test]
fn match_json_has_the_documented_fields() {
    let run = bin()
        .args(["match", "--json", "--max-keypoints", "256"])
        .arg(fixture("turtles/turtle_b3.jpg"))
        .arg(fixture("turtles/turtle_b4.jpg"))
        .output()
        .unwrap();
    let run = succeeded(run);
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let matches = v["matches"].as_array().unwrap();
    let scores = v["match_scores"].as_array().unwrap();
    assert_eq!(matches.len(), scores.len());
    assert!(!matches.is_empty());
    assert_eq!(v["num_keypoints"], serde_json::json!([256, 256]));
    let sum: f64 = scores.iter().map(|s| s.as_f64().unwrap()).sum();
    assert!((sum - v["score"].as_f64().unwrap()).abs() < 1e-2 * sum.max(1.0));
    assert!((1..=9).contains(&v["stop_layer"].as_u64().unwrap()));
}

#[test]
fn match_png_shows_both_images_with_the_matches() {
    let out = std::env::temp_dir().join(format!("wbia-lightglue-cli-{}.png", std::process::id()));
    let (a, b) = (
        fixture("turtles/turtle_a1.jpg"),
        fixture("turtles/turtle_a2.jpg"),
    );
    let run = bin()
        .args(["match", "--max-keypoints", "256", "--png"])
        .arg(&out)
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let run = succeeded(run);
    let score: f32 = String::from_utf8_lossy(&run.stdout).trim().parse().unwrap();
    assert!(score > 1.0, "{score}");
    let png = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let picture = wbia_lightglue_model::decode_image(&png).unwrap();

    // 518×631 and 518×637: both at the taller height (under the 720 px cap), 8 px apart.
    let (a, b) = (
        wbia_lightglue_model::load_image(&a).unwrap(),
        wbia_lightglue_model::load_image(&b).unwrap(),
    );
    let height = a.height.max(b.height);
    let width = |i: &wbia_lightglue_model::RgbImage| {
        (i.width as f64 * height as f64 / i.height as f64).round() as u32
    };
    assert_eq!((width(&a), width(&b), height), (523, 518, 637));
    assert_eq!(
        (picture.width, picture.height),
        (width(&a) + 8 + width(&b), height)
    );
    // The chips as `side_by_side` lays them out, with lines drawn over them.
    let plain = wbia_lightglue_model::render::side_by_side(&a, &b, 720).unwrap();
    assert_eq!((plain.width, plain.height), (picture.width, picture.height));
    let changed = picture
        .data
        .chunks(3)
        .zip(plain.data.chunks(3))
        .filter(|(p, q)| p != q)
        .count();
    assert!(changed > 1000, "{changed} pixels drawn");
}

#[test]
fn bad_image_is_a_clear_error() {
    let run = bin()
        .args(["extract", "Cargo.toml", "-o", "/dev/null"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = failed(run);
    assert!(stderr.contains("unsupported"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_weights_are_a_clear_error() {
    let run = bin()
        .args([
            "extract",
            fixture("turtles/turtle_b3.jpg").to_str().unwrap(),
            "-o",
            "/dev/null",
        ])
        .args(["--weights", "/nonexistent-weights-dir"])
        .output()
        .unwrap();
    let stderr = failed(run);
    assert!(stderr.contains("aliked-n16.safetensors"), "{stderr}");
}

#[test]
fn evaluate_reports_cmc_and_map_on_the_turtles() {
    let run = bin()
        .args([
            "evaluate",
            "--json",
            "--max-keypoints",
            "256",
            "--group-column",
            "side",
            "--csv",
        ])
        .arg(fixture("turtles/labels.csv"))
        .output()
        .unwrap();
    let run = succeeded(run);
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["queries"], 4);
    assert_eq!(v["cmc"][0], serde_json::json!([1, 1.0]));
    assert_eq!(v["mean_average_precision"], 1.0);
}

/// `evaluate --json` with the given arguments, parsed.
fn evaluate_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let run = succeeded(
        bin()
            .args(["evaluate", "--json"])
            .args(args)
            .output()
            .unwrap(),
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

/// Calibration fitted on one labelled set (the four turtles) and applied to another (three
/// building and graffiti pairs, 15 pairs, no image in common): the configuration file it
/// writes loads, and on the other set its probabilities beat the prior's Brier score by more
/// than half and rank same-identity pairs above the others on average.
#[test]
fn evaluate_calibrates_on_one_set_and_checks_on_another() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("calibrated.json");
    let fitted = evaluate_json(&[
        "--max-keypoints".as_ref(),
        "512".as_ref(),
        "--csv".as_ref(),
        fixture("turtles/labels.csv").as_os_str(),
        "--calibrate".as_ref(),
        config.as_os_str(),
    ]);
    let slope = fitted["fitted_calibration"]["slope"].as_f64().unwrap();
    assert!(slope > 0.0, "{fitted}");
    let text = std::fs::read_to_string(&config).unwrap();
    let loaded = wbia_lightglue_engine::Config::from_json(&text, "calibrated.json").unwrap();
    assert_eq!(loaded.max_num_keypoints, 512);
    assert_eq!(loaded.depth_confidence, 0.95, "thresholds written as given");
    assert_eq!(loaded.calibration.as_ref().unwrap().slope, slope);

    let applied = evaluate_json(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--csv".as_ref(),
        fixture("buildings.csv").as_os_str(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let check = &applied["calibration_check"];
    println!(
        "fitted on turtles: {}; on buildings: {check}",
        fitted["fitted_calibration"]
    );
    assert_eq!(check["pairs"], 15);
    let (brier, prior) = (
        check["brier"].as_f64().unwrap(),
        check["brier_of_prior"].as_f64().unwrap(),
    );
    assert!(brier < 0.5 * prior, "{check}");
    assert!(
        check["mean_genuine"].as_f64() > check["mean_impostor"].as_f64(),
        "{check}"
    );
    assert!(applied["genuine_scores"]["min"].as_f64() > applied["impostor_scores"]["min"].as_f64());
}

/// An ensemble with `"fusion": "log_odds"` on the buildings (6 images, 15 pairs, 256
/// keypoints): `--calibrate` fits each member's calibration on that member's scores alone
/// (the same fit as calibrating the single model), `--pairs` writes every pair with its
/// members' scores, the fused score is Σ slopeᵢ·ln(1 + sᵢ) of them, and the written
/// configuration, loaded as the service would, scores every pair the same again.
#[test]
fn evaluate_fits_member_calibrations_for_log_odds_and_writes_pairs() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-log-odds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    let ensemble = dir.join("ensemble.json");
    std::fs::write(
        &ensemble,
        r#"{"model_name": ["aliked-n16", "aliked-n16rot"], "fusion": "log_odds",
            "max_num_keypoints": 256}"#,
    )
    .unwrap();
    let single = dir.join("single.json");
    std::fs::write(
        &single,
        r#"{"model_name": "aliked-n16", "max_num_keypoints": 256}"#,
    )
    .unwrap();
    let (fitted, pairs) = (dir.join("fitted.json"), dir.join("pairs.csv"));
    let csv = fixture("buildings.csv");
    let run = |config: &PathBuf, extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--config".as_ref(),
            config.as_os_str(),
            "--data-dir".as_ref(),
            store.as_os_str(),
            "--csv".as_ref(),
            csv.as_os_str(),
        ];
        args.extend_from_slice(extra);
        evaluate_json(&args)
    };
    run(
        &ensemble,
        &[
            "--calibrate".as_ref(),
            fitted.as_os_str(),
            "--pairs".as_ref(),
            pairs.as_os_str(),
        ],
    );
    let text = std::fs::read_to_string(&fitted).unwrap();
    let config = wbia_lightglue_engine::Config::from_json(&text, "fitted.json").unwrap();
    let slopes: Vec<f64> = config.member_calibrations.iter().map(|c| c.slope).collect();
    assert_eq!(slopes.len(), 2, "{text}");
    let alone = run(
        &single,
        &["--calibrate".as_ref(), dir.join("n16.json").as_os_str()],
    );
    assert_eq!(
        alone["fitted_calibration"]["slope"].as_f64(),
        Some(slopes[0])
    );

    let read = |path: &PathBuf| -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let rows = read(&pairs);
    assert_eq!(
        rows[0],
        [
            "query",
            "candidate",
            "same_identity",
            "score",
            "aliked-n16",
            "aliked-n16rot"
        ]
    );
    assert_eq!(rows.len(), 1 + 15);
    assert_eq!(rows.iter().filter(|r| r[2] == "true").count(), 3);
    for row in &rows[1..] {
        let v: Vec<f64> = row[3..].iter().map(|x| x.parse().unwrap()).collect();
        let expected = slopes[0] * v[1].ln_1p() + slopes[1] * v[2].ln_1p();
        assert!(
            (v[0] - expected).abs() <= 1e-5 * expected,
            "{row:?}: {expected}"
        );
    }
    // The written configuration, as the service loads it: the engine fuses each pair
    // to the same score.
    let again = dir.join("again.csv");
    run(&fitted, &["--pairs".as_ref(), again.as_os_str()]);
    assert_eq!(read(&again), rows);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A query photographed sideways (turtle_a1 turned 90°, as PNG) among the other turtles:
/// without the sweep it misses (CMC@1 0.5) and `--png` draws its failure, its top candidates
/// and its same-identity one below; with `--rotation-sweep` every query hits.
#[test]
fn evaluate_draws_failures_and_the_sweep_fixes_a_turned_query() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-turned-{}", std::process::id()));
    let pictures = dir.join("failures");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["turtle_a2.jpg", "turtle_b3.jpg", "turtle_b4.jpg"] {
        std::fs::copy(fixture(&format!("turtles/{name}")), dir.join(name)).unwrap();
    }
    let a1 = wbia_lightglue_model::load_image(fixture("turtles/turtle_a1.jpg")).unwrap();
    let turned = a1.rotated(wbia_lightglue_model::Rotation::Cw90).unwrap();
    let png = wbia_lightglue_model::render::encode_png(&turned).unwrap();
    std::fs::write(dir.join("turtle_a1_turned.png"), png).unwrap();
    let csv = dir.join("labels.csv");
    std::fs::write(
        &csv,
        "path,identity\nturtle_a2.jpg,a\nturtle_b3.jpg,b\nturtle_b4.jpg,b\nturtle_a1_turned.png,a\n",
    )
    .unwrap();
    let common = [
        "--max-keypoints".as_ref(),
        "512".as_ref(),
        "--csv".as_ref(),
        csv.as_os_str(),
    ];

    let plain = evaluate_json(&[&common[..], &["--png".as_ref(), pictures.as_os_str()]].concat());
    assert_eq!(plain["cmc"][0], serde_json::json!([1, 0.5]), "{plain}");
    let mut saved: Vec<String> = std::fs::read_dir(&pictures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    saved.sort();
    // Both a-queries miss: each ranks a b first.
    assert_eq!(
        saved,
        ["0000-turtle_a2.jpg.png", "0003-turtle_a1_turned.png.png"]
    );
    let picture =
        wbia_lightglue_model::decode_image(&std::fs::read(pictures.join(&saved[1])).unwrap())
            .unwrap();
    // Three candidates (its same-identity one, third, among them), 360 px each plus labels.
    assert!(
        picture.height > 3 * 360 && picture.height < 3 * 420,
        "{}",
        picture.height
    );

    let sweep = evaluate_json(&[&common[..], &["--rotation-sweep".as_ref()]].concat());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(sweep["cmc"][0], serde_json::json!([1, 1.0]), "{sweep}");
    let genuine = &sweep["genuine_scores"];
    assert!(
        genuine["min"].as_f64() > sweep["impostor_scores"]["max"].as_f64(),
        "{sweep}"
    );
}

#[test]
fn evaluate_names_a_bad_csv() {
    let csv = std::env::temp_dir().join(format!("wbia-lg-bad-{}.csv", std::process::id()));
    std::fs::write(&csv, "file,label\nx.jpg,a\n").unwrap();
    let run = bin()
        .args(["evaluate", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    std::fs::remove_file(&csv).unwrap();
    let stderr = failed(run);
    assert!(stderr.contains("`path` and `identity`"), "{stderr}");
}

/// `evaluate` over annotations fetched from WBIA by UUID (a fake WBIA on port 0 serving the
/// turtle fixtures); an unnamed annotation is skipped.
#[test]
fn evaluate_fetches_annotations_from_wbia() {
    use axum::extract::{Path, Query};
    use axum::routing::get;
    use serde_json::{json, Value};
    use std::collections::HashMap;

    let annots = [
        (0xa1u128, 1i64, "turtle_a1.jpg", "a"),
        (0xa2, 2, "turtle_a2.jpg", "a"),
        (0xb3, 3, "turtle_b3.jpg", "b"),
        (0xb4, 4, "turtle_b4.jpg", "b"),
        (0xc5, 5, "turtle_b4.jpg", "____"),
    ];
    let uuid = |n: u128| format!("00000000-0000-0000-0000-{n:012x}");
    let lookup = move |q: &HashMap<String, String>, f: &dyn Fn(usize) -> Value| -> Value {
        let list: Vec<Value> = serde_json::from_str(&q["annot_uuid_list"]).unwrap();
        let out: Vec<Value> = list
            .iter()
            .map(|u| {
                let s = u["__UUID__"].as_str().or(u.as_str()).unwrap().to_string();
                let i = annots.iter().position(|a| uuid(a.0) == s).unwrap();
                f(i)
            })
            .collect();
        json!({"status": {"success": true, "code": 200, "message": "", "cache": -1}, "response": out})
    };
    let app = axum::Router::new()
        .route(
            "/api/annot/name/text/json/",
            get(move |Query(q): Query<HashMap<String, String>>| async move {
                axum::Json(lookup(&q, &|i| json!(annots[i].3)))
            }),
        )
        .route(
            "/api/annot/rowid/uuid/json/",
            get(move |Query(q): Query<HashMap<String, String>>| async move {
                axum::Json(lookup(&q, &|i| json!(annots[i].1)))
            }),
        )
        .route(
            "/api/annot/src/{aid}/",
            get(move |Path(aid): Path<i64>| async move {
                let a = annots.iter().find(|a| a.1 == aid).unwrap();
                std::fs::read(fixture(&format!("turtles/{}", a.2))).unwrap()
            }),
        );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let list = std::env::temp_dir().join(format!("wbia-lg-uuids-{}.txt", std::process::id()));
    let lines: Vec<String> = annots.iter().map(|a| uuid(a.0)).collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let run = bin()
        .args(["evaluate", "--json", "--max-keypoints", "256", "--uuids"])
        .arg(&list)
        .args(["--wbia-url", &format!("http://{addr}")])
        .output()
        .unwrap();
    std::fs::remove_file(&list).unwrap();
    let run = succeeded(run);
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["queries"], 4, "the unnamed annotation is skipped: {v}");
    assert_eq!(v["cmc"][0], json!([1, 1.0]));
}

/// Device and precision mistakes are refused at once, with the reason.
#[test]
fn bad_device_settings_are_clear_errors() {
    let fails_with = |args: &[&str], needle: &str| {
        let stderr = failed(bin().args(args).output().unwrap());
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    let image = fixture("turtles/turtle_a1.jpg");
    let image = image.to_str().unwrap();
    fails_with(
        &["match", image, image, "--device", "gpu"],
        "unknown device",
    );
    fails_with(
        &["match", image, image, "--precision", "int8"],
        "unknown precision",
    );
    fails_with(
        &["serve", "--device", "cpu", "--match-batch", "1000"],
        "at most 256",
    );
    if !cfg!(feature = "cuda") {
        fails_with(
            &["match", image, image, "--device", "cuda:0"],
            "no CUDA support",
        );
    }
}

/// A `serve` on loopback (port 0) with its log piped, read up to the line that says it
/// listens; the lines read.
#[cfg(unix)]
fn serve_until_listening(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Vec<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = bin()
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--wbia-url", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config-dir")
        .arg(dir.join("config"))
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let listening = line.contains("listening");
        seen.push(line);
        if listening {
            return (child, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve never listened: {seen:?}");
}

/// `serve` stops on SIGTERM (what `docker stop` sends) and exits 0, instead of waiting to be
/// killed; its log, written to a pipe, carries no colour codes.
#[cfg(unix)]
#[test]
fn serve_exits_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-sigterm-{}", std::process::id()));
    let (mut child, lines) = serve_until_listening(&dir, &[]);
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a piped log: {line:?}"
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "exit status {status:?}");
}

/// `--log-format json`: every line is one JSON object with the level, the target and the
/// event's fields at the top level.
#[cfg(unix)]
#[test]
fn serve_logs_json_lines() {
    let dir = std::env::temp_dir().join(format!("wbia-lg-jsonlog-{}", std::process::id()));
    let (mut child, lines) = serve_until_listening(&dir, &["--log-format", "json"]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            event["level"].is_string() && event["target"].is_string(),
            "{line}"
        );
        assert!(event["message"].is_string(), "{line}");
    }
    let listening: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(listening["level"], "INFO", "{listening}");
}
