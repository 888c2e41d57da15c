//! Scaled dot-product attention, `softmax(q·kᵀ·scale) · v`, with optional key padding.
//!
//! On CPU a fused kernel never materialises the [M, N] similarity matrix: rows are processed in
//! blocks of [`ROW_BLOCK`], each block's similarities, softmax and weighted sum stay in a
//! small scratch buffer, and blocks run in parallel. At 2048 keypoints and 4 heads this avoids
//! writing and re-reading 64 MiB per attention call, which dominated the composed version.
//! Other devices use the composed candle ops ([`attention_reference`]).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{
    gemm_bf16, matmul_into, Epilogue, Kernel, Mat, PackedA, PackedB, PackedRhs, MR,
};
use crate::{Error, Result};

/// Rows of q handled together: big enough for an efficient matrix product, small enough that
/// the [ROW_BLOCK, N] scratch stays in cache; a whole number of the kernels' 12-row tiles.
const ROW_BLOCK: usize = 4 * MR;

/// Attention over [B, H, M, D] queries and [B, H, N, D] keys/values. `key_lens[b]` keys of
/// batch item `b` are real, the rest padding; `None` means all are real.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    key_lens: Option<&[usize]>,
    kernel: Kernel,
) -> Result<Tensor> {
    let (b, _, _, _) = q.dims4()?;
    if let Some(lens) = key_lens {
        if lens.len() != b {
            return Err(Error::Config(format!(
                "attention: {} key lengths for a batch of {b}",
                lens.len()
            )));
        }
    }
    if q.device().is_cpu() && q.dtype() == candle_core::DType::F32 {
        let op = FusedAttention {
            scale,
            key_lens: key_lens.map(|l| l.to_vec()),
            kernel,
        };
        Ok(q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?)
    } else {
        attention_reference(q, k, v, scale, key_lens)
    }
}

/// The same computation from plain candle ops, for every device and as the CPU kernel's
/// reference in tests.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    key_lens: Option<&[usize]>,
) -> Result<Tensor> {
    let mut sim = (q.matmul(&k.t()?)? * scale as f64)?;
    if let Some(lens) = key_lens {
        let (b, _, _, n) = sim.dims4()?;
        let bias: Vec<f32> = lens
            .iter()
            .flat_map(|&len| (0..n).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, n), q.device())?.to_dtype(sim.dtype())?;
        sim = sim.broadcast_add(&bias)?;
    }
    // The softmax runs in f32 whatever the inputs' precision (as autocast does).
    let probs = candle_nn::ops::softmax_last_dim(&sim.to_dtype(candle_core::DType::F32)?)?;
    Ok(probs.to_dtype(v.dtype())?.matmul(v)?)
}

