//! WBIA's annotation chips, bit for bit: `ibs.get_annot_chips(aids)` at WBIA's default chip
//! config (`wbia/core_annots.py`, `ChipConfig`: `dim_size` 700, `resize_dim` `maxwh`, no pad,
//! no filters), which is what wbia-plugin-lightglue scores.
//!
//! WBIA builds a chip in three steps, each reproduced here with the same arithmetic:
//!
//! 1. the chip size: `vtool.ScaleStrat.maxwh(700, (w, h))` ([`chip_size`]);
//! 2. the image → chip affine of `vtool.get_image_to_chip_transform` ([`chip_geometry`]);
//! 3. `cv2.warpAffine(img, M, dsize, flags=INTER_LANCZOS4, borderMode=BORDER_CONSTANT)` with a
//!    black border, run by OpenCV's fixed-point path for 8-bit images
//!    ([`warp_affine_lanczos4`]).
//!
//! How WBIA reads the image first depends on the orientation it stored for it
//! ([`wbia_read_image`]). The file must be the one WBIA holds (`_ibsdb/images/`): at import WBIA
//! rewrites files with an EXIF orientation other than 0/1 upright (`cv2.imwrite`, JPEG quality
//! 95) and flattens RGBA images onto white, so those differ from what was uploaded.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::image::{decode_image, decode_image_unoriented, Decoder, RgbImage};
use crate::{Error, Result};

/// WBIA's default `dim_size`: the longer side of a chip.
pub const WBIA_CHIP_DIM: u32 = 700;

/// Largest |coordinate| or side accepted in a bbox. Beyond it OpenCV's 32-bit fixed-point
/// coordinates (1/1024 px) would overflow; no real annotation comes near.
pub const MAX_BBOX_COORD: i64 = 1 << 19;

/// Bits of the fractional part of a source coordinate that select the kernel (OpenCV's
/// `INTER_BITS`): 32 sub-pixel positions per axis.
const INTER_BITS: i32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
/// Bits of the per-pixel coordinate accumulators (OpenCV's `AB_BITS`).
const AB_BITS: i32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
/// Kernel weights are 1.15 fixed point (OpenCV's `INTER_REMAP_COEF_BITS`).
const COEF_BITS: i32 = 15;
const COEF_SCALE: i32 = 1 << COEF_BITS;

/// Where a chip comes from in its image: output size and the image → chip affine (row-major
/// 2×3, as passed to `cv2.warpAffine`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChipGeometry {
    pub width: u32,
    pub height: u32,
    pub m: [f64; 6],
}

/// `vtool.ScaleStrat.maxwh(target, (w, h))` with `tol` 0: the longer side (the first on a tie,
/// like `np.argmax`) becomes `target`, the other is `int(round(side * target / longer))`
/// rounded half to even like Python's `round`. A bbox whose longer side already equals
/// `target` keeps its size.
pub fn chip_size(bbox_w: i64, bbox_h: i64, target: u32) -> Result<(u32, u32)> {
    check_side("width", bbox_w)?;
    check_side("height", bbox_h)?;
    let longer = if bbox_w >= bbox_h { bbox_w } else { bbox_h };
    let target = target as i64;
    let (w, h) = if longer == target {
        (bbox_w, bbox_h)
    } else {
        let scale = target as f64 / longer as f64;
        (
            (bbox_w as f64 * scale).round_ties_even() as i64,
            (bbox_h as f64 * scale).round_ties_even() as i64,
        )
    };
    if w < 1 || h < 1 {
        // cv2.warpAffine refuses an empty dsize; WBIA fails on such an annotation.
        return Err(Error::InvalidChip(format!(
            "a {bbox_w}x{bbox_h} bbox gives an empty {w}x{h} chip"
        )));
    }
    Ok((w as u32, h as u32))
}

fn check_side(what: &str, v: i64) -> Result<()> {
    if v <= 0 || v > MAX_BBOX_COORD {
        return Err(Error::InvalidChip(format!(
            "bbox {what} {v} is not in 1..={MAX_BBOX_COORD}"
        )));
    }
    Ok(())
}

