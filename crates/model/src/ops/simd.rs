//! 16-lane AVX-512 building blocks shared by the fused CPU kernels: `exp` and `erf` in f32,
//! each with a scalar twin that its test compares against.

/// `erf(x)` by Abramowitz and Stegun 7.1.26, the approximation PyTorch's vectorised CPU GELU
/// uses (absolute error 1.5e-7, under 5e-7 evaluated in f32); the twin of [`avx512::erf`].
pub fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = ERF_A.iter().rev().fold(0.0, |acc, &c| acc * t + c) * t;
    let y = 1.0 - poly * super::attention::fast_exp(-a * a);
    y.copysign(x)
}

const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152_1,
    1.061_405_4,
];

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Whether the kernels may use AVX-512 F ([`crate::cpu::avx512f`]).
    pub fn available() -> bool {
        crate::cpu::avx512f()
    }

    /// The first `n` of 16 lanes.
    #[inline]
    pub fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `exp(x)` with the reduction and polynomial of `attention::fast_exp`; `vscalefps`
    /// applies the power of two.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(88.0)),
            _mm512_set1_ps(-87.0),
        );
        // n = round(x / ln 2), r = x - n ln 2 in two parts (Cody–Waite).
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
    }

    /// [`super::erf_approx`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn erf(x: __m512) -> __m512 {
        let a = _mm512_abs_ps(x);
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(super::ERF_P), a, one));
        let mut poly = _mm512_set1_ps(super::ERF_A[4]);
        for &c in super::ERF_A[..4].iter().rev() {
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
        }
        poly = _mm512_mul_ps(poly, t);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
        let y = _mm512_fnmadd_ps(poly, e, one);
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        _mm512_mask_sub_ps(y, negative, _mm512_setzero_ps(), y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The approximation, scalar and vector, against libm's erf over [-6, 6] in steps of
    /// 1e-3. The vector kernel is called directly, so it runs wherever the CPU has AVX-512 F,
    /// also under `WBIA_LIGHTGLUE_CPU=portable`; on a CPU without it the test fails unless
    /// told to skip ([`crate::cpu::skip_or_fail`]).
    #[test]
    fn erf_is_within_its_bound_and_vector_equals_scalar() {
        let xs: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 1e-3).collect();
        for &x in &xs {
            let err = (erf_approx(x) - libm::erff(x)).abs();
            assert!(
                err < 5e-7,
                "erf({x}): {} vs {}",
                erf_approx(x),
                libm::erff(x)
            );
        }
        if !crate::cpu::detected::avx512f() {
            crate::cpu::skip_or_fail("the 16-lane erf needs AVX-512 F, which this CPU lacks");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            for chunk in xs.chunks(16) {
                let mut out = [0f32; 16];
                // SAFETY: AVX-512 F is present; 16 lanes read from `chunk` under its mask
                // and written to `out`.
                unsafe {
                    let m = avx512::mask(chunk.len());
                    let v = avx512::erf(_mm512_maskz_loadu_ps(m, chunk.as_ptr()));
                    _mm512_storeu_ps(out.as_mut_ptr(), v);
                }
                for (&x, &got) in chunk.iter().zip(&out) {
                    // Fused multiply-adds round differently from the scalar twin: the same
                    // bound against the exact value holds for both.
                    let want = libm::erff(x);
                    assert!((got - want).abs() < 5e-7, "erf({x}): {got} vs {want}");
                }
            }
        }
    }
}
