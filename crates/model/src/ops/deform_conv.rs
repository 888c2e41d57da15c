//! Modulation-free deformable convolution (DCN as ALIKED uses it), equal to
//! `torchvision.ops.deform_conv2d(input, offset, weight, bias, padding, mask=None)` with
//! stride 1, dilation 1, one group and one offset group.
//!
//! Builds deformable "im2col" columns, four bilinear corners per (channel, kernel tap, output
//! pixel) as torchvision's `bilinear_interpolate` does, then multiplies them by the weights.
//! The columns come from our own kernel on CPU and CUDA ([`DeformIm2col`]); other devices
//! gather them with candle's `index_select`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::grid_sample::{gather_taps, BilinearTaps};
use crate::{Error, Result};

/// torchvision's bilinear corners for a sample at (y, x) on an `h`×`w` map: zero outside
/// (-1, h) × (-1, w), and each corner only where it lies inside the map.
fn push_corners(y: f32, x: f32, h: usize, w: usize, taps: &mut BilinearTaps) {
    let outside = (h * w) as u32;
    if y <= -1.0 || y >= h as f32 || x <= -1.0 || x >= w as f32 || y.is_nan() || x.is_nan() {
        taps.indices.extend([outside; 4]);
        taps.weights.extend([0.0; 4]);
        return;
    }
    let (y_low, x_low) = (y.floor() as i64, x.floor() as i64);
    let (y_high, x_high) = (y_low + 1, x_low + 1);
    let (ly, lx) = (y - y_low as f32, x - x_low as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    let corners = [
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ];
    for (cy, cx, weight) in corners {
        if cy >= 0 && cx >= 0 && cy < h as i64 && cx < w as i64 {
            taps.indices.push((cy as usize * w + cx as usize) as u32);
            taps.weights.push(weight);
        } else {
            taps.indices.push(outside);
            taps.weights.push(0.0);
        }
    }
}

/// Sample positions of every (kernel tap k, output pixel) in torchvision's layout: offset
/// channel `2k` is the y shift and `2k + 1` the x shift of tap `k = i * kw + j`.
fn deform_taps(
    offset: &[f32],
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    padding: usize,
) -> BilinearTaps {
    let hw = h * w;
    let mut taps = BilinearTaps {
        indices: Vec::with_capacity(kh * kw * hw * 4),
        weights: Vec::with_capacity(kh * kw * hw * 4),
        outside: hw as u32,
    };
    for i in 0..kh {
        for j in 0..kw {
            let k = i * kw + j;
            let dy = &offset[2 * k * hw..(2 * k + 1) * hw];
            let dx = &offset[(2 * k + 1) * hw..(2 * k + 2) * hw];
            for oy in 0..h {
                for ox in 0..w {
                    let p = oy * w + ox;
                    let y = (oy as i64 - padding as i64 + i as i64) as f32 + dy[p];
                    let x = (ox as i64 - padding as i64 + j as i64) as f32 + dx[p];
                    push_corners(y, x, h, w, &mut taps);
                }
            }
        }
    }
    taps
}

fn check_shapes(
    input: (usize, usize, usize, usize),
    offset: (usize, usize, usize, usize),
    weight: (usize, usize, usize, usize),
    padding: usize,
) -> Result<()> {
    let (b, c, h, w) = input;
    let (_, cw, kh, kw) = weight;
    if b != 1 || cw != c || offset != (1, 2 * kh * kw, h, w) || 2 * padding + 1 != kh || kh != kw {
        return Err(Error::Config(format!(
            "deform_conv2d: unsupported shapes input {input:?}, offset {offset:?}, weight {weight:?}, padding {padding}"
        )));
    }
    Ok(())
}

/// Deformable convolution of a [1, C, H, W] input with a [1, 2·k², H, W] offset and an
/// [O, C, k, k] weight ("same" padding, stride 1); returns [1, O, H, W].
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    check_shapes(input.dims4()?, offset.dims4()?, weight.dims4()?, padding)?;
    let (_, c, h, w) = input.dims4()?;
    let (o, _, kh, kw) = weight.dims4()?;
    let k = kh * kw;
    let device = input.device();
    let columns = if (device.is_cpu() || device.is_cuda()) && input.dtype() == DType::F32 {
        let op = DeformIm2col { ksize: kh, padding };
        input
            .reshape((c, h, w))?
            .contiguous()?
            .apply_op2_no_bwd(&offset.reshape((2 * k, h, w))?.contiguous()?, &op)?
    } else {
        let offsets = offset
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let taps = deform_taps(&offsets, h, w, kh, kw, padding);
        // [k * HW, C] → [C * k, HW], rows ordered (c, tap) like the flattened weight.
        let table = input.reshape((c, h * w))?.t()?.contiguous()?;
        gather_taps(&table, &taps, |i| i)?
            .reshape((k, h * w, c))?
            .permute((2, 0, 1))?
            .reshape((c * k, h * w))?
    };
    let mut out = weight.reshape((o, c * k))?.matmul(&columns)?;
    if let Some(bias) = bias {
        out = out.broadcast_add(&bias.reshape((o, 1))?)?;
    }
    Ok(out.reshape((1, o, h, w))?)
}

