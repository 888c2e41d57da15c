//! bf16 products on AMX tiles (Intel since Sapphire Rapids), from the same packed operands as
//! the AVX-512 BF16 kernel: 16 rows of [`PackedA`] words are an A tile (16 × 32 bf16 values),
//! 16 pair rows of a [`PackedB`] panel two B tiles (its column halves, 128 bytes apart). One
//! `tdpbf16ps` does 16 × 16 × 32 multiply-adds with f32 sums, as many as 256 `vdpbf16ps`.
//!
//! Tiles: 0–3 hold the sums of a 32 × 32 block (two row halves × two column halves), 4–5 the
//! left operand's two row halves, 6–7 the right operand's column halves. An inner dimension
//! that is not a whole number of 16-word steps ends with one step from zero-padded copies of
//! its last words ([`Tails`]). The hardware adds each word's two products to the sum in its own
//! order and flushes subnormal results to zero, so sums differ from the AVX-512 kernel's by
//! f32 rounding alone.

use std::arch::asm;

use super::x86::{store_sums, TileDst};
use super::{Epilogue, PackedA, PackedB, NR};

/// Rows of a tile, and words (pairs of bf16, or f32 sums) per tile row: 64 bytes.
const ROWS: usize = 16;
const WORDS: usize = 16;

/// `ldtilecfg`'s operand: palette 1, tiles 0–7 each 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn eight_full_tiles() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = (WORDS * 4) as u8;
            c[48 + t] = ROWS as u8;
        }
        Self(c)
    }
}

/// The last `kp % 16` words of every row of `a` and every pair row of `b`'s panels, padded
/// with zeros to one whole step: a's rows 16 words apart, b's panels 16 pair rows apart.
struct Tails {
    a: Vec<u32>,
    b: Vec<u32>,
}

impl Tails {
    fn new(a: &PackedA, b: &PackedB, from: usize) -> Self {
        let (kp, tail) = (a.kp, a.kp - from);
        let mut at = vec![0u32; a.rows.div_ceil(ROWS) * ROWS * WORDS];
        for (r, out) in at.chunks_exact_mut(WORDS).take(a.rows).enumerate() {
            out[..tail].copy_from_slice(&a.words[r * kp + from..(r + 1) * kp]);
        }
        let panels = b.cols.div_ceil(NR);
        let mut bt = vec![0u32; panels * ROWS * NR];
        for panel in 0..panels {
            let src = &b.words[(panel * kp + from) * NR..(panel * kp + kp) * NR];
            bt[panel * ROWS * NR..][..tail * NR].copy_from_slice(src);
        }
        Self { a: at, b: bt }
    }
}

/// A 32 × 32 block of sums, as the tiles store them: row `r` at `32 r`.
#[repr(C, align(64))]
struct Sums([f32; 2 * ROWS * NR]);

/// `dst[r][c] = out(Σ a[r][k]·b[k][c])` on AMX tiles; the caller has checked that the CPU has
/// AMX-BF16 and AVX-512 and that the process may use the tiles ([`crate::cpu::amx_bf16`]),
/// and that the output fits (`output_fits`). Rows a tile reads past `a.rows` lie inside
/// [`PackedA`]'s padding; their sums are never stored.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::ops::matmul) unsafe fn gemm_amx(
    dst: &mut [f32],
    ldd: usize,
    a: &PackedA,
    b: &PackedB,
    out: Epilogue,
) {
    let kp = a.kp;
    assert!(
        a.words.len() >= a.rows.div_ceil(ROWS) * ROWS * kp
            && b.words.len() >= b.cols.div_ceil(NR) * kp * NR,
        "gemm_amx: packed operands shorter than the tiles read"
    );
    let steps = kp / WORDS;
    let tails = (!kp.is_multiple_of(WORDS)).then(|| Tails::new(a, b, steps * WORDS));
    let config = TileConfig::eight_full_tiles();
    asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    let mut sums = Sums([0.0; 2 * ROWS * NR]);
    let (a_stride, b_stride) = (kp * 4, NR * 4);
    for panel in 0..b.cols.div_ceil(NR) {
        let bp = b.words.as_ptr().add(panel * kp * NR);
        let c0 = panel * NR;
        let cols = (b.cols - c0).min(NR);
        for r0 in (0..a.rows).step_by(2 * ROWS) {
            let rows = (a.rows - r0).min(2 * ROWS);
            let both = rows > ROWS;
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let ap = a.words.as_ptr().add(r0 * kp);
            for s in 0..steps {
                step(
                    ap.add(s * WORDS),
                    a_stride,
                    bp.add(s * WORDS * NR),
                    b_stride,
                    both,
                );
            }
            if let Some(t) = &tails {
                let (at, bt) = (
                    t.a.as_ptr().add(r0 * WORDS),
                    t.b.as_ptr().add(panel * ROWS * NR),
                );
                step(at, WORDS * 4, bt, b_stride, both);
            }
            let p = sums.0.as_mut_ptr();
            let s = NR * 4;
            asm!(
                "tilestored [{p} + {s}*1], tmm0",
                "tilestored [{q} + {s}*1], tmm1",
                p = in(reg) p,
                q = in(reg) p.add(WORDS),
                s = in(reg) s,
                options(nostack)
            );
            if both {
                asm!(
                    "tilestored [{p} + {s}*1], tmm2",
                    "tilestored [{q} + {s}*1], tmm3",
                    p = in(reg) p.add(ROWS * NR),
                    q = in(reg) p.add(ROWS * NR + WORDS),
                    s = in(reg) s,
                    options(nostack)
                );
            }
            let to = TileDst::at(dst, ldd, (r0, c0), (rows, cols), out);
            store_sums(sums.0.as_ptr(), to);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// One 16-word step of the inner dimension into tiles 0–3 (0–1 alone unless `both`).
#[inline(always)]
unsafe fn step(a: *const u32, a_stride: usize, b: *const u32, b_stride: usize, both: bool) {
    asm!(
        "tileloadd tmm6, [{b} + {bs}*1]",
        "tileloadd tmm7, [{b2} + {bs}*1]",
        "tileloadd tmm4, [{a} + {as_}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        a = in(reg) a,
        as_ = in(reg) a_stride,
        b = in(reg) b,
        b2 = in(reg) b.add(WORDS),
        bs = in(reg) b_stride,
        options(nostack, readonly)
    );
    if both {
        asm!(
            "tileloadd tmm5, [{a} + {as_}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = in(reg) a.add(ROWS * a_stride / 4),
            as_ = in(reg) a_stride,
            options(nostack, readonly)
        );
    }
}
