//! libtorch process setup, shared by every crate that runs tensors (the tools crate runs SASRec
//! through it too).

use std::sync::Once;

static INIT: Once = Once::new();

/// Registers libtorch's CUDA backend and sets the thread default. Idempotent.
///
/// The linker drops `libtorch_cuda.so` because nothing references it directly (tch issue
/// #980), so CUDA would never be registered; loading it by hand fixes that. A null handle
/// simply means this libtorch has no CUDA: we run on CPU.
pub fn init() {
    INIT.call_once(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is intentionally leaked
        // so the library stays loaded for the life of the process.
        unsafe {
            libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
        tch::set_num_threads(threads());
        tch::set_num_interop_threads(1);
    });
}

/// libtorch's intra-op threads: RECTHINKER_THREADS, else one per available core (as PyTorch
/// does). Measured on 2 cores: an SFT step 1.85x faster with 2 threads than with 1 (same
/// losses), batch-16 decoding ~1.3x. Several processes (or parallel tests) sharing few cores
/// oversubscribe them: set RECTHINKER_THREADS (the test suite sets 1 in .cargo/config.toml).
/// Under torchrun, which starts LOCAL_WORLD_SIZE processes per machine, the default is
/// that share of the cores.
pub fn threads() -> i32 {
    let positive = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&n| n > 0)
    };
    positive("RECTHINKER_THREADS").unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
        (cores / positive("LOCAL_WORLD_SIZE").unwrap_or(1)).max(1)
    })
}