struct FusedAttention {
    scale: f32,
    key_lens: Option<Vec<usize>>,
    kernel: Kernel,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let slice = |s: &CpuStorage, l: &Layout| -> candle_core::Result<Vec<f32>> {
            let data = s.as_slice::<f32>()?;
            match l.contiguous_offsets() {
                Some((a, b)) => Ok(data[a..b].to_vec()),
                None => candle_core::bail!("fused-attention: inputs must be contiguous"),
            }
        };
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let (b, h, m, d) = ql.shape().dims4()?;
        let (kb, kh, n, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.shape().dims4()? != (b, h, n, d) {
            candle_core::bail!(
                "fused-attention: shapes {:?} {:?} {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let mut out = vec![0f32; b * h * m * d];
        if m > 0 && d > 0 {
            out.par_chunks_mut(m * d).enumerate().for_each(|(bh, out)| {
                let len = self.key_lens.as_ref().map_or(n, |l| l[bh / h].min(n));
                let q = &q[bh * m * d..(bh + 1) * m * d];
                let k = &k[bh * n * d..bh * n * d + len * d];
                let v = &v[bh * n * d..bh * n * d + len * d];
                // Keys and values are packed once per head, for every block.
                let kt = PackedRhs::pack(self.kernel, Mat::rows(k, len, d).t());
                let vp = PackedRhs::pack(self.kernel, Mat::rows(v, len, d));
                out.par_chunks_mut(ROW_BLOCK * d)
                    .zip(q.par_chunks(ROW_BLOCK * d))
                    .for_each(|(out, q)| {
                        let q = Mat::rows(q, q.len() / d, d);
                        attend_block(q, &kt, &vp, out, d, len, self.scale)
                    });
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, m, d))))
    }
}

/// One block of query rows against `len` keys (packed transposed as `kt`, values as `vp`):
/// similarities, row softmax, weighted values, written `ldo` floats per row into `out`.
fn attend_block(
    q: Mat,
    kt: &PackedRhs,
    vp: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    len: usize,
    scale: f32,
) {
    let (rows, d) = (q.rows, vp.cols());
    if len == 0 {
        for r in 0..rows {
            out[r * ldo..r * ldo + d].fill(0.0);
        }
        return;
    }
    with_scratch(rows * len, |sim| {
        kt.multiply(sim, len, q, scale, None);
        let sums = weigh_values(sim, rows, len, vp, out, ldo);
        divide_rows(out, ldo, d, &sums);
    })
}

/// `out = exp(sim - rowmax) · v` for `rows` rows of `len` similarities (`out` rows `ldo`
/// apart), returning each row's sum of exponentials. With bf16 values the exponentials are
/// converted to bf16 pairs as they are computed, straight into the product's left operand
/// ([`softmax_to_bf16`]); in f32 they overwrite `sim`, which the product then reads.
fn weigh_values(
    sim: &mut [f32],
    rows: usize,
    len: usize,
    vp: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
) -> Vec<f32> {
    let sim = &mut sim[..rows * len];
    match vp {
        PackedRhs::Bf16(v) => {
            let mut sums = vec![0f32; rows];
            let fill = |r: usize, words: &mut [u32]| {
                sums[r] = softmax_to_bf16(&sim[r * len..(r + 1) * len], words);
            };
            let product = |e: &PackedA| gemm_bf16(out, ldo, e, v, Epilogue::new(1.0, None, false));
            PackedA::with_rows(rows, len, fill, product);
            sums
        }
        PackedRhs::F32(_) => {
            let sums = sim.chunks_exact_mut(len).map(softmax_numerator).collect();
            vp.multiply(out, ldo, Mat::rows(sim, rows, len), 1.0, None);
            sums
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of `len` floats, kept between calls: the
/// similarity blocks are written whole by their product, and allocating (and zeroing) them
/// per block and head cost more than their softmax. The buffer is taken out while in use, so
/// a nested call gets a fresh one instead of aliasing it.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    SCRATCH.set(buf);
    result
}

/// Where a pair's rows and heads lie in the host matrices of [`self_attention_pair`] and
/// [`cross_attention_pair`]: rows `0..m` are image 0, the next `n` image 1; each part of a row
/// (q, k, v or qk, v, and the output) holds `heads` heads of `d` columns side by side.
#[derive(Clone, Copy, Debug)]
pub struct PairShape {
    pub m: usize,
    pub n: usize,
    pub heads: usize,
    pub d: usize,
}

impl PairShape {
    fn width(&self) -> usize {
        self.heads * self.d
    }

    /// Panics unless `qkv` holds `parts` parts of every row and `out` one; false when there
    /// is nothing to compute.
    fn check(&self, what: &str, qkv: &[f32], parts: usize, out: &[f32]) -> bool {
        let rows = self.m + self.n;
        assert!(
            qkv.len() == rows * parts * self.width() && out.len() == rows * self.width(),
            "{what}: {} and {} values for {self:?} with {parts} input parts",
            qkv.len(),
            out.len()
        );
        self.width() > 0
    }

    /// The `d` columns from `col` of rows `row0..row0 + rows` of a matrix of `parts` parts.
    fn view<'a>(
        &self,
        qkv: &'a [f32],
        parts: usize,
        row0: usize,
        rows: usize,
        col: usize,
    ) -> Mat<'a> {
        let ld = parts * self.width();
        Mat::strided(&qkv[row0 * ld..], rows, ld, ld).col_range(col, self.d)
    }
}

/// Self-attention of both images of one pair, on host matrices (the CPU path of a single
/// pair, without padding): row `r` of `qkv` holds `[q | k | v]`, each `heads` heads of `d`
/// columns side by side; rows `0..m` are image 0, the next `n` image 1, and each image
/// attends to its own keys. Row `r` of `ctx` receives its context, heads side by side.
/// Keys and values are packed once per image and head; blocks of rows of both images run in
/// parallel and write their rows of `ctx` directly, so no head split or merge is copied.
pub fn self_attention_pair(
    qkv: &[f32],
    shape: PairShape,
    scale: f32,
    kernel: Kernel,
    ctx: &mut [f32],
) {
    if !shape.check("self_attention_pair", qkv, 3, ctx) {
        return;
    }
    let PairShape { m, n, heads, d } = shape;
    let width = shape.width();
    let view = |row0, rows, col| shape.view(qkv, 3, row0, rows, col);
    let images = [(0, m), (m, n)];
    let packed: Vec<(PackedRhs, PackedRhs)> = (0..2 * heads)
        .into_par_iter()
        .map(|ih| {
            let ((start, len), h) = (images[ih / heads], ih % heads);
            (
                PackedRhs::pack(kernel, view(start, len, width + h * d).t()),
                PackedRhs::pack(kernel, view(start, len, 2 * width + h * d)),
            )
        })
        .collect();
    let (ctx0, ctx1) = ctx.split_at_mut(m * width);
    let block = ROW_BLOCK * width;
    let blocks0 = ctx0
        .par_chunks_mut(block)
        .enumerate()
        .map(|(b, out)| (0, b, out));
    let blocks1 = ctx1
        .par_chunks_mut(block)
        .enumerate()
        .map(|(b, out)| (1, b, out));
    blocks0
        .chain(blocks1)
        .map(|(image, b, out)| (image, b * ROW_BLOCK, out))
        .for_each(|(image, r0, out)| {
            let (start, len) = images[image];
            let rows = out.len() / width;
            for h in 0..heads {
                let (kt, vp) = &packed[image * heads + h];
                let q = view(start + r0, rows, h * d);
                attend_block(q, kt, vp, &mut out[h * d..], width, len, scale);
            }
        });
}

/// Cross-attention of both images of one pair, on host matrices: row `r` of `qkv` holds
/// `[qk | v]` (`heads` heads of `d` columns each), rows `0..m` image 0 and the next `n` image
/// 1; similarities are `scale · qk₀ · qk₁ᵀ`, once per head ([`cross_attention`]'s
/// computation). Row `r` of `ctx` receives its message, heads side by side.
pub fn cross_attention_pair(
    qkv: &[f32],
    shape: PairShape,
    scale: f32,
    kernel: Kernel,
    ctx: &mut [f32],
) {
    if !shape.check("cross_attention_pair", qkv, 2, ctx) {
        return;
    }
    let PairShape { m, n, heads, d } = shape;
    let width = shape.width();
    let view = |row0, rows, col| shape.view(qkv, 2, row0, rows, col);
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let (mut oa, mut ob) = (vec![0f32; m * d], vec![0f32; n * d]);
            let (a, b) = (view(0, m, h * d), view(m, n, h * d));
            let (va, vb) = (view(0, m, width + h * d), view(m, n, width + h * d));
            cross_head(a, b, va, vb, &mut oa, &mut ob, scale, kernel);
            (oa, ob)
        })
        .collect();
    ctx.par_chunks_mut(ROW_BLOCK * width)
        .enumerate()
        .for_each(|(block, out)| {
            for (i, row) in out.chunks_exact_mut(width).enumerate() {
                let r = block * ROW_BLOCK + i;
                for (h, (oa, ob)) in per_head.iter().enumerate() {
                    let src = if r < m {
                        &oa[r * d..]
                    } else {
                        &ob[(r - m) * d..]
                    };
                    row[h * d..(h + 1) * d].copy_from_slice(&src[..d]);
                }
            }
        });
}

