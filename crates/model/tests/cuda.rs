//! CUDA against CPU: our kernels against their CPU twins, extraction against the CPU and the
//! PyTorch goldens on the sweep's extremes, matching on real pairs, and the other ALIKED
//! variants. Built only with the
//! `cuda` feature; each test prints why it skipped when no CUDA device is present, unless
//! `WBIA_LIGHTGLUE_REQUIRE_CUDA` is set (the binary itself needs the NVIDIA driver's libcuda
//! to start).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor};
use common::{
    aliked, compare_features, fixture, golden_features, max_abs_diff, repo_root, sweep_features,
    sweep_input, sweep_manifest, sweep_options, vec1,
};
use wbia_lightglue_model::ops::{deform_conv2d, grid_sample};
use wbia_lightglue_model::{
    load_image, weights, Aliked, AlikedConfig, DetectOptions, Features, LightGlue, MatchOptions,
    Precision,
};

/// The first GPU. Without one each test skips, except where `WBIA_LIGHTGLUE_REQUIRE_CUDA` is
/// set (`scripts/gpu-check.sh` sets it): there a CUDA that fails to start is a failure, not
/// a pass.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("WBIA_LIGHTGLUE_REQUIRE_CUDA").is_some() => {
            panic!("WBIA_LIGHTGLUE_REQUIRE_CUDA is set but no CUDA device opens: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn rand(shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::rand(lo, hi, shape, &Device::Cpu).unwrap()
}

/// Bilinear gathers: the CUDA kernel adds the same products in the same order as the CPU one.
#[test]
fn grid_sample_kernel_equals_cpu() {
    let Some(dev) = gpu() else { return };
    let map = rand(&[128, 37, 53], -2.0, 2.0);
    // Points inside, on the border and outside the map.
    let pts = vec1(&rand(&[4000, 2], -1.2, 1.2));
    let points: Vec<[f32; 2]> = pts.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    let cpu = grid_sample(&map, &points).unwrap();
    let gpu = grid_sample(&map.to_device(&dev).unwrap(), &points).unwrap();
    assert!(gpu.device().is_cuda());
    let diff = max_abs_diff(&vec1(&cpu), &vec1(&gpu.to_device(&Device::Cpu).unwrap()));
    assert!(diff <= 1e-6, "grid_sample CPU vs CUDA: {diff}");
}

/// Deformable convolution: columns equal, the matrix product (cuBLAS vs gemm) within 1e-4.
#[test]
fn deform_conv_kernel_equals_cpu() {
    let Some(dev) = gpu() else { return };
    let (c, o, h, w) = (32, 16, 24, 40);
    let input = rand(&[1, c, h, w], -1.0, 1.0);
    // Offsets of up to ±4 px push many samples partly or wholly off the map.
    let offset = rand(&[1, 18, h, w], -4.0, 4.0);
    let weight = rand(&[o, c, 3, 3], -0.2, 0.2);
    let bias = rand(&[o], -0.5, 0.5);
    let cpu = deform_conv2d(&input, &offset, &weight, Some(&bias), 1).unwrap();
    let on = |t: &Tensor| t.to_device(&dev).unwrap();
    let gpu = deform_conv2d(&on(&input), &on(&offset), &on(&weight), Some(&on(&bias)), 1).unwrap();
    assert!(gpu.device().is_cuda());
    let diff = max_abs_diff(&vec1(&cpu), &vec1(&gpu.to_device(&Device::Cpu).unwrap()));
    assert!(diff <= 1e-4, "deform_conv2d CPU vs CUDA: {diff}");
}

fn matcher(dev: &Device, precision: Precision) -> LightGlue {
    let path =
        weights::find_weights(Some(&repo_root().join("weights")), weights::LIGHTGLUE_FILE).unwrap();
    LightGlue::from_file_with_precision(path, dev, precision).unwrap()
}

fn extractor(dev: &Device, options: DetectOptions) -> Aliked {
    let path =
        weights::find_weights(Some(&repo_root().join("weights")), weights::ALIKED_FILE).unwrap();
    Aliked::from_file(path, options, dev).unwrap()
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1.0)
}

