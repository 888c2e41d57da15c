//! Image decoding with limits, and the reference's preprocessing: RGB → float in [0, 1] →
//! resize of the long edge with kornia's antialiasing (Gaussian blur, then bilinear).
//!
//! Preprocessing runs on the host in plain Rust: it is cheap next to the network, works the same
//! for every device, and lets us follow PyTorch's arithmetic step by step.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageReader};
use rayon::prelude::*;

use crate::{Error, Result};

/// Longest side accepted by the decoder, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most pixels accepted by the decoder (40 megapixels: an 8000×5000 camera frame fits).
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// Most bytes the decoder may allocate.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// An 8-bit RGB image, pixels interleaved row by row.
#[derive(Clone, Debug)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        if data.len() as u64 != width as u64 * height as u64 * 3 {
            return Err(Error::Decode(format!(
                "{} bytes do not make a {width}x{height} RGB image",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

/// A clockwise quarter turn of an image. The rotation sweep matches a query chip at each,
/// because neither ALIKED-n16's descriptors nor LightGlue's positional encoding are
/// rotation-invariant: a chip turned by 90° scores like an impostor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rotation {
    #[default]
    None,
    Cw90,
    Cw180,
    Cw270,
}

impl Rotation {
    /// Every quarter turn, the unrotated first.
    pub const ALL: [Self; 4] = [Self::None, Self::Cw90, Self::Cw180, Self::Cw270];

    /// The turn that undoes this one.
    pub fn inverse(self) -> Self {
        match self {
            Self::Cw90 => Self::Cw270,
            Self::Cw270 => Self::Cw90,
            same => same,
        }
    }

    /// The turn of `degrees` clockwise (0, 90, 180 or 270).
    pub fn from_degrees(degrees: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.degrees() == degrees)
    }

    /// Clockwise degrees: 0, 90, 180 or 270.
    pub fn degrees(self) -> u16 {
        match self {
            Self::None => 0,
            Self::Cw90 => 90,
            Self::Cw180 => 180,
            Self::Cw270 => 270,
        }
    }
}

impl serde::Serialize for Rotation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u16(self.degrees())
    }
}

impl RgbImage {
    /// This image turned clockwise by `rotation` (width and height swap at 90° and 270°).
    pub fn rotated(&self, rotation: Rotation) -> Result<RgbImage> {
        let orientation = match rotation {
            Rotation::None => return Ok(self.clone()),
            Rotation::Cw90 => Orientation::Rotate90,
            Rotation::Cw180 => Orientation::Rotate180,
            Rotation::Cw270 => Orientation::Rotate270,
        };
        let rgb = image::RgbImage::from_raw(self.width, self.height, self.data.clone())
            .ok_or_else(|| Error::Decode("pixel buffer does not match its size".into()))?;
        oriented(rgb, orientation)
    }
}

/// Decodes JPEG or PNG bytes into RGB exactly as the reference's `cv2.imread(path,
/// IMREAD_COLOR)` then BGR → RGB does: EXIF orientation applied (JPEG APP1, PNG eXIf), grey
/// replicated, alpha dropped (not blended), palettes expanded, 16-bit samples cut to their high
/// byte, CMYK and YCCK JPEGs converted with OpenCV's formula. Dimensions are checked from the
/// header, before any pixel buffer is allocated, so a decompression bomb is refused cheaply.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    match decode_image_unoriented(bytes, Decoder::OpenCv)? {
        (rgb, Orientation::NoTransforms) => Ok(rgb),
        (rgb, o) => oriented(
            image::RgbImage::from_raw(rgb.width, rgb.height, rgb.data).expect("same dimensions"),
            o,
        ),
    }
}

/// Whose conversions [`decode_image_unoriented`] follows where OpenCV and PIL part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// `cv2.imread(path, IMREAD_COLOR)`.
    OpenCv,
    /// PIL's `Image.open(path).convert('RGB')`: CMYK JPEGs with PIL's formula, 16-bit grey PNGs
    /// clipped to 255 (PIL holds them as 32-bit ints). The rest decodes as OpenCV does.
    Pil,
}

