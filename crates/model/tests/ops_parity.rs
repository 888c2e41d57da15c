//! The ops candle lacks, against PyTorch/torchvision/kornia outputs on random inputs
//! (`tests/goldens/ops.safetensors`), and the fast tensor versions against their slow references.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use wbia_lightglue_model::aliked::simple_nms;
use wbia_lightglue_model::image::{resize_long_edge, ChwImage};
use wbia_lightglue_model::ops::{
    deform_conv2d, deform_conv2d_reference, grid_sample, grid_sample_reference,
};

#[test]
fn grid_sample_matches_pytorch_including_out_of_range_points() {
    let g = golden("ops.safetensors");
    let input = g["grid_sample.input"].squeeze(0).unwrap();
    let (c, h, w) = input.dims3().unwrap();
    let grid = vec1(&g["grid_sample.grid"]);
    let points: Vec<[f32; 2]> = grid.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    assert!(points.iter().any(|p| p[0].abs() > 1.0 || p[1].abs() > 1.0));
    // PyTorch's output is [1, C, 1, P]; ours is [P, C].
    let expected = g["grid_sample.output"]
        .squeeze(0)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .t()
        .unwrap();
    let expected = vec1(&expected.contiguous().unwrap());

    let fast = vec1(&grid_sample(&input, &points).unwrap());
    let slow = grid_sample_reference(&vec1(&input), c, h, w, &points);
    let (d_fast, d_slow) = (
        max_abs_diff(&fast, &expected),
        max_abs_diff(&slow, &expected),
    );
    println!("grid_sample: fast {d_fast:.2e}, slow {d_slow:.2e}");
    assert!(d_fast < 1e-5 && d_slow < 1e-5);
}

fn check_deform(case: &str) {
    let g = golden("ops.safetensors");
    let get = |k: &str| g[&format!("{case}.{k}")].clone();
    let (input, offset, weight) = (get("input"), get("offset"), get("weight"));
    let expected = vec1(&get("output"));
    let (_, c, h, w) = input.dims4().unwrap();
    let (o, _, k, _) = weight.dims4().unwrap();

    let fast = vec1(&deform_conv2d(&input, &offset, &weight, None, 1).unwrap());
    let slow = deform_conv2d_reference(
        &vec1(&input),
        &vec1(&offset),
        &vec1(&weight),
        c,
        h,
        w,
        o,
        k,
        1,
    );
    let (d_fast, d_slow) = (
        max_abs_diff(&fast, &expected),
        max_abs_diff(&slow, &expected),
    );
    println!("{case}: fast {d_fast:.2e}, slow {d_slow:.2e}");
    assert!(d_fast < 1e-4 && d_slow < 1e-4);
}

#[test]
fn deform_conv_matches_torchvision() {
    check_deform("deform_conv");
}

#[test]
fn deform_conv_matches_torchvision_with_large_offsets() {
    check_deform("deform_conv_big");
}

#[test]
fn deform_conv_bias_is_added_per_channel() {
    let dev = Device::Cpu;
    let input = Tensor::ones((1, 2, 4, 5), candle_core::DType::F32, &dev).unwrap();
    let offset = Tensor::zeros((1, 18, 4, 5), candle_core::DType::F32, &dev).unwrap();
    let weight = Tensor::zeros((3, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let bias = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
    let out = deform_conv2d(&input, &offset, &weight, Some(&bias), 1).unwrap();
    let v = vec1(&out);
    assert_eq!(v[0], 1.0);
    assert_eq!(v[20], 2.0);
    assert_eq!(v[59], 3.0);
}

#[test]
fn deform_conv_rejects_mismatched_shapes() {
    let dev = Device::Cpu;
    let input = Tensor::ones((1, 2, 4, 5), candle_core::DType::F32, &dev).unwrap();
    let offset = Tensor::zeros((1, 18, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let weight = Tensor::zeros((3, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(deform_conv2d(&input, &offset, &weight, None, 1).is_err());
}

fn check_resize(case: &str) {
    let g = golden("ops.safetensors");
    let input = &g[&format!("{case}.input")];
    let (_, c, h, w) = input.dims4().unwrap();
    let size = g[&format!("{case}.size")].to_vec1::<i64>().unwrap()[0] as usize;
    let image = ChwImage {
        channels: c,
        height: h,
        width: w,
        data: vec1(input),
    };
    let out = resize_long_edge(&image, size).unwrap();
    let expected = &g[&format!("{case}.output")];
    let (_, _, eh, ew) = expected.dims4().unwrap();
    assert_eq!((out.height, out.width), (eh, ew), "{case}: output size");
    let d = max_abs_diff(&out.data, &vec1(expected));
    println!("{case}: max diff {d:.2e}");
    assert!(d < 1e-5, "{case}: {d}");
}

#[test]
fn antialiased_downscale_matches_kornia() {
    check_resize("resize_down");
}

#[test]
fn antialiased_portrait_downscale_matches_kornia() {
    check_resize("resize_down_portrait");
}

#[test]
fn upscale_matches_kornia() {
    check_resize("resize_up");
}

#[test]
fn nms_matches_reference() {
    let g = golden("ops.safetensors");
    let input = &g["nms.input"];
    let (_, _, h, w) = input.dims4().unwrap();
    let radius = g["nms.radius"].to_vec1::<i64>().unwrap()[0] as usize;
    let ours = simple_nms(&vec1(input), h, w, radius);
    assert_eq!(ours, vec1(&g["nms.output"]));
}
