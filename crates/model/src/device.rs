//! Choosing where the models run: `cpu`, `cuda`, `cuda:N`, or `auto` (the first CUDA device
//! when this build has CUDA support and a GPU answers, else the CPU).

use candle_core::{Device, DeviceLocation};

use crate::{Error, Result};

/// Whether this build was compiled with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Parses a device name (case-insensitive) and opens the device.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if CUDA_BUILT {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| bad_name(&name))?,
                None => return Err(bad_name(&name)),
            };
            if !CUDA_BUILT {
                return Err(Error::Config(format!(
                    "device {name}: this build has no CUDA support (rebuild with `--features cuda`)"
                )));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| Error::Config(format!("device {name} is not available: {e}")))
        }
    }
}

fn bad_name(name: &str) -> Error {
    Error::Config(format!(
        "unknown device {name:?} (expected cpu, cuda, cuda:N or auto)"
    ))
}

/// The device's name as [`parse_device`] reads it: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_explain() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        assert_eq!(device_name(&parse_device("cpu").unwrap()), "cpu");
        for bad in ["gpu", "cuda:x", "cuda0", "cuda:", ""] {
            let err = parse_device(bad).unwrap_err().to_string();
            assert!(err.contains("unknown device"), "{bad}: {err}");
        }
        if !CUDA_BUILT {
            assert!(parse_device("auto").unwrap().is_cpu());
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("no CUDA support"), "{err}");
        }
    }
}