/// The chip size and `vtool.get_image_to_chip_transform(bbox, (cw, ch), theta)` for WBIA's
/// default config: translate the bbox centre to the origin, scale to the chip, rotate by
/// `-theta`, translate to the chip centre.
pub fn chip_geometry(bbox: [i64; 4], theta: f64) -> Result<ChipGeometry> {
    let [x, y, w, h] = bbox;
    if !theta.is_finite() {
        return Err(Error::InvalidChip(format!("theta {theta} is not finite")));
    }
    for (what, v) in [("x", x), ("y", y)] {
        if v.unsigned_abs() > MAX_BBOX_COORD as u64 {
            return Err(Error::InvalidChip(format!(
                "bbox {what} {v} is beyond ±{MAX_BBOX_COORD}"
            )));
        }
    }
    let (cw, ch) = chip_size(w, h, WBIA_CHIP_DIM)?;
    Ok(ChipGeometry {
        width: cw,
        height: ch,
        m: image_to_chip_transform(bbox, (cw, ch), theta),
    })
}

/// The affine itself, with vtool's operations in vtool's order. vtool multiplies the four 3×3
/// matrices with `numpy.dot` (`T2·(R·(S·T1))`); with their zeros every entry but two is a
/// single rounded product or sum. The two translation entries sum two products, which
/// OpenBLAS's dgemm fuses (`fma(-sin, sy·ty1, cos·sx·tx1)`) on CPUs with FMA; the goldens were
/// recorded on such a CPU, and with numpy's sines this form gives all their affines bit for
/// bit. The sines here are libm's; numpy on AVX-512 CPUs uses SVML's, a few ulps away, which
/// moves the last bits of the affine but has changed no chip of the goldens.
pub fn image_to_chip_transform(bbox: [i64; 4], chip: (u32, u32), theta: f64) -> [f64; 6] {
    let [x, y, w, h] = bbox.map(|v| v as f64);
    let (cw, ch) = (chip.0 as f64, chip.1 as f64);
    let tx1 = -(x + w / 2.0);
    let ty1 = -(y + h / 2.0);
    let sx = cw / w;
    let sy = ch / h;
    let tx2 = cw / 2.0;
    let ty2 = ch / 2.0;
    // rotation_mat3x3(-theta) = [[cos, -sin], [sin, cos]] of -theta.
    let (s, c) = ((-theta).sin(), (-theta).cos());
    let a = sx * tx1; // (S·T1)[0][2]
    let b = sy * ty1; // (S·T1)[1][2]
    [
        c * sx,
        -s * sy,
        (-s).mul_add(b, c * a) + tx2,
        s * sx,
        c * sy,
        c.mul_add(b, s * a) + ty2,
    ]
}

/// WBIA's chip of an annotation at its default config, from the image as WBIA reads it (see
/// [`wbia_read_image`]), RGB in and out (OpenCV's BGR order does not matter: the warp is per
/// channel).
pub fn wbia_chip(image: &RgbImage, bbox: [i64; 4], theta: f64) -> Result<RgbImage> {
    let g = chip_geometry(bbox, theta)?;
    warp_affine_lanczos4(image, &g.m, g.width, g.height)
}

/// WBIA's chip of an annotation from its image file as WBIA holds it (`_ibsdb/images/`, after
/// WBIA's rewrite at import), the orientation WBIA stored for the image, and the annotation's
/// bbox and theta: [`wbia_read_image`] then [`wbia_chip`].
pub fn wbia_annot_chip(
    file_bytes: &[u8],
    stored_orientation: i64,
    bbox: [i64; 4],
    theta: f64,
) -> Result<RgbImage> {
    // The geometry first: a degenerate bbox fails before any decoding.
    chip_geometry(bbox, theta)?;
    let image = wbia_read_image(file_bytes, stored_orientation)?;
    wbia_chip(&image, bbox, theta)
}

