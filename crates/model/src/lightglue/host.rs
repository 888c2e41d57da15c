//! The transformer layers of one pair on the CPU, on plain host matrices.
//!
//! Through candle, every layer concatenated the two images, split and merged the attention
//! heads, concatenated `[x, message]` for the feed-forward layer and added the residual, each
//! a copy or an allocation on one thread: at 512 keypoints those passes and the idle second
//! core cost about a third of a layer. Here the pair's state is one matrix, [image 0 rows |
//! image 1 rows] × [x | message]: the projections read `x` in place, attention reads its heads
//! through strides and writes contexts side by side, the output projection writes the message
//! beside `x`, so the feed-forward layer's input is already concatenated, and its second
//! product adds the residual into `x` in its last pass. Every pass is parallel. The candle
//! layers ([`Layer::forward`]) are the twin the tests compare against, and the path for
//! padded batches and other devices.

use candle_core::Tensor;
use candle_nn::Linear;
use rayon::prelude::*;

use super::{
    log_sigmoid_scalar, CrossBlock, FeedForward, Layer, MatchAssignment, MatchResult, Proj, Rotary,
    SelfBlock, DIM, HEADS, HEAD_DIM, LAYER_NORM_EPS,
};
use crate::ops::assignment::dual_softmax_best;
use crate::ops::attention::{cross_attention_pair, self_attention_pair, PairShape};
use crate::ops::fused::{layer_norm_rows_gelu, rotate_pairs};
use crate::ops::matmul::{Kernel, Mat, PackedLinear, PackedRhs};
use crate::Result;

/// One pair's transformer state between layers.
pub(super) struct HostPair {
    /// [rows, 2·DIM]: the descriptors in columns `0..DIM`, the last block's message in
    /// `DIM..2·DIM`.
    xm: Vec<f32>,
    /// Rows of image 0 (the first `m`) and of image 1.
    m: usize,
    n: usize,
    /// Rotary tables of every row, [rows, HEAD_DIM] each.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    /// Scratch every layer reuses: projections, contexts, the feed-forward's hidden layer.
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    hidden: Vec<f32>,
}

const WIDTH: usize = 2 * DIM;

/// Rows per task of the element-wise passes.
const ROWS_PER_TASK: usize = 32;

impl HostPair {
    /// From the projected descriptors ([1, M, DIM], [1, N, DIM]) and rotary tables of a pair.
    pub(super) fn new(
        desc0: &Tensor,
        desc1: &Tensor,
        enc0: &Rotary,
        enc1: &Rotary,
    ) -> Result<Self> {
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (m, n) = (desc0.dim(1)?, desc1.dim(1)?);
        let mut xm = vec![0f32; (m + n) * WIDTH];
        for (row, x) in xm.chunks_exact_mut(WIDTH).zip(
            host(desc0)?
                .chunks_exact(DIM)
                .chain(host(desc1)?.chunks_exact(DIM)),
        ) {
            row[..DIM].copy_from_slice(x);
        }
        let table = |a: &Tensor, b: &Tensor| -> Result<Vec<f32>> {
            let mut t = host(a)?;
            t.extend(host(b)?);
            Ok(t)
        };
        Ok(Self {
            xm,
            m,
            n,
            cos: table(&enc0.cos, &enc1.cos)?,
            sin: table(&enc0.sin, &enc1.sin)?,
            qkv: Vec::new(),
            ctx: Vec::new(),
            hidden: Vec::new(),
        })
    }

    fn rows(&self) -> usize {
        self.m + self.n
    }

    fn shape(&self) -> PairShape {
        PairShape {
            m: self.m,
            n: self.n,
            heads: HEADS,
            d: HEAD_DIM,
        }
    }

    /// The descriptors as [1, M, DIM] and [1, N, DIM] tensors.
    #[cfg(test)]
    pub(super) fn descriptors(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let image = |rows: std::ops::Range<usize>| -> Result<Tensor> {
            let len = rows.len();
            let x: Vec<f32> = rows
                .flat_map(|r| &self.xm[r * WIDTH..r * WIDTH + DIM])
                .copied()
                .collect();
            Ok(Tensor::from_vec(x, (1, len, DIM), device)?)
        };
        Ok((image(0..self.m)?, image(self.m..self.rows())?))
    }

