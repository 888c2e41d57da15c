//! Our chips against WBIA's own, bit for bit (issue 24).
//!
//! `tests/data/wbia_chips.json` is written by `scripts/chip-goldens/make_goldens.py` with the
//! real WBIA 4.0.4 (vtool 4.0.2, opencv-python-headless 4.7.0.72) at WBIA's default chip
//! config (700 px, `maxwh`, Lanczos4 warp, black border). It holds two kinds of case:
//!
//! - `sweep`: WBIA's chip generator (`gen_chip_configure_and_compute`) on repository
//!   fixtures: three photos (518×631 to 900×673) with bboxes whole, inside, touching the
//!   bottom-right edge, partly outside (top-left and bottom-right), wholly outside, tiny (3×2,
//!   upscaled to 700), huge (3× the image, downscaled), exactly 700 px (kept), a 2 px sliver;
//!   thetas 0, ±0.25, ±π/2, π; and every file of `tests/fixtures/decoding` (EXIF orientations
//!   1/3/6/8, grey, grey+alpha, palette, RGBA, 16-bit, CMYK, progressive, 4:4:4) read with
//!   stored orientation 0 (OpenCV) and 1 (PIL, which WBIA uses for 1, with vtool's own turn
//!   for EXIF 3/6/8), and stored orientations 2/3/6/8 of older databases. Degenerate bboxes
//!   (zero or negative side, a chip side rounding to 0) must give an error: WBIA refuses the
//!   first and makes a meaningless image-sized chip for the others.
//! - `db`: `ibs.get_annot_chips` for every annotation of the database built by
//!   `scripts/real-wbia/make_db.py` (its files rewritten by WBIA at import are under
//!   `tests/fixtures/wbia_chips/`).
//!
//! Each chip must hash equal to WBIA's. The affine is compared too, but only reported: numpy
//! computes WBIA's sines with SVML on AVX-512 CPUs (where the goldens were recorded), a few
//! ulps away from libm's; that has changed no chip of the sweep.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wbia_lightglue_model::wbia_chip::{
    chip_geometry, warp_affine_lanczos4, wbia_annot_chip, wbia_read_image,
};
use wbia_lightglue_model::RgbImage;

/// Cases known to differ from WBIA, with the measured difference. Empty: every case matches.
const KNOWN_DIFFERENT: &[&str] = &[];

/// Chips whose warp is timed (in the output, for information).
struct Timing {
    chips: usize,
    pixels: u64,
    seconds: f64,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Case {
    kind: String,
    name: String,
    source: String,
    orientation: i64,
    bbox: [i64; 4],
    theta: f64,
    width: u32,
    height: u32,
    sha256: String,
    m: Option<[f64; 6]>,
    samples: Vec<Vec<i64>>,
}

/// A degenerate case (or one WBIA refused): name, bbox, theta.
type Refused = (String, [i64; 4], f64);

/// The chips, and the degenerate cases.
fn load_cases() -> (Vec<Case>, Vec<Refused>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wbia_chips.json");
    let text = std::fs::read_to_string(&path).expect("goldens");
    let json: serde_json::Value = serde_json::from_str(&text).expect("goldens parse");
    let mut cases = Vec::new();
    let mut refused = Vec::new();
    for c in json["cases"].as_array().expect("cases") {
        let bbox: Vec<i64> = c["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        if c.get("error").is_some() || c.get("degenerate").is_some() {
            let name = c["name"].as_str().unwrap().to_string();
            refused.push((
                name,
                [bbox[0], bbox[1], bbox[2], bbox[3]],
                c["theta"].as_f64().unwrap(),
            ));
            continue;
        }
        let m = c.get("m").map(|m| {
            let v: Vec<f64> = m
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().parse::<f64>().unwrap())
                .collect();
            [v[0], v[1], v[2], v[3], v[4], v[5]]
        });
        cases.push(Case {
            kind: c["kind"].as_str().unwrap().to_string(),
            name: c["name"].as_str().unwrap().to_string(),
            source: c["source"].as_str().unwrap().to_string(),
            orientation: c["orientation"].as_i64().unwrap(),
            bbox: [bbox[0], bbox[1], bbox[2], bbox[3]],
            theta: c["theta"].as_f64().unwrap(),
            width: c["width"].as_u64().unwrap() as u32,
            height: c["height"].as_u64().unwrap() as u32,
            sha256: c["sha256"].as_str().unwrap().to_string(),
            m,
            samples: c["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    s.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_i64().unwrap())
                        .collect()
                })
                .collect(),
        });
    }
    (cases, refused)
}

