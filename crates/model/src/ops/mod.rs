//! Operations PyTorch has and candle lacks, each with a slow loop-by-loop reference.

pub mod assignment;
pub mod attention;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod deform_conv;
pub mod fused;
pub mod grid_sample;
pub mod matmul;
pub mod simd;

pub use attention::{attention, attention_reference, cross_attention};
pub use conv::{conv2d, conv2d_reference};
pub use deform_conv::{deform_conv2d, deform_conv2d_reference};
pub use grid_sample::{grid_sample, grid_sample_reference, grid_taps, BilinearTaps};

/// Largest absolute difference between two tensors of the same shape (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("comparable tensors")
}
