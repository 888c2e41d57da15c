//! Stride-1 "same" convolution: candle's `conv2d`, steered around a CPU bug.
//!
//! candle 0.9's default CPU kernel (`conv2d_tiled`) skips its NCHW → NHWC copy when the input
//! strides equal `[H·W·C, W·C, C, 1]`, meaning "already channels-last". A contiguous NCHW
//! tensor has exactly those strides when `C == H == W`, so such inputs are read in the wrong
//! order and the output is garbage (candle issue #3404, fixed upstream in PR #3405 after
//! 0.9.2). In ALIKED that is block3's second offset conv on a 512 × 512 network input (64
//! channels on a 64 × 64 map), block2 at 32 × 32 and 64 × 64, block3 at 256 × 256 and block4 at
//! 2048 × 2048 and 4096 × 4096: every square chip at the default `image_size`.
//!
//! On that shape we hand candle the same values through a view whose batch stride is 0 (a
//! broadcast of the single image): the layout no longer looks channels-last, so candle takes
//! its strided copy, which it does for every other shape anyway.
//!
//! Where the packed f32 kernel runs (AVX-512), CPU convolutions do not go through candle at
//! all: [`conv2d_packed`] gathers each block of output pixels' patches straight into the
//! kernel's packed layout, in parallel. candle's tiled path copied the input to channels-last
//! on one thread and built its im2col tiles element by element, which made ALIKED's
//! full-resolution convolutions (3 → 16 → 16 channels, few multiplications per value moved)
//! most of the extraction time.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::matmul::{f32_kernel_available, gemm_f32, Epilogue, Mat, PackedB32, NR};
use crate::Result;

/// Output pixels per task of [`conv2d_packed`]: 8 panels, whose patches (C·K·K × 256 floats)
/// stay in the core's L2 while every weight row passes.
const PIXELS_PER_TASK: usize = 8 * NR;

/// `conv2d(x, weight, padding, stride 1, dilation 1, groups 1)` for a [1, C, H, W] input.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && f32_kernel_available()
        && b == 1
        && wc == c
        && kh == kw
        && h + 2 * padding >= kh
        && w + 2 * padding >= kw
    {
        let (oh, ow) = (h + 2 * padding + 1 - kh, w + 2 * padding + 1 - kw);
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = weight.flatten_all()?.to_vec1::<f32>()?;
        let out = conv2d_packed(&xs, (c, h, w), &ws, o, kh, padding);
        return Ok(Tensor::from_vec(out, (1, o, oh, ow), x.device())?);
    }
    conv2d_candle(x, weight, padding)
}

/// candle's convolution, steered around its C == H == W bug (the module docs).
pub fn conv2d_candle(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ambiguous = x.device().is_cpu() && b == 1 && c == h && h == w;
    if ambiguous {
        let view = x.squeeze(0)?.broadcast_left(1)?;
        return Ok(view.conv2d(weight, padding, 1, 1, 1)?);
    }
    Ok(x.conv2d(weight, padding, 1, 1, 1)?)
}

/// Stride-1 convolution of one [C, H, W] image by `o` filters of C × K × K (zero padding
/// `pad`), returning [O, OH, OW]. Each task packs the patches of up to [`PIXELS_PER_TASK`]
/// consecutive output pixels, 32 per panel (for each (channel, row, column) of the filter,
/// the 32 input values under it, copied a run of one input row at a time), and multiplies
/// the weights by them; the tasks' [O, pixels] blocks are then copied into place row by row.
pub fn conv2d_packed(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    weight: &[f32],
    o: usize,
    k: usize,
    pad: usize,
) -> Vec<f32> {
    assert!(
        x.len() == c * h * w
            && weight.len() == o * c * k * k
            && h + 2 * pad >= k
            && w + 2 * pad >= k,
        "conv2d_packed: {} values for {c}×{h}×{w}, {} weights for {o}×{c}×{k}×{k}",
        x.len(),
        weight.len()
    );
    let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    let (pixels, inner) = (oh * ow, c * k * k);
    if pixels == 0 || o == 0 {
        return vec![0f32; o * pixels];
    }
    let weights = Mat::rows(weight, o, inner);
    let blocks: Vec<Vec<f32>> = (0..pixels)
        .into_par_iter()
        .step_by(PIXELS_PER_TASK)
        .map(|p0| {
            let n = PIXELS_PER_TASK.min(pixels - p0);
            let patches = PackedB32::from_panels(inner, n, |panel, block| {
                let first = p0 + panel * NR;
                let cols = NR.min(p0 + n - first);
                let mut lane = 0;
                // Runs of lanes on one output row read one input row per filter tap.
                while lane < cols {
                    let (y, x0) = ((first + lane) / ow, (first + lane) % ow);
                    let run = (ow - x0).min(cols - lane);
                    for ci in 0..c {
                        for i in 0..k {
                            let Some(yy) = (y + i).checked_sub(pad).filter(|&yy| yy < h) else {
                                continue;
                            };
                            let src = &x[(ci * h + yy) * w..(ci * h + yy + 1) * w];
                            for j in 0..k {
                                // Lane t reads input column x0 + t + j - pad, inside [0, w).
                                let lo = (pad as isize - (x0 + j) as isize).max(0) as usize;
                                let hi = ((w + pad) as isize - (x0 + j) as isize)
                                    .clamp(0, run as isize)
                                    as usize;
                                if lo < hi {
                                    let row = ((ci * k + i) * k + j) * NR + lane;
                                    let start = x0 + lo + j - pad;
                                    block[row + lo..row + hi]
                                        .copy_from_slice(&src[start..start + hi - lo]);
                                }
                            }
                        }
                    }
                    lane += run;
                }
            });
            let mut out = vec![0f32; o * n];
            gemm_f32(
                &mut out,
                n,
                weights,
                &patches,
                Epilogue::new(1.0, None, false),
            );
            out
        })
        .collect();
    let mut dst = vec![0f32; o * pixels];
    dst.par_chunks_mut(pixels)
        .enumerate()
        .for_each(|(oc, row)| {
            for (t, block) in blocks.iter().enumerate() {
                let n = block.len() / o;
                let p0 = t * PIXELS_PER_TASK;
                row[p0..p0 + n].copy_from_slice(&block[oc * n..(oc + 1) * n]);
            }
        });
    dst
}