/// Deformable im2col: a [C, H, W] input and [2K, H, W] offsets give [C·K, H·W] columns, row
/// `ch·K + k` holding channel `ch` sampled at tap `k` of every output pixel. Each value sums
/// its four corner products in the order nw, ne, sw, se, the CPU and CUDA kernels alike.
struct DeformIm2col {
    ksize: usize,
    padding: usize,
}

impl CustomOp2 for DeformIm2col {
    fn name(&self) -> &'static str {
        "deform-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, h, w) = l1.shape().dims3()?;
        let (ks, k) = (self.ksize, self.ksize * self.ksize);
        if l2.shape().dims() != [2 * k, h, w] {
            candle_core::bail!(
                "deform-im2col: offsets {:?} for input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let (Some((i0, i1)), Some((o0, o1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("deform-im2col: inputs must be contiguous");
        };
        let input = &s1.as_slice::<f32>()?[i0..i1];
        let offsets = &s2.as_slice::<f32>()?[o0..o1];
        let taps = deform_taps(offsets, h, w, ks, ks, self.padding);
        let hw = h * w;
        let mut out = vec![0f32; c * k * hw];
        if hw > 0 {
            out.par_chunks_mut(hw).enumerate().for_each(|(row, col)| {
                let (ch, tap) = (row / k, row % k);
                let plane = &input[ch * hw..(ch + 1) * hw];
                let idx = &taps.indices[tap * hw * 4..(tap + 1) * hw * 4];
                let wts = &taps.weights[tap * hw * 4..(tap + 1) * hw * 4];
                for (p, v) in col.iter_mut().enumerate() {
                    // "Outside" (index H·W) reads pixel 0 with weight 0, as in `gather_taps`.
                    let at = |q: usize| plane[(idx[4 * p + q] as usize) % hw] * wts[4 * p + q];
                    let mut acc = at(0);
                    for q in 1..4 {
                        acc += at(q);
                    }
                    *v = acc;
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((c * k, hw))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::deform_im2col(s1, l1, s2, l2, self.ksize, self.padding)
    }
}

/// Slow reference: torchvision's CPU algorithm, loop by loop. Shapes as in [`deform_conv2d`],
/// flattened row-major; returns [O, H, W].
#[allow(clippy::too_many_arguments)]
pub fn deform_conv2d_reference(
    input: &[f32],
    offset: &[f32],
    weight: &[f32],
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    ksize: usize,
    padding: usize,
) -> Vec<f32> {
    let hw = h * w;
    let sample = |ch: usize, y: f32, x: f32| -> f32 {
        if y <= -1.0 || y >= h as f32 || x <= -1.0 || x >= w as f32 {
            return 0.0;
        }
        let (y0, x0) = (y.floor() as i64, x.floor() as i64);
        let at = |yy: i64, xx: i64| -> f32 {
            if yy >= 0 && xx >= 0 && yy < h as i64 && xx < w as i64 {
                input[ch * hw + yy as usize * w + xx as usize]
            } else {
                0.0
            }
        };
        let (ly, lx) = (y - y0 as f32, x - x0 as f32);
        let (hy, hx) = (1.0 - ly, 1.0 - lx);
        hy * hx * at(y0, x0)
            + hy * lx * at(y0, x0 + 1)
            + ly * hx * at(y0 + 1, x0)
            + ly * lx * at(y0 + 1, x0 + 1)
    };
    let mut out = vec![0f32; o * hw];
    for oy in 0..h {
        for ox in 0..w {
            let p = oy * w + ox;
            for oc in 0..o {
                let mut acc = 0f32;
                for ch in 0..c {
                    for i in 0..ksize {
                        for j in 0..ksize {
                            let k = i * ksize + j;
                            let y = (oy + i) as f32 - padding as f32 + offset[2 * k * hw + p];
                            let x = (ox + j) as f32 - padding as f32 + offset[(2 * k + 1) * hw + p];
                            acc +=
                                weight[((oc * c + ch) * ksize + i) * ksize + j] * sample(ch, y, x);
                        }
                    }
                }
                out[oc * hw + p] = acc;
            }
        }
    }
    out
}
