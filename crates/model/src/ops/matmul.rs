//! Matrix products on the CPU for the fused kernels, with the right-hand operand packed once
//! into panels of [`NR`] columns and reused by every tile ([`PackedRhs`]): f32 on AVX-512 FMA
//! (the `gemm` crate where AVX-512 is absent), and bf16 on AVX-512 BF16 (`vdpbf16ps`).
//!
//! The bf16 path rounds both inputs to bf16 (round to nearest even, as PyTorch's autocast
//! does), multiplies and accumulates in f32 and writes f32: only the products lose precision,
//! everything around them (softmax, layer norm, residuals) stays f32. `vdpbf16ps` takes two
//! bf16 values per f32 lane, so both operands are packed with consecutive pairs of the inner
//! dimension in one 32-bit word: the left operand as rows of words ([`PackedA`]), the right one
//! in panels of [`NR`] columns ([`PackedB`]), each packed once and reused by every tile.
//! [`gemm_bf16_reference`] is the loop-by-loop twin the tests compare against.
//!
//! On CPUs with AMX (Intel since Sapphire Rapids) the same packed operands feed AMX tiles
//! instead (`x86::gemm_amx`): a [`PackedB`] panel is two B tiles side by side, 16 rows of
//! [`PackedA`] words one A tile. `vdpbf16ps` does no more multiply-adds per cycle than two
//! f32 FMAs on those CPUs, so without the tiles bf16 gains nothing there.

use rayon::prelude::*;

/// Rows of the left operand per micro-tile: 12 rows × 2 vectors = 24 accumulators, which
/// leaves registers for the two right-hand vectors and the broadcast.
pub const MR: usize = 12;
/// Columns per micro-tile and per panel of [`PackedB`] (two 16-lane vectors).
pub const NR: usize = 32;

/// How the fused kernels multiply matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    F32,
    /// Inputs rounded to bf16, f32 accumulation; only where [`bf16_available`] says so.
    Bf16,
}

/// Whether this CPU has the instructions of the bf16 kernel (AVX-512 F, BW and BF16: Intel
/// since Cooper Lake / Sapphire Rapids, AMD since Zen 4) and `WBIA_LIGHTGLUE_CPU` allows
/// them ([`crate::cpu`]).
pub fn bf16_available() -> bool {
    crate::cpu::avx512_bf16()
}

/// Whether this CPU runs the f32 packed kernel (AVX-512 F); elsewhere f32 products go through
/// the `gemm` crate. `WBIA_LIGHTGLUE_CPU=portable` turns it off ([`crate::cpu`]).
pub fn f32_kernel_available() -> bool {
    crate::cpu::avx512f()
}

/// A matrix view into a slice: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// A view of `rows × cols` whose rows start `rs` floats apart (a column block of a wider
    /// row-major matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// Rows `start..start + count` of this view.
    pub fn row_range(self, start: usize, count: usize) -> Self {
        let from = if count == 0 { 0 } else { start * self.rs };
        Self {
            data: &self.data[from..],
            rows: count,
            ..self
        }
    }

    /// Columns `start..start + count` of this view.
    pub fn col_range(self, start: usize, count: usize) -> Self {
        let from = if count == 0 { 0 } else { start * self.cs };
        Self {
            data: &self.data[from..],
            cols: count,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// `dst = scale · lhs · rhs` in f32, `dst` row-major, on the calling thread (callers
/// parallelise over blocks and heads). The one place the kernels call `gemm`'s raw-pointer API.
pub fn matmul_into(dst: &mut [f32], lhs: Mat, rhs: Mat, scale: f32) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.len() == m * n && lhs.fits() && rhs.fits(),
        "matmul_into: bad shapes"
    );
    // SAFETY: the assertion above proves every index gemm touches lies inside the three
    // slices, and `dst` is a unique borrow, so it overlaps neither source.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dst = scale · lhs · rhs` with `kernel`, `dst` row-major; packs `rhs` on each call (keep a
/// [`PackedRhs`] to reuse it).
pub fn matmul_with(kernel: Kernel, dst: &mut [f32], lhs: Mat, rhs: Mat, scale: f32) {
    PackedRhs::pack(kernel, rhs).multiply(dst, rhs.cols, lhs, scale, None);
}

/// A right-hand operand packed for repeated products with one kernel.
pub enum PackedRhs {
    F32(PackedB32),
    Bf16(PackedB),
}

impl PackedRhs {
    pub fn pack(kernel: Kernel, b: Mat) -> Self {
        match kernel {
            Kernel::F32 => Self::F32(PackedB32::pack(b)),
            Kernel::Bf16 => Self::Bf16(PackedB::pack(b)),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::F32(b) => b.cols,
            Self::Bf16(b) => b.cols,
        }
    }

    /// `dst[r][c] = scale · (a · b)[r][c] (+ bias[c])`, `dst` row-major with `ldd` floats per
    /// row, on the calling thread (callers parallelise over rows, blocks and heads).
    pub fn multiply(&self, dst: &mut [f32], ldd: usize, a: Mat, scale: f32, bias: Option<&[f32]>) {
        self.product(dst, ldd, a, Epilogue::new(scale, bias, false));
    }

    /// [`PackedRhs::multiply`] adding to `dst` instead of overwriting it (a residual added in
    /// the product's last pass).
    pub fn multiply_add(
        &self,
        dst: &mut [f32],
        ldd: usize,
        a: Mat,
        scale: f32,
        bias: Option<&[f32]>,
    ) {
        self.product(dst, ldd, a, Epilogue::new(scale, bias, true));
    }

    fn product(&self, dst: &mut [f32], ldd: usize, a: Mat, out: Epilogue) {
        match self {
            Self::F32(b) => gemm_f32(dst, ldd, a, b, out),
            Self::Bf16(b) => {
                assert!(a.fits(), "PackedA: view outside its slice");
                PackedA::with_rows(
                    a.rows,
                    a.cols,
                    |r, words| a.convert_row(r, words),
                    |a| gemm_bf16(dst, ldd, a, b, out),
                )
            }
        }
    }
}

/// The right operand in f32, in panels of [`NR`] columns: panel `j` holds, for each row `k`,
/// its 32 columns (missing columns are zeros).
pub struct PackedB32 {
    data: Vec<f32>,
    cols: usize,
    k: usize,
}

impl PackedB32 {
    pub fn pack(b: Mat) -> Self {
        assert!(b.fits(), "PackedB32: view outside its slice");
        let (k, panels) = (b.rows, b.cols.div_ceil(NR));
        let mut data = vec![0f32; panels * k * NR];
        if b.cs == 1 {
            for r in 0..k {
                let row = &b.data[r * b.rs..r * b.rs + b.cols];
                for (panel, chunk) in row.chunks(NR).enumerate() {
                    data[(panel * k + r) * NR..][..chunk.len()].copy_from_slice(chunk);
                }
            }
        } else {
            for c in 0..b.cols {
                let (panel, lane) = (c / NR, c % NR);
                for r in 0..k {
                    data[(panel * k + r) * NR + lane] = b.at(r, c);
                }
            }
        }
        Self {
            data,
            cols: b.cols,
            k,
        }
    }
}

/// What a product does with its sums: `dst = scale · sum + bias`, or `dst += …` when
/// `accumulate`.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: f32,
    pub bias: Option<&'a [f32]>,
    pub accumulate: bool,
}

