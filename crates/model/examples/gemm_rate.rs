//! Multiply-adds per second of the packed CPU kernels on one thread, f32 and bf16, for the
//! shapes LightGlue's layers multiply (rows × inner × columns): a linear layer over a whole
//! pair and over one task's rows, a feed-forward product, and one attention block's
//! similarities and weighted values. Best of 5 runs of ~2·10⁹ multiply-adds each; the left
//! operand's packing is included, as in the layers. BENCHMARKS.md quotes it.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p wbia-lightglue-model --example gemm_rate
//! ```

use std::time::Instant;

use wbia_lightglue_model::ops::matmul::{bf16_available, Kernel, Mat, PackedRhs};

const SHAPES: [(usize, usize, usize); 6] = [
    (1200, 256, 768),
    (132, 256, 768),
    (132, 512, 512),
    (48, 64, 512),
    (48, 512, 64),
    (512, 64, 512),
];

fn main() {
    let mut kernels = vec![Kernel::F32];
    if bf16_available() {
        kernels.push(Kernel::Bf16);
    }
    for (m, k, n) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| (i * 7 % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i * 5 % 11) as f32 * 0.01).collect();
        let mut c = vec![0f32; m * n];
        for &kernel in &kernels {
            let packed = PackedRhs::pack(kernel, Mat::rows(&b, k, n));
            let reps = (2e9 / (m * k * n) as f64) as usize + 1;
            let best = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..reps {
                        packed.multiply(&mut c, n, Mat::rows(&a, m, k), 1.0, None);
                    }
                    (m * k * n * reps) as f64 / start.elapsed().as_secs_f64() / 1e9
                })
                .fold(0.0, f64::max);
            println!("{m}×{k}×{n} {kernel:?}: {best:.1} G multiply-adds/s");
        }
    }
}
