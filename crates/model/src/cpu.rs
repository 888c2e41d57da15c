//! Which instruction sets the model's own CPU kernels may use. Every dispatch in [`crate::ops`]
//! asks this module, never the CPU directly, so that one environment variable,
//! `WBIA_LIGHTGLUE_CPU` ([`ENV`]), can force the paths a CPU without AVX-512 takes:
//!
//! - `native` (the default, also when unset or empty): whatever the CPU has. On AVX-512 CPUs
//!   that is the packed f32 kernel, the AVX-512 BF16 kernel for `--precision bf16`, the fused
//!   attention and the 16-lane `exp`/`erf`, and on CPUs with AMX (Intel since Sapphire
//!   Rapids) bf16 products on its tiles; elsewhere the same as `portable`.
//! - `avx512`: `native` without AMX tiles (bf16 products on AVX-512 BF16), to compare the
//!   two on one CPU.
//! - `portable`: no AVX-512 (F, BW, BF16) in this crate's kernels, as on most desktop CPUs
//!   and Xeons before Skylake-SP: products go through the `gemm` crate, convolutions through
//!   candle's, single pairs through candle's layers, GELU through libm's `erff`, bf16 falls
//!   back to f32; the AVX2 + FMA softmax loops stay where the CPU has them.
//! - `scalar`: `portable` without the AVX2 + FMA loops either (the x86-64 baseline).
//!
//! What this switch does not reach: the `gemm` crate and candle detect the CPU themselves.
//! `gemm` (built with its `x86-v4` feature, see the workspace manifest) runs its AVX-512
//! kernels on an AVX-512 CPU whatever this says, inside candle's matrix products too; its
//! kernels for other CPUs differ only in blocking, i.e. in summation order. BENCHMARKS.md
//! ("CPUs without AVX-512") records the parity suites run under an emulated CPU without
//! AVX-512, where `gemm` takes its FMA kernels as well.
//!
//! Any other value is refused: the first kernel dispatch panics naming it.

use std::sync::OnceLock;

/// The environment variable that limits the instruction sets.
pub const ENV: &str = "WBIA_LIGHTGLUE_CPU";

/// The environment variable that lets a test whose subject this machine cannot run pass
/// without running it (printing why). CI never sets it.
pub const ALLOW_SKIP_ENV: &str = "WBIA_LIGHTGLUE_ALLOW_SKIP";

/// How far the kernels may go, from the baseline up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Paths {
    /// x86-64's baseline (SSE2) in this crate's loops.
    Scalar,
    /// Up to AVX2 + FMA: no AVX-512.
    Portable,
    /// Up to AVX-512 (F, BW, BF16): no AMX tiles.
    Avx512,
    /// Everything the CPU has.
    Native,
}

impl Paths {
    /// The variable's values, case-insensitive; empty means `native`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "native" => Some(Self::Native),
            "portable" => Some(Self::Portable),
            "avx512" => Some(Self::Avx512),
            "scalar" => Some(Self::Scalar),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Portable => "portable",
            Self::Avx512 => "avx512",
            Self::Scalar => "scalar",
        }
    }
}

/// The paths allowed by `WBIA_LIGHTGLUE_CPU`, read once.
///
/// # Panics
/// On a value other than `native`, `portable`, `scalar` or empty.
pub fn paths() -> Paths {
    static PATHS: OnceLock<Paths> = OnceLock::new();
    *PATHS.get_or_init(|| match std::env::var(ENV) {
        Err(std::env::VarError::NotPresent) => Paths::Native,
        Ok(value) => Paths::parse(&value).unwrap_or_else(|| {
            panic!("{ENV}={value:?}: expected native, avx512, portable or scalar")
        }),
        Err(e) => panic!("{ENV}: {e}"),
    })
}

/// AVX-512 F: the packed f32 kernel, the fused attention, 16-lane `exp` and `erf`.
pub fn avx512f() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| paths() >= Paths::Avx512 && detected::avx512f())
}

/// AVX-512 F, BW and BF16: the bf16 kernel (Intel since Cooper Lake / Sapphire Rapids, AMD
/// since Zen 4).
pub fn avx512_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| paths() >= Paths::Avx512 && detected::avx512_bf16())
}

/// AMX tiles with bf16 products (Intel since Sapphire Rapids) besides AVX-512 BF16, and the
/// kernel's permission to use them: the bf16 products' fastest path.
pub fn amx_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| paths() >= Paths::Native && avx512_bf16() && detected::amx_bf16())
}

/// AVX2 and FMA: the softmax loops compiled for them.
pub fn avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| paths() >= Paths::Portable && detected::avx2_fma())
}

/// What the CPU itself has, whatever [`ENV`] says: for tests that call a kernel directly (a
/// kernel's test still runs it under `portable`), never for dispatch.
pub mod detected {
    pub fn avx512f() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub fn avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// AMX-TILE and AMX-BF16 (CPUID leaf 7), and Linux's permission for this process to use
    /// the tiles' 8 KiB of state, which it grants on request (`arch_prctl`,
    /// `ARCH_REQ_XCOMP_PERM`; Linux 5.16 or newer). Asked once; later calls return the answer.
    pub fn amx_bf16() -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *GRANTED.get_or_init(|| {
                let leaf = std::arch::x86_64::__cpuid_count(7, 0);
                let (tile, bf16) = ((leaf.edx >> 24) & 1 == 1, (leaf.edx >> 22) & 1 == 1);
                tile && bf16 && request_tile_data()
            })
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: zero when granted.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn request_tile_data() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a system call that only changes which register state this process may
        // use; it reads and writes no memory. `syscall` clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    pub fn avx2_fma() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// For a test whose subject (`what`) this machine cannot run: panics, unless
/// `WBIA_LIGHTGLUE_ALLOW_SKIP=1` says to skip, in which case it prints why (uncaptured, so
/// it shows beside the test's `ok`) and returns (the test then returns too). A test must not pass silently for want of an instruction.
pub fn skip_or_fail(what: &str) {
    if std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v.trim() == "1") {
        // Straight to the process's stderr: the test harness would swallow `eprintln!` of a
        // passing test, and a skip must show.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED ({ALLOW_SKIP_ENV}=1): {what}");
    } else {
        panic!(
            "{what}; set {ALLOW_SKIP_ENV}=1 to skip this deliberately \
             ({ENV}={} on this machine)",
            paths().name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse() {
        assert_eq!(Paths::parse(""), Some(Paths::Native));
        assert_eq!(Paths::parse(" Native "), Some(Paths::Native));
        assert_eq!(Paths::parse("PORTABLE"), Some(Paths::Portable));
        assert_eq!(Paths::parse("scalar"), Some(Paths::Scalar));
        assert_eq!(Paths::parse("avx2"), None);
        assert!(Paths::Scalar < Paths::Portable && Paths::Portable < Paths::Native);
    }

    /// The switch only ever takes instructions away.
    #[test]
    fn allowed_is_within_detected() {
        assert!(!avx512f() || detected::avx512f());
        assert!(!avx512_bf16() || detected::avx512_bf16());
        assert!(!avx2_fma() || detected::avx2_fma());
        if paths() < Paths::Native {
            assert!(!avx512f() && !avx512_bf16());
        }
        if paths() < Paths::Portable {
            assert!(!avx2_fma());
        }
        if paths() == Paths::Native {
            assert_eq!(avx512f(), detected::avx512f());
            assert_eq!(avx512_bf16(), detected::avx512_bf16());
            assert_eq!(avx2_fma(), detected::avx2_fma());
        }
    }
}