impl<'a> Epilogue<'a> {
    pub fn new(scale: f32, bias: Option<&'a [f32]>, accumulate: bool) -> Self {
        Self {
            scale,
            bias,
            accumulate,
        }
    }

    /// The value stored for a sum at column `c` over the destination's `old` value.
    fn apply(&self, sum: f32, c: usize, old: f32) -> f32 {
        let v = self.scale * sum + self.bias.map_or(0.0, |b| b[c]);
        if self.accumulate {
            old + v
        } else {
            v
        }
    }
}

impl PackedB32 {
    /// A `k × cols` operand written straight into the packed layout: `fill(panel, block)`
    /// receives each panel's zeroed `k × NR` block (row `p`'s values of the panel's columns at
    /// `block[p·NR..p·NR + NR]`). For operands gathered from elsewhere, like convolution
    /// patches, this spares building the matrix first.
    pub fn from_panels(k: usize, cols: usize, mut fill: impl FnMut(usize, &mut [f32])) -> Self {
        let panels = cols.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        if k > 0 {
            for (panel, block) in data.chunks_exact_mut(k * NR).enumerate() {
                fill(panel, block);
            }
        }
        Self { data, cols, k }
    }
}

/// Panics unless a `rows` × `cols` result with `ldd` floats per row (and `bias` of `cols`)
/// fits; the kernels' unchecked stores rely on it. False when there is nothing to compute.
fn output_fits(dst: &[f32], ldd: usize, rows: usize, cols: usize, bias: Option<&[f32]>) -> bool {
    assert!(
        ldd >= cols
            && (rows == 0 || dst.len() >= (rows - 1) * ldd + cols)
            && bias.is_none_or(|v| v.len() >= cols),
        "matrix product: output of {rows}×{cols} (row stride {ldd}) does not fit {} values",
        dst.len()
    );
    rows > 0 && cols > 0
}

