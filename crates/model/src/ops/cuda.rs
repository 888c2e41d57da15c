//! Launchers for our CUDA kernels (`kernels/ops.cu`, compiled to PTX by build.rs). Each is
//! the `cuda_fwd` of a custom op whose `cpu_fwd` is its twin; tests compare the two.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

/// PTX of `kernels/ops.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
/// Name under which the device caches the loaded module.
const MODULE: &str = "wbia_lightglue_ops";

fn launch_config(elements: usize, what: &str) -> Result<LaunchConfig> {
    match u32::try_from(elements) {
        Ok(n) => Ok(LaunchConfig::for_num_elems(n)),
        Err(_) => bail!("{what}: {elements} elements exceed one launch"),
    }
}

fn dim_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).or_else(|_| bail!("{what}: dimension {v} too large"))
}

/// `out[r] = Σ_k weights[4r+k] · table[indices[4r+k]]` over the rows of a contiguous
/// [R, C] f32 table; see `grid_sample::WeightedRows`.
pub(crate) fn weighted_rows(
    table: &CudaStorage,
    layout: &Layout,
    indices: &[u32],
    weights: &[f32],
) -> Result<(CudaStorage, Shape)> {
    let (r, c) = layout.shape().dims2()?;
    let (start, end) = match layout.contiguous_offsets() {
        Some(o) => o,
        None => bail!("weighted-rows: table must be contiguous"),
    };
    if indices.len() != weights.len() || !indices.len().is_multiple_of(4) {
        bail!(
            "weighted-rows: {} indices for {} weights",
            indices.len(),
            weights.len()
        );
    }
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= r) {
        bail!("weighted-rows: row {bad} outside a table of {r}");
    }
    let rows = indices.len() / 4;
    let dev = table.device().clone();
    let src = table.as_cuda_slice::<f32>()?.slice(start..end);
    let idx = dev.clone_htod(indices)?;
    let wts = dev.clone_htod(weights)?;
    let n = rows * c;
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<f32>(n)? };
    if n > 0 {
        let cfg = launch_config(n, "weighted-rows")?;
        let (rows_u, c_u) = (
            dim_u32(rows, "weighted-rows")?,
            dim_u32(c, "weighted-rows")?,
        );
        let func = dev.get_or_load_custom_func("weighted_rows_f32", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&idx);
        b.arg(&wts);
        b.arg(&out);
        b.arg(&rows_u);
        b.arg(&c_u);
        // SAFETY: argument types and count match the kernel's signature; bounds checked above.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, c)),
    ))
}

/// Deformable im2col of a contiguous [C, H, W] input with [2K, H, W] offsets into
/// [C·K, H·W] columns; see `deform_conv::DeformIm2col`.
pub(crate) fn deform_im2col(
    input: &CudaStorage,
    input_layout: &Layout,
    offset: &CudaStorage,
    offset_layout: &Layout,
    ksize: usize,
    padding: usize,
) -> Result<(CudaStorage, Shape)> {
    let (c, h, w) = input_layout.shape().dims3()?;
    let k = ksize * ksize;
    if offset_layout.shape().dims() != [2 * k, h, w] {
        bail!(
            "deform-im2col: offsets {:?} for input {:?}",
            offset_layout.shape(),
            input_layout.shape()
        );
    }
    let (Some((i0, i1)), Some((o0, o1))) = (
        input_layout.contiguous_offsets(),
        offset_layout.contiguous_offsets(),
    ) else {
        bail!("deform-im2col: inputs must be contiguous");
    };
    let dev = input.device().clone();
    let src = input.as_cuda_slice::<f32>()?.slice(i0..i1);
    let off = offset.as_cuda_slice::<f32>()?.slice(o0..o1);
    let n = c * k * h * w;
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<f32>(n)? };
    if n > 0 {
        let cfg = launch_config(n, "deform-im2col")?;
        let dims = [c, h, w, ksize, padding]
            .map(|v| dim_u32(v, "deform-im2col"))
            .into_iter()
            .collect::<Result<Vec<u32>>>()?;
        let func = dev.get_or_load_custom_func("deform_im2col_f32", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&off);
        b.arg(&out);
        for d in &dims {
            b.arg(d);
        }
        // SAFETY: argument types and count match the kernel's signature; shapes checked above.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((c * k, h * w)),
    ))
}
