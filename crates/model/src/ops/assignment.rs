//! LightGlue's match assignment reduced to what matching reads: for the log scores
//! `s[i][j] = log_softmax_row(sim)[i][j] + log_softmax_col(sim)[i][j] + z0[i] + z1[j]`, each
//! row's best column with its score and each column's best row. The [M, N] score matrix is
//! never stored: row and column log-sum-exps come from two parallel passes over `sim`, the
//! maxima from two more. Through candle's composed ops the same took 84 ms at 1679 × 1229
//! points on one thread; [`dual_softmax_best_reference`] is that composition, for the tests.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::attention::fast_exp;
use crate::Result;

/// Columns one task of the column passes covers (a few cache lines of each row).
const COLS_PER_TASK: usize = 64;
/// Rows one task of the row passes covers.
const ROWS_PER_TASK: usize = 16;

/// Each row's and column's best entry of the dual-softmax scores.
#[derive(Debug, PartialEq)]
pub struct Best {
    /// Per row: the column of its largest score (the first, on ties).
    pub row_best: Vec<u32>,
    /// Per row: that score.
    pub row_max: Vec<f32>,
    /// Per column: the row of its largest score (the first, on ties).
    pub col_best: Vec<u32>,
}

/// Row statistics `(max, ln Σ exp(x - max))` of a log-softmax.
fn lse_parts(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, exp_sum(row, max).ln())
}

