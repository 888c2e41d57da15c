//! Property tests (fuzzing) of image decoding: arbitrary bytes, cut and bit-flipped fixtures,
//! and headers forged to claim huge dimensions (docs/fuzzing.md records what ran).
//!
//! A counting allocator measures what each decode allocates on its thread (Rust allocations;
//! libjpeg's own C allocations are not seen, but they start only after our dimension check).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::sample::Index;
use wbia_lightglue_model::image::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
use wbia_lightglue_model::{decode_image, Error, RgbImage};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decodes, returning the result and the most bytes held at once above the starting point.
fn decode_measured(bytes: &[u8]) -> (wbia_lightglue_model::Result<RgbImage>, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let result = decode_image(bytes);
    let peak = PEAK.with(Cell::get) - start;
    (result, peak.max(0) as usize)
}

/// What any decode must satisfy: no panic (the call returned), and an Ok image is whole and
/// within the limits.
fn check_result(result: &wbia_lightglue_model::Result<RgbImage>) -> Result<(), TestCaseError> {
    if let Ok(img) = result {
        prop_assert!(img.width > 0 && img.height > 0);
        prop_assert!(img.width <= MAX_IMAGE_SIDE && img.height <= MAX_IMAGE_SIDE);
        prop_assert!(img.width as u64 * img.height as u64 <= MAX_IMAGE_PIXELS);
        prop_assert_eq!(
            img.data.len() as u64,
            img.width as u64 * img.height as u64 * 3
        );
    }
    Ok(())
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/decoding")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const JPEGS: &[&str] = &[
    "cmyk.jpg",
    "exif_orientation_1.jpg",
    "exif_orientation_6.jpg",
    "gray.jpg",
    "progressive.jpg",
    "subsampling_444.jpg",
];
const PNGS: &[&str] = &[
    "exif_orientation_6.png",
    "gray.png",
    "gray16.png",
    "gray_alpha.png",
    "palette.png",
    "rgb16.png",
    "rgba.png",
];

fn any_fixture() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    prop::sample::select([JPEGS, PNGS].concat()).prop_map(|name| (name, fixture(name)))
}

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

/// The PNG's chunks as (offset of the length field, data length).
fn png_chunks(png: &[u8]) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if at + 12 + len > png.len() {
            break;
        }
        chunks.push((at, len));
        at += 12 + len;
    }
    chunks
}

/// Rewrites every complete chunk's CRC, so that changed bytes reach the decoder's logic
/// instead of its checksum test.
fn fix_png_crcs(png: &mut [u8]) {
    for (at, len) in png_chunks(png) {
        let crc = crc32(&png[at + 4..at + 8 + len]);
        png[at + 8 + len..at + 12 + len].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Offset of the JPEG frame header's height field (SOF0–SOF15 but DHT, JPG, DAC), found by
/// walking the segments as a decoder does.
fn jpeg_sof_dims_at(jpeg: &[u8]) -> usize {
    let mut at = 2;
    while at + 4 <= jpeg.len() && jpeg[at] == 0xFF {
        let marker = jpeg[at + 1];
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            return at + 5;
        }
        let len = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
        at += 2 + len;
    }
    panic!("no frame header");
}

fn is_oversized(width: u64, height: u64) -> bool {
    width > MAX_IMAGE_SIDE as u64
        || height > MAX_IMAGE_SIDE as u64
        || width * height > MAX_IMAGE_PIXELS
}

/// Dimensions for forged headers: mostly small, some at the limits, many over them.
fn forged_side(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 1u32..300,
        1 => (MAX_IMAGE_SIDE - 8)..=MAX_IMAGE_SIDE,
        3 => (MAX_IMAGE_SIDE + 1)..=max,
        2 => 6_000u32..=MAX_IMAGE_SIDE,
    ]
}

