//! Match thumbnails: the two chips side by side at a common height, as JPEG (what the plugin's
//! `render_single_result` gives Wildbook for every thumbnail version).

use crate::image::RgbImage;
use crate::{Error, Result};

/// Gap between the two chips, in pixels (white).
const GAP: usize = 8;

/// Bilinear resize of an RGB image to `height`, keeping its aspect ratio (at least 1 px wide).
fn resize_to_height(image: &RgbImage, height: usize) -> (usize, Vec<u8>) {
    let (w0, h0) = (image.width as usize, image.height as usize);
    let width = ((w0 as f64 * height as f64 / h0 as f64).round() as usize).max(1);
    let mut out = vec![0u8; width * height * 3];
    let scale_x = w0 as f32 / width as f32;
    let scale_y = h0 as f32 / height as f32;
    for y in 0..height {
        let sy = ((y as f32 + 0.5) * scale_y - 0.5).clamp(0.0, (h0 - 1) as f32);
        let (y0, fy) = (sy.floor() as usize, sy.fract());
        let y1 = (y0 + 1).min(h0 - 1);
        for x in 0..width {
            let sx = ((x as f32 + 0.5) * scale_x - 0.5).clamp(0.0, (w0 - 1) as f32);
            let (x0, fx) = (sx.floor() as usize, sx.fract());
            let x1 = (x0 + 1).min(w0 - 1);
            for c in 0..3 {
                let at = |yy: usize, xx: usize| image.data[(yy * w0 + xx) * 3 + c] as f32;
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[(y * width + x) * 3 + c] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
    (width, out)
}

/// `left` and `right` scaled to `height` pixels (capped at the taller chip's height) and
/// placed side by side on white.
pub fn side_by_side(left: &RgbImage, right: &RgbImage, height: usize) -> Result<RgbImage> {
    let height = height.min(left.height.max(right.height) as usize).max(1);
    let (wl, l) = resize_to_height(left, height);
    let (wr, r) = resize_to_height(right, height);
    let width = wl + GAP + wr;
    let mut data = vec![255u8; width * height * 3];
    for y in 0..height {
        let row = &mut data[y * width * 3..(y + 1) * width * 3];
        row[..wl * 3].copy_from_slice(&l[y * wl * 3..(y + 1) * wl * 3]);
        row[(wl + GAP) * 3..].copy_from_slice(&r[y * wr * 3..(y + 1) * wr * 3]);
    }
    RgbImage::new(width as u32, height as u32, data)
}

/// Baseline JPEG of an RGB image (libjpeg-turbo's encoder through mozjpeg).
pub fn encode_jpeg(image: &RgbImage, quality: f32) -> Result<Vec<u8>> {
    let encoded = std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_size(image.width as usize, image.height as usize);
        compress.set_quality(quality);
        let mut started = compress.start_compress(Vec::new())?;
        started.write_scanlines(&image.data)?;
        started.finish()
    });
    match encoded {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(Error::Decode(format!("JPEG encoding: {e}"))),
        Err(_) => Err(Error::Decode("JPEG encoding failed".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_is_a_jpeg_of_both_chips() {
        let red = RgbImage::new(40, 20, [255, 0, 0].repeat(800)).unwrap();
        let blue = RgbImage::new(10, 40, [0, 0, 255].repeat(400)).unwrap();
        let both = side_by_side(&red, &blue, 30).unwrap();
        // red 40×20 → 60×30, blue 10×40 → 8×30 (rounded), 8 px gap.
        assert_eq!((both.width, both.height), (60 + GAP as u32 + 8, 30));
        let px = |x: usize, y: usize| &both.data[(y * both.width as usize + x) * 3..][..3];
        assert_eq!(px(5, 5), [255, 0, 0]);
        assert_eq!(px(60 + GAP + 3, 20), [0, 0, 255]);
        assert_eq!(px(61, 10), [255, 255, 255]);
        let jpeg = encode_jpeg(&both, 90.0).unwrap();
        let decoded = crate::decode_image(&jpeg).unwrap();
        assert_eq!((decoded.width, decoded.height), (both.width, both.height));
    }
}