/// Bidirectional cross attention over one shared similarity matrix, as LightGlue computes it:
/// `sim = a·bᵀ`, `m_a = softmax_rows(sim)·v_b`, `m_b = softmax_cols(sim)ᵀ·v_a`. Inputs are
/// [B, H, M, D] (`a`, `va`) and [B, H, N, D] (`b`, `vb`); `b_lens[k]` rows of `b` are real
/// (padding rows get zero messages). On CPU the similarity is computed once per head instead
/// of twice.
pub fn cross_attention(
    a: &Tensor,
    b: &Tensor,
    va: &Tensor,
    vb: &Tensor,
    b_lens: Option<&[usize]>,
    kernel: Kernel,
) -> Result<(Tensor, Tensor)> {
    if !(a.device().is_cpu() && a.dtype() == candle_core::DType::F32) {
        let ma = attention_reference(a, b, vb, 1.0, b_lens)?;
        let mb = attention_reference(b, a, va, 1.0, None)?;
        return Ok((ma, mb));
    }
    let (bsz, h, m, d) = a.dims4()?;
    let (_, _, n, _) = b.dims4()?;
    if b.dims4()? != (bsz, h, n, d)
        || va.dims4()? != (bsz, h, m, d)
        || vb.dims4()? != (bsz, h, n, d)
    {
        return Err(Error::Config("cross_attention: mismatched shapes".into()));
    }
    let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
    let (a_h, b_h, va_h, vb_h) = (host(a)?, host(b)?, host(va)?, host(vb)?);
    let mut out_a = vec![0f32; bsz * h * m * d];
    let mut out_b = vec![0f32; bsz * h * n * d];
    if m > 0 && n > 0 && d > 0 {
        out_a
            .par_chunks_mut(m * d)
            .zip(out_b.par_chunks_mut(n * d))
            .enumerate()
            .for_each(|(bh, (oa, ob))| {
                let len = b_lens.map_or(n, |l| l[bh / h].min(n));
                cross_head(
                    Mat::rows(&a_h[bh * m * d..], m, d),
                    Mat::rows(&b_h[bh * n * d..], len, d),
                    Mat::rows(&va_h[bh * m * d..], m, d),
                    Mat::rows(&vb_h[bh * n * d..], len, d),
                    oa,
                    &mut ob[..len * d],
                    1.0,
                    kernel,
                );
            });
    }
    let device = a.device();
    Ok((
        Tensor::from_vec(out_a, (bsz, h, m, d), device)?,
        Tensor::from_vec(out_b, (bsz, h, n, d), device)?,
    ))
}

