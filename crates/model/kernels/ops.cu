// CUDA twins of the model crate's CPU kernels (src/ops/). Compiled to PTX by build.rs when the
// `cuda` feature is on. Every product and sum uses the explicitly rounded intrinsics
// (__fmul_rn, __fadd_rn) in the CPU kernels' order, so nvcc cannot contract them into FMAs and
// the results equal the CPU's bit for bit.
#include <stdint.h>

// out[r, :] = sum_k weights[4r + k] * table[indices[4r + k], :], k = 0..3 in order.
// One thread per output element; `rows` rows of `c` channels.
extern "C" __global__ void weighted_rows_f32(
    const float* __restrict__ table,
    const uint32_t* __restrict__ indices,
    const float* __restrict__ weights,
    float* __restrict__ out,
    const uint32_t rows,
    const uint32_t c
) {
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (uint64_t)rows * c) return;
    const uint64_t r = i / c;
    const uint64_t ch = i % c;
    float acc = __fmul_rn(table[(uint64_t)indices[4 * r] * c + ch], weights[4 * r]);
    for (int k = 1; k < 4; ++k) {
        acc = __fadd_rn(acc, __fmul_rn(table[(uint64_t)indices[4 * r + k] * c + ch], weights[4 * r + k]));
    }
    out[i] = acc;
}

// Deformable im2col (torchvision's `deformable_im2col`, no mask, stride 1, dilation 1):
// columns[(ch * K + k) * HW + p] = bilinear sample of channel `ch` at tap k = i * ks + j of
// output pixel p = oy * W + ox, displaced by (offset[2k][p], offset[2k + 1][p]) = (dy, dx).
// Out-of-map samples are zero; corners outside the map contribute nothing.
extern "C" __global__ void deform_im2col_f32(
    const float* __restrict__ input,   // [C, H, W]
    const float* __restrict__ offset,  // [2K, H, W]
    float* __restrict__ columns,       // [C * K, H * W]
    const uint32_t c,
    const uint32_t h,
    const uint32_t w,
    const uint32_t ks,
    const uint32_t pad
) {
    const uint64_t hw = (uint64_t)h * w;
    const uint64_t kk = (uint64_t)ks * ks;
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (uint64_t)c * kk * hw) return;
    const uint64_t p = i % hw;
    const uint64_t k = (i / hw) % kk;
    const uint64_t ch = i / (hw * kk);
    const int64_t oy = p / w, ox = p % w;
    const int64_t ti = k / ks, tj = k % ks;
    const float y = __fadd_rn((float)(oy - (int64_t)pad + ti), offset[(2 * k) * hw + p]);
    const float x = __fadd_rn((float)(ox - (int64_t)pad + tj), offset[(2 * k + 1) * hw + p]);
    float acc = 0.0f;
    if (!(y <= -1.0f || y >= (float)h || x <= -1.0f || x >= (float)w || isnan(y) || isnan(x))) {
        const int64_t y0 = (int64_t)floorf(y), x0 = (int64_t)floorf(x);
        const float ly = __fadd_rn(y, -(float)y0), lx = __fadd_rn(x, -(float)x0);
        const float hy = __fadd_rn(1.0f, -ly), hx = __fadd_rn(1.0f, -lx);
        const int64_t cy[4] = {y0, y0, y0 + 1, y0 + 1};
        const int64_t cx[4] = {x0, x0 + 1, x0, x0 + 1};
        const float cw[4] = {__fmul_rn(hy, hx), __fmul_rn(hy, lx), __fmul_rn(ly, hx), __fmul_rn(ly, lx)};
        const float* plane = input + ch * hw;
        for (int q = 0; q < 4; ++q) {
            const bool inside = cy[q] >= 0 && cx[q] >= 0 && cy[q] < (int64_t)h && cx[q] < (int64_t)w;
            // An outside corner reads pixel 0 with weight 0, exactly like the CPU path.
            const float v = inside ? plane[cy[q] * w + cx[q]] : plane[0];
            const float wt = inside ? cw[q] : 0.0f;
            acc = q == 0 ? __fmul_rn(v, wt) : __fadd_rn(acc, __fmul_rn(v, wt));
        }
    }
    columns[i] = acc;
}
