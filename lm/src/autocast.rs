//! Autocast for the linear layers, scoped and thread-local like PyTorch's
//! `torch.autocast("cpu", dtype=torch.bfloat16)`: inside `autocast::with(Some(kind), ..)`
//! every `Linear` of a model whose weights are another kind multiplies in `kind` (inputs and
//! weights cast, the product cast back), so its activations, norms, softmax, the LM head, the
//! KV cache, the master weights, the LoRA adapters and the optimizer state all stay in the
//! model's own kind (f32). Frozen weights (the base under LoRA) are cast once and kept;
//! trainable ones are cast at each call, so their gradients reach the f32 master weights.
//!
//! On CPUs with AMX-BF16 / AVX512-BF16 a bf16 matrix product is several times an f32 one
//! (docs/benchmarks.md); the precision cost is measured by `lm/tests/autocast.rs`.

use std::cell::Cell;
use tch::Kind;

thread_local! {
    static KIND: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// The kind linear layers compute in on this thread, if autocast is on.
pub fn current() -> Option<Kind> {
    KIND.with(|k| k.get())
}

/// Runs `f` with linear layers computing in `kind` (None: off), restoring the previous
/// setting afterwards (also when `f` panics).
pub fn with<T>(kind: Option<Kind>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Kind>);
    impl Drop for Restore {
        fn drop(&mut self) {
            KIND.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KIND.with(|k| k.replace(kind)));
    f()
}

/// Parses a config value: `off`/`f32`/`none` -> None, `bf16`/`bfloat16` -> BFloat16,
/// `f16`/`float16` -> Half.
pub fn parse(spec: &str) -> anyhow::Result<Option<Kind>> {
    match spec {
        "off" | "none" | "f32" | "float32" => Ok(None),
        "bf16" | "bfloat16" => Ok(Some(Kind::BFloat16)),
        "f16" | "float16" => Ok(Some(Kind::Half)),
        other => anyhow::bail!("autocast `{other}`: expected off, bf16 or f16"),
    }
}
