//! With the `cuda` feature, compiles `kernels/*.cu` to PTX with nvcc; the PTX is embedded in
//! the library and loaded by the CUDA device on first use. Without it, does nothing.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["ops"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // Our kernels use nothing newer than sm_75 (the oldest architecture CUDA 13 supports);
    // PTX for it is compiled just in time for any newer GPU.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".to_string());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "--std=c++17", "-lineinfo"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("could not run `{nvcc}` ({e}); the cuda feature needs the CUDA toolkit on PATH (see README, GPU)")
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