    /// Keeps, of the current points, those at positions `keep0` of image 0 and `keep1` of
    /// image 1 (ascending), with their rotary tables.
    pub(super) fn keep(&mut self, keep0: &[u32], keep1: &[u32]) {
        if (keep0.len(), keep1.len()) == (self.m, self.n) {
            return;
        }
        let rows: Vec<usize> = keep0
            .iter()
            .map(|&k| k as usize)
            .chain(keep1.iter().map(|&k| self.m + k as usize))
            .collect();
        let gather = |src: &[f32], width: usize, used: usize| -> Vec<f32> {
            let mut out = vec![0f32; rows.len() * width];
            for (dst, &r) in out.chunks_exact_mut(width).zip(&rows) {
                dst[..used].copy_from_slice(&src[r * width..r * width + used]);
            }
            out
        };
        self.xm = gather(&self.xm, WIDTH, DIM);
        self.cos = gather(&self.cos, HEAD_DIM, HEAD_DIM);
        self.sin = gather(&self.sin, HEAD_DIM, HEAD_DIM);
        (self.m, self.n) = (keep0.len(), keep1.len());
    }

    /// Logits `x · w + b` of a 256 → 1 head for every point, image 0's then image 1's.
    pub(super) fn logits(&self, head: &Linear) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = head.weight().flatten_all()?.to_vec1::<f32>()?;
        let b = match head.bias() {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?[0],
            None => 0.0,
        };
        let mut all: Vec<f32> = self
            .xm
            .par_chunks(WIDTH)
            .map(|row| row[..DIM].iter().zip(&w).map(|(x, w)| x * w).sum::<f32>() + b)
            .collect();
        let image1 = all.split_off(self.m);
        Ok((all, image1))
    }

    /// The matches of the assignment head `head` (its dual softmax and matchability, as
    /// [`super::MatchAssignment::scores`] then [`super::filter_matches`]): mutual best pairs
    /// whose confidence exceeds `threshold`, as positions in the current point sets.
    pub(super) fn assign(&self, head: &MatchAssignment, threshold: f32) -> Result<MatchResult> {
        let Some(proj) = head.final_proj_host.as_ref() else {
            return Err(
                candle_core::Error::Msg("the host assignment needs packed weights".into()).into(),
            );
        };
        let (m, n, rows) = (self.m, self.n, self.rows());
        if m == 0 || n == 0 {
            return Ok(MatchResult::default());
        }
        let mut projected = vec![0f32; rows * DIM];
        proj.forward_into(descriptors(&self.xm, rows), &mut projected, DIM, false);
        let (md0, md1) = projected.split_at(m * DIM);
        // The reference divides both sides by DIM^1/4 = 4 before their product: a power of
        // two, so scaling the product by 1/16 rounds identically.
        let scale = 1.0 / (DIM as f32).sqrt();
        let md1t = PackedRhs::pack(Kernel::F32, Mat::rows(md1, n, DIM).t());
        let mut sim = vec![0f32; m * n];
        sim.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, out)| {
                let r0 = task * ROWS_PER_TASK;
                let a = Mat::rows(&md0[r0 * DIM..], out.len() / n, DIM);
                md1t.multiply(out, n, a, scale, None);
            });
        let (l0, l1) = self.logits(&head.matchability)?;
        let z0: Vec<f32> = l0.into_iter().map(log_sigmoid_scalar).collect();
        let z1: Vec<f32> = l1.into_iter().map(log_sigmoid_scalar).collect();
        let best = dual_softmax_best(&sim, m, n, &z0, &z1);
        let mut result = MatchResult::default();
        for (i, (&j, &s)) in best.row_best.iter().zip(&best.row_max).enumerate() {
            let confidence = s.exp();
            if best.col_best[j as usize] as usize == i && confidence > threshold {
                result.matches.push([i, j as usize]);
                result.scores.push(confidence);
            }
        }
        Ok(result)
    }
}

impl Proj {
    fn packed(&self) -> Result<&PackedLinear> {
        match self {
            Self::Packed(op) => Ok(&op.0),
            Self::Candle(_) => Err(candle_core::Error::Msg(
                "the host layers need the packed CPU weights".into(),
            )
            .into()),
        }
    }
}

/// The descriptor columns of the first `rows` rows of a state matrix.
fn descriptors(xm: &[f32], rows: usize) -> Mat<'_> {
    Mat::strided(xm, rows, WIDTH, WIDTH).col_range(0, DIM)
}