/// `dst[r][c] = scale · Σ a[r][k]·b[k][c] (+ bias[c])` in f32. `a` may be any view: the
/// kernel reads it through its strides (a transposed view costs nothing extra).
pub fn gemm_f32(dst: &mut [f32], ldd: usize, a: Mat, b: &PackedB32, out: Epilogue) {
    assert!(
        a.fits() && a.cols == b.k,
        "gemm_f32: left operand {}×{} for {} rows",
        a.rows,
        a.cols,
        b.k
    );
    if !output_fits(dst, ldd, a.rows, b.cols, out.bias) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if f32_kernel_available() {
        // SAFETY: the instructions are present; `output_fits` and the operand checks above
        // bound every access.
        return unsafe { x86::gemm_f32(dst, ldd, a, b, out) };
    }
    // Elsewhere: `gemm` on each panel, through a scratch tile of the panel's 32 columns.
    let owned: Vec<f32>;
    let a = if a.cs == 1 {
        a
    } else {
        owned = (0..a.rows)
            .flat_map(|r| (0..a.cols).map(move |c| a.at(r, c)))
            .collect();
        Mat::rows(&owned, a.rows, a.cols)
    };
    let mut tile = vec![0f32; a.rows * NR];
    for panel in 0..b.cols.div_ceil(NR) {
        let rhs = Mat::rows(&b.data[panel * b.k * NR..(panel + 1) * b.k * NR], b.k, NR);
        matmul_into(&mut tile, a, rhs, 1.0);
        let (c0, cols) = (panel * NR, (b.cols - panel * NR).min(NR));
        for (r, row) in tile.chunks_exact(NR).enumerate() {
            for (c, &v) in row[..cols].iter().enumerate() {
                let at = r * ldd + c0 + c;
                dst[at] = out.apply(v, c0 + c, dst[at]);
            }
        }
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Two values as one packed word: `lo` in the low half, as `vdpbf16ps` pairs them.
#[inline]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// The left operand in bf16: row `r` holds words `(a[r][2p], a[r][2p+1])`, `kp` words per
/// row (an odd inner dimension is padded with a zero), rows padded to a multiple of
/// [`A_ROW_PAD`].
pub struct PackedA {
    words: Vec<u32>,
    rows: usize,
    kp: usize,
}

impl PackedA {
    /// `a` converted to bf16 pairs (a fresh buffer; the products use [`PackedA::with_rows`]).
    pub fn pack(a: Mat) -> Self {
        assert!(a.fits(), "PackedA: view outside its slice");
        let mut words = Vec::new();
        Self::write_rows(&mut words, a.rows, a.cols, |r, out| a.convert_row(r, out));
        Self {
            words,
            rows: a.rows,
            kp: a.cols.div_ceil(2),
        }
    }

    /// Runs `f` on a `rows` × `cols` operand whose row `r` `fill(r, words)` writes as bf16
    /// pairs (`cols.div_ceil(2)` words, an odd last column paired with zero), built in this
    /// thread's buffer, kept between calls: products pack their left operand on every call,
    /// and allocating and zeroing it each time showed in profiles. The rows padding the last
    /// tile keep whatever the buffer held; their sums are never stored.
    pub fn with_rows<R>(
        rows: usize,
        cols: usize,
        fill: impl FnMut(usize, &mut [u32]),
        f: impl FnOnce(&PackedA) -> R,
    ) -> R {
        let mut words = A_BUFFER.take();
        Self::write_rows(&mut words, rows, cols, fill);
        let packed = Self {
            words,
            rows,
            kp: cols.div_ceil(2),
        };
        let result = f(&packed);
        A_BUFFER.set(packed.words);
        result
    }

    /// `fill(r, words)` for each row into `words`, grown (never shrunk) to the padded size.
    fn write_rows(
        words: &mut Vec<u32>,
        rows: usize,
        cols: usize,
        mut fill: impl FnMut(usize, &mut [u32]),
    ) {
        let kp = cols.div_ceil(2);
        let len = rows.div_ceil(A_ROW_PAD) * A_ROW_PAD * kp;
        if words.len() < len {
            words.resize(len, 0);
        }
        if kp > 0 {
            for (r, out) in words[..len].chunks_exact_mut(kp).take(rows).enumerate() {
                fill(r, out);
            }
        }
    }
}

/// [`PackedA`]'s rows are padded to a multiple of this: whole tiles of [`MR`] rows for the
/// AVX-512 kernel and of 16 rows for AMX tiles, which read every row of a tile.
const A_ROW_PAD: usize = 48;

thread_local! {
    /// [`PackedA::with_rows`]'s buffer; taken out while in use, so a nested call gets its own.
    static A_BUFFER: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Mat<'_> {
    /// Row `r` as bf16 pairs (`out.len() == cols.div_ceil(2)`).
    fn convert_row(&self, r: usize, out: &mut [u32]) {
        if self.cs == 1 {
            convert_row(&self.data[r * self.rs..r * self.rs + self.cols], out);
        } else {
            for (p, w) in out.iter_mut().enumerate() {
                let hi = if 2 * p + 1 < self.cols {
                    self.at(r, 2 * p + 1)
                } else {
                    0.0
                };
                *w = pair(self.at(r, 2 * p), hi);
            }
        }
    }
}

/// A contiguous f32 row as bf16 pairs (`out.len() == row.len().div_ceil(2)`).
pub fn convert_row(row: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if bf16_available() {
        // SAFETY: the CPU has the instructions the function is compiled for.
        return unsafe { x86::convert_row(row, out) };
    }
    for (p, w) in out.iter_mut().enumerate() {
        *w = pair(row[2 * p], row.get(2 * p + 1).copied().unwrap_or(0.0));
    }
}

/// The right operand in bf16, in panels of [`NR`] columns: panel `j` holds, for each pair
/// `p` of the inner dimension, the words `(b[2p][c], b[2p+1][c])` of its 32 columns
/// (missing columns and an odd inner dimension padded with zeros).
pub struct PackedB {
    words: Vec<u32>,
    cols: usize,
    kp: usize,
}

impl PackedB {
    pub fn pack(b: Mat) -> Self {
        assert!(b.fits(), "PackedB: view outside its slice");
        let kp = b.rows.div_ceil(2);
        let panels = b.cols.div_ceil(NR);
        let mut words = vec![0u32; panels * kp * NR];
        if b.rs == 1 {
            // Columns are contiguous (a transposed row-major matrix, like a weight [out, in]
            // or keys [n, d]): each column converts as one row of pairs.
            let mut col = vec![0u32; kp];
            for c in 0..b.cols {
                convert_row(&b.data[c * b.cs..c * b.cs + b.rows], &mut col);
                let (panel, lane) = (c / NR, c % NR);
                for (p, &w) in col.iter().enumerate() {
                    words[(panel * kp + p) * NR + lane] = w;
                }
            }
        } else if b.cs == 1 && bf16_available() {
            // Rows are contiguous (values [n, d], exponentials [m, n]): two rows interleave.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the instructions are present; `fits` bounds every row read.
            unsafe {
                x86::pack_rows(b, kp, &mut words)
            };
        } else {
            for panel in 0..panels {
                for p in 0..kp {
                    let out = &mut words[(panel * kp + p) * NR..][..NR];
                    for (lane, w) in out.iter_mut().enumerate() {
                        let c = panel * NR + lane;
                        if c < b.cols {
                            let hi = if 2 * p + 1 < b.rows {
                                b.at(2 * p + 1, c)
                            } else {
                                0.0
                            };
                            *w = pair(b.at(2 * p, c), hi);
                        }
                    }
                }
            }
        }
        Self {
            words,
            cols: b.cols,
            kp,
        }
    }
}

impl PackedB {
    /// A `rows` × `cols` operand whose rows `produce(r, row)` writes in order, two at a time
    /// into a small buffer and packed from there: for operands computed just before their
    /// product (cross-attention's column exponentials), which then never exist in f32.
    pub fn from_rows(rows: usize, cols: usize, mut produce: impl FnMut(usize, &mut [f32])) -> Self {
        let kp = rows.div_ceil(2);
        let mut words = vec![0u32; cols.div_ceil(NR) * kp * NR];
        let mut two = vec![0f32; 2 * cols];
        for p in 0..kp {
            let (row0, row1) = two.split_at_mut(cols);
            produce(2 * p, row0);
            let row1 = (2 * p + 1 < rows).then(|| {
                produce(2 * p + 1, row1);
                &*row1
            });
            #[cfg(target_arch = "x86_64")]
            if bf16_available() {
                // SAFETY: the instructions are present; both rows hold `cols` values and
                // `words` every panel's `kp` pairs.
                unsafe { x86::pack_pair(row0, row1, p, kp, &mut words) };
                continue;
            }
            for (c, &lo) in row0.iter().enumerate() {
                let hi = row1.map_or(0.0, |r| r[c]);
                words[((c / NR) * kp + p) * NR + c % NR] = pair(lo, hi);
            }
        }
        Self { words, cols, kp }
    }
}

/// `dst[r][c] = scale · Σ a[r][k]·b[k][c] (+ bias[c])` with bf16 inputs and f32 sums, `dst`
/// row-major with `ldd` floats per row, on the calling thread.
pub fn gemm_bf16(dst: &mut [f32], ldd: usize, a: &PackedA, b: &PackedB, out: Epilogue) {
    assert_eq!(a.kp, b.kp, "gemm_bf16: inner dimensions differ");
    if !output_fits(dst, ldd, a.rows, b.cols, out.bias) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::amx_bf16() {
        // SAFETY: the CPU has AMX and AVX-512 BF16 and the process may use the tiles;
        // `output_fits` bounds every store, `A_ROW_PAD` every row a tile reads.
        return unsafe { x86::gemm_amx(dst, ldd, a, b, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_available() {
        // SAFETY: the instructions are present; `output_fits` bounds every store.
        return unsafe { x86::gemm(dst, ldd, a, b, out) };
    }
    gemm_bf16_packed_plain(dst, ldd, a, b, out)
}

/// The packed product without vector instructions (CPUs without AVX-512 BF16, and a twin).
fn gemm_bf16_packed_plain(dst: &mut [f32], ldd: usize, a: &PackedA, b: &PackedB, out: Epilogue) {
    let half = |w: u32, hi: bool| bf16_to_f32(if hi { (w >> 16) as u16 } else { w as u16 });
    for r in 0..a.rows {
        let arow = &a.words[r * a.kp..(r + 1) * a.kp];
        for c in 0..b.cols {
            let (panel, lane) = (c / NR, c % NR);
            let mut sum = 0f32;
            for (p, &aw) in arow.iter().enumerate() {
                let bw = b.words[(panel * a.kp + p) * NR + lane];
                sum += half(aw, false) * half(bw, false) + half(aw, true) * half(bw, true);
            }
            dst[r * ldd + c] = out.apply(sum, c, dst[r * ldd + c]);
        }
    }
}

/// The loop-by-loop reference: each input rounded to bf16, products summed in f64.
pub fn gemm_bf16_reference(lhs: Mat, rhs: Mat, scale: f32) -> Vec<f32> {
    let round = |x: f32| bf16_to_f32(bf16_bits(x)) as f64;
    let mut out = vec![0f32; lhs.rows * rhs.cols];
    for r in 0..lhs.rows {
        for c in 0..rhs.cols {
            let sum: f64 = (0..lhs.cols)
                .map(|k| round(lhs.at(r, k)) * round(rhs.at(k, c)))
                .sum();
            out[r * rhs.cols + c] = (sum * scale as f64) as f32;
        }
    }
    out
}

/// `y = x · wᵀ + bias` for a row-major `x` [rows, in] and a weight `w` [out, in] packed once
/// for `kernel`; rows are split over rayon's threads.
pub struct PackedLinear {
    weight: PackedRhs,
    bias: Option<Vec<f32>>,
    inputs: usize,
}

/// Rows one task multiplies: its slice of `x` (96 rows × 512 values) stays in the core's L2
/// while every panel of the weight passes.
const ROWS_PER_TASK: usize = 8 * MR;

impl PackedLinear {
    /// `weight` is [out, in] row-major, as PyTorch and candle store it.
    pub fn new(
        kernel: Kernel,
        weight: &[f32],
        outputs: usize,
        inputs: usize,
        bias: Option<Vec<f32>>,
    ) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "PackedLinear: weight shape");
        Self {
            weight: PackedRhs::pack(kernel, Mat::rows(weight, outputs, inputs).t()),
            bias,
            inputs,
        }
    }

    pub fn outputs(&self) -> usize {
        self.weight.cols()
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// `x` holds whole rows of `inputs` values; returns rows of `outputs`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (k, n) = (self.inputs, self.outputs());
        let rows = x.len().checked_div(k).unwrap_or(0);
        assert_eq!(rows * k, x.len(), "PackedLinear: ragged input");
        let mut out = vec![0f32; rows * n];
        self.forward_into(Mat::rows(x, rows, k), &mut out, n, false);
        out
    }

    /// `dst = x · wᵀ + bias` (`dst +=` when `accumulate`) for any view `x` of `inputs`
    /// columns, into `dst` rows `ldd` floats apart: the output may be a column block of a wider
    /// matrix, and a residual is added in the product's last pass.
    pub fn forward_into(&self, x: Mat, dst: &mut [f32], ldd: usize, accumulate: bool) {
        self.forward_into_then(x, dst, ldd, accumulate, |_, _| {});
    }

    /// [`PackedLinear::forward_into`], then `then(first_row, rows)` on each task's output
    /// rows (`rows` holds them `ldd` apart) by the task that wrote them, while they are in its
    /// cache: an element-wise step after the product (rotary encoding, layer norm) costs no
    /// extra pass over memory and no extra wait for the threads.
    pub fn forward_into_then(
        &self,
        x: Mat,
        dst: &mut [f32],
        ldd: usize,
        accumulate: bool,
        then: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let n = self.outputs();
        assert!(
            x.cols == self.inputs && ldd >= n,
            "PackedLinear: {} input columns for {}, row stride {ldd} for {n} outputs",
            x.cols,
            self.inputs
        );
        if x.rows == 0 {
            return;
        }
        assert!(
            dst.len() >= (x.rows - 1) * ldd + n,
            "PackedLinear: output does not fit"
        );
        let out = Epilogue::new(1.0, self.bias.as_deref(), accumulate);
        let mut tasks = Vec::new();
        let mut rest = dst;
        for (r0, rows) in row_tasks(x.rows, rayon::current_num_threads()) {
            let (mine, tail) = rest.split_at_mut((rows * ldd).min(rest.len()));
            tasks.push((r0, rows, mine));
            rest = tail;
        }
        tasks.into_par_iter().for_each(|(r0, rows, dst)| {
            self.weight.product(dst, ldd, x.row_range(r0, rows), out);
            then(r0, dst);
        });
    }
}

/// `(first row, rows)` of each task of a product with `rows` rows on `threads` threads: whole
/// tiles of [`MR`] rows, at most [`ROWS_PER_TASK`] a task, and a multiple of `threads` tasks
/// within a tile of each other, so no thread is left a task longer than the rest (at 1,024
/// rows, fixed 96-row tasks split 6:5 over two threads).
fn row_tasks(rows: usize, threads: usize) -> Vec<(usize, usize)> {
    let tiles = rows.div_ceil(MR);
    let threads = threads.max(1);
    let tasks = tiles
        .div_ceil(ROWS_PER_TASK / MR)
        .next_multiple_of(threads)
        .min(tiles);
    (0..tasks)
        .map(|t| {
            let (first, end) = (t * tiles / tasks * MR, (t + 1) * tiles / tasks * MR);
            (first, end.min(rows) - first)
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub(super) use super::amx::gemm_amx;
    use super::{Epilogue, PackedA, PackedB, MR, NR};
    use std::arch::x86_64::*;

    /// Pairs of a contiguous row, 32 values per conversion.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn convert_row(row: &[f32], out: &mut [u32]) {
        let full = row.len() / 32;
        for i in 0..full {
            let lo = _mm512_loadu_ps(row.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(row.as_ptr().add(32 * i + 16));
            // The second operand fills the low half.
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * i) as *mut _, packed);
        }
        for p in 16 * full..out.len() {
            let lo = row[2 * p];
            let hi = row.get(2 * p + 1).copied().unwrap_or(0.0);
            out[p] = super::pair(lo, hi);
        }
    }

    /// [`PackedB`] of a matrix with contiguous rows: rows `2p` and `2p + 1` are converted
    /// together and their values interleaved into words, 16 columns at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_rows(b: super::Mat, kp: usize, words: &mut [u32]) {
        for p in 0..kp {
            let row0 = std::slice::from_raw_parts(b.data.as_ptr().add(2 * p * b.rs), b.cols);
            let row1 = (2 * p + 1 < b.rows).then(|| {
                std::slice::from_raw_parts(b.data.as_ptr().add((2 * p + 1) * b.rs), b.cols)
            });
            pack_pair(row0, row1, p, kp, words);
        }
    }

    /// Rows `2p` and `2p + 1` (zeros when `row1` is `None`) of a [`PackedB`] with `kp` pairs
    /// and `row0.len()` columns, written into its `words`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_pair(
        row0: &[f32],
        row1: Option<&[f32]>,
        p: usize,
        kp: usize,
        words: &mut [u32],
    ) {
        const INTERLEAVE: [u16; 32] = {
            let mut idx = [0u16; 32];
            let mut j = 0;
            while j < 16 {
                idx[2 * j] = j as u16;
                idx[2 * j + 1] = 16 + j as u16;
                j += 1;
            }
            idx
        };
        let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _);
        let cols = row0.len();
        for c in (0..cols).step_by(16) {
            let m = lane_mask(cols - c);
            let x0 = _mm512_maskz_loadu_ps(m, row0.as_ptr().add(c));
            let x1 = match row1 {
                Some(row1) => _mm512_maskz_loadu_ps(m, row1.as_ptr().add(c)),
                None => _mm512_setzero_ps(),
            };
            let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
            let pairs = _mm512_permutexvar_epi16(idx, halves);
            let at = ((c / NR) * kp + p) * NR + c % NR;
            _mm512_storeu_si512(words.as_mut_ptr().add(at) as *mut _, pairs);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn gemm(
        dst: &mut [f32],
        ldd: usize,
        a: &PackedA,
        b: &PackedB,
        out: Epilogue,
    ) {
        let kp = a.kp;
        let panels = b.cols.div_ceil(NR);
        for panel in 0..panels {
            let bp = b.words.as_ptr().add(panel * kp * NR);
            let c0 = panel * NR;
            let cols = (b.cols - c0).min(NR);
            for r0 in (0..a.rows).step_by(MR) {
                let ap = a.words.as_ptr().add(r0 * kp);
                let rows = (a.rows - r0).min(MR);
                tile(
                    kp,
                    ap,
                    bp,
                    TileDst::at(dst, ldd, (r0, c0), (rows, cols), out),
                );
            }
        }
    }

    pub(super) unsafe fn gemm_f32(
        dst: &mut [f32],
        ldd: usize,
        a: super::Mat,
        b: &super::PackedB32,
        out: Epilogue,
    ) {
        let k = b.k;
        // The last rows, when fewer than a tile, are copied beside zeros.
        let full = a.rows / MR * MR;
        let mut edge = vec![0f32; if full < a.rows { MR * k } else { 0 }];
        if full < a.rows {
            for (r, row) in edge
                .chunks_exact_mut(k.max(1))
                .take(a.rows - full)
                .enumerate()
            {
                for (p, v) in row.iter_mut().enumerate().take(k) {
                    *v = a.at(full + r, p);
                }
            }
        }
        for panel in 0..b.cols.div_ceil(NR) {
            let bp = b.data.as_ptr().add(panel * k * NR);
            let c0 = panel * NR;
            let cols = (b.cols - c0).min(NR);
            for r0 in (0..a.rows).step_by(MR) {
                let rows = (a.rows - r0).min(MR);
                let (ap, rs, cs) = if rows == MR {
                    (a.data.as_ptr().add(r0 * a.rs), a.rs, a.cs)
                } else {
                    (edge.as_ptr(), k, 1)
                };
                let to = TileDst::at(dst, ldd, (r0, c0), (rows, cols), out);
                tile_f32(k, ap, rs, cs, bp, to);
            }
        }
    }

    /// Where a tile's sums go: `rows` × `cols` of them to `c`, rows `ldc` apart, written as
    /// `out` says; the tile's first column is column `c0` of the product (where its bias
    /// starts).
    #[derive(Clone, Copy)]
    pub(super) struct TileDst<'a> {
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        out: Epilogue<'a>,
        c0: usize,
    }

    impl<'a> TileDst<'a> {
        /// The tile whose first element is (`r0`, `c0`) of `dst` (rows `ldd` apart), `rows` ×
        /// `cols` of it inside the product. The caller has checked that they fit.
        pub(super) unsafe fn at(
            dst: &mut [f32],
            ldd: usize,
            (r0, c0): (usize, usize),
            (rows, cols): (usize, usize),
            out: Epilogue<'a>,
        ) -> Self {
            Self {
                c: dst.as_mut_ptr().add(r0 * ldd + c0),
                ldc: ldd,
                rows,
                cols,
                out,
                c0,
            }
        }
    }

    /// Writes a tile's sums to its [`TileDst`], at most `$max_rows` rows, row `$r`'s two
    /// vectors of sums given by `$sums`. A macro, not a function: the 24 accumulators must
    /// stay in registers, and a call (the compiler would not inline one this size) spilled
    /// them and reloaded them for every tile.
    macro_rules! store_tile {
        ($dst:expr, $max_rows:expr, |$r:ident| $sums:expr) => {{
            let TileDst {
                c,
                ldc,
                rows,
                cols,
                out,
                c0,
            } = $dst;
            let s = _mm512_set1_ps(out.scale);
            let (m0, m1) = (lane_mask(cols), lane_mask(cols.saturating_sub(16)));
            let (bias0, bias1) = match out.bias {
                Some(v) => (
                    _mm512_maskz_loadu_ps(m0, v.as_ptr().add(c0)),
                    _mm512_maskz_loadu_ps(m1, v.as_ptr().add(c0 + 16)),
                ),
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            for $r in 0..rows.min($max_rows) {
                let row: *mut f32 = c.add($r * ldc);
                let (sum0, sum1) = $sums;
                let mut v0 = _mm512_fmadd_ps(sum0, s, bias0);
                let mut v1 = _mm512_fmadd_ps(sum1, s, bias1);
                if out.accumulate {
                    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
                    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), v1);
                }
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }};
    }

    /// Writes a block of sums held in memory, row `r`'s [`NR`] at `sums + NR·r` (64-byte
    /// aligned), as the AMX kernel stores its tiles.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_sums(sums: *const f32, dst: TileDst) {
        store_tile!(dst, usize::MAX, |r| (
            _mm512_load_ps(sums.add(r * NR)),
            _mm512_load_ps(sums.add(r * NR + 16))
        ));
    }

    /// The f32 products of one MR × NR tile, 12 broadcasts and 24 FMAs per step of `k`
    /// (element (r, p) of the left operand is `a[r·rs + p·cs]`), stored by [`store_tile`].
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_f32(k: usize, a: *const f32, rs: usize, cs: usize, b: *const f32, dst: TileDst) {
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for p in 0..k {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.add(p * cs);
            for r in 0..MR {
                let av = _mm512_set1_ps(*ap.add(r * rs));
                acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
            }
        }
        store_tile!(dst, MR, |r| (acc[2 * r], acc[2 * r + 1]));
    }

    /// The bf16 products of one MR × NR tile, two inner-dimension steps per `vdpbf16ps`,
    /// stored by [`store_tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile(kp: usize, a: *const u32, b: *const u32, dst: TileDst) {
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for r in 0..MR {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * kp + p) as i32));
                acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], av, b0);
                acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], av, b1);
            }
        }
        store_tile!(dst, MR, |r| (acc[2 * r], acc[2 * r + 1]));
    }

    /// The first `n` of 16 lanes.
    #[inline]
    fn lane_mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-2, 2) with a fraction bf16 cannot hold exactly.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(bf16_bits(-0.0), 0x8000);
        assert!(bf16_to_f32(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_to_f32(bf16_bits(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn vector_conversion_equals_scalar() {
        for len in [1, 2, 31, 32, 33, 64, 100] {
            let row = values(len, len as u64);
            let mut fast = vec![0u32; len.div_ceil(2)];
            convert_row(&row, &mut fast);
            let slow: Vec<u32> = (0..len.div_ceil(2))
                .map(|p| pair(row[2 * p], row.get(2 * p + 1).copied().unwrap_or(0.0)))
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    /// Every shape class the kernels distinguish: rows below, at and above a tile, columns
    /// below, at and above a panel, odd and even inner dimensions, both packing paths of each
    /// operand (contiguous rows and transposed views). Calls `check(lhs, rhs, case)` on each
    /// and returns how many there were.
    fn for_each_shape(mut check: impl FnMut(Mat, Mat, &str)) -> usize {
        let mut cases = 0;
        for &m in &[1usize, 5, 12, 13, 40] {
            for &n in &[1usize, 16, 31, 32, 33, 70] {
                for &k in &[1usize, 2, 7, 64, 129] {
                    for transposed in [false, true] {
                        let a = values(m * k, (m * 1000 + k) as u64);
                        let b = values(k * n, (n * 1000 + k + 7) as u64);
                        let (lhs, rhs) = if transposed {
                            (Mat::rows(&a, k, m).t(), Mat::rows(&b, n, k).t())
                        } else {
                            (Mat::rows(&a, m, k), Mat::rows(&b, k, n))
                        };
                        check(
                            lhs,
                            rhs,
                            &format!("m {m} n {n} k {k} transposed {transposed}"),
                        );
                        cases += 1;
                    }
                }
            }
        }
        cases
    }

    /// f32 summation-order error of a k-long sum of products of values in [-2, 2).
    fn tolerance(k: usize) -> f32 {
        1e-5 * (k as f32).sqrt() * 4.0
    }

    /// Sums of bf16 products are exact in f64, so the only difference from the reference is
    /// f32 summation order (vector kernel and plain twin alike).
    #[test]
    fn bf16_product_equals_reference_over_shapes() {
        let cases = for_each_shape(|lhs, rhs, case| {
            let (m, n) = (lhs.rows, rhs.cols);
            let want = gemm_bf16_reference(lhs, rhs, 0.5);
            let mut got = vec![f32::NAN; m * n];
            matmul_with(Kernel::Bf16, &mut got, lhs, rhs, 0.5);
            let mut plain = vec![f32::NAN; m * n];
            let (a, b) = (PackedA::pack(lhs), PackedB::pack(rhs));
            gemm_bf16_packed_plain(&mut plain, n, &a, &b, Epilogue::new(0.5, None, false));
            for (i, ((g, p), w)) in got.iter().zip(&plain).zip(&want).enumerate() {
                let tol = tolerance(lhs.cols);
                assert!(
                    (g - w).abs() <= tol && (p - w).abs() <= tol,
                    "{case} at {i}: {g} / {p} vs {w}"
                );
            }
        });
        assert_eq!(cases, 5 * 6 * 5 * 2);
    }

    /// The f32 kernel (with a bias) against f64 sums of the unrounded inputs.
    #[test]
    fn f32_product_equals_reference_over_shapes() {
        let cases = for_each_shape(|lhs, rhs, case| {
            let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
            let bias = values(n, 99);
            let mut got = vec![f32::NAN; m * n];
            PackedRhs::pack(Kernel::F32, rhs).multiply(&mut got, n, lhs, 0.5, Some(&bias));
            for r in 0..m {
                for c in 0..n {
                    let sum: f64 = (0..k)
                        .map(|i| lhs.at(r, i) as f64 * rhs.at(i, c) as f64)
                        .sum();
                    let want = (0.5 * sum) as f32 + bias[c];
                    let g = got[r * n + c];
                    assert!(
                        (g - want).abs() <= tolerance(k),
                        "{case} at ({r}, {c}): {g} vs {want}"
                    );
                }
            }
        });
        assert_eq!(cases, 5 * 6 * 5 * 2);
    }

    #[test]
    fn packed_linear_adds_bias_and_keeps_other_rows() {
        let (rows, inputs, outputs) = (3 * ROWS_PER_TASK + 5, 70, 45);
        let x = values(rows * inputs, 1);
        let w = values(outputs * inputs, 2);
        let bias = values(outputs, 3);
        let lin = PackedLinear::new(Kernel::Bf16, &w, outputs, inputs, Some(bias.clone()));
        let y = lin.forward(&x);
        let want = gemm_bf16_reference(
            Mat::rows(&x, rows, inputs),
            Mat::rows(&w, outputs, inputs).t(),
            1.0,
        );
        for (i, (g, w)) in y.iter().zip(&want).enumerate() {
            let expected = w + bias[i % outputs];
            assert!((g - expected).abs() < 1e-4, "at {i}: {g} vs {expected}");
        }
        let lin = PackedLinear::new(Kernel::F32, &w, outputs, inputs, Some(bias.clone()));
        let mut want = vec![0f32; rows * outputs];
        matmul_into(
            &mut want,
            Mat::rows(&x, rows, inputs),
            Mat::rows(&w, outputs, inputs).t(),
            1.0,
        );
        for (i, (g, w)) in lin.forward(&x).iter().zip(&want).enumerate() {
            let expected = w + bias[i % outputs];
            assert!((g - expected).abs() < 1e-4, "f32 at {i}: {g} vs {expected}");
        }
    }

    /// The AMX kernel against the loop-by-loop reference and the plain twin, with scale, bias
    /// and accumulation, over the shapes its tiling distinguishes: rows within one, at and past
    /// 16- and 32-row blocks; columns within one panel, at it and past it; inner dimensions
    /// below one 32-value step, at it, with a tail, and cross-attention's 1,377 keys. Its
    /// subject needs AMX (Intel since Sapphire Rapids): CI's CPUs vary, so it is ignored there
    /// and run with `cargo test -p wbia-lightglue-model --lib -- --ignored amx` on such a CPU
    /// (BENCHMARKS.md, *AMX*); where bf16 products run on AMX the shape sweep above runs it too.
    #[test]
    #[ignore = "needs AMX tiles (Intel since Sapphire Rapids)"]
    fn amx_product_equals_reference_and_twin() {
        if !crate::cpu::detected::amx_bf16() || !crate::cpu::detected::avx512_bf16() {
            crate::cpu::skip_or_fail("this CPU has no AMX-BF16: the AMX kernel cannot run");
            return;
        }
        let mut cases = 0;
        for &m in &[1usize, 15, 16, 17, 32, 33, 50, 100] {
            for &n in &[1usize, 31, 32, 33, 64, 70] {
                for &k in &[1usize, 2, 31, 32, 33, 64, 100, 256, 1377] {
                    let a = values(m * k, (m * 7919 + k) as u64);
                    let b = values(k * n, (n * 104729 + k) as u64);
                    let bias = values(n, (m + n + k) as u64);
                    let (lhs, rhs) = (Mat::rows(&a, m, k), Mat::rows(&b, k, n));
                    let want = gemm_bf16_reference(lhs, rhs, 0.5);
                    let (pa, pb) = (PackedA::pack(lhs), PackedB::pack(rhs));
                    let old = values(m * n, 5);
                    let (mut amx, mut plain) = (old.clone(), old.clone());
                    let out = Epilogue::new(0.5, Some(&bias), true);
                    // SAFETY: AMX-BF16 and AVX-512 BF16 checked above; permission asked by
                    // `detected::amx_bf16`; `amx` holds m × n.
                    unsafe { x86::gemm_amx(&mut amx, n, &pa, &pb, out) };
                    gemm_bf16_packed_plain(&mut plain, n, &pa, &pb, out);
                    for i in 0..m * n {
                        let w = old[i] + want[i] + bias[i % n];
                        let tol = tolerance(k);
                        assert!(
                            (amx[i] - w).abs() <= tol && (amx[i] - plain[i]).abs() <= tol,
                            "m {m} n {n} k {k} at {i}: AMX {} plain {} reference {w}",
                            amx[i],
                            plain[i]
                        );
                    }
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 8 * 6 * 9);
    }

    /// A right operand produced row by row packs to the same words as the whole matrix,
    /// over 1–9 rows (odd counts pair the last row with zeros) and 1–70 columns.
    #[test]
    fn packed_b_from_rows_equals_packed_matrix() {
        for rows in 1..10 {
            for cols in [1usize, 15, 16, 17, 31, 32, 33, 64, 70] {
                let b = values(rows * cols, (rows * 100 + cols) as u64);
                let whole = PackedB::pack(Mat::rows(&b, rows, cols));
                let produced = PackedB::from_rows(rows, cols, |r, row| {
                    row.copy_from_slice(&b[r * cols..(r + 1) * cols])
                });
                assert_eq!(whole.words, produced.words, "{rows}×{cols}");
                assert_eq!((whole.kp, whole.cols), (produced.kp, produced.cols));
            }
        }
    }

    /// Every row in exactly one task, whole tiles, tasks a multiple of the threads (when there
    /// are enough tiles) and within one tile of each other, none over `ROWS_PER_TASK`; swept
    /// over 0–5,000 rows and 1–8 threads.
    #[test]
    fn row_tasks_cover_rows_evenly() {
        for threads in 1..=8 {
            for rows in 0..5000 {
                let tasks = row_tasks(rows, threads);
                let mut next = 0;
                for &(first, len) in &tasks {
                    assert_eq!(first, next, "{rows} rows, {threads} threads: {tasks:?}");
                    assert!(first % MR == 0 && len > 0 && len <= ROWS_PER_TASK);
                    next = first + len;
                }
                assert_eq!(next, rows, "{rows} rows, {threads} threads");
                let tiles = rows.div_ceil(MR);
                if tiles >= threads {
                    assert_eq!(tasks.len() % threads, 0, "{rows} rows, {threads} threads");
                }
                let lens = tasks.iter().map(|t| t.1.div_ceil(MR));
                let (lo, hi) = (lens.clone().min(), lens.max());
                assert!(hi.zip(lo).is_none_or(|(hi, lo)| hi - lo <= 1));
            }
        }
    }

    /// `forward_into` reading a column block of a wider input and adding into a column block
    /// of a wider output (LightGlue's `[x | message]` state): every output of the block is its
    /// old value plus the product and bias, everything outside the block is untouched; both
    /// kernels, rows over several tasks.
    #[test]
    fn packed_linear_into_column_block_accumulates() {
        let (rows, inputs, outputs) = (3 * ROWS_PER_TASK + 5, 40, 36);
        let (in_width, out_width, in_col, out_col) = (100, 90, 7, 50);
        let source = values(rows * in_width, 4);
        let x = Mat::strided(&source, rows, in_width, in_width).col_range(in_col, inputs);
        let w = values(outputs * inputs, 5);
        let bias = values(outputs, 6);
        let before = values(rows * out_width, 7);
        for kernel in [Kernel::F32, Kernel::Bf16] {
            let lin = PackedLinear::new(kernel, &w, outputs, inputs, Some(bias.clone()));
            let mut product = vec![0f32; rows * outputs];
            lin.forward_into(x, &mut product, outputs, false);
            let mut out = before.clone();
            lin.forward_into(x, &mut out[out_col..], out_width, true);
            for r in 0..rows {
                for c in 0..out_width {
                    let (got, old) = (out[r * out_width + c], before[r * out_width + c]);
                    let want = if (out_col..out_col + outputs).contains(&c) {
                        old + product[r * outputs + c - out_col]
                    } else {
                        old
                    };
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{kernel:?} ({r}, {c}): {got} vs {want}"
                    );
                }
            }
            // The product itself, against f64 sums of the bf16-rounded or exact inputs.
            let want = match kernel {
                Kernel::Bf16 => gemm_bf16_reference(x, Mat::rows(&w, outputs, inputs).t(), 1.0),
                Kernel::F32 => {
                    let mut exact = vec![0f32; rows * outputs];
                    matmul_into(&mut exact, x, Mat::rows(&w, outputs, inputs).t(), 1.0);
                    exact
                }
            };
            for (i, (g, w)) in product.iter().zip(&want).enumerate() {
                let expected = w + bias[i % outputs];
                assert!(
                    (g - expected).abs() < 1e-4,
                    "{kernel:?} at {i}: {g} vs {expected}"
                );
            }
        }
    }

    /// bf16 products stay close to f32 ones: relative error of a 256-long dot product of
    /// unit-scale values is a few 1e-3 (8 mantissa bits per input).
    #[test]
    fn bf16_is_close_to_f32() {
        let (m, k, n) = (64, 256, 64);
        let a = values(m * k, 11);
        let b = values(k * n, 12);
        let mut exact = vec![0f32; m * n];
        matmul_into(&mut exact, Mat::rows(&a, m, k), Mat::rows(&b, k, n), 1.0);
        let mut half = vec![0f32; m * n];
        matmul_with(
            Kernel::Bf16,
            &mut half,
            Mat::rows(&a, m, k),
            Mat::rows(&b, k, n),
            1.0,
        );
        let norm = exact.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = exact
            .iter()
            .zip(&half)
            .map(|(e, h)| (e - h) * (e - h))
            .sum::<f32>()
            .sqrt();
        assert!(err / norm < 1e-2, "relative error {}", err / norm);
        assert!(err > 0.0, "bf16 rounding must show");
    }
}
