//! CUDA against CPU: our kernels against their CPU twins, and the whole pipeline on a real
//! pair. Built only with the `cuda` feature; each test prints why it skipped when no CUDA
//! device is present, unless `WBIA_LIGHTGLUE_REQUIRE_CUDA` is set (the binary itself needs the
//! NVIDIA driver's libcuda to start).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, golden_features, max_abs_diff, repo_root, vec1};
use wbia_lightglue_model::ops::{deform_conv2d, grid_sample};
use wbia_lightglue_model::{
    load_image, weights, Aliked, DetectOptions, Features, LightGlue, MatchOptions, Precision,
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

fn extractor(dev: &Device) -> Aliked {
    let path =
        weights::find_weights(Some(&repo_root().join("weights")), weights::ALIKED_FILE).unwrap();
    Aliked::from_file(path, DetectOptions::default(), dev).unwrap()
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1.0)
}

/// Extraction on CUDA keeps the CPU's keypoints and descriptors.
#[test]
fn extraction_equals_cpu() {
    let Some(dev) = gpu() else { return };
    let image = load_image(fixture("turtles/turtle_a1.jpg")).unwrap();
    let cpu = extractor(&Device::Cpu).extract(&image).unwrap();
    let gpu = extractor(&dev).extract(&image).unwrap();
    let close = gpu
        .keypoints
        .iter()
        .filter(|k| {
            cpu.keypoints
                .iter()
                .any(|c| (c[0] - k[0]).abs() <= 0.01 && (c[1] - k[1]).abs() <= 0.01)
        })
        .count();
    println!(
        "CUDA keypoints within 0.01 px of CPU: {close}/{}",
        gpu.len()
    );
    assert!(close as f32 >= 0.99 * cpu.len() as f32);
    assert!((gpu.len() as i64 - cpu.len() as i64).abs() <= cpu.len() as i64 / 100);
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
