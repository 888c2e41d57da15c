//! Fused CPU kernels for ALIKED's element-wise glue, each beside its composed candle version.
//!
//! candle's CPU element-wise ops run on one thread and allocate per op; on a 512-px image the
//! bias/SELU passes, the upsample-and-concatenate of the four feature maps and the channel
//! normalisation cost more than all convolutions together. Each kernel here does its work in
//! one parallel pass; other devices (and the tests) use the composed version.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::ops::simd::avx512;
use crate::Result;

const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_SCALE: f32 = 1.050_701;

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn contiguous_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

#[inline(always)]
fn selu_scalar(x: f32) -> f32 {
    if x > 0.0 {
        SELU_SCALE * x
    } else {
        SELU_SCALE * SELU_ALPHA * (x.exp() - 1.0)
    }
}

/// `selu(x + bias[c])` for an [N, C, H, W] tensor (bias optional, one value per channel).
pub fn bias_selu(x: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
    if cpu_f32(x) {
        let op = BiasSelu {
            bias: bias.map(|b| b.to_vec()),
        };
        return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    bias_selu_reference(x, bias)
}

/// Composed version of [`bias_selu`].
pub fn bias_selu_reference(x: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
    let x = match bias {
        Some(b) => {
            let c = b.len();
            let b = Tensor::from_slice(b, (1, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
            x.broadcast_add(&b)?
        }
        None => x.clone(),
    };
    Ok((x.elu(SELU_ALPHA as f64)? * SELU_SCALE as f64)?)
}

struct BiasSelu {
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for BiasSelu {
    fn name(&self) -> &'static str {
        "bias-selu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(s, l)?;
        let (_, c, h, w) = l.shape().dims4()?;
        let plane = (h * w).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(i, (o, x))| {
                let b = self.bias.as_ref().map_or(0.0, |b| b[i % c]);
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = selu_scalar(x + b);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Bilinear taps of `align_corners=True` upsampling from `input` to `output` samples,
/// computed like PyTorch: source = ((in - 1) / (out - 1)) · dst in f32.
fn corner_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = if output > 1 {
        (input as f32 - 1.0) / (output as f32 - 1.0)
    } else {
        0.0
    };
    (0..output)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// ALIKED's feature aggregation: `cat([x1, up(x2), up(x3), up(x4)])` with bilinear
/// `align_corners=True` upsampling to x1's size, returned channels-last as [H·W, ΣC], the
/// layout the score head's 1×1 conv (a matrix product) and the descriptor sampling want.
pub fn aggregate_features(maps: &[Tensor]) -> Result<Tensor> {
    Ok(aggregate(maps, false)?.0)
}

/// [`aggregate_features`] with each row L2-normalised in the same pass (`F.normalize`, norm
/// floored at 1e-12); also returns the floored norms [H·W], so that the raw rows are
/// `normalised · norm` without a second 25-million-value table.
pub fn aggregate_normalized(maps: &[Tensor]) -> Result<(Tensor, Vec<f32>)> {
    let (table, norms) = aggregate(maps, true)?;
    match norms {
        Some(norms) => Ok((table, norms)),
        None => {
            let norm = table
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .maximum(1e-12)?;
            let normalized = table.broadcast_div(&norm)?;
            Ok((normalized, norm.flatten_all()?.to_vec1::<f32>()?))
        }
    }
}

fn aggregate(maps: &[Tensor], normalize: bool) -> Result<(Tensor, Option<Vec<f32>>)> {
    if maps.iter().all(cpu_f32) {
        let (_, _, h, w) = maps[0].dims4()?;
        let mut parts = Vec::with_capacity(maps.len());
        for m in maps {
            let (_, c, mh, mw) = m.dims4()?;
            parts.push((c, mh, mw, m.flatten_all()?.to_vec1::<f32>()?));
        }
        let total_c: usize = parts.iter().map(|p| p.0).sum();
        let taps: Vec<_> = parts
            .iter()
            .map(|(_, mh, mw, _)| (corner_taps(*mh, h), corner_taps(*mw, w)))
            .collect();
        let mut out = vec![0f32; h * w * total_c];
        let mut norms = vec![0f32; if normalize { h * w } else { 0 }];
        let norm_rows: Vec<&mut [f32]> = if normalize {
            norms.chunks_mut(w).collect()
        } else {
            (0..h).map(|_| &mut [][..]).collect()
        };
        out.par_chunks_mut(w * total_c)
            .zip(norm_rows)
            .enumerate()
            .for_each(|(y, (row, norm_row))| {
                let mut base = 0;
                for ((c, mh, mw, data), (ty, tx)) in parts.iter().zip(&taps) {
                    let plane = mh * mw;
                    let (y0, y1, wy0, wy1) = ty[y];
                    // Channel-outer: each source row is read contiguously.
                    for ch in 0..*c {
                        let d = &data[ch * plane..(ch + 1) * plane];
                        let dst = row[base + ch..].iter_mut().step_by(total_c);
                        if *mh == h && *mw == w {
                            for (v, &src) in dst.zip(&d[y * w..(y + 1) * w]) {
                                *v = src;
                            }
                        } else {
                            let (r0, r1) = (&d[y0 * mw..(y0 + 1) * mw], &d[y1 * mw..(y1 + 1) * mw]);
                            for (v, &(x0, x1, wx0, wx1)) in dst.zip(tx.iter()) {
                                let top = r0[x0] * wx0 + r0[x1] * wx1;
                                let bottom = r1[x0] * wx0 + r1[x1] * wx1;
                                *v = top * wy0 + bottom * wy1;
                            }
                        }
                    }
                    base += c;
                }
                for (px, norm) in row.chunks_exact_mut(total_c).zip(norm_row.iter_mut()) {
                    let n = px.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    px.iter_mut().for_each(|v| *v /= n);
                    *norm = n;
                }
            });
        let table = Tensor::from_vec(out, (h * w, total_c), maps[0].device())?;
        return Ok((table, normalize.then_some(norms)));
    }
    Ok((aggregate_features_reference(maps)?, None))
}

/// Composed version of [`aggregate_features`].
pub fn aggregate_features_reference(maps: &[Tensor]) -> Result<Tensor> {
    let (_, _, h, w) = maps[0].dims4()?;
    let mut parts = Vec::with_capacity(maps.len());
    for m in maps {
        let (_, _, mh, mw) = m.dims4()?;
        parts.push(if (mh, mw) == (h, w) {
            m.clone()
        } else {
            m.upsample_bilinear2d(h, w, true)?
        });
    }
    let cat = Tensor::cat(&parts, 1)?;
    let c = cat.dim(1)?;
    Ok(cat.reshape((c, h * w))?.t()?.contiguous()?)
}

/// `selu(x[r, c] · scale[r])` for a 2-D tensor.
pub fn scaled_rows_selu(x: &Tensor, scales: &[f32]) -> Result<Tensor> {
    if cpu_f32(x) {
        let op = ScaledRowsSelu {
            scales: scales.to_vec(),
        };
        return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    let s = Tensor::from_slice(scales, (scales.len(), 1), x.device())?.to_dtype(x.dtype())?;
    let y = x.broadcast_mul(&s)?;
    Ok((y.elu(SELU_ALPHA as f64)? * SELU_SCALE as f64)?)
}

struct ScaledRowsSelu {
    scales: Vec<f32>,
}

impl CustomOp1 for ScaledRowsSelu {
    fn name(&self) -> &'static str {
        "scaled-rows-selu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(s, l)?;
        let (r, c) = l.shape().dims2()?;
        if self.scales.len() != r {
            candle_core::bail!(
                "scaled-rows-selu: {} scales for {r} rows",
                self.scales.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c * 256)
                .zip(x.par_chunks(c * 256))
                .zip(self.scales.par_chunks(256))
                .for_each(|((o, x), sc)| {
                    for ((o, x), &s) in o.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(sc) {
                        o.iter_mut()
                            .zip(x)
                            .for_each(|(o, &v)| *o = selu_scalar(v * s));
                    }
                });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Rotary position encoding, `t·cos + rotate_half(t)·sin`, where `rotate_half` maps each pair
/// (a, b) of the last dimension to (-b, a). `t` is [B, H, N, D]; `cos`/`sin` are [B, 1, N, D]
/// or [1, 1, N, D] (shared by the batch).
pub fn rotary(t: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cpu_f32(t) {
        let (b, h, n, d) = t.dims4()?;
        let table = |x: &Tensor| -> Result<Vec<f32>> { Ok(x.flatten_all()?.to_vec1::<f32>()?) };
        let (cos, sin) = (table(cos)?, table(sin)?);
        let shared = cos.len() == n * d;
        if !(shared || cos.len() == b * n * d) || sin.len() != cos.len() {
            return Err(crate::Error::Config("rotary: table shape mismatch".into()));
        }
        let op = Rotary {
            cos,
            sin,
            per_item: if shared { 0 } else { h },
        };
        return Ok(t.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    rotary_reference(t, cos, sin)
}

/// Composed version of [`rotary`].
pub fn rotary_reference(t: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = t.dims4()?;
    let pairs = t.reshape((b, h, n, d / 2, 2))?;
    let x1 = pairs.narrow(4, 0, 1)?;
    let x2 = pairs.narrow(4, 1, 1)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 4)?.reshape((b, h, n, d))?;
    Ok((t.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Heads per batch item, or 0 when one table serves the whole batch.
    per_item: usize,
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = contiguous_slice(s, l)?.to_vec();
        let (_, _, n, d) = l.shape().dims4()?;
        let plane = (n * d).max(1);
        out.par_chunks_mut(plane).enumerate().for_each(|(bh, o)| {
            let base = match self.per_item {
                0 => 0,
                h => (bh / h) * n * d,
            };
            rotate_pairs(
                o,
                &self.cos[base..base + n * d],
                &self.sin[base..base + n * d],
            );
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// The rotary step in place: each pair (a, b) of `v` becomes (a·cos − b·sin, b·cos + a·sin)
/// with the tables' values at the same positions (`cos`, `sin` at least as long as `v`).
pub fn rotate_pairs(v: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, cos), sin) in v
        .chunks_exact_mut(2)
        .zip(cos.chunks_exact(2))
        .zip(sin.chunks_exact(2))
    {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[0] + (-b) * sin[0];
        pair[1] = b * cos[1] + a * sin[1];
    }
}

/// GELU with the exact error function, `x/2 · (1 + erf(x/√2))`, in one parallel pass.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&GeluErf)?);
    }
    Ok(x.gelu_erf()?)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(s, l)?;
        let mut out = x.to_vec();
        out.par_chunks_mut(4096).for_each(gelu_in_place);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x ← x/2 · (1 + erf(x/√2))`: 16 lanes at a time with [`crate::ops::simd::erf_approx`]'s polynomial
/// (the one PyTorch's vectorised GELU uses) where AVX-512 is present, libm's `erff` elsewhere.
fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { x86::gelu(x) };
    }
    for v in x {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `gelu_erf(layer_norm(x))` over the last dimension of a CPU f32 tensor in one parallel pass
/// ([`layer_norm_gelu_rows`]); `None` elsewhere, where the caller composes the two.
pub fn layer_norm_gelu(
    x: &Tensor,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<Option<Tensor>> {
    if !cpu_f32(x) || x.dim(D::Minus1)? != gamma.len() {
        return Ok(None);
    }
    let op = LayerNormGelu { gamma, beta, eps };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

struct LayerNormGelu<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
}

impl CustomOp1 for LayerNormGelu<'_> {
    fn name(&self) -> &'static str {
        "layer-norm-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = contiguous_slice(s, l)?.to_vec();
        layer_norm_gelu_rows(&mut out, self.gamma, self.beta, self.eps);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Rows of [`layer_norm_gelu_rows`] per parallel task.
const NORM_ROWS_PER_TASK: usize = 16;

/// `gelu_erf(layer_norm(row))` for every `gamma.len()`-wide row of `x`, in place and in one
/// parallel pass: the middle of LightGlue's feed-forward layers. The normalisation is
/// PyTorch's: mean and biased variance of the row, `eps` inside the square root.
pub fn layer_norm_gelu_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = gamma.len();
    assert!(
        w > 0 && beta.len() == w && x.len().is_multiple_of(w),
        "layer_norm_gelu_rows: rows of {w}"
    );
    x.par_chunks_mut(NORM_ROWS_PER_TASK * w)
        .for_each(|rows| layer_norm_rows_gelu(rows, gamma, beta, eps));
}

/// [`layer_norm_gelu_rows`] on the calling thread (for a task's own rows); `x` holds whole
/// rows of `gamma.len()`.
pub fn layer_norm_rows_gelu(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = gamma.len();
    for row in x.chunks_exact_mut(w) {
        let n = w as f32;
        let mean = lane_sum(row, |v| v) / n;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * rstd * g + b;
        }
        gelu_in_place(row);
    }
}

/// `Σ f(v)` over `row` in 16 interleaved partial sums, which the compiler keeps in one vector
/// register (a single running sum is a chain of dependent scalar adds: at 512-wide rows the
/// layer norm's two sums took longer than its GELU).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::ops::simd::avx512::{erf, mask};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu(x: &mut [f32]) {
        let p = x.as_mut_ptr();
        let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
        let inv_sqrt2 = _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2);
        for i in (0..x.len()).step_by(16) {
            let m = mask(x.len() - i);
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            let e = erf(_mm512_mul_ps(v, inv_sqrt2));
            let g = _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(p.add(i), m, g);
        }
    }
}

/// `F.normalize(x, p=2, dim=-1)` for a 2-D tensor: rows divided by max(‖row‖, 1e-12).
pub fn l2_normalize_rows(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&NormalizeRows)?);
    }
    l2_normalize_rows_reference(x)
}

/// Composed version of [`l2_normalize_rows`].
pub fn l2_normalize_rows_reference(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

struct NormalizeRows;

impl CustomOp1 for NormalizeRows {
    fn name(&self) -> &'static str {
        "l2-normalize-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(s, l)?;
        let (_, c) = l.shape().dims2()?;
        let mut out = x.to_vec();
        if c > 0 {
            out.par_chunks_mut(c * 64).for_each(|rows| {
                for row in rows.chunks_exact_mut(c) {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= norm);
                }
            });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::ops::max_abs_diff as max_diff;

    #[test]
    fn bias_selu_matches_composed() {
        let x = Tensor::randn(0f32, 2.0, (1, 3, 5, 7), &Device::Cpu).unwrap();
        let bias = [0.5f32, -1.0, 2.0];
        for b in [None, Some(&bias[..])] {
            let d = max_diff(
                &bias_selu(&x, b).unwrap(),
                &bias_selu_reference(&x, b).unwrap(),
            );
            assert!(d < 1e-6, "{d}");
        }
    }

    #[test]
    fn aggregate_matches_upsample_and_concat() {
        let dev = Device::Cpu;
        let maps = [
            Tensor::randn(0f32, 1.0, (1, 2, 32, 64), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 3, 16, 32), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 2, 4, 8), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 1, 1, 2), &dev).unwrap(),
        ];
        let fused = aggregate_features(&maps).unwrap();
        let composed = aggregate_features_reference(&maps).unwrap();
        assert_eq!(fused.dims(), &[32 * 64, 8]);
        let d = max_diff(&fused, &composed);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn aggregate_normalized_matches_normalized_aggregate() {
        let dev = Device::Cpu;
        let maps = [
            Tensor::randn(0f32, 1.0, (1, 4, 16, 24), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 4, 8, 12), &dev).unwrap(),
        ];
        let (normalized, norms) = aggregate_normalized(&maps).unwrap();
        let raw = aggregate_features_reference(&maps).unwrap();
        assert!(max_diff(&normalized, &l2_normalize_rows_reference(&raw).unwrap()) < 1e-5);
        let scales = Tensor::from_vec(norms, (16 * 24, 1), &dev).unwrap();
        assert!(max_diff(&normalized.broadcast_mul(&scales).unwrap(), &raw) < 1e-5);
    }

    #[test]
    fn scaled_rows_selu_matches_composed() {
        let x = Tensor::randn(0f32, 1.0, (300, 8), &Device::Cpu).unwrap();
        let scales: Vec<f32> = (0..300).map(|i| 0.01 * i as f32).collect();
        let fused = scaled_rows_selu(&x, &scales).unwrap();
        let s = Tensor::from_slice(&scales, (300, 1), &Device::Cpu).unwrap();
        let composed = bias_selu_reference(
            &x.broadcast_mul(&s)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
        )
        .unwrap();
        assert!(max_diff(&fused, &composed.squeeze(0).unwrap().squeeze(0).unwrap()) < 1e-6);
    }

    #[test]
    fn rotary_matches_composed() {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (2, 1, 5, 8), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (2, 1, 5, 8), &dev).unwrap();
        let d = max_diff(
            &rotary(&t, &cos, &sin).unwrap(),
            &rotary_reference(&t, &cos, &sin).unwrap(),
        );
        assert!(d < 1e-6, "{d}");
        let (c1, s1) = (cos.narrow(0, 0, 1).unwrap(), sin.narrow(0, 0, 1).unwrap());
        let d = max_diff(
            &rotary(&t, &c1, &s1).unwrap(),
            &rotary_reference(&t, &c1, &s1).unwrap(),
        );
        assert!(d < 1e-6, "shared table: {d}");
    }

    /// Against candle's exact-erf GELU; the vector path's erf is within 5e-7,
    /// so GELU within 1e-7 · |x| (values of N(0, 3): |x| up to about 12).
    #[test]
    fn gelu_matches_candle() {
        let x = Tensor::randn(0f32, 3.0, (10_000,), &Device::Cpu).unwrap();
        let d = max_diff(&gelu_erf(&x).unwrap(), &x.gelu_erf().unwrap());
        assert!(d < 2e-6, "{d}");
    }

    /// The fused row pass against candle's LayerNorm then GELU, over widths below, at and
    /// beyond the 16-lane vectors (512 is LightGlue's) and row counts around a task's.
    #[test]
    fn layer_norm_gelu_matches_composed() {
        for (rows, w) in [(1usize, 1usize), (3, 15), (17, 16), (33, 33), (40, 512)] {
            let x = Tensor::randn(0.5f32, 2.0, (rows, w), &Device::Cpu).unwrap();
            let gamma = Tensor::randn(1f32, 0.3, w, &Device::Cpu).unwrap();
            let beta = Tensor::randn(0f32, 0.5, w, &Device::Cpu).unwrap();
            let norm = candle_nn::LayerNorm::new(gamma.clone(), beta.clone(), 1e-5);
            let want = candle_nn::Module::forward(&norm, &x)
                .unwrap()
                .gelu_erf()
                .unwrap();
            let mut got = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let host = |t: &Tensor| t.to_vec1::<f32>().unwrap();
            layer_norm_gelu_rows(&mut got, &host(&gamma), &host(&beta), 1e-5);
            let got = Tensor::from_vec(got, (rows, w), &Device::Cpu).unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 5e-6, "{rows}×{w}: {d}");
        }
    }

    #[test]
    fn normalize_matches_composed_and_handles_zero_rows() {
        let mut x = Tensor::randn(0f32, 1.0, (100, 16), &Device::Cpu).unwrap();
        x = Tensor::cat(
            &[x, Tensor::zeros((1, 16), DType::F32, &Device::Cpu).unwrap()],
            0,
        )
        .unwrap();
        let fused = l2_normalize_rows(&x).unwrap();
        assert!(max_diff(&fused, &l2_normalize_rows_reference(&x).unwrap()) < 1e-6);
        assert_eq!(
            fused
                .get(100)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