/// [`decode_image`] without applying the EXIF orientation, which is returned instead (PIL's
/// `Image.open`, as WBIA's reader uses it, does not apply it).
pub(crate) fn decode_image_unoriented(
    bytes: &[u8],
    decoder_kind: Decoder,
) -> Result<(RgbImage, Orientation)> {
    if image::guess_format(bytes).ok() == Some(image::ImageFormat::Jpeg) {
        return Ok((decode_jpeg(bytes, decoder_kind)?, jpeg_orientation(bytes)));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(Error::UnsupportedFormat);
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    decoder.set_limits(limits).map_err(map_image_error)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = image::DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    let sixteen_bit = matches!(
        image.color(),
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16
    );
    let rgb = if decoder_kind == Decoder::Pil && image.color() == ColorType::L16 {
        // PIL's I → RGB conversion clips each 16-bit value to 255.
        let wide = image.into_luma16();
        let (w, h) = wide.dimensions();
        let narrow: Vec<u8> = wide
            .into_raw()
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect();
        image::RgbImage::from_raw(w, h, narrow).expect("same dimensions")
    } else if sixteen_bit {
        // libpng's strip-16 as OpenCV asks for it: the high byte, not a rounded value.
        let wide = image.into_rgb16();
        let (w, h) = wide.dimensions();
        let narrow: Vec<u8> = wide.into_raw().iter().map(|&v| (v >> 8) as u8).collect();
        image::RgbImage::from_raw(w, h, narrow).expect("same dimensions")
    } else {
        image.into_rgb8()
    };
    let (width, height) = rgb.dimensions();
    Ok((RgbImage::new(width, height, rgb.into_raw())?, orientation))
}

/// Applies an EXIF orientation (rotation and/or mirror), as OpenCV's `imread` does by default.
fn oriented(rgb: image::RgbImage, orientation: Orientation) -> Result<RgbImage> {
    let mut image = image::DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    RgbImage::new(width, height, rgb.into_raw())
}

/// The orientation in a JPEG's Exif APP1 segment, if any.
fn jpeg_orientation(bytes: &[u8]) -> Orientation {
    // Segments run from SOI to the first start-of-scan; each is FF, marker, 2-byte length.
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let end = (at + 2 + len).min(bytes.len());
        let payload = &bytes[(at + 4).min(end)..end];
        if marker == 0xE1 && payload.starts_with(b"Exif\0\0") {
            if let Some(o) = Orientation::from_exif_chunk(&payload[6..]) {
                return o;
            }
        }
        at = end;
    }
    Orientation::NoTransforms
}

/// Width and height from a JPEG's frame header (SOFn), walking the segments before the first
/// start-of-scan; `None` when the walk finds no frame header.
fn jpeg_frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        match marker {
            // A fill byte before a marker.
            0xFF => at += 1,
            0xDA | 0xD9 => return None,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                // Precision, then height and width, big-endian.
                let sof = bytes.get(at + 4..at + 9)?;
                let height = u16::from_be_bytes([sof[1], sof[2]]) as u32;
                let width = u16::from_be_bytes([sof[3], sof[4]]) as u32;
                return Some((width, height));
            }
            _ => at += 2 + u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
        }
    }
    None
}

fn check_dimensions(width: u32, height: u32) -> Result<()> {
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || width as u64 * height as u64 > MAX_IMAGE_PIXELS
    {
        return Err(Error::ImageTooLarge {
            width,
            height,
            limit: format!("{MAX_IMAGE_SIDE} px per side, {MAX_IMAGE_PIXELS} pixels"),
        });
    }
    if width == 0 || height == 0 {
        return Err(Error::Decode("image has no pixels".into()));
    }
    Ok(())
}

