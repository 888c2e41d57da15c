//! Bad input gives a clear error or an empty result, never a panic.

mod common;

use common::*;
use wbia_lightglue_model::{decode_image, load_image, DetectOptions, Error, RgbImage};

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `width`×`height` RGB pixels, followed by no pixel data.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // An empty IDAT, so the decoder reaches the image data (and our size check) first.
    png.extend(0u32.to_be_bytes());
    png.extend(b"IDAT");
    png.extend(crc32(b"IDAT").to_be_bytes());
    png
}

#[test]
fn missing_file_names_the_path() {
    let err = load_image("no/such/image.jpg").unwrap_err();
    assert!(matches!(err, Error::ImageIo { .. }));
    assert!(err.to_string().contains("no/such/image.jpg"));
}

#[test]
fn unsupported_format() {
    assert!(matches!(
        decode_image(b"GIF89a\x01\x00\x01\x00"),
        Err(Error::UnsupportedFormat)
    ));
    assert!(matches!(decode_image(b""), Err(Error::UnsupportedFormat)));
}

#[test]
fn truncated_jpeg_and_png() {
    // A JPEG cut anywhere before its end-of-image marker; a PNG cut inside its pixel data.
    for (path, tail) in [
        ("lightglue/sacre_coeur1.jpg", 3),
        ("opencv/graf1.png", 100_000),
    ] {
        let bytes = std::fs::read(fixture(path)).unwrap();
        for cut in [20, bytes.len() / 2, bytes.len() - tail] {
            match decode_image(&bytes[..cut]) {
                Err(Error::Decode(_)) => {}
                Err(other) => panic!("{path} cut at {cut}: unexpected error {other}"),
                Ok(_) => panic!("{path} cut at {cut}: decoded"),
            }
        }
    }
}

#[test]
fn corrupt_jpeg_body() {
    let mut bytes = std::fs::read(fixture("turtles/turtle_a1.jpg")).unwrap();
    let n = bytes.len();
    // Overwrite the middle of the entropy-coded data with marker garbage, keep the EOI.
    for b in &mut bytes[n / 3..n / 3 + 2000] {
        *b = 0xFF;
    }
    // Either a decode error or a (damaged) image, but no panic.
    let _ = decode_image(&bytes);
}

#[test]
fn huge_images_are_refused_before_decoding() {
    for (w, h) in [(20_000, 10), (10_000, 10_000)] {
        match decode_image(&png_header(w, h)) {
            Err(Error::ImageTooLarge { .. }) => {}
            Err(other) => panic!("{w}x{h}: unexpected error {other}"),
            Ok(_) => panic!("{w}x{h}: decoded"),
        }
    }
}

#[test]
fn images_too_thin_for_keypoints_give_an_empty_result() {
    let extractor = aliked(DetectOptions::default());
    for (w, h) in [(2000u32, 2u32), (2000, 3), (3, 900)] {
        let image = RgbImage::new(w, h, vec![128; (w * h * 3) as usize]).unwrap();
        let f = extractor.extract(&image).unwrap();
        assert!(f.is_empty(), "{w}x{h}");
        assert_eq!(f.image_size, [w as f32, h as f32]);
    }
}

#[test]
fn tiny_and_flat_images_do_not_panic() {
    let extractor = aliked(DetectOptions::default());
    for (w, h) in [(1u32, 1u32), (7, 5), (40, 30)] {
        let image = RgbImage::new(w, h, vec![77; (w * h * 3) as usize]).unwrap();
        let f = extractor.extract(&image).unwrap();
        assert!(f.len() <= 2048);
        assert!(f
            .keypoints
            .iter()
            .all(|&[x, y]| x.is_finite() && y.is_finite()));
    }
}

#[test]
fn rgb_buffer_must_match_dimensions() {
    assert!(RgbImage::new(10, 10, vec![0; 299]).is_err());
}