/// `FUZZ_SCALE=N` multiplies the case counts for a longer run (docs/fuzzing.md).
fn scale() -> u32 {
    std::env::var("FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Failures are kept as plain `#[test]`s below, not in proptest's regression files.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases * scale(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A decode of a forged header that the dimension check refuses allocates next to nothing.
const REFUSAL_ALLOC_LIMIT: usize = 16 << 20;

proptest! {
    #![proptest_config(config(10_000))]

    /// Arbitrary bytes, alone or behind a PNG or JPEG signature: Ok or Err, never a panic.
    #[test]
    fn arbitrary_bytes(
        magic in prop::sample::select(vec![
            &b""[..], b"\x89PNG\r\n\x1a\n", b"\xFF\xD8\xFF", b"\xFF\xD8\xFF\xE0",
            b"\xFF\xD8\xFF\xDA\xFF\xD9", b"GIF89a", b"BM", b"RIFF",
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let bytes = [magic, &tail[..]].concat();
        let (result, peak) = decode_measured(&bytes);
        check_result(&result)?;
        prop_assert!(peak < 256 << 20, "{} bytes allocated", peak);
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    /// A fixture cut anywhere never panics; a JPEG cut before its end-of-image marker and a
    /// PNG cut inside its last IDAT chunk are refused.
    #[test]
    fn truncated_fixtures((name, bytes) in any_fixture(), cut in any::<Index>()) {
        let cut = cut.index(bytes.len());
        let (result, _) = decode_measured(&bytes[..cut]);
        check_result(&result)?;
        let must_fail = if name.ends_with(".jpg") {
            true
        } else {
            let chunks = png_chunks(&bytes);
            let (at, len) = *chunks
                .iter()
                .rev()
                .find(|(at, _)| &bytes[at + 4..at + 8] == b"IDAT")
                .unwrap();
            cut < at + 12 + len
        };
        if must_fail {
            prop_assert!(result.is_err(), "{} cut at {} decoded", name, cut);
        }
    }

    /// Flipped bits anywhere (in PNGs optionally with the chunk CRCs made right again, so the
    /// damage reaches the decoder): Ok or Err, never a panic or a big allocation.
    #[test]
    fn bit_flipped_fixtures(
        (_name, bytes) in any_fixture(),
        flips in prop::collection::vec((any::<Index>(), 0u8..8), 1..12),
        fix_crcs in any::<bool>(),
    ) {
        let mut bytes = bytes;
        for (at, bit) in &flips {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        if fix_crcs && bytes.starts_with(b"\x89PNG") {
            fix_png_crcs(&mut bytes);
        }
        let (result, peak) = decode_measured(&bytes);
        check_result(&result)?;
        prop_assert!(peak < 600 << 20, "{} bytes allocated", peak);
    }

    /// Whole bytes overwritten with values decoders treat specially (markers, zero lengths).
    #[test]
    fn overwritten_bytes(
        (_name, bytes) in any_fixture(),
        writes in prop::collection::vec(
            (any::<Index>(), prop::sample::select(vec![0x00u8, 0xFF, 0xD8, 0xD9, 0xDA, 0xC0, 0x7F, 0x80])),
            1..8,
        ),
    ) {
        let mut bytes = bytes;
        for (at, v) in &writes {
            let at = at.index(bytes.len());
            bytes[at] = *v;
        }
        let (result, _) = decode_measured(&bytes);
        check_result(&result)?;
    }
}

proptest! {
    // Forged headers within the limits make the decoder fill up to 40 megapixels: fewer cases.
    #![proptest_config(config(500))]

    /// A PNG whose IHDR (CRC made valid) claims other dimensions: oversized ones are refused
    /// from the header with next to no allocation; others decode or fail cleanly.
    #[test]
    fn forged_png_dimensions(
        name in prop::sample::select(PNGS),
        width in forged_side(u32::MAX),
        height in forged_side(u32::MAX),
    ) {
        let mut bytes = fixture(name);
        // IHDR data starts at 16: width, then height, big-endian.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        fix_png_crcs(&mut bytes);
        let (result, peak) = decode_measured(&bytes);
        check_result(&result)?;
        if is_oversized(width as u64, height as u64) {
            // PNG itself forbids sides over 2^31 - 1; the png crate refuses those as malformed.
            let refused = matches!(result, Err(Error::ImageTooLarge { .. }))
                || (width.max(height) > i32::MAX as u32 && matches!(result, Err(Error::Decode(_))));
            prop_assert!(refused, "{}x{}: {:?}", width, height, result.map(|i| (i.width, i.height)));
            prop_assert!(peak < REFUSAL_ALLOC_LIMIT, "{}x{}: {} bytes allocated", width, height, peak);
        } else {
            prop_assert!(peak < 1 << 30, "{}x{}: {} bytes allocated", width, height, peak);
        }
    }

    /// The same for a JPEG frame header (sides up to 65535).
    #[test]
    fn forged_jpeg_dimensions(
        name in prop::sample::select(vec!["gray.jpg", "progressive.jpg", "subsampling_444.jpg", "cmyk.jpg"]),
        width in forged_side(u16::MAX as u32),
        height in forged_side(u16::MAX as u32),
    ) {
        let mut bytes = fixture(name);
        let at = jpeg_sof_dims_at(&bytes);
        bytes[at..at + 2].copy_from_slice(&(height as u16).to_be_bytes());
        bytes[at + 2..at + 4].copy_from_slice(&(width as u16).to_be_bytes());
        let (result, peak) = decode_measured(&bytes);
        check_result(&result)?;
        if is_oversized(width as u64, height as u64) {
            prop_assert!(
                matches!(result, Err(Error::ImageTooLarge { .. })),
                "{}x{}: {:?}", width, height, result.map(|i| (i.width, i.height))
            );
            prop_assert!(peak < REFUSAL_ALLOC_LIMIT, "{}x{}: {} bytes allocated", width, height, peak);
        } else {
            if let Ok(img) = &result {
                prop_assert_eq!((img.width, img.height), (width, height));
            }
            // RGB output plus, for CMYK, the 4-channel scanlines.
            let bound = 8 * width as usize * height as usize + (16 << 20);
            prop_assert!(peak < bound, "{}x{}: {} bytes allocated", width, height, peak);
        }
    }
}

/// Every fixture decodes to its known size: the mutations above start from valid images.
#[test]
fn fixtures_decode() {
    for name in [JPEGS, PNGS].concat() {
        let img = decode_image(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            (img.width, img.height) == (96, 64) || (img.width, img.height) == (64, 96),
            "{name}"
        );
    }
}

/// Forged headers exactly at and just past the limits, for both formats: the largest accepted
/// frame decodes (or fails) within its own size, one more row is refused from the header.
#[test]
fn forged_headers_at_the_limits() {
    let side = MAX_IMAGE_SIDE;
    let rows = (MAX_IMAGE_PIXELS / side as u64) as u32;
    for (width, height) in [(side, rows), (rows, side), (side, rows + 1), (side + 1, 1)] {
        let oversized = is_oversized(width as u64, height as u64);
        let mut jpeg = fixture("subsampling_444.jpg");
        let at = jpeg_sof_dims_at(&jpeg);
        jpeg[at..at + 2].copy_from_slice(&(height as u16).to_be_bytes());
        jpeg[at + 2..at + 4].copy_from_slice(&(width as u16).to_be_bytes());
        let mut png = fixture("rgb16.png");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        fix_png_crcs(&mut png);
        for (format, bytes) in [("jpeg", jpeg), ("png", png)] {
            let (result, peak) = decode_measured(&bytes);
            let what = format!("{format} {width}x{height}: {peak} bytes allocated");
            if oversized {
                assert!(matches!(result, Err(Error::ImageTooLarge { .. })), "{what}");
                assert!(peak < REFUSAL_ALLOC_LIMIT, "{what}");
            } else {
                if let Ok(img) = &result {
                    assert_eq!((img.width, img.height), (width, height), "{what}");
                }
                // 16-bit RGB at 40 megapixels is 240 MB; never gigabytes.
                assert!(peak < 600 << 20, "{what}");
            }
        }
    }
}

/// Found by `forged_jpeg_dimensions` (with `FUZZ_SCALE=20`): a JPEG frame header claiming a
/// side over 65500 was refused by libjpeg itself, before our dimension check, and came back
/// as "corrupt JPEG data" instead of as too large.
#[test]
fn forged_jpeg_sides_past_libjpeg_limit_are_too_large() {
    for (width, height) in [(1u16, 65_501u16), (65_535, 1), (65_535, 65_535)] {
        let mut jpeg = fixture("gray.jpg");
        let at = jpeg_sof_dims_at(&jpeg);
        jpeg[at..at + 2].copy_from_slice(&height.to_be_bytes());
        jpeg[at + 2..at + 4].copy_from_slice(&width.to_be_bytes());
        match decode_image(&jpeg) {
            Err(Error::ImageTooLarge {
                width: w,
                height: h,
                ..
            }) => assert_eq!((w, h), (width as u32, height as u32)),
            other => panic!("{width}x{height}: {:?}", other.map(|i| (i.width, i.height))),
        }
    }
}