/// One head of [`cross_attention`]: `a` and `va` are [M, D] views, `b` and `vb` [N, D] (real
/// rows only); similarities are `scale · a · bᵀ`; `oa` and `ob` are [M, D] and [N, D].
#[allow(clippy::too_many_arguments)]
fn cross_head(
    a: Mat,
    b: Mat,
    va: Mat,
    vb: Mat,
    oa: &mut [f32],
    ob: &mut [f32],
    scale: f32,
    kernel: Kernel,
) {
    let (m, n) = (a.rows, b.rows);
    if n == 0 {
        oa.fill(0.0);
        return;
    }
    with_scratch((m + ROW_BLOCK) * n, |scratch| {
        let (sim, block) = scratch.split_at_mut(m * n);
        cross_head_in(a, b, va, vb, oa, ob, scale, kernel, sim, block)
    })
}

/// [`cross_head`] with its scratch: `sim` of M × N and `block` of ROW_BLOCK × N floats.
#[allow(clippy::too_many_arguments)]
fn cross_head_in(
    a: Mat,
    b: Mat,
    va: Mat,
    vb: Mat,
    oa: &mut [f32],
    ob: &mut [f32],
    scale: f32,
    kernel: Kernel,
    sim: &mut [f32],
    block: &mut [f32],
) {
    let (m, n, d) = (a.rows, b.rows, a.cols);
    PackedRhs::pack(kernel, b.t()).multiply(sim, n, a, scale, None);
    // Rows: softmax over image b, in blocks so the exponentials stay in cache (`sim` itself
    // is kept for the columns; bf16 reads it without writing).
    let vbp = PackedRhs::pack(kernel, vb);
    for (r0, out) in (0..m).step_by(ROW_BLOCK).zip(oa.chunks_mut(ROW_BLOCK * d)) {
        let rows = out.len() / d;
        let src = match kernel {
            Kernel::F32 => {
                let e = &mut block[..rows * n];
                e.copy_from_slice(&sim[r0 * n..(r0 + rows) * n]);
                e
            }
            Kernel::Bf16 => &mut sim[r0 * n..(r0 + rows) * n],
        };
        let sums = weigh_values(src, rows, n, &vbp, out, d);
        divide_rows(out, d, d, &sums);
    }
    // Columns: softmax over image a (f32: exponentials written in place), then Eᵀ · v_a.
    let mut col_max = vec![f32::NEG_INFINITY; n];
    for row in sim.chunks_exact(n) {
        col_max
            .iter_mut()
            .zip(row)
            .for_each(|(c, &v)| *c = c.max(v));
    }
    let mut col_sum = vec![0f32; n];
    match kernel {
        // Eᵀ read through its strides walks E down its columns, a page per step at 2048
        // points, which no prefetcher follows; `gemm` packs it in cache-sized blocks instead.
        Kernel::F32 => {
            for row in sim.chunks_exact_mut(n) {
                exp_sub_accumulate(row, &col_max, &mut col_sum);
            }
            matmul_into(ob, Mat::rows(sim, m, n).t(), va, 1.0)
        }
        // bf16 packs its left operand by pairs along rows; E's rows are the inner dimension
        // here, so compute m_bᵀ = v_aᵀ · E (E packs as the right operand, two rows at a
        // time, each row's exponentials computed into a small buffer and packed from there)
        // and transpose the small result.
        Kernel::Bf16 => {
            let e = PackedB::from_rows(m, n, |r, row| {
                row.copy_from_slice(&sim[r * n..(r + 1) * n]);
                exp_sub_accumulate(row, &col_max, &mut col_sum);
            });
            let mut transposed = vec![0f32; d * n];
            PackedRhs::Bf16(e).multiply(&mut transposed, n, va.t(), 1.0, None);
            for (j, row) in ob.chunks_exact_mut(d).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = transposed[c * n + j];
                }
            }
        }
    }
    divide_rows(ob, d, d, &col_sum);
}