/// JPEG goes through libjpeg-turbo's decoder (via mozjpeg, whose decoder is libjpeg-turbo's),
/// with its defaults (accurate integer IDCT, fancy upsampling) — the same pixels OpenCV's
/// `imread` gives the reference. Other decoders round differently and move keypoints.
fn decode_jpeg(bytes: &[u8], decoder_kind: Decoder) -> Result<RgbImage> {
    if !has_end_of_image(bytes) {
        return Err(Error::Decode(
            "truncated JPEG (no end-of-image marker)".into(),
        ));
    }
    // Checked here too, not only after libjpeg has read the header: libjpeg refuses sides over
    // 65500 itself, with an error that would read as corrupt data rather than as too large.
    if let Some((width, height)) = jpeg_frame_size(bytes) {
        check_dimensions(width, height)?;
    }
    let decoded = std::panic::catch_unwind(|| -> Result<RgbImage> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)
            .map_err(|e| Error::Decode(format!("JPEG header: {e}")))?;
        let (width, height) = (decompress.width() as u32, decompress.height() as u32);
        check_dimensions(width, height)?;
        let four_channel = matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        );
        let mut started = if four_channel {
            decompress.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)
        } else {
            decompress.rgb()
        }
        .map_err(|e| Error::Decode(format!("JPEG: {e}")))?;
        let data = started
            .read_scanlines::<u8>()
            .map_err(|e| Error::Decode(format!("JPEG data: {e}")))?;
        started
            .finish()
            .map_err(|e| Error::Decode(format!("JPEG trailer: {e}")))?;
        let data = if four_channel {
            match decoder_kind {
                Decoder::OpenCv => data.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
                Decoder::Pil => data.chunks_exact(4).flat_map(cmyk_to_rgb_pil).collect(),
            }
        } else {
            data
        };
        RgbImage::new(width, height, data)
    });
    decoded.unwrap_or_else(|_| Err(Error::Decode("corrupt JPEG data".into())))
}

/// OpenCV's CMYK → RGB for JPEG (Adobe's inverted CMYK, as libjpeg returns it): each colour
/// is `k - ((255 - c) * k >> 8)`, integer arithmetic with no division by 255.
fn cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let k = px[3] as u32;
    let channel = |c: u8| (k - (((255 - c as u32) * k) >> 8)) as u8;
    [channel(px[0]), channel(px[1]), channel(px[2])]
}

/// PIL's CMYK → RGB for JPEG: it reads libjpeg's CMYK inverted ("CMYK;I", Adobe's
/// convention), then each colour is `nk - nk * c / 255` with `nk = 255 - k`, its rounded
/// division by 255 (`MULDIV255`). In libjpeg's values: `k - (255 - c) * k / 255`.
fn cmyk_to_rgb_pil(px: &[u8]) -> [u8; 3] {
    let k = px[3] as u32;
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [0, 1, 2].map(|i| (k - muldiv255(255 - px[i] as u32, k)) as u8)
}

/// A complete JPEG has an EOI marker (FF D9) after its last start-of-scan (FF DA); entropy-coded
/// data cannot contain that byte pair, so this tells a cut-off download from a whole file.
fn has_end_of_image(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(pos) => bytes[pos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn map_image_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Unsupported(_) => Error::UnsupportedFormat,
        image::ImageError::Limits(l) => Error::ImageTooLarge {
            width: 0,
            height: 0,
            limit: l.to_string(),
        },
        other => Error::Decode(other.to_string()),
    }
}

/// Reads and decodes an image file.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::ImageIo {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes)
}

/// A float image in CHW layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ChwImage {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// RGB bytes → CHW floats in [0, 1]; the division happens in f64 like numpy's `image / 255.0`.
pub fn to_chw(image: &RgbImage) -> ChwImage {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in image.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = (px[c] as f64 / 255.0) as f32;
        }
    }
    ChwImage {
        channels: 3,
        height: h,
        width: w,
        data,
    }
}

/// Output (height, width) of kornia's `resize(side="long")`: the long edge becomes `target`,
/// the other is truncated, computed in f64 like Python.
pub fn long_edge_size(height: usize, width: usize, target: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    if aspect < 1.0 {
        (target, (target as f64 * aspect) as usize)
    } else {
        ((target as f64 / aspect) as usize, target)
    }
}