/// Extraction on CUDA against the CPU and the PyTorch goldens, keypoints compared as sets
/// (`compare_features`): a whole non-square photo at the plugin's defaults, and sweep cases
/// at their extremes (a 512 × 512 square and a 4,096 px square at 2,048 keypoints, 1:4 and
/// 4:1, 24 × 20 px upsampled, 31 × 17 px not resized). Held to the CPU's promise (issue 15):
/// ≥ 99% of keypoints within 0.01 px, descriptor cosine ≥ 0.9999, keypoint scores within
/// 1e-4 — on CUDA the convolutions are cuBLAS products and candle's kernels, which add in
/// another order than the CPU's; no tighter bound is set before a GPU has been measured.
#[test]
fn extraction_equals_cpu_and_goldens() {
    let Some(dev) = gpu() else { return };
    let photo = load_image(fixture("turtles/turtle_a1.jpg")).unwrap();
    let mut inputs = vec![(
        "turtle_a1 (518 x 631)".to_string(),
        photo,
        DetectOptions::default(),
        None,
    )];
    let manifest = sweep_manifest();
    for case in [
        "ar_1_512",
        "big_square_4096",
        "ar_1to4",
        "ar_4to1",
        "tiny_24x20",
        "raw_31x17",
    ] {
        let entry = &manifest["cases"][case];
        inputs.push((
            case.to_string(),
            sweep_input(entry),
            sweep_options(entry),
            Some(sweep_features(case)),
        ));
    }
    let mut failures = Vec::new();
    for (name, image, options, golden) in inputs {
        let cpu = aliked(options.clone()).extract(&image).unwrap();
        let on_gpu = extractor(&dev, options).extract(&image).unwrap();
        let mut against = vec![("CPU", compare_features(&on_gpu, &cpu))];
        if let Some(g) = &golden {
            against.push(("PyTorch", compare_features(&on_gpu, g)));
        }
        for (what, p) in against {
            println!(
                "{name:24} CUDA vs {what:7} {:>4} kp: {:.4} within 0.01 px, min cosine {:.7}, \
                 max score diff {:.1e}",
                on_gpu.len(),
                p.matched_fraction,
                p.min_cosine,
                p.max_score_diff
            );
            if p.matched_fraction < 0.99 || p.min_cosine < 0.9999 || p.max_score_diff > 1e-4 {
                failures.push(format!("{name} vs {what}"));
            }
        }
        if on_gpu.len() != cpu.len() || on_gpu.image_size != cpu.image_size {
            failures.push(format!(
                "{name}: {} keypoints on CUDA, {} on CPU",
                on_gpu.len(),
                cpu.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Matching on CUDA: f32 pair scores within 1e-3 of CPU; f16 and bf16 within 2% of f32;
/// batched 1-vs-N equal to single pairs.
#[test]
fn matching_equals_cpu() {
    let Some(dev) = gpu() else { return };
    let pairs = [
        ("turtle_a1", "turtle_a2"),
        ("turtle_a1", "turtle_b3"),
        ("sacre_coeur1", "sacre_coeur2"),
    ];
    let cpu = matcher(&Device::Cpu, Precision::F32);
    let on_gpu: Vec<(Precision, LightGlue)> = [Precision::F32, Precision::F16, Precision::Bf16]
        .into_iter()
        .map(|p| (p, matcher(&dev, p)))
        .collect();
    for (a, b) in pairs {
        let (f0, f1) = (golden_features(a), golden_features(b));
        let adaptive = MatchOptions::default();
        let reference = cpu.match_pair(&f0, &f1, &adaptive).unwrap().score();
        for (precision, m) in &on_gpu {
            let s = m.match_pair(&f0, &f1, &adaptive).unwrap().score();
            let tolerance = if *precision == Precision::F32 {
                1e-3
            } else {
                0.02
            };
            println!(
                "{a}-{b} {precision}: CUDA {s:.4} vs CPU f32 {reference:.4} (rel {:.2e})",
                rel(s, reference)
            );
            assert!(rel(s, reference) <= tolerance, "{a}-{b} {precision}");
        }
    }
    let query = golden_features("turtle_a1");
    let database: Vec<Features> = ["turtle_a2", "turtle_b3", "turtle_b4", "sacre_coeur2"]
        .iter()
        .map(|n| golden_features(n))
        .collect();
    let refs: Vec<&Features> = database.iter().collect();
    let (matcher, full) = (&on_gpu[0].1, MatchOptions::full());
    let batched = matcher.match_batch(&query, &refs, 4, &full).unwrap();
    for (f, r) in database.iter().zip(&batched) {
        let single = matcher.match_pair(&query, f, &full).unwrap();
        assert!(rel(r.score(), single.score()) <= 1e-3);
    }
    assert_eq!(on_gpu[0].1.precision(), Precision::F32);
}

/// The other ALIKED variants on CUDA (aliked-n16rot, aliked-n32, each with its own weights): extraction of a real pair against the CPU at the promise above, and the
/// pair's f32 score on CUDA within 1e-3 of the CPU's, adaptive and full depth.
#[test]
fn variants_equal_cpu() {
    let Some(dev) = gpu() else { return };
    let images = ["lightglue/sacre_coeur1.jpg", "lightglue/sacre_coeur2.jpg"]
        .map(|f| load_image(fixture(f)).unwrap());
    let mut failures = Vec::new();
    for arch in [AlikedConfig::n16rot(), AlikedConfig::n32()] {
        let load = |device: &Device| {
            let path = weights::find_weights(Some(&repo_root().join("weights")), arch.weights_file)
                .unwrap_or_else(|e| panic!("{}: {e}", arch.weights_file));
            Aliked::from_file_variant(path, arch, DetectOptions::default(), device).unwrap()
        };
        let (cpu, on_gpu) = (load(&Device::Cpu), load(&dev));
        let mut features = Vec::new();
        for (image, side) in images.iter().zip(["0", "1"]) {
            let (c, g) = (cpu.extract(image).unwrap(), on_gpu.extract(image).unwrap());
            let p = compare_features(&g, &c);
            println!(
                "{} image {side}: CUDA vs CPU {:>4} kp: {:.4} within 0.01 px, min cosine {:.7}, \
                 max score diff {:.1e}",
                arch.name,
                g.len(),
                p.matched_fraction,
                p.min_cosine,
                p.max_score_diff
            );
            if p.matched_fraction < 0.99 || p.min_cosine < 0.9999 || p.max_score_diff > 1e-4 {
                failures.push(format!("{} image {side}", arch.name));
            }
            features.push(c);
        }
        // One LightGlue for every 128-d variant, as the reference has.
        let (cpu_m, gpu_m) = (
            matcher(&Device::Cpu, Precision::F32),
            matcher(&dev, Precision::F32),
        );
        for (mode, options) in [
            ("adaptive", MatchOptions::default()),
            ("full", MatchOptions::full()),
        ] {
            let want = cpu_m
                .match_pair(&features[0], &features[1], &options)
                .unwrap()
                .score();
            let got = gpu_m
                .match_pair(&features[0], &features[1], &options)
                .unwrap()
                .score();
            println!(
                "{} {mode}: CUDA {got:.4} vs CPU {want:.4} (rel {:.2e})",
                arch.name,
                rel(got, want)
            );
            if rel(got, want) > 1e-3 {
                failures.push(format!("{} {mode}: pair score", arch.name));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