/// `row[j] ← exp(row[j] - max[j])`, adding each to `sum[j]`.
fn exp_sub_accumulate(row: &mut [f32], max: &[f32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { avx512::exp_sub_accumulate(row, max, sum) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { exp_sub_accumulate_avx2(row, max, sum) };
    }
    exp_sub_accumulate_plain(row, max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_accumulate_avx2(row: &mut [f32], max: &[f32], sum: &mut [f32]) {
    exp_sub_accumulate_plain(row, max, sum)
}

#[inline(always)]
fn exp_sub_accumulate_plain(row: &mut [f32], max: &[f32], sum: &mut [f32]) {
    for ((x, &mx), s) in row.iter_mut().zip(max).zip(sum.iter_mut()) {
        *x = fast_exp(*x - mx);
        *s += *x;
    }
}

/// Divides the first `d` values of each row of `x` (rows `ld` apart) by its softmax
/// denominator.
fn divide_rows(x: &mut [f32], ld: usize, d: usize, sums: &[f32]) {
    for (r, &sum) in sums.iter().enumerate() {
        let inv = 1.0 / sum;
        x[r * ld..r * ld + d].iter_mut().for_each(|v| *v *= inv);
    }
}

/// `exp(row - max(row))` as bf16 pairs into `words` (`row.len().div_ceil(2)` of them, an odd
/// last value paired with zero), returning the sum of the unrounded exponentials: the same
/// values, sum and rounding as [`softmax_numerator`] followed by the bf16 packing, in one pass.
fn softmax_to_bf16(row: &[f32], words: &mut [u32]) -> f32 {
    assert_eq!(
        words.len(),
        row.len().div_ceil(2),
        "softmax_to_bf16: output length"
    );
    #[cfg(target_arch = "x86_64")]
    if super::matmul::bf16_available() {
        // SAFETY: the CPU has AVX-512 F, BW and BF16; the lengths are checked above.
        return unsafe { avx512::softmax_to_bf16(row, words) };
    }
    let mut e = row.to_vec();
    let sum = softmax_numerator(&mut e);
    super::matmul::convert_row(&e, words);
    sum
}

/// Replaces `row` by `exp(row - max(row))` and returns the sum.
fn softmax_numerator(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { avx512::softmax_numerator(row) };
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { exp_shifted_avx2(row, max) };
    }
    exp_shifted(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32], max: f32) -> f32 {
    exp_shifted(row, max)
}

/// `x ← exp(x - max)` over the row, summed with eight partial sums so it vectorises.
#[inline(always)]
fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = fast_exp(*x - max);
            *a += *x;
        }
    }
    let mut tail = 0f32;
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - max);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// `exp(x)` for x ≤ 0 to about 1 ulp (Cephes' expf polynomial with Cody–Waite reduction),
/// written without branches or library calls so that it vectorises.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let exponent = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    y * f32::from_bits(((exponent + 127) as u32) << 23)
}

