//! Operations PyTorch has and candle lacks, each with a slow loop-by-loop reference.

pub mod attention;
pub mod deform_conv;
pub mod fused;
pub mod grid_sample;

pub use attention::{attention, attention_reference, cross_attention};
pub use deform_conv::{deform_conv2d, deform_conv2d_reference};
pub use grid_sample::{grid_sample, grid_sample_reference, grid_taps, BilinearTaps};