/// kornia `resize(img, target, side="long", antialias=True, interpolation="bilinear")`.
pub fn resize_long_edge(image: &ChwImage, target: usize) -> Result<ChwImage> {
    let (out_h, out_w) = long_edge_size(image.height, image.width, target);
    if out_h == 0 || out_w == 0 {
        return Err(Error::ImageTooSmall {
            width: image.width as u32,
            height: image.height as u32,
            target: target as u32,
        });
    }
    if (out_h, out_w) == (image.height, image.width) {
        return Ok(image.clone());
    }
    let factor_h = image.height as f64 / out_h as f64;
    let factor_w = image.width as f64 / out_w as f64;
    let blurred;
    let source = if factor_h.max(factor_w) > 1.0 {
        let sigma_h = ((factor_h - 1.0) / 2.0).max(0.001);
        let sigma_w = ((factor_w - 1.0) / 2.0).max(0.001);
        blurred = gaussian_blur(image, sigma_h, sigma_w);
        &blurred
    } else {
        image
    };
    Ok(bilinear_resize(source, out_h, out_w))
}

/// kornia's kernel size for a sigma: `int(max(4σ, 3))`, made odd.
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let mut size = (4.0 * sigma).max(3.0) as usize;
    if size.is_multiple_of(2) {
        size += 1;
    }
    // kornia builds the kernel in the image dtype (f32).
    let sigma = sigma as f32;
    let half = (size / 2) as f32;
    let raw: Vec<f32> = (0..size)
        .map(|i| {
            let x = i as f32 - half;
            (-(x * x) / (2.0 * (sigma * sigma))).exp()
        })
        .collect();
    let sum: f32 = raw.iter().sum();
    raw.into_iter().map(|v| v / sum).collect()
}

/// Index into `0..n` with numpy/PyTorch "reflect" borders (the edge sample is not repeated).
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as isize {
        i = period - i;
    }
    i as usize
}

/// Separable Gaussian blur with reflect borders: first along x, then along y (kornia's order).
fn gaussian_blur(image: &ChwImage, sigma_h: f64, sigma_w: f64) -> ChwImage {
    let (c, h, w) = (image.channels, image.height, image.width);
    let kx = gaussian_kernel(sigma_w);
    let ky = gaussian_kernel(sigma_h);
    let (rx, ry) = ((kx.len() / 2) as isize, (ky.len() / 2) as isize);
    // Source indices of every tap, computed once per axis.
    let xs: Vec<usize> = (0..w)
        .flat_map(|x| (0..kx.len()).map(move |k| reflect(x as isize + k as isize - rx, w)))
        .collect();
    let ys: Vec<usize> = (0..h)
        .flat_map(|y| (0..ky.len()).map(move |k| reflect(y as isize + k as isize - ry, h)))
        .collect();
    let mut tmp = vec![0f32; c * h * w];
    tmp.par_chunks_mut(w)
        .zip(image.data.par_chunks(w))
        .for_each(|(dst, row)| {
            for (x, d) in dst.iter_mut().enumerate() {
                let taps = &xs[x * kx.len()..(x + 1) * kx.len()];
                let mut acc = 0f32;
                for (weight, &sx) in kx.iter().zip(taps) {
                    acc += weight * row[sx];
                }
                *d = acc;
            }
        });
    let mut out = vec![0f32; c * h * w];
    out.par_chunks_mut(w).enumerate().for_each(|(i, dst)| {
        let (plane, y) = (i / h, i % h);
        let src = &tmp[plane * h * w..(plane + 1) * h * w];
        let taps = &ys[y * ky.len()..(y + 1) * ky.len()];
        for (k, (weight, &sy)) in ky.iter().zip(taps).enumerate() {
            let row = &src[sy * w..(sy + 1) * w];
            if k == 0 {
                dst.iter_mut().zip(row).for_each(|(d, &v)| *d = weight * v);
            } else {
                dst.iter_mut().zip(row).for_each(|(d, &v)| *d += weight * v);
            }
        }
    });
    ChwImage {
        channels: c,
        height: h,
        width: w,
        data: out,
    }
}