/// The exponentials of the softmax 16 lanes at a time: the same reduction and polynomial as
/// [`fast_exp`], with `vscalefps` applying the power of two. At 512 keypoints the softmax
/// exponentials took more time than the matrix products around them.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub use crate::ops::simd::avx512::available;
    use crate::ops::simd::avx512::{exp, mask};

    /// The row's largest value in every lane.
    #[target_feature(enable = "avx512f")]
    fn row_max(row: &[f32]) -> __m512 {
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..row.len()).step_by(16) {
            let m = mask(row.len() - i);
            // SAFETY: the mask keeps the load inside the row.
            let v = unsafe {
                _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), m, row.as_ptr().add(i))
            };
            mx = _mm512_max_ps(mx, v);
        }
        _mm512_set1_ps(_mm512_reduce_max_ps(mx))
    }

    /// `row ← exp(row - max(row))`, returning the sum.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_numerator(row: &mut [f32]) -> f32 {
        let max = row_max(row);
        let ptr = row.as_mut_ptr();
        let mut sum = _mm512_setzero_ps();
        for i in (0..row.len()).step_by(16) {
            let m = mask(row.len() - i);
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, ptr.add(i)), max));
            _mm512_mask_storeu_ps(ptr.add(i), m, e);
            sum = _mm512_mask_add_ps(sum, m, sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// [`super::softmax_to_bf16`]: 32 exponentials per step, converted in pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn softmax_to_bf16(row: &[f32], words: &mut [u32]) -> f32 {
        let max = row_max(row);
        let (ptr, out) = (row.as_ptr(), words.as_mut_ptr());
        let mut sum = _mm512_setzero_ps();
        for i in (0..row.len()).step_by(32) {
            let (m0, m1) = (mask(row.len() - i), mask(row.len().saturating_sub(i + 16)));
            // Lanes past the end become zeros, so an odd last value pairs with zero.
            let e0 = _mm512_maskz_mov_ps(
                m0,
                exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m0, ptr.add(i)), max)),
            );
            let e1 = _mm512_maskz_mov_ps(
                m1,
                exp(_mm512_sub_ps(
                    _mm512_maskz_loadu_ps(m1, ptr.add(i + 16)),
                    max,
                )),
            );
            // Summed 16 at a time in order, as `softmax_numerator` does (same rounding).
            sum = _mm512_add_ps(_mm512_add_ps(sum, e0), e1);
            // The second operand fills the high half, so the 32 bf16 values lie in order and
            // word p holds (e[2p], e[2p+1]).
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(e1, e0));
            let wm = mask((row.len() - i).div_ceil(2));
            _mm512_mask_storeu_epi32(out.add(i / 2) as *mut _, wm, pairs);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `row[j] ← exp(row[j] - max[j])`, adding each to `sum[j]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sub_accumulate(row: &mut [f32], max: &[f32], sum: &mut [f32]) {
        assert!(max.len() >= row.len() && sum.len() >= row.len());
        let (ptr, mp, sp) = (row.as_mut_ptr(), max.as_ptr(), sum.as_mut_ptr());
        for i in (0..row.len()).step_by(16) {
            let m = mask(row.len() - i);
            let x = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, ptr.add(i)),
                _mm512_maskz_loadu_ps(m, mp.add(i)),
            );
            let e = exp(x);
            _mm512_mask_storeu_ps(ptr.add(i), m, e);
            let s = _mm512_maskz_loadu_ps(m, sp.add(i));
            _mm512_mask_storeu_ps(sp.add(i), m, _mm512_add_ps(s, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=20_000 {
            let x = -87.0 + i as f32 * (87.0 / 20_000.0);
            let (ours, exact) = (fast_exp(x), (x as f64).exp());
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 3e-7, "exp({x}) = {ours}, want {exact}");
        }
    }

    /// The 16-lane softmax against the scalar one, over lengths around the vector width and
    /// values spanning exp's clamped range.
    #[test]
    fn vector_softmax_equals_scalar() {
        for len in [1usize, 15, 16, 17, 64, 100] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.9)
                .collect();
            let mut fast = row.clone();
            let sum = softmax_numerator(&mut fast);
            let mut slow = row.clone();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want = exp_shifted(&mut slow, max);
            assert!(
                (sum - want).abs() <= 1e-6 * want,
                "len {len}: {sum} vs {want}"
            );
            for (a, b) in fast.iter().zip(&slow) {
                assert!(
                    (a - b).abs() <= 3e-7 * b.abs().max(1e-30),
                    "len {len}: {a} vs {b}"
                );
            }
            let maxes: Vec<f32> = row.iter().map(|v| v + 1.0).collect();
            let (mut fast, mut slow) = (row.clone(), row.clone());
            let (mut s_fast, mut s_slow) = (vec![1f32; len], vec![1f32; len]);
            exp_sub_accumulate(&mut fast, &maxes, &mut s_fast);
            exp_sub_accumulate_plain(&mut slow, &maxes, &mut s_slow);
            for ((a, b), (sa, sb)) in fast.iter().zip(&slow).zip(s_fast.iter().zip(&s_slow)) {
                assert!((a - b).abs() <= 3e-7 * b && (sa - sb).abs() <= 3e-7 * sb);
            }
        }
    }

    /// The fused softmax → bf16 pairs against its two steps (softmax, then the packing's
    /// conversion), bit for bit, over lengths 1–70 and around 512 (odd lengths end in a
    /// half-filled word).
    #[test]
    fn softmax_to_bf16_equals_softmax_then_conversion() {
        for len in (1usize..=70).chain([511, 512, 513]) {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.37)
                .collect();
            let mut words = vec![u32::MAX; len.div_ceil(2)];
            let sum = softmax_to_bf16(&row, &mut words);
            let mut e = row.clone();
            let want_sum = softmax_numerator(&mut e);
            let mut want = vec![0u32; len.div_ceil(2)];
            crate::ops::matmul::convert_row(&e, &mut want);
            assert_eq!(sum.to_bits(), want_sum.to_bits(), "len {len}");
            assert_eq!(words, want, "len {len}");
        }
    }

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        Tensor::rand(-2f32, 2f32, shape, &Device::Cpu)
            .unwrap()
            .affine(1.0, seed as f64 * 1e-3)
            .unwrap()
    }

    /// The second batch item of the cross-attention tests has 20 real rows of 57: its 37
    /// padding rows must get zero messages.
    fn assert_padding_is_zero(mb: &Tensor) {
        let pad = mb.get(1).unwrap().narrow(1, 20, 37).unwrap();
        let total = pad
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(total, 0.0);
    }

    #[test]
    fn cross_attention_matches_two_composed_attentions() {
        let a = random((2, 2, 40, 8), 4);
        let b = random((2, 2, 57, 8), 5);
        let va = random((2, 2, 40, 8), 6);
        let vb = random((2, 2, 57, 8), 7);
        let lens = [57usize, 20];
        let (ma, mb) = cross_attention(&a, &b, &va, &vb, Some(&lens), Kernel::F32).unwrap();
        let want_a = attention_reference(&a, &b, &vb, 1.0, Some(&lens)).unwrap();
        let want_b = attention_reference(&b, &a, &va, 1.0, None).unwrap();
        assert!(max_abs_diff(&ma, &want_a) < 1e-5);
        // Real rows of b match; padded rows of the second item get zero messages.
        assert!(max_abs_diff(&mb.get(0).unwrap(), &want_b.get(0).unwrap()) < 1e-5);
        let real = mb.get(1).unwrap().narrow(1, 0, 20).unwrap();
        assert!(max_abs_diff(&real, &want_b.get(1).unwrap().narrow(1, 0, 20).unwrap()) < 1e-5);
        assert_padding_is_zero(&mb);
    }

    /// bf16 products against the f32 composition: attention outputs are weighted means of
    /// values in [-2, 2], so an absolute bound of 0.05 is a few bf16 steps (2^-8 relative) of
    /// the similarities through the softmax. Shapes cover partial row blocks (70 rows, block
    /// 64), partial panels (57, 70 keys), padding, and the real head width 64. Runs on every
    /// CPU: the AVX-512 BF16 kernels where dispatch allows them, else their plain twins
    /// (`WBIA_LIGHTGLUE_CPU=portable` tests those).
    #[test]
    fn bf16_kernels_stay_close_to_f32() {
        let q = random((2, 3, 70, 64), 1);
        let k = random((2, 3, 57, 64), 2);
        let v = random((2, 3, 57, 64), 3);
        let scale = 0.125;
        for lens in [None, Some(&[57usize, 33][..])] {
            let half = attention(&q, &k, &v, scale, lens, Kernel::Bf16).unwrap();
            let exact = attention_reference(&q, &k, &v, scale, lens).unwrap();
            let diff = max_abs_diff(&half, &exact);
            assert!(
                diff < 0.05 && diff > 0.0,
                "max diff {diff} with lens {lens:?}"
            );
        }
        let (a, b) = (random((2, 2, 70, 64), 4), random((2, 2, 57, 64), 5));
        let (va, vb) = (random((2, 2, 70, 64), 6), random((2, 2, 57, 64), 7));
        let a = (a * 0.125).unwrap();
        let lens = [57usize, 20];
        let (ma, mb) = cross_attention(&a, &b, &va, &vb, Some(&lens), Kernel::Bf16).unwrap();
        let (fa, fb) = cross_attention(&a, &b, &va, &vb, Some(&lens), Kernel::F32).unwrap();
        assert!(max_abs_diff(&ma, &fa) < 0.05);
        let real = |t: &Tensor| t.get(1).unwrap().narrow(1, 0, 20).unwrap();
        assert!(max_abs_diff(&mb.get(0).unwrap(), &fb.get(0).unwrap()) < 0.05);
        assert!(max_abs_diff(&real(&mb), &real(&fb)) < 0.05);
        assert_padding_is_zero(&mb);
    }

    #[test]
    fn fused_matches_composed() {
        let q = random((2, 3, 45, 16), 1);
        let k = random((2, 3, 70, 16), 2);
        let v = random((2, 3, 70, 16), 3);
        for lens in [None, Some(&[70usize, 33][..])] {
            let fused = attention(&q, &k, &v, 0.25, lens, Kernel::F32).unwrap();
            let composed = attention_reference(&q, &k, &v, 0.25, lens).unwrap();
            let diff = max_abs_diff(&fused, &composed);
            assert!(diff < 1e-5, "max diff {diff} with lens {lens:?}");
        }
    }
}
