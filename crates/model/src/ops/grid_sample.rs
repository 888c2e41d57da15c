//! Bilinear sampling of a feature map at arbitrary points: `F.grid_sample(mode="bilinear",
//! align_corners=True, padding_mode="zeros")` for one image and a flat list of points.
//!
//! The four corner indices and weights are computed on the host; the weighted gather runs in
//! our own kernel on CPU and CUDA (`WeightedRows`) and in `index_select` on other devices.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// Corner indices into a flattened `H*W` map (index `H*W` means "outside, reads zero") and
/// their bilinear weights, four per point in PyTorch's order (nw, ne, sw, se).
#[derive(Debug, Clone, PartialEq)]
pub struct BilinearTaps {
    pub indices: Vec<u32>,
    pub weights: Vec<f32>,
    /// The index that stands for "outside the map" (H·W).
    pub outside: u32,
}

/// PyTorch's CPU kernel unnormalises with a precomputed `(size - 1) / 2` factor.
fn unnormalize(coord: f32, size: usize) -> f32 {
    (coord + 1.0) * ((size as f32 - 1.0) / 2.0)
}

/// Taps for points given in normalised coordinates (x, y) ∈ [-1, 1] (align_corners=True).
pub fn grid_taps(points: &[[f32; 2]], height: usize, width: usize) -> BilinearTaps {
    let outside = (height * width) as u32;
    let mut indices = Vec::with_capacity(points.len() * 4);
    let mut weights = Vec::with_capacity(points.len() * 4);
    for &[gx, gy] in points {
        let ix = unnormalize(gx, width);
        let iy = unnormalize(gy, height);
        let (x0, y0) = (ix.floor(), iy.floor());
        let (x1, y1) = (x0 + 1.0, y0 + 1.0);
        let (tw, te) = (ix - x0, x1 - ix);
        let (tn, ts) = (iy - y0, y1 - iy);
        let corners = [
            (x0, y0, ts * te),
            (x1, y0, ts * tw),
            (x0, y1, tn * te),
            (x1, y1, tn * tw),
        ];
        for (x, y, weight) in corners {
            let inside = x >= 0.0 && y >= 0.0 && x < width as f32 && y < height as f32;
            if inside {
                indices.push(y as u32 * width as u32 + x as u32);
                weights.push(weight);
            } else {
                indices.push(outside);
                weights.push(0.0);
            }
        }
    }
    BilinearTaps {
        indices,
        weights,
        outside,
    }
}

/// Samples `map` ([C, H, W]) at normalised points; returns [P, C].
pub fn grid_sample(map: &Tensor, points: &[[f32; 2]]) -> Result<Tensor> {
    let (c, h, w) = map.dims3()?;
    let table = map.reshape((c, h * w))?.t()?.contiguous()?;
    gather_taps(&table, &grid_taps(points, h, w), |i| i)
}

/// Applies bilinear taps (four per output row) to a channels-last table [R, C]; returns
/// [rows, C]. `row_of` maps a tap's pixel index to a table row; the "outside" index gets
/// row 0 with its zero weight.
pub(crate) fn gather_taps(
    table: &Tensor,
    taps: &BilinearTaps,
    row_of: impl Fn(u32) -> u32,
) -> Result<Tensor> {
    let (r, c) = table.dims2()?;
    let device = table.device();
    let rows = taps.indices.len() / 4;
    if rows == 0 {
        return Ok(Tensor::zeros((0, c), table.dtype(), device)?);
    }
    let outside = taps.outside;
    let idx: Vec<u32> = taps
        .indices
        .iter()
        .map(|&i| if i == outside { 0 } else { row_of(i) })
        .collect();
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= r) {
        return Err(crate::Error::Config(format!(
            "gather: row {bad} outside a table of {r}"
        )));
    }
    if (device.is_cpu() || device.is_cuda()) && table.dtype() == DType::F32 {
        let op = WeightedRows {
            indices: idx,
            weights: taps.weights.clone(),
        };
        return Ok(table.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    let idx = Tensor::from_vec(idx, rows * 4, device)?;
    let wts = Tensor::from_slice(&taps.weights, (rows, 4, 1), device)?.to_dtype(table.dtype())?;
    let corners = table.index_select(&idx, 0)?.reshape((rows, 4, c))?;
    Ok(corners.broadcast_mul(&wts)?.sum(D::Minus2)?)
}

/// Kernel of [`gather_taps`]: each output row is the weighted sum of four table rows,
/// accumulated in PyTorch's corner order (CPU: rows in parallel; CUDA: `kernels/ops.cu`).
struct WeightedRows {
    indices: Vec<u32>,
    weights: Vec<f32>,
}

impl CustomOp1 for WeightedRows {
    fn name(&self) -> &'static str {
        "weighted-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = match l.contiguous_offsets() {
            Some((a, b)) => &s.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("weighted-rows: table must be contiguous"),
        };
        let (_, c) = l.shape().dims2()?;
        let rows = self.indices.len() / 4;
        let mut out = vec![0f32; rows * c];
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(self.indices.par_chunks(4).zip(self.weights.par_chunks(4)))
                .for_each(|(o, (idx, wts))| {
                    for (k, (&i, &wt)) in idx.iter().zip(wts).enumerate() {
                        let src = &table[i as usize * c..(i as usize + 1) * c];
                        if k == 0 {
                            o.iter_mut().zip(src).for_each(|(o, &v)| *o = v * wt);
                        } else {
                            o.iter_mut().zip(src).for_each(|(o, &v)| *o += v * wt);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::weighted_rows(s, l, &self.indices, &self.weights)
    }
}

/// Slow, obviously-correct reference: PyTorch's scalar kernel, one point at a time.
/// `map` is [C, H, W] row-major; returns [P, C].
pub fn grid_sample_reference(
    map: &[f32],
    c: usize,
    h: usize,
    w: usize,
    points: &[[f32; 2]],
) -> Vec<f32> {
    let mut out = vec![0f32; points.len() * c];
    for (p, &[gx, gy]) in points.iter().enumerate() {
        let ix = ((gx + 1.0) / 2.0) * (w as f32 - 1.0);
        let iy = ((gy + 1.0) / 2.0) * (h as f32 - 1.0);
        let (x0, y0) = (ix.floor() as i64, iy.floor() as i64);
        let corners = [
            (x0, y0, (x0 as f32 + 1.0 - ix) * (y0 as f32 + 1.0 - iy)),
            (x0 + 1, y0, (ix - x0 as f32) * (y0 as f32 + 1.0 - iy)),
            (x0, y0 + 1, (x0 as f32 + 1.0 - ix) * (iy - y0 as f32)),
            (x0 + 1, y0 + 1, (ix - x0 as f32) * (iy - y0 as f32)),
        ];
        for ch in 0..c {
            let mut acc = 0f32;
            for &(x, y, weight) in &corners {
                if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                    acc += map[ch * h * w + y as usize * w + x as usize] * weight;
                }
            }
            out[p * c + ch] = acc;
        }
    }
    out
}
