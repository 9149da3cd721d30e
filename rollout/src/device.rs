//! Device and dtype selection, CUDA registration and thread defaults.

use anyhow::{bail, Result};
use std::sync::Once;
use tch::{Device, Kind};

static INIT: Once = Once::new();

/// Registers libtorch's CUDA backend and sets the thread default. Call once at startup.
///
/// The linker drops `libtorch_cuda.so` because nothing references it directly (tch issue
/// #980), so CUDA would never be registered; loading it by hand fixes that. A null handle
/// simply means this libtorch has no CUDA: we run on CPU.
pub fn init_torch() {
    INIT.call_once(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is intentionally leaked
        // so the library stays loaded for the life of the process.
        unsafe {
            libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
        // On small CPUs, several OpenMP threads made small ops 10-100x slower after a large
        // matmul; one thread is the measured-safe default. RECTHINKER_THREADS overrides it.
        let threads = std::env::var("RECTHINKER_THREADS")
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or(1);
        tch::set_num_threads(threads);
        tch::set_num_interop_threads(1);
    });
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