/// How WBIA reads an image for its chips: `vt.imread(gpath, orient=orient)` with the
/// orientation stored in its `images` table.
///
/// - 1 (`orient in ['auto', 'on', True]` holds for 1, as `1 == True` in Python): PIL decodes the
///   file without applying its EXIF orientation, `convert('RGB')`, then vtool turns the image
///   for the file's EXIF orientation 3, 6 or 8 with `vtool.rotate_image` (see
///   [`vtool_fix_orientation`]). WBIA stores 1 for files with an EXIF orientation of 1, and for
///   every file it rewrote at import (an EXIF orientation other than 0/1 makes WBIA rewrite the
///   file upright with `cv2.imwrite`, with no EXIF left, and store 1).
/// - 3, 6, 8 (databases from before that rewrite): `cv2.imread(path, IMREAD_COLOR)` (which
///   applies the EXIF orientation itself), then vtool turns the image once more.
/// - anything else (0 = no EXIF orientation at import; 2, 4, 5, 7 = flips, which vtool ignores):
///   `cv2.imread(path, IMREAD_COLOR)`, which is [`decode_image`].
///
/// PIL's decode equals OpenCV's for 8-bit JPEGs (grey or YCbCr) and PNGs of up to 8 bits or
/// 16-bit RGB(A). It differs for CMYK/YCCK JPEGs (its own formula, off by one from OpenCV's)
/// and 16-bit grey PNGs (clipped to 255, where OpenCV keeps the high byte): both are
/// reproduced. 16-bit grey+alpha PNGs, untested against PIL, give an error.
pub fn wbia_read_image(bytes: &[u8], stored_orientation: i64) -> Result<RgbImage> {
    match stored_orientation {
        1 => {
            if !pil_read_supported(bytes) {
                return Err(Error::InvalidChip(
                    "stored orientation 1 (read by PIL): PIL's decode of this kind of file \
                     is not reproduced"
                        .into(),
                ));
            }
            let (image, exif) = decode_image_unoriented(bytes, Decoder::Pil)?;
            vtool_fix_orientation(image, exif.to_exif() as i64)
        }
        3 | 6 | 8 => vtool_fix_orientation(decode_image(bytes)?, stored_orientation),
        _ => decode_image(bytes),
    }
}

/// `vtool.image._fix_orientation`: EXIF orientations 3, 6 and 8 turn the image by 180°, 90° and
/// 270° about its centre with `rotate_image`, a Lanczos4 warp with a black border; the others
/// leave it as it is. The turn maps the centre (w/2, h/2) to (h/2, w/2), which is half a
/// pixel off a pixel-exact transpose: WBIA's turned images gain a black first row or column
/// and lose the opposite one. Reproduced, not corrected.
pub fn vtool_fix_orientation(image: RgbImage, orientation: i64) -> Result<RgbImage> {
    let quarter_turns = match orientation {
        6 => 0.25,
        3 => 0.50,
        8 => 0.75,
        _ => return Ok(image),
    };
    let theta = std::f64::consts::TAU * quarter_turns;
    let (w, h) = (image.width, image.height);
    let (dw, dh) = if orientation == 3 { (w, h) } else { (h, w) };
    // rotation_around_mat3x3: T(centre1) · R(theta) · T(-centre0), multiplied by numpy.dot
    // (FMA in the sum of two products, as in image_to_chip_transform).
    let (x0, y0) = (w as f64 / 2.0, h as f64 / 2.0);
    let (x1, y1) = (dw as f64 / 2.0, dh as f64 / 2.0);
    let (s, c) = (theta.sin(), theta.cos());
    let m = [
        c,
        -s,
        (-s).mul_add(-y0, c * -x0) + x1,
        s,
        c,
        c.mul_add(-y0, s * -x0) + y1,
    ];
    warp_affine_lanczos4(&image, &m, dw, dh)
}

