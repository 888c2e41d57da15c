//! Match thumbnails and match pictures: the two chips side by side at a common height (what the
//! plugin's `render_single_result` gives Wildbook for every thumbnail version), optionally with
//! LightGlue's matches drawn over them; JPEG for thumbnails, PNG for the command line.

use ::image::imageops::{self, FilterType};
use ::image::{ImageBuffer, Rgb};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

use crate::aliked::Features;
use crate::image::RgbImage;
use crate::lightglue::MatchResult;
use crate::{Error, Result};

/// Gap between the two chips, in pixels (white).
const GAP: usize = 8;

type Canvas = ImageBuffer<Rgb<u8>, Vec<u8>>;

/// Where [`layout`] put each chip: scale factors from original pixels (x, y) and the x of the
/// right chip's first column.
struct Placement {
    left_scale: [f32; 2],
    right_scale: [f32; 2],
    right_x: f32,
}

fn canvas_of(image: &RgbImage) -> Result<Canvas> {
    Canvas::from_raw(image.width, image.height, image.data.clone())
        .ok_or_else(|| Error::Decode("image buffer does not match its size".into()))
}

/// `left` and `right` resized (bilinear, `image`'s triangle filter) to `height` pixels, capped
/// at the taller chip's height, keeping their aspect ratios, side by side on white.
fn layout(left: &RgbImage, right: &RgbImage, height: usize) -> Result<(Canvas, Placement)> {
    let height = height.min(left.height.max(right.height) as usize).max(1) as u32;
    let resized = |image: &RgbImage| -> Result<Canvas> {
        let width =
            ((image.width as f64 * height as f64 / image.height as f64).round() as u32).max(1);
        Ok(imageops::resize(
            &canvas_of(image)?,
            width,
            height,
            FilterType::Triangle,
        ))
    };
    let (l, r) = (resized(left)?, resized(right)?);
    let mut out = Canvas::from_pixel(l.width() + GAP as u32 + r.width(), height, Rgb([255; 3]));
    imageops::replace(&mut out, &l, 0, 0);
    imageops::replace(&mut out, &r, (l.width() + GAP as u32) as i64, 0);
    let scale = |resized: &Canvas, original: &RgbImage| {
        [
            resized.width() as f32 / original.width as f32,
            resized.height() as f32 / original.height as f32,
        ]
    };
    let placement = Placement {
        left_scale: scale(&l, left),
        right_scale: scale(&r, right),
        right_x: (l.width() + GAP as u32) as f32,
    };
    Ok((out, placement))
}

fn into_rgb(canvas: Canvas) -> Result<RgbImage> {
    let (width, height) = canvas.dimensions();
    RgbImage::new(width, height, canvas.into_raw())
}

/// `left` and `right` scaled to `height` pixels (capped at the taller chip's height) and
/// placed side by side on white, 8 px apart.
pub fn side_by_side(left: &RgbImage, right: &RgbImage, height: usize) -> Result<RgbImage> {
    into_rgb(layout(left, right, height)?.0)
}