/// `Σ exp(x - max)` over `row`.
fn exp_sum(row: &[f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { exp_sum_avx512(row, max) };
    }
    exp_sum_plain(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sum_avx512(row: &[f32], max: f32) -> f32 {
    exp_sum_plain(row, max)
}

/// Sixteen partial sums, so that the loop vectorises.
#[inline(always)]
fn exp_sum_plain(row: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += fast_exp(x - max);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| fast_exp(x - max)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `sum[j] += exp(row[j] - max[j])`.
fn exp_sum_columns(row: &[f32], max: &[f32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { exp_sum_columns_avx512(row, max, sum) };
    }
    exp_sum_columns_plain(row, max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sum_columns_avx512(row: &[f32], max: &[f32], sum: &mut [f32]) {
    exp_sum_columns_plain(row, max, sum)
}

#[inline(always)]
fn exp_sum_columns_plain(row: &[f32], max: &[f32], sum: &mut [f32]) {
    for ((s, &x), &mx) in sum.iter_mut().zip(row).zip(max) {
        *s += fast_exp(x - mx);
    }
}

/// Best entries of the dual-softmax scores of `sim` ([m, n], row-major) with matchability
/// terms `z0` (m) and `z1` (n). Each score is formed as candle's composition forms it,
/// `((x - max_row) - lse_row) + ((x - max_col) - lse_col) + z0 + z1`.
pub fn dual_softmax_best(sim: &[f32], m: usize, n: usize, z0: &[f32], z1: &[f32]) -> Best {
    assert!(
        sim.len() == m * n && z0.len() == m && z1.len() == n,
        "dual_softmax_best: {} similarities, {} and {} matchabilities for {m} × {n}",
        sim.len(),
        z0.len(),
        z1.len()
    );
    if m == 0 || n == 0 {
        return Best {
            row_best: vec![0; m],
            row_max: vec![f32::NEG_INFINITY; m],
            col_best: vec![0; n],
        };
    }
    let rows: Vec<(f32, f32)> = sim.par_chunks(n).map(lse_parts).collect();
    // Column maxima and log-sum-exps, a band of columns per task.
    let cols: Vec<(f32, f32)> = (0..n)
        .into_par_iter()
        .step_by(COLS_PER_TASK)
        .flat_map_iter(|c0| {
            let w = COLS_PER_TASK.min(n - c0);
            let mut max = vec![f32::NEG_INFINITY; w];
            for row in sim.chunks_exact(n) {
                for (mx, &x) in max.iter_mut().zip(&row[c0..c0 + w]) {
                    *mx = mx.max(x);
                }
            }
            let mut sum = vec![0f32; w];
            for row in sim.chunks_exact(n) {
                exp_sum_columns(&row[c0..c0 + w], &max, &mut sum);
            }
            max.into_iter().zip(sum).map(|(mx, s)| (mx, s.ln()))
        })
        .collect();
    let score = |i: usize, j: usize, x: f32| {
        let (rmax, rlse) = rows[i];
        let (cmax, clse) = cols[j];
        ((x - rmax) - rlse) + ((x - cmax) - clse) + z0[i] + z1[j]
    };
    let (row_best, row_max): (Vec<u32>, Vec<f32>) = sim
        .par_chunks(n)
        .with_min_len(ROWS_PER_TASK)
        .enumerate()
        .map(|(i, row)| {
            let mut best = (0u32, f32::NEG_INFINITY);
            for (j, &x) in row.iter().enumerate() {
                let s = score(i, j, x);
                if s > best.1 {
                    best = (j as u32, s);
                }
            }
            best
        })
        .unzip();
    let col_best: Vec<u32> = (0..n)
        .into_par_iter()
        .step_by(COLS_PER_TASK)
        .flat_map_iter(|c0| {
            let w = COLS_PER_TASK.min(n - c0);
            let mut best = vec![(0u32, f32::NEG_INFINITY); w];
            for (i, row) in sim.chunks_exact(n).enumerate() {
                for (k, (b, &x)) in best.iter_mut().zip(&row[c0..c0 + w]).enumerate() {
                    let s = score(i, c0 + k, x);
                    if s > b.1 {
                        *b = (i as u32, s);
                    }
                }
            }
            best.into_iter().map(|(i, _)| i)
        })
        .collect();
    Best {
        row_best,
        row_max,
        col_best,
    }
}

/// [`dual_softmax_best`] through candle's composed log-softmax, argmax and max.
pub fn dual_softmax_best_reference(
    sim: &[f32],
    m: usize,
    n: usize,
    z0: &[f32],
    z1: &[f32],
) -> Result<Best> {
    let cpu = &Device::Cpu;
    let sim = Tensor::from_slice(sim, (m, n), cpu)?;
    let scores = (candle_nn::ops::log_softmax(&sim, 1)? + candle_nn::ops::log_softmax(&sim, 0)?)?
        .broadcast_add(&Tensor::from_slice(z0, (m, 1), cpu)?)?
        .broadcast_add(&Tensor::from_slice(z1, (1, n), cpu)?)?;
    Ok(Best {
        row_best: scores.argmax(1)?.to_vec1()?,
        row_max: scores.max(1)?.to_vec1()?,
        col_best: scores.argmax(0)?.to_vec1()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the composition over shapes around the task sizes (1 × 1 to 300 × 257) with
    /// similarities spread like LightGlue's (tens), a few rows made to dominate: the same
    /// best indices everywhere, row maxima within 1e-5 (exponential and summation order).
    #[test]
    fn equals_composed_log_softmax() {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (m, n) in [(1usize, 1usize), (3, 70), (65, 64), (17, 129), (300, 257)] {
            let mut sim: Vec<f32> = (0..m * n).map(|_| next() * 12.0).collect();
            for i in (0..m).step_by(5) {
                sim[i * n + (i * 7) % n] += 30.0;
            }
            let z0: Vec<f32> = (0..m).map(|_| next() * 3.0 - 3.0).collect();
            let z1: Vec<f32> = (0..n).map(|_| next() * 3.0 - 3.0).collect();
            let got = dual_softmax_best(&sim, m, n, &z0, &z1);
            let want = dual_softmax_best_reference(&sim, m, n, &z0, &z1).unwrap();
            assert_eq!(got.row_best, want.row_best, "{m}×{n}");
            assert_eq!(got.col_best, want.col_best, "{m}×{n}");
            for (a, b) in got.row_max.iter().zip(&want.row_max) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{m}×{n}: {a} vs {b}"
                );
            }
        }
    }
}