/// Files whose PIL decode [`Decoder::Pil`] reproduces: JPEGs of 1, 3 or 4 components
/// (libjpeg-turbo with its defaults under both), PNGs of up to 8 bits, and 16-bit PNGs that
/// are grey (colour type 0), RGB (2) or RGBA (6).
fn pil_read_supported(bytes: &[u8]) -> bool {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => {
            jpeg_components(bytes).is_some_and(|n| matches!(n, 1 | 3 | 4))
        }
        Ok(image::ImageFormat::Png) => {
            png_header(bytes).is_some_and(|(depth, kind)| depth <= 8 || matches!(kind, 0 | 2 | 6))
        }
        _ => false,
    }
}

/// Number of components in a JPEG's first start-of-frame.
fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            return bytes.get(i + 9).copied();
        }
        i += 2 + len;
    }
    None
}

/// Bit depth and colour type from a PNG's IHDR.
fn png_header(bytes: &[u8]) -> Option<(u8, u8)> {
    if bytes.len() > 25 && &bytes[12..16] == b"IHDR" {
        Some((bytes[24], bytes[25]))
    } else {
        None
    }
}

/// `cv2.warpAffine(src, m, (width, height), flags=INTER_LANCZOS4,
/// borderMode=BORDER_CONSTANT)` (border value 0) for an 8-bit 3-channel image, bit-exact with
/// OpenCV 4.x's fixed-point path. `m` maps image to chip (OpenCV inverts it).
pub fn warp_affine_lanczos4(
    src: &RgbImage,
    m: &[f64; 6],
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    if width == 0 || height == 0 || width > 1 << 15 || height > 1 << 15 {
        return Err(Error::InvalidChip(format!(
            "output size {width}x{height} is not in 1..=32768"
        )));
    }
    if m.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidChip("affine has non-finite entries".into()));
    }
    let expected = src.width as usize * src.height as usize * 3;
    if src.data.len() != expected {
        return Err(Error::InvalidChip(
            "source buffer does not match its size".into(),
        ));
    }
    let inv = invert_affine(m);
    let (w, h) = (width as usize, height as usize);
    let tab = lanczos4_table();

    // Per-column steps of the source coordinate, in 1/1024 px, rounded once per column; each
    // row adds its own rounded start. OpenCV does exactly this, so the sum (not the exact
    // product) decides the sub-pixel position.
    let adelta: Vec<i32> = (0..w)
        .map(|x| sat_round(inv[0] * x as f64 * AB_SCALE))
        .collect();
    let bdelta: Vec<i32> = (0..w)
        .map(|x| sat_round(inv[3] * x as f64 * AB_SCALE))
        .collect();
    // Centres the 1/1024 → 1/32 truncation below: +half a kernel step.
    let round_delta = (1 << AB_BITS) / INTER_TAB_SIZE / 2;

    let (sw, sh) = (src.width as i32, src.height as i32);
    let stride = src.width as usize * 3;
    let mut out = vec![0u8; w * h * 3];
    // Rows are independent (each rounds its own start), so they can run in parallel.
    out.par_chunks_exact_mut(w * 3)
        .enumerate()
        .for_each(|(y, row)| {
            let yf = y as f64;
            let x0 = sat_round((inv[1] * yf + inv[2]) * AB_SCALE).wrapping_add(round_delta);
            let y0 = sat_round((inv[4] * yf + inv[5]) * AB_SCALE).wrapping_add(round_delta);
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let xs = x0.wrapping_add(adelta[x]) >> (AB_BITS - INTER_BITS);
                let ys = y0.wrapping_add(bdelta[x]) >> (AB_BITS - INTER_BITS);
                // Integer source pixel (saturated to i16 like OpenCV's map) minus 3: the kernel's
                // top-left tap. The low 5 bits choose one of 32×32 precomputed kernels.
                let sx = sat_i16(xs >> INTER_BITS) - 3;
                let sy = sat_i16(ys >> INTER_BITS) - 3;
                let k = &tab[((ys & (INTER_TAB_SIZE - 1)) * INTER_TAB_SIZE
                    + (xs & (INTER_TAB_SIZE - 1))) as usize];
                let mut sum = [0i32; 3];
                if sx >= 0 && sy >= 0 && sx + 8 <= sw && sy + 8 <= sh {
                    for r in 0..8 {
                        let base = (sy + r) as usize * stride + sx as usize * 3;
                        let line: &[u8; 24] =
                            src.data[base..base + 24].try_into().expect("24 bytes");
                        for (t, &wgt) in k[r as usize * 8..r as usize * 8 + 8].iter().enumerate() {
                            let wgt = wgt as i32;
                            sum[0] += line[t * 3] as i32 * wgt;
                            sum[1] += line[t * 3 + 1] as i32 * wgt;
                            sum[2] += line[t * 3 + 2] as i32 * wgt;
                        }
                    }
                } else if sx >= sw || sx + 8 <= 0 || sy >= sh || sy + 8 <= 0 {
                    // Wholly outside: the border value.
                    continue;
                } else {
                    // Partly outside: taps beyond the image read the border value 0, so they
                    // drop out of the integer sum.
                    for r in 0..8 {
                        let yy = sy + r;
                        if yy < 0 || yy >= sh {
                            continue;
                        }
                        for t in 0..8 {
                            let xx = sx + t;
                            if xx < 0 || xx >= sw {
                                continue;
                            }
                            let wgt = k[(r * 8 + t) as usize] as i32;
                            let p = yy as usize * stride + xx as usize * 3;
                            for (c, s) in sum.iter_mut().enumerate() {
                                *s += src.data[p + c] as i32 * wgt;
                            }
                        }
                    }
                }
                for (d, s) in px.iter_mut().zip(sum) {
                    // Round the 1.15 fixed-point sum and saturate to 8 bits.
                    *d = ((s + (1 << (COEF_BITS - 1))) >> COEF_BITS).clamp(0, 255) as u8;
                }
            }
        });
    RgbImage::new(width, height, out)
}