/// Colour of a match of confidence `c`: red at 0, yellow at 0.5, green at 1 (clamped), so
/// weak and strong matches read apart at a glance.
pub fn confidence_colour(c: f32) -> [u8; 3] {
    let c = if c.is_finite() {
        c.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if c < 0.5 {
        [255, (510.0 * c).round() as u8, 0]
    } else {
        [(510.0 * (1.0 - c)).round() as u8, 255, 0]
    }
}

/// Radius of the dot drawn on each matched keypoint, in pixels.
const DOT_RADIUS: i32 = 2;

/// The text written on a match picture: the pair score and the number of matches.
pub fn match_caption(result: &MatchResult) -> String {
    let n = result.matches.len();
    let plural = if n == 1 { "" } else { "es" };
    format!("score {:.2} \u{b7} {n} match{plural}", result.score())
}

/// The two images side by side as [`side_by_side`] lays them out (same height, same 8 px
/// gap, so a thumbnail with matches has the size of one without), one line per match from its
/// keypoint in `left` to its keypoint in `right`, coloured by confidence
/// ([`confidence_colour`]), a dot on each matched keypoint, and [`match_caption`] in the top
/// left corner. Keypoints are in the pixels of the images the features were extracted from
/// (`Features::image_size`) and follow the scaling. Lines are drawn weakest first, so the
/// confident matches stay on top.
pub fn draw_matches(
    left: &RgbImage,
    left_features: &Features,
    right: &RgbImage,
    right_features: &Features,
    result: &MatchResult,
    height: usize,
) -> Result<RgbImage> {
    if result.scores.len() != result.matches.len() {
        return Err(Error::InvalidFeatures(format!(
            "{} matches but {} match scores",
            result.matches.len(),
            result.scores.len()
        )));
    }
    for &[i, j] in &result.matches {
        if i >= left_features.len() || j >= right_features.len() {
            return Err(Error::InvalidFeatures(format!(
                "match ({i}, {j}) is out of range of {} and {} keypoints",
                left_features.len(),
                right_features.len()
            )));
        }
    }
    let (mut canvas, at) = layout(left, right, height)?;
    // From the extraction's pixel grid to the drawn one (pixel centres at integer + 0.5).
    let to_canvas = |p: [f32; 2], f: &Features, image: &RgbImage, scale: [f32; 2], dx: f32| {
        let size = f.image_size;
        let per_axis = |axis: usize, shown: u32| {
            let s = if size[axis] > 0.0 {
                scale[axis] * shown as f32 / size[axis]
            } else {
                scale[axis]
            };
            (p[axis] + 0.5) * s - 0.5
        };
        (per_axis(0, image.width) + dx, per_axis(1, image.height))
    };
    let mut order: Vec<usize> = (0..result.matches.len()).collect();
    order.sort_by(|&a, &b| result.scores[a].total_cmp(&result.scores[b]));
    let ends: Vec<_> = order
        .iter()
        .map(|&m| {
            let [i, j] = result.matches[m];
            let a = to_canvas(
                left_features.keypoints[i],
                left_features,
                left,
                at.left_scale,
                0.0,
            );
            let b = to_canvas(
                right_features.keypoints[j],
                right_features,
                right,
                at.right_scale,
                at.right_x,
            );
            (a, b, Rgb(confidence_colour(result.scores[m])))
        })
        .collect();
    for &(a, b, colour) in &ends {
        draw_line_segment_mut(&mut canvas, a, b, colour);
    }
    let round = |(x, y): (f32, f32)| (x.round() as i32, y.round() as i32);
    for &(a, b, colour) in &ends {
        draw_filled_circle_mut(&mut canvas, round(a), DOT_RADIUS, colour);
        draw_filled_circle_mut(&mut canvas, round(b), DOT_RADIUS, colour);
    }
    draw_caption(&mut canvas, &match_caption(result));
    into_rgb(canvas)
}

/// Writes `text` in white on a black box in the top left corner, at a size that stays
/// legible on the picture (each 5×7 glyph pixel is `k`×`k`, `k` growing with the height).
fn draw_caption(canvas: &mut Canvas, text: &str) {
    let k = (canvas.height() / 200).clamp(1, 4) as i32;
    draw_text(canvas, 0, text, k);
}

/// `text` in white on a black box from the left edge at height `top`, glyph pixels `k`×`k`;
/// the box's height.
fn draw_text(canvas: &mut Canvas, top: i32, text: &str, k: i32) -> i32 {
    let pad = 2 * k;
    let chars = text.chars().count() as i32;
    let (w, h) = ((chars * 6 * k - k).max(0) + 2 * pad, 7 * k + 2 * pad);
    draw_filled_rect_mut(
        canvas,
        Rect::at(0, top).of_size(w as u32, h as u32),
        Rgb([0; 3]),
    );
    for (n, ch) in text.chars().enumerate() {
        let x0 = pad + n as i32 * 6 * k;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    let (x, y) = (x0 + col * k, top + pad + row as i32 * k);
                    let dot = Rect::at(x, y).of_size(k as u32, k as u32);
                    draw_filled_rect_mut(canvas, dot, Rgb([255; 3]));
                }
            }
        }
    }
    h
}

