//! Reading a run's TensorBoard event files back with TensorBoard's own readers.

use std::path::Path;
use std::process::Command;

/// Asserts that `run_dir/tb` holds exactly the numeric values of `run_dir/metrics.jsonl`
/// (as float32, per step and tag, no step twice) as tbparse and TensorBoard's
/// EventAccumulator read them (testkit/tb_check.py); returns the number of scalars.
pub fn assert_tensorboard_matches_metrics(run_dir: &Path) -> usize {
    let python = crate::repo_root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(crate::repo_root().join("testkit/tb_check.py"))
        .arg(run_dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "tb_check.py {}:\n{}",
        run_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let n = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n > 0, "no scalars in {}", run_dir.display());
    n
}