/// OpenCV's in-place inversion of a 2×3 affine (warpAffine without `WARP_INVERSE_MAP`), with
/// its operation order; a singular matrix becomes all zeros there too.
fn invert_affine(m: &[f64; 6]) -> [f64; 6] {
    let d = m[0] * m[4] - m[1] * m[3];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let a11 = m[4] * d;
    let a22 = m[0] * d;
    let m1 = m[1] * -d;
    let m3 = m[3] * -d;
    let b1 = -a11 * m[2] - m1 * m[5];
    let b2 = -m3 * m[2] - a22 * m[5];
    [a11, m1, b1, m3, a22, b2]
}

/// `saturate_cast<int>(double)`: round half to even, clamp to i32.
fn sat_round(v: f64) -> i32 {
    let r = v.round_ties_even();
    if r >= i32::MAX as f64 {
        i32::MAX
    } else if r <= i32::MIN as f64 {
        i32::MIN
    } else {
        r as i32
    }
}

fn sat_i16(v: i32) -> i32 {
    v.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// The 32×32 fixed-point 8×8 Lanczos4 kernels, built once.
fn lanczos4_table() -> &'static [[i16; 64]; 1024] {
    static TAB: OnceLock<Box<[[i16; 64]; 1024]>> = OnceLock::new();
    TAB.get_or_init(build_lanczos4_table)
}

/// OpenCV's 1-D Lanczos4 weights at sub-pixel offset `x` (in [0, 1)), normalised to sum 1 in
/// f32. The sines of the eight taps are one sine and cosine rotated by multiples of π/4 (the
/// table `cs`); the common factor sin(π·d) is dropped, as the normalisation removes it. At
/// x = 0 that factor is 0, so the centre tap is forced to dominate.
fn lanczos4_1d(x: f32) -> [f32; 8] {
    let s45 = std::f64::consts::FRAC_1_SQRT_2;
    let cs: [(f64, f64); 8] = [
        (1.0, 0.0),
        (-s45, -s45),
        (0.0, 1.0),
        (s45, -s45),
        (-1.0, 0.0),
        (s45, s45),
        (0.0, -1.0),
        (-s45, s45),
    ];
    let pi = std::f64::consts::PI;
    let y0 = (-(x + 3.0)) as f64 * pi * 0.25;
    let (s0, c0) = (y0.sin(), y0.cos());
    let mut coeffs = [0f32; 8];
    let mut sum = 0f32;
    for (i, c) in coeffs.iter_mut().enumerate() {
        let d = x + 3.0 - i as f32;
        *c = if d.abs() >= 1e-6 {
            let y = (-d) as f64 * pi * 0.25;
            ((cs[i].0 * s0 + cs[i].1 * c0) / (y * y)) as f32
        } else {
            1e30
        };
        sum += *c;
    }
    let inv = 1.0 / sum;
    coeffs.map(|c| c * inv)
}