/// Glyph pixel size of [`labelled_column`]'s labels.
const LABEL_SCALE: i32 = 2;

/// Pictures one under another on white, left-aligned, [`GAP`] apart, each under its label
/// (white on black, one line): how `evaluate --png` shows a query's top candidates.
pub fn labelled_column(panels: &[(String, RgbImage)]) -> Result<RgbImage> {
    let label_height = (7 + 4) * LABEL_SCALE as u32;
    let width = panels
        .iter()
        .map(|(label, image)| {
            let text = (label.chars().count() as u32 * 6 + 4) * LABEL_SCALE as u32;
            image.width.max(text)
        })
        .max()
        .unwrap_or(1);
    let height: u32 = panels
        .iter()
        .map(|(_, image)| label_height + image.height + GAP as u32)
        .sum::<u32>()
        .max(1);
    let mut out = Canvas::from_pixel(width, height, Rgb([255; 3]));
    let mut top = 0u32;
    for (label, image) in panels {
        top += draw_text(&mut out, top as i32, label, LABEL_SCALE) as u32;
        imageops::replace(&mut out, &canvas_of(image)?, 0, top as i64);
        top += image.height + GAP as u32;
    }
    into_rgb(out)
}

/// A 5×7 bitmap font for the caption (digits, lowercase letters, a few signs; uppercase is
/// drawn lowercase, anything else as `?`): no font file to ship or license.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_lowercase() {
        ' ' => [0; 7],
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        'a' => [0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e],
        'c' => [0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e],
        'd' => [0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f],
        'e' => [0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e],
        'f' => [0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'm' => [0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e],
        'p' => [0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e],
        't' => [0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a],
        'x' => [0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e],
        'z' => [0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08],
        '\u{b7}' => [0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f],
        '=' => [0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        _ => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// PNG of an RGB image (lossless: thin coloured lines survive, unlike in a JPEG).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    canvas_of(image)?
        .write_to(&mut out, ::image::ImageFormat::Png)
        .map_err(|e| Error::Decode(format!("PNG encoding: {e}")))?;
    Ok(out.into_inner())
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

    /// Panels keep their pixels, each below a label band as wide as its text, left-aligned,
    /// with white elsewhere.
    #[test]
    fn labelled_column_stacks_panels_under_their_labels() {
        let red = RgbImage::new(40, 20, [255, 0, 0].repeat(800)).unwrap();
        let blue = RgbImage::new(10, 30, [0, 0, 255].repeat(300)).unwrap();
        let column = labelled_column(&[("a".into(), red), ("b1".into(), blue)]).unwrap();
        let band = (7 + 4) * LABEL_SCALE as usize;
        assert_eq!(column.width, 40);
        assert_eq!(column.height as usize, band + 20 + GAP + band + 30 + GAP);
        let px = |x: usize, y: usize| &column.data[(y * column.width as usize + x) * 3..][..3];
        assert_eq!(px(0, 0), [0, 0, 0], "label band");
        assert_eq!(px(39, band), [255, 0, 0]);
        assert_eq!(px(39, band + 19), [255, 0, 0]);
        assert_eq!(px(20, band + 20 + 2), [255, 255, 255], "gap");
        let second = band + 20 + GAP + band;
        assert_eq!(px(0, second), [0, 0, 255]);
        assert_eq!(px(9, second + 29), [0, 0, 255]);
        assert_eq!(
            px(20, second + 5),
            [255, 255, 255],
            "right of a narrow panel"
        );
        // The label's text is drawn: white pixels inside the black band.
        let white_in_band = (0..band)
            .flat_map(|y| (0..column.width as usize).map(move |x| (x, y)))
            .filter(|&(x, y)| px(x, y) == [255, 255, 255])
            .count();
        assert!(white_in_band > 0);
        // A label wider than its panels widens the picture.
        let small = RgbImage::new(4, 4, vec![0; 48]).unwrap();
        let wide = labelled_column(&[("a long label".into(), small)]).unwrap();
        assert_eq!(wide.width, (12 * 6 + 4) * LABEL_SCALE as u32);
    }
}