/// Max abs difference over channels and count of differing pixels between two chips.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    let mut max = 0u8;
    let mut count = 0;
    for (pa, pb) in a.data.chunks_exact(3).zip(b.data.chunks_exact(3)) {
        let d = pa
            .iter()
            .zip(pb)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        if d > 0 {
            count += 1;
            max = max.max(d);
        }
    }
    (max, count)
}

#[test]
fn chips_match_wbia() {
    let (cases, refused) = load_cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    for (name, bbox, theta) in &refused {
        assert!(
            chip_geometry(*bbox, *theta).is_err(),
            "{name}: degenerate bbox {bbox:?} must be refused"
        );
    }
    let mut timing = Timing {
        chips: 0,
        pixels: 0,
        seconds: 0.0,
    };
    let root = repo_root();
    let mut failures = Vec::new();
    let mut affine_differs = 0;
    let mut passed = 0;
    for case in &cases {
        let bytes = std::fs::read(root.join(&case.source)).expect(&case.source);
        let image = match wbia_read_image(&bytes, case.orientation) {
            Ok(image) => image,
            Err(e) => {
                failures.push(format!("{}: cannot read: {e}", case.name));
                continue;
            }
        };
        let geometry = match chip_geometry(case.bbox, case.theta) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: geometry: {e}", case.name));
                continue;
            }
        };
        if (geometry.width, geometry.height) != (case.width, case.height) {
            failures.push(format!(
                "{}: size {}x{}, WBIA {}x{}",
                case.name, geometry.width, geometry.height, case.width, case.height
            ));
            continue;
        }
        let affine_same = case.m.is_none_or(|m| m == geometry.m);
        if !affine_same {
            affine_differs += 1;
        }
        let started = std::time::Instant::now();
        let chip = warp_affine_lanczos4(&image, &geometry.m, geometry.width, geometry.height)
            .expect("warp");
        timing.seconds += started.elapsed().as_secs_f64();
        timing.chips += 1;
        timing.pixels += chip.width as u64 * chip.height as u64;
        if sha256_hex(&chip.data) == case.sha256 {
            passed += 1;
            continue;
        }
        if KNOWN_DIFFERENT.contains(&case.name.as_str()) {
            continue;
        }
        // Debugging aids: the golden pixel samples, and our chip against a warp with WBIA's
        // exact affine (separates geometry from warp/decode).
        let mut sample_diffs = Vec::new();
        for s in &case.samples {
            let (x, y) = (s[0] as usize, s[1] as usize);
            let p = (y * chip.width as usize + x) * 3;
            let ours = &chip.data[p..p + 3];
            sample_diffs.push(format!("({x},{y}) ours {ours:?} wbia {:?}", &s[2..]));
        }
        let vs_wbia_m = case.m.map(|m| {
            let other = warp_affine_lanczos4(&image, &m, geometry.width, geometry.height).unwrap();
            let same = sha256_hex(&other.data) == case.sha256;
            let (max, count) = diff(&chip, &other);
            format!(
                "with WBIA's affine the chip {} WBIA's; ours vs that: max abs diff {max}, {count} px differ",
                if same { "matches" } else { "still differs from" }
            )
        });
        failures.push(format!(
            "{}: chip hash differs (affine {}); {}; samples: {}",
            case.name,
            if affine_same { "equal" } else { "differs" },
            vs_wbia_m.unwrap_or_default(),
            sample_diffs.join(", ")
        ));
    }
    eprintln!(
        "{passed}/{} chips match WBIA, {} degenerate bboxes refused; affine differs in last \
         bits for {affine_differs}; warp: {} chips, {:.1} ms per 700x700-equivalent",
        cases.len(),
        refused.len(),
        timing.chips,
        timing.seconds * 1e3 / (timing.pixels as f64 / 490_000.0)
    );
    assert!(
        failures.is_empty(),
        "{} chips differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The one-call entry point on every annotation of the WBIA database.
#[test]
fn annot_chip_entry_point_matches_database() {
    let (cases, _) = load_cases();
    let root = repo_root();
    let db: Vec<&Case> = cases.iter().filter(|c| c.kind == "db").collect();
    assert!(db.len() >= 10, "only {} database annotations", db.len());
    for case in db {
        let bytes = std::fs::read(root.join(&case.source)).expect(&case.source);
        let chip = wbia_annot_chip(&bytes, case.orientation, case.bbox, case.theta).unwrap();
        assert_eq!(sha256_hex(&chip.data), case.sha256, "{}", case.name);
    }
}