/// OpenCV's 2-D table: outer products of the 1-D weights, each cast to 1.15 fixed point
/// (round half to even), then the rounding error of the sum moved onto the largest (or
/// smallest) of the four centre taps so that every kernel sums to exactly 1.
fn build_lanczos4_table() -> Box<[[i16; 64]; 1024]> {
    let n = INTER_TAB_SIZE as usize;
    let one_d: Vec<[f32; 8]> = (0..n)
        .map(|i| lanczos4_1d(i as f32 * (1.0 / INTER_TAB_SIZE as f32)))
        .collect();
    let mut tab = Box::new([[0i16; 64]; 1024]);
    for i in 0..n {
        for j in 0..n {
            let k = &mut tab[i * n + j];
            let mut isum = 0i32;
            for k1 in 0..8 {
                let vy = one_d[i][k1];
                for k2 in 0..8 {
                    let v = vy * one_d[j][k2];
                    let q = (v * COEF_SCALE as f32)
                        .round_ties_even()
                        .clamp(i16::MIN as f32, i16::MAX as f32) as i16;
                    k[k1 * 8 + k2] = q;
                    isum += q as i32;
                }
            }
            if isum != COEF_SCALE {
                let diff = isum - COEF_SCALE;
                let (mut mk, mut big) = ((4, 4), (4, 4));
                for k1 in 4..6 {
                    for k2 in 4..6 {
                        let v = k[k1 * 8 + k2];
                        if v < k[mk.0 * 8 + mk.1] {
                            mk = (k1, k2);
                        } else if v > k[big.0 * 8 + big.1] {
                            big = (k1, k2);
                        }
                    }
                }
                let at = if diff < 0 { big } else { mk };
                k[at.0 * 8 + at.1] = (k[at.0 * 8 + at.1] as i32 - diff) as i16;
            }
        }
    }
    tab
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sum_to_one() {
        for k in lanczos4_table().iter() {
            assert_eq!(k.iter().map(|&v| v as i32).sum::<i32>(), COEF_SCALE);
        }
        // Offset (0, 0): the centre weight 1.0 saturates to 32767 in i16, and the missing unit
        // goes to tap (4, 4), as in OpenCV.
        let k0 = &lanczos4_table()[0];
        assert_eq!(k0[3 * 8 + 3], i16::MAX);
        assert_eq!(k0[4 * 8 + 4], 1);
    }

    #[test]
    fn degenerate_bboxes_are_errors() {
        let img = RgbImage::new(4, 4, vec![0; 48]).unwrap();
        assert!(wbia_chip(&img, [0, 0, 0, 4], 0.0).is_err());
        assert!(wbia_chip(&img, [0, 0, 4, -1], 0.0).is_err());
        assert!(wbia_chip(&img, [0, 0, 4, 4], f64::NAN).is_err());
        assert!(wbia_chip(&img, [0, 0, 1 << 30, 4], 0.0).is_err());
        assert!(wbia_chip(&img, [i64::MIN, 0, 4, 4], 0.0).is_err());
        // 10000 x 1 scales to 700 x 0: empty.
        assert!(wbia_chip(&img, [0, 0, 10_000, 1], 0.0).is_err());
        assert_eq!(chip_size(190, 220, 800).unwrap(), (691, 800));
        assert_eq!(chip_size(220, 190, 800).unwrap(), (800, 691));
    }
}
