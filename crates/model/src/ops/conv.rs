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

use candle_core::Tensor;

use crate::Result;

/// `conv2d(x, weight, padding, stride 1, dilation 1, groups 1)` for a [1, C, H, W] input.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ambiguous = x.device().is_cpu() && b == 1 && c == h && h == w;
    if ambiguous {
        let view = x.squeeze(0)?.broadcast_left(1)?;
        return Ok(view.conv2d(weight, padding, 1, 1, 1)?);
    }
    Ok(x.conv2d(weight, padding, 1, 1, 1)?)
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
            let fast = conv2d(&x, &weight, 1).unwrap();
            let slow = conv2d_reference(&x, &weight, 1).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            let d = max_abs_diff(&fast, &slow);
            assert!(d < 1e-4, "C={c} H={h} W={w}: max diff {d}");
        }
    }
}
