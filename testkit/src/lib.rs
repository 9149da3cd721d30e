//! Shared helpers for the integration tests: the repo's venv Python, reference models.

pub mod fuzz;
pub mod synthetic;
pub mod tensorboard;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn base_model() -> PathBuf {
    let dir = repo_root().join("checkpoints/base/SmolLM2-135M-Instruct");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} missing: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// Runs testkit/hf_ref.py with the venv's Python; panics with its stderr on failure.
pub fn hf_ref(args: &[&str]) {
    let python = repo_root().join(".venv/bin/python");
    let script = repo_root().join("testkit/hf_ref.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "hf_ref.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh scratch directory under target/test-scratch, unique per call (tests run in
/// parallel). Dropping it removes it unless the test is panicking: a failure keeps its files to
/// look at, a green run leaves nothing behind (checkpoints here are up to 230 MB each).
pub struct Scratch(PathBuf);

impl Scratch {
    /// Keeps the directory past the guard, for data shared by several tests.
    pub fn keep(self) -> PathBuf {
        let dir = self.0.clone();
        std::mem::forget(self);
        dir
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn scratch(name: &str) -> Scratch {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = repo_root()
        .join("target/test-scratch")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating scratch dir");
    Scratch(dir)
}

/// `recthinker data prepare` of MovieLens-100k into `out` with one-epoch CF models: the tests
/// need the real files and tools, not good models. `bin` is the calling test crate's
/// `env!("CARGO_BIN_EXE_recthinker")` (only trainer tests have the binary).
pub fn prepare_ml100k(bin: &str, out: &Path) {
    let o = Command::new(bin)
        .args(["data", "prepare", "--out"])
        .arg(out)
        .args(["--sasrec-epochs", "1", "--bpr-epochs", "1"])
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(
        o.status.success(),
        "data prepare: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tiny random HF model of `family`, made once per checkout by transformers (seeded) and
/// shared by all tests: `qwen2` (q/k/v bias, untied head, GQA), `qwen2.5` (the same weights
/// with Qwen2.5's real chat template), `qwen3` (q/k norms, head_dim 24 != hidden/heads, tied,
/// GQA, Qwen3's real template), `llama` (tied, GQA), `llama3` (untied, llama3 RoPE scaling with
/// original_max_position_embeddings 64). All use SmolLM2's tokenizer.
pub fn tiny_model(family: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/test-models")
        .join(format!("tiny-{family}-v1"));
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    let tmp = repo_root().join("target/test-models").join(format!(
        ".tiny-{family}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    hf_ref(&[
        "tiny",
        family,
        tmp.to_str().unwrap(),
        base_model().to_str().unwrap(),
    ]);
    // Another test may have finished first; either copy is identical (seeded).
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    dir
}

/// A real chat template stored under `testkit/templates/{name}.jinja` (`qwen2.5`, `qwen3`),
/// byte-for-byte the `chat_template` string of the model's `tokenizer_config.json`.
pub fn template(name: &str) -> String {
    let path = repo_root().join(format!("testkit/templates/{name}.jinja"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