/// Slow twin of [`conv2d`]: the textbook six nested loops, zero padding.
pub fn conv2d_reference(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (o, _, kh, kw) = weight.dims4()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = weight.flatten_all()?.to_vec1::<f32>()?;
    let (oh, ow) = (h + 2 * padding + 1 - kh, w + 2 * padding + 1 - kw);
    let mut out = vec![0f32; o * oh * ow];
    for oc in 0..o {
        for y in 0..oh {
            for xo in 0..ow {
                let mut acc = 0f64;
                for ic in 0..c {
                    for i in 0..kh {
                        for j in 0..kw {
                            let (yy, xx) = (y + i, xo + j);
                            if yy < padding
                                || xx < padding
                                || yy - padding >= h
                                || xx - padding >= w
                            {
                                continue;
                            }
                            let v = xs[(ic * h + yy - padding) * w + xx - padding];
                            acc += v as f64 * ws[((oc * c + ic) * kh + i) * kw + j] as f64;
                        }
                    }
                }
                out[(oc * oh + y) * ow + xo] = acc as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, o, oh, ow), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    /// The packed convolution against the loop twin over ALIKED's shapes and their edges:
    /// 1 to 35 channels, 1 to 33 filters (around the 12-row tile), 1×1, 3×3 and 5×5 filters
    /// with and without padding, maps from 1 × 1 to 37 × 70 (rows shorter and longer than a
    /// 32-pixel panel, pixel counts around a task's 256).
    #[test]
    fn packed_equals_loops_over_shapes() {
        let dev = Device::Cpu;
        let mut cases = 0;
        for &(c, o) in &[(1usize, 1usize), (3, 16), (16, 13), (35, 33)] {
            for &(k, pad) in &[(1usize, 0usize), (3, 1), (3, 0), (5, 2)] {
                for &(h, w) in &[(1usize, 1usize), (5, 3), (7, 40), (16, 16), (37, 70)] {
                    if h + 2 * pad < k || w + 2 * pad < k {
                        continue;
                    }
                    let x = Tensor::randn(0f32, 1.0, (1, c, h, w), &dev).unwrap();
                    let weight = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap();
                    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let ws = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let fast = conv2d_packed(&xs, (c, h, w), &ws, o, k, pad);
                    let slow = conv2d_reference(&x, &weight, pad)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    assert_eq!(fast.len(), slow.len());
                    let tol = 1e-5 * ((c * k * k) as f32).sqrt() * 4.0;
                    for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "c {c} o {o} k {k} pad {pad} {h}×{w} at {i}: {a} vs {b}"
                        );
                    }
                    cases += 1;
                }
            }
        }
        assert!(cases > 60, "{cases} cases");
    }

    /// Square maps whose side equals the channel count (the shapes candle's tiled kernel gets
    /// wrong) and their neighbours, against the loop twin.
    #[test]
    fn equals_loops_when_channels_equal_the_side() {
        let dev = Device::Cpu;
        for (c, h, w) in [
            (4, 4, 4),
            (8, 8, 8),
            (16, 16, 16),
            (5, 5, 5),
            (8, 8, 9),
            (8, 9, 8),
            (7, 8, 8),
        ] {
            let x = Tensor::randn(0f32, 1.0, (1, c, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (3, c, 3, 3), &dev).unwrap();
            let fast = conv2d_candle(&x, &weight, 1).unwrap();
            let slow = conv2d_reference(&x, &weight, 1).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            let d = max_abs_diff(&fast, &slow);
            assert!(d < 1e-4, "C={c} H={h} W={w}: max diff {d}");
        }
    }
}