/// Scratch `buf` resized to `len` values (its old contents are overwritten by the caller).
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// Rotary encoding of the q and k heads of the rows of `qkv` (the first `2·DIM` columns of
/// rows `ld` apart; a last row may stop there), in place, with the tables from those rows on:
/// each pair (a, b) of a head becomes (a·cos − b·sin, b·cos + a·sin) ([`rotate_pairs`], as
/// [`crate::ops::fused::rotary`]).
fn rotate_qk(qkv: &mut [f32], ld: usize, cos: &[f32], sin: &[f32]) {
    let rows = qkv.len().div_ceil(ld);
    for (r, (cos, sin)) in cos
        .chunks_exact(HEAD_DIM)
        .zip(sin.chunks_exact(HEAD_DIM))
        .take(rows)
        .enumerate()
    {
        for head in qkv[r * ld..r * ld + 2 * DIM].chunks_exact_mut(HEAD_DIM) {
            rotate_pairs(head, cos, sin);
        }
    }
}

impl HostPair {
    /// The end of both blocks: the attention contexts (in `ctx`) projected to the message
    /// beside `x`, then `x += ffn([x | message])`.
    fn message_and_feed_forward(&mut self, to_out: &Proj, ffn: &FeedForward) -> Result<()> {
        let rows = self.rows();
        to_out.packed()?.forward_into(
            Mat::rows(&self.ctx[..rows * DIM], rows, DIM),
            &mut self.xm[DIM..],
            WIDTH,
            false,
        );
        ffn.residual_host(self)
    }
}

impl Layer {
    /// [`Layer::forward`] on a pair's host state.
    pub(super) fn forward_host(&self, pair: &mut HostPair) -> Result<()> {
        self.self_attn.forward_host(pair)?;
        self.cross_attn.forward_host(pair)
    }
}

impl SelfBlock {
    fn forward_host(&self, p: &mut HostPair) -> Result<()> {
        let (rows, shape) = (p.rows(), p.shape());
        let qkv = scratch(&mut p.qkv, rows * 3 * DIM);
        let (cos, sin) = (&p.cos, &p.sin);
        self.wqkv.packed()?.forward_into_then(
            descriptors(&p.xm, rows),
            qkv,
            3 * DIM,
            false,
            |r0, out| rotate_qk(out, 3 * DIM, &cos[r0 * HEAD_DIM..], &sin[r0 * HEAD_DIM..]),
        );
        let ctx = scratch(&mut p.ctx, rows * DIM);
        let scale = (HEAD_DIM as f32).powf(-0.5);
        self_attention_pair(qkv, shape, scale, self.kernel, ctx);
        p.message_and_feed_forward(&self.out_proj, &self.ffn)
    }
}

impl CrossBlock {
    fn forward_host(&self, p: &mut HostPair) -> Result<()> {
        let (rows, shape) = (p.rows(), p.shape());
        let qkv = scratch(&mut p.qkv, rows * 2 * DIM);
        // Both sides scaled by HEAD_DIM^-1/4 before their product, as the reference does
        // (bf16 rounds the scaled values).
        let scale = (HEAD_DIM as f32).powf(-0.25);
        self.to_qkv.packed()?.forward_into_then(
            descriptors(&p.xm, rows),
            qkv,
            2 * DIM,
            false,
            |_, out| {
                for row in out.chunks_mut(2 * DIM) {
                    row[..DIM].iter_mut().for_each(|v| *v *= scale);
                }
            },
        );
        let ctx = scratch(&mut p.ctx, rows * DIM);
        cross_attention_pair(qkv, shape, 1.0, self.kernel, ctx);
        p.message_and_feed_forward(&self.to_out, &self.ffn)
    }
}

impl FeedForward {
    /// `x += ffn([x | message])`, the residual added by the second product.
    fn residual_host(&self, p: &mut HostPair) -> Result<()> {
        let rows = p.rows();
        let hidden = scratch(&mut p.hidden, rows * WIDTH);
        let (gamma, beta) = &self.norm_host;
        self.fc1.packed()?.forward_into_then(
            Mat::rows(&p.xm, rows, WIDTH),
            hidden,
            WIDTH,
            false,
            |_, out| layer_norm_rows_gelu(out, gamma, beta, LAYER_NORM_EPS),
        );
        self.fc2
            .packed()?
            .forward_into(Mat::rows(hidden, rows, WIDTH), &mut p.xm, WIDTH, true);
        Ok(())
    }
}
