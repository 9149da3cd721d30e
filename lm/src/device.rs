//! Device and dtype selection, CUDA registration and thread defaults.

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// Registers CUDA and sets threads; see `crate::torch_env::init`.
pub fn init_torch() {
    crate::torch_env::init();
}

pub fn parse_device(s: &str) -> Result<Device> {
    init_torch();
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: no CUDA device is available to libtorch on this machine");
            }
            Ok(Device::Cuda(0))
        }
        other => match other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) if tch::Cuda::is_available() && (i as i64) < tch::Cuda::device_count() => {
                Ok(Device::Cuda(i))
            }
            Some(i) => bail!("--device cuda:{i}: no such CUDA device"),
            None => bail!("--device `{other}`: expected cpu, cuda or cuda:N"),
        },
    }
}

pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" => Ok(Kind::Half),
        other => bail!("--dtype `{other}`: expected f32, bf16 or f16"),
    }
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "unknown",
    }
}