/// Source indices and weights of PyTorch's bilinear interpolation along one axis with
/// `align_corners=False` and an explicit output size.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `F.interpolate(mode="bilinear", align_corners=False)` to an explicit size.
fn bilinear_resize(image: &ChwImage, out_h: usize, out_w: usize) -> ChwImage {
    let (c, h, w) = (image.channels, image.height, image.width);
    let ty = linear_taps(h, out_h);
    let tx = linear_taps(w, out_w);
    let mut out = vec![0f32; c * out_h * out_w];
    for plane in 0..c {
        let src = &image.data[plane * h * w..(plane + 1) * h * w];
        let dst = &mut out[plane * out_h * out_w..(plane + 1) * out_h * out_w];
        for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
                let top = src[y0 * w + x0] * wx0 + src[y0 * w + x1] * wx1;
                let bottom = src[y1 * w + x0] * wx0 + src[y1 * w + x1] * wx1;
                dst[oy * out_w + ox] = top * wy0 + bottom * wy1;
            }
        }
    }
    ChwImage {
        channels: c,
        height: out_h,
        width: out_w,
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_edge_size_matches_kornia() {
        // sacre_coeur1 is 1024x731 → 365x512; sacre_coeur2 is 768x1024 (portrait) → 512x384.
        assert_eq!(long_edge_size(731, 1024, 512), (365, 512));
        assert_eq!(long_edge_size(1024, 768, 512), (512, 384));
        assert_eq!(long_edge_size(100, 100, 512), (512, 512));
    }

    #[test]
    fn reflect_borders() {
        let n = 4;
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, n)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn kernel_is_normalised_and_odd() {
        for sigma in [0.001, 0.5, 1.7, 4.2] {
            let k = gaussian_kernel(sigma);
            assert_eq!(k.len() % 2, 1);
            assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    /// Each quarter turn moves a marked pixel where a clockwise turn puts it, on a
    /// non-square image, and four of them give the image back.
    #[test]
    fn quarter_turns_are_clockwise() {
        let (w, h) = (5u32, 3u32);
        let mut data = vec![0u8; (w * h * 3) as usize];
        // Top-left pixel red, the one right of it green.
        data[..3].copy_from_slice(&[255, 0, 0]);
        data[3..6].copy_from_slice(&[0, 255, 0]);
        let image = RgbImage::new(w, h, data).unwrap();
        let px = |im: &RgbImage, x: u32, y: u32| {
            let i = ((y * im.width + x) * 3) as usize;
            [im.data[i], im.data[i + 1], im.data[i + 2]]
        };
        let r90 = image.rotated(Rotation::Cw90).unwrap();
        assert_eq!((r90.width, r90.height), (3, 5));
        // Clockwise: the top-left corner goes to the top-right, the row runs downwards.
        assert_eq!(px(&r90, 2, 0), [255, 0, 0]);
        assert_eq!(px(&r90, 2, 1), [0, 255, 0]);
        let r180 = image.rotated(Rotation::Cw180).unwrap();
        assert_eq!((r180.width, r180.height), (5, 3));
        assert_eq!(px(&r180, 4, 2), [255, 0, 0]);
        assert_eq!(px(&r180, 3, 2), [0, 255, 0]);
        let r270 = image.rotated(Rotation::Cw270).unwrap();
        assert_eq!(px(&r270, 0, 4), [255, 0, 0]);
        assert_eq!(px(&r270, 0, 3), [0, 255, 0]);
        let mut back = image.clone();
        for _ in 0..4 {
            back = back.rotated(Rotation::Cw90).unwrap();
        }
        assert_eq!(back.data, image.data);
        for r in Rotation::ALL {
            let undone = image.rotated(r).unwrap().rotated(r.inverse()).unwrap();
            assert_eq!(
                (undone.width, undone.height, undone.data),
                (w, h, image.data.clone())
            );
        }
        assert_eq!(
            Rotation::ALL.map(Rotation::degrees),
            [0, 90, 180, 270],
            "degrees"
        );
    }

    #[test]
    fn garbage_bytes_are_rejected() {
        assert!(matches!(
            decode_image(b"definitely not an image"),
            Err(Error::UnsupportedFormat)
        ));
    }

    #[test]
    fn narrow_image_cannot_be_resized() {
        let img = ChwImage {
            channels: 3,
            height: 1,
            width: 2000,
            data: vec![0.5; 6000],
        };
        assert!(matches!(
            resize_long_edge(&img, 512),
            Err(Error::ImageTooSmall { .. })
        ));
    }
}
