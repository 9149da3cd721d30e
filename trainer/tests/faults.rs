//! Faults during training (issue 14 items 3 and 4), on tiny random models and a small
//! synthetic store so each run takes seconds:
//!
//! - checkpoints carry a manifest (sizes and SHA-256); a damaged file is refused naming it,
//!   `--resume` falls back to the newest checkpoint that verifies, `export` refuses;
//! - a checkpoint write that fails (RLIMIT_FSIZE, as a full disk) stops the run naming the
//!   checkpoint and leaves the previous one intact;
//! - a GRPO run killed (SIGKILL) during rollouts, gradient passes and checkpoint writes, then
//!   resumed each time, ends with the metrics and weights of an uninterrupted run;
//! - a NaN/inf loss or gradient stops the run naming the step and the tensor, or (`[optim]
//!   nonfinite = "skip"`) skips the step, counted, weights unchanged.
//!
//! Faults are injected through two test-only variables (trainer/src/train_common.rs):
//! `RECTHINKER_DEBUG_NONFINITE` and `RECTHINKER_DEBUG_PHASES`.

use datasets::{prepare, PrepareConfig};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Tensor;
use testkit::{scratch, tiny_model};
use tools::models::TrainOptions;
use tools::World;
use trainer::checkpoint;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(cmd: &str, cfg: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args([cmd, "--config", s(cfg)]).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running recthinker")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    e
}

fn failed(o: Output) -> String {
    let e = stderr(&o);
    assert!(!o.status.success(), "expected a failure:\n{e}");
    e
}

/// The `error: ...` line of a failed run's stderr.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
}

fn ck(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(format!("checkpoints/step-{step:06}"))
}

/// Tensors of a checkpoint file, by name.
fn tensors(file: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(file).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Whether two checkpoint files hold bit-identical tensors of the same names.
fn same_tensors(a: &Path, b: &Path) -> bool {
    let (ta, tb) = (tensors(a), tensors(b));
    ta.len() == tb.len()
        && ta
            .iter()
            .zip(&tb)
            .all(|((na, a), (nb, b))| na == nb && a.equal(b))
}

/// Metric lines without their timings.
fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| !k.ends_with("seconds"));
            v
        })
        .collect()
}

fn steps_logged(run_dir: &Path) -> Vec<u64> {
    metrics(run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// SFT runs: a tiny random Llama on six short conversations.

fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let mut lines = Vec::new();
    for i in 0..6 {
        let msgs = serde_json::json!([
            {"role": "system", "content": "You rank movies."},
            {"role": "user", "content": format!("User {i}. Candidates: 1. Heat 2. Fargo 3. Casino")},
            {"role": "assistant", "content": "<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"},
            {"role": "tool", "content": format!("<tool_response>\nFargo (1996), rated {}\n</tool_response>", i % 5 + 1)},
            {"role": "assistant", "content": format!("<answer>{}, 1, 3</answer>", i % 2 + 2)}
        ]);
        lines.push(serde_json::json!({"messages": msgs}).to_string());
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// An SFT config writing into `dir/name` (a checkpoint every step, all kept).
fn sft_config(dir: &Path, name: &str, lora: bool, steps: usize, optim: &str) -> PathBuf {
    let mut text = format!(
        "run_dir = {:?}\nmodel = {:?}\ntrain_file = {:?}\nseed = 3\nsteps = {steps}\nbatch_size = 2\nmicro_batch = 2\nmax_len = 256\nsave_every = 1\nkeep_checkpoints = 0\nreport_to = [\"jsonl\"]\n[optim]\nlr = 0.01\nwarmup_steps = 1\n{optim}\n",
        dir.join(name),
        tiny_model("llama"),
        conversations(dir)
    );
    if lora {
        text.push_str("[lora]\nrank = 4\nalpha = 8.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n");
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// XORs byte `at` of `path` with `x` (non-zero).
fn flip(path: &Path, at: usize, x: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= x;
    std::fs::write(path, b).unwrap();
}

/// The first byte of a safetensors file's tensor data (after its JSON header).
fn data_start(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap();
    8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

#[test]
fn damaged_checkpoint_files_are_refused_naming_the_file() {
    let dir = scratch("faults-manifest");
    let cfg = sft_config(&dir, "r", true, 2, "");
    ok(run("sft", &cfg, &[], &[]));
    let good = ck(&dir.join("r"), 2);
    // The manifest lists every file with its size and SHA-256, and the checkpoint verifies.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("manifest.json")).unwrap()).unwrap();
    let files = m["files"].as_object().unwrap();
    let mut names: Vec<&str> = files.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["optimizer.safetensors", "state.json", "weights.safetensors"]
    );
    for (name, sum) in files {
        let bytes = std::fs::read(good.join(name)).unwrap();
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sum["bytes"].as_u64(), Some(bytes.len() as u64), "{name}");
        assert_eq!(sum["sha256"].as_str(), Some(hex.as_str()), "{name}");
    }
    assert_eq!(
        checkpoint::verify(&good).unwrap(),
        checkpoint::Verified::Checked
    );

    // One damage at a time on a copy: every one is refused, naming the damaged file.
    let bad = dir.join("bad");
    let reset = || {
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        for f in std::fs::read_dir(&good).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, bad.join(f.file_name().unwrap())).unwrap();
        }
    };
    let refused = |damaged: &str, what: &str| {
        let e = format!(
            "{:#}",
            checkpoint::verify(&bad).expect_err(&format!("{what}: accepted"))
        );
        assert!(e.contains(damaged), "{what}: {damaged} not named in: {e}");
        e
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let (mut cases, mut silently_loadable) = (0, 0);
    for name in ["weights.safetensors", "optimizer.safetensors", "state.json"] {
        let len = std::fs::metadata(good.join(name)).unwrap().len() as usize;
        // Flipped bytes anywhere (header and data), 60 per file.
        for _ in 0..60 {
            reset();
            let at = rng.random_range(0..len);
            flip(&bad.join(name), at, rng.random_range(1..=255u8));
            let e = refused(name, &format!("{name} byte {at} flipped"));
            if cases == 0 {
                eprintln!("faults: for example: {e}");
            }
            cases += 1;
        }
        // Truncated, extended, emptied, removed.
        for len_to in [0, len / 2, len - 1, len + 1] {
            reset();
            let mut b = std::fs::read(bad.join(name)).unwrap();
            b.resize(len_to, 0);
            std::fs::write(bad.join(name), b).unwrap();
            refused(name, &format!("{name} cut to {len_to} bytes"));
            cases += 1;
        }
        reset();
        std::fs::remove_file(bad.join(name)).unwrap();
        refused(name, &format!("{name} removed"));
        cases += 1;
    }
    // A flipped byte in the tensor data still reads as a safetensors file: without the
    // manifest it would have loaded silently.
    let w = bad.join("weights.safetensors");
    let start = data_start(&good.join("weights.safetensors"));
    let len = std::fs::metadata(good.join("weights.safetensors"))
        .unwrap()
        .len() as usize;
    for _ in 0..20 {
        reset();
        flip(
            &w,
            rng.random_range(start..len),
            rng.random_range(1..=255u8),
        );
        if Tensor::read_safetensors(&w).is_ok() {
            silently_loadable += 1;
        }
        refused("weights.safetensors", "a weight's byte flipped");
        cases += 1;
    }
    assert_eq!(silently_loadable, 20);
    // The manifest itself, every byte: refused naming it, or naming the file whose entry the
    // flip changed (a digit of a size or hash).
    let mlen = std::fs::metadata(good.join("manifest.json")).unwrap().len() as usize;
    for at in 0..mlen {
        reset();
        flip(&bad.join("manifest.json"), at, rng.random_range(1..=255u8));
        let e = format!(
            "{:#}",
            checkpoint::verify(&bad).expect_err(&format!("manifest byte {at} flipped: accepted"))
        );
        assert!(
            [
                "manifest.json",
                "weights.safetensors",
                "optimizer.safetensors",
                "state.json"
            ]
            .iter()
            .any(|n| e.contains(n)),
            "manifest byte {at}: no file named in {e}"
        );
        cases += 1;
    }
    // A checkpoint from before manifests: accepted as legacy (loaded with a warning).
    reset();
    std::fs::remove_file(bad.join("manifest.json")).unwrap();
    assert_eq!(
        checkpoint::verify(&bad).unwrap(),
        checkpoint::Verified::Legacy
    );
    eprintln!(
        "faults: {cases} damaged checkpoints, each refused naming the file \
         ({silently_loadable} of 20 flipped weight bytes would have loaded without it)"
    );
}

#[test]
fn resume_falls_back_to_the_newest_checkpoint_that_verifies_and_export_refuses() {
    let dir = scratch("faults-fallback");
    let (a, b) = (
        sft_config(&dir, "a", false, 4, ""),
        sft_config(&dir, "b", false, 4, ""),
    );
    ok(run("sft", &a, &[], &[]));
    ok(run("sft", &b, &[], &[]));
    let (ra, rb) = (dir.join("a"), dir.join("b"));
    // Step 4: a flipped byte inside the tensor data; step 3: a truncated optimizer file.
    let w4 = ck(&rb, 4).join("weights.safetensors");
    flip(&w4, data_start(&w4) + 1000, 0x40);
    let o3 = ck(&rb, 3).join("optimizer.safetensors");
    let len = std::fs::metadata(&o3).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&o3)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    // export refuses, naming the file, and writes nothing.
    let out = dir.join("export");
    for target in [ck(&rb, 4), rb.clone()] {
        let e = failed(
            bin()
                .args(["export", "--checkpoint", s(&target), "--out", s(&out)])
                .output()
                .unwrap(),
        );
        assert!(
            e.contains("step-000004/weights.safetensors") && e.contains("SHA-256"),
            "{e}"
        );
        assert!(!out.exists());
    }

    // --resume skips both, saying which and why, and redoes steps 3 and 4 from step 2.
    let e = ok(run("sft", &b, &["--resume"], &[]));
    for want in [
        "skipping checkpoint",
        "step-000004/weights.safetensors: SHA-256",
        "step-000003/optimizer.safetensors",
        "truncated",
        "step-000002, the newest checkpoint that verifies (2 newer ones skipped)",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
    eprintln!("faults: resume said:\n{e}");
    assert_eq!(metrics(&ra), metrics(&rb), "metrics after the fallback");
    for step in [3, 4] {
        for f in ["weights.safetensors", "optimizer.safetensors"] {
            assert!(
                same_tensors(&ck(&ra, step).join(f), &ck(&rb, step).join(f)),
                "step {step} {f} differs"
            );
        }
    }
    ok(bin()
        .args(["export", "--checkpoint", s(&rb), "--out", s(&out)])
        .output()
        .unwrap());

    // A checkpoint without a manifest (written before them) exports with a warning.
    std::fs::remove_file(ck(&rb, 4).join("manifest.json")).unwrap();
    let e = ok(bin()
        .args(["export", "--checkpoint", s(&ck(&rb, 4))])
        .args(["--out", s(&dir.join("export-legacy"))])
        .output()
        .unwrap());
    assert!(
        e.contains("has no manifest.json") && e.contains("unverified"),
        "{e}"
    );

    // Every checkpoint damaged: resume refuses rather than start over.
    for step in 1..=4 {
        flip(&ck(&rb, step).join("state.json"), 3, 0x01);
    }
    let e = failed(run("sft", &b, &["--resume"], &[]));
    assert!(
        e.contains("none of its 4 checkpoints verifies and loads"),
        "{e}"
    );
    assert_eq!(e.matches("skipping checkpoint").count(), 4, "{e}");
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_one_and_stops_naming_it() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("faults-fsize");
    let (a, b) = (
        sft_config(&dir, "a", false, 3, ""),
        sft_config(&dir, "b", false, 3, ""),
    );
    ok(run("sft", &a, &[], &[]));
    ok(run("sft", &b, &["--stop-after", "1"], &[]));
    let rb = dir.join("b");
    let weights = std::fs::metadata(ck(&rb, 1).join("weights.safetensors"))
        .unwrap()
        .len();
    // Files may not grow past 4 MB (the checkpoint's weights are larger): as a full disk.
    let limit: u64 = 4 << 20;
    assert!(weights > limit, "{weights}");
    let mut c = bin();
    c.args(["sft", "--config", s(&b), "--resume"]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let e = failed(c.output().unwrap());
    for want in [
        "step 2: the checkpoint could not be written",
        "step-000001, is intact",
        "writing checkpoint",
        "step-000002",
        "File too large",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
    eprintln!("faults: the failed write said: {}", error_line(&e));
    // The previous checkpoint is intact and current; nothing half-written is left.
    let mut left: Vec<String> = std::fs::read_dir(rb.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["latest", "step-000001"]);
    assert_eq!(
        std::fs::read_to_string(rb.join("checkpoints/latest")).unwrap(),
        "step-000001"
    );
    assert_eq!(
        checkpoint::verify(&ck(&rb, 1)).unwrap(),
        checkpoint::Verified::Checked
    );
    // With space again, the run resumes and ends as the uninterrupted one.
    ok(run("sft", &b, &["--resume"], &[]));
    let ra = dir.join("a");
    assert_eq!(metrics(&ra), metrics(&rb));
    assert!(same_tensors(
        &ck(&ra, 3).join("weights.safetensors"),
        &ck(&rb, 3).join("weights.safetensors")
    ));
}

// ---------------------------------------------------------------------------------------
// GRPO runs: a tiny random Qwen2 on a small synthetic store. A random model never answers,
// so every reward is the same: groups are kept anyway (advantage 0) and the gradient comes
// from the KL to the reference, which weight decay moves the policy away from after the
// first step. Every step thus rolls out with new weights, backpropagates through the policy
// and updates weights and moments.

/// The synthetic store (40 users, 80 items), once per test process.
fn store() -> &'static PathBuf {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let raw = testkit::synthetic::raw_dataset(40, 80, 3);
        let cfg = PrepareConfig {
            subset_users: 8,
            ..PrepareConfig::new("synthetic", 2)
        };
        let d = prepare(&raw, &cfg).expect("prepare");
        let opts = TrainOptions {
            seed: 1,
            bpr_epochs: 1,
            sasrec_epochs: 1,
            progress: false,
        };
        let w = World::train(d, &opts).expect("train");
        let path = scratch("faults-store").keep().join("store.h5");
        tools::world::save(&w, &path).expect("writing the store");
        path
    })
}

fn grpo_config(dir: &Path, name: &str, steps: usize, keep: usize, optim: &str) -> PathBuf {
    let text = format!(
        "run_dir = {:?}\nmodel = {:?}\ndata = {:?}\nseed = 5\nsteps = {steps}\nepisodes_per_step = 2\ngroup_size = 2\nsave_every = 1\nkeep_checkpoints = {keep}\nkeep_zero_variance_groups = true\n[agent]\ntemperature = 1.0\nmax_new_tokens = 16\nmax_turns = 1\n[loss]\nbeta = 0.5\n[optim]\nlr = 0.02\nweight_decay = 0.5\nwarmup_steps = 1\n{optim}\n",
        dir.join(name),
        tiny_model("qwen2"),
        store()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// A `rl --resume` run with phase markers on stderr: killed (SIGKILL) `delay` after the
/// first `target` marker that follows its first saved checkpoint, or left to finish.
/// Returns its stderr lines with the time each arrived, and whether it was killed.
fn rl_killed_in(
    cfg: &Path,
    target: &str,
    delay: Duration,
    env: &[(&str, &str)],
) -> (Vec<(Instant, String)>, bool) {
    let mut c = bin();
    c.args(["rl", "--config", s(cfg), "--resume"])
        .env("RECTHINKER_DEBUG_PHASES", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lines = Vec::new();
    let (mut saved, mut killed) = (false, false);
    while let Ok((t, line)) = rx.recv() {
        let phase = line.strip_prefix("phase: step ").map(|r| r.to_string());
        lines.push((t, line));
        let Some(phase) = phase else { continue };
        if phase.ends_with(" saved") {
            saved = true;
        } else if saved && phase.ends_with(&format!(" {target}")) {
            std::thread::sleep(delay);
            killed = child.kill().is_ok(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    lines.extend(rx.iter());
    reader.join().unwrap();
    let text = || {
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !killed || status.success() {
        // It finished before the target phase came.
        assert!(status.success(), "{}", text());
        killed = false;
    }
    (lines, killed)
}

/// `phase: step N NAME` lines as (time, N, NAME).
fn phases(lines: &[(Instant, String)]) -> Vec<(Instant, usize, String)> {
    lines
        .iter()
        .filter_map(|(t, l)| {
            let (n, name) = l.strip_prefix("phase: step ")?.split_once(' ')?;
            Some((*t, n.parse().ok()?, name.to_string()))
        })
        .collect()
}

#[test]
fn grpo_killed_at_random_moments_resumes_exactly() {
    let dir = scratch("faults-kill");
    let steps = 10;
    // Step 4 poisons a gradient (skipped and counted), so the count must survive kills too.
    let env = [("RECTHINKER_DEBUG_NONFINITE", "grad@4")];
    let skip = "nonfinite = \"skip\"";
    let (a, b) = (
        grpo_config(&dir, "a", steps, 2, skip),
        grpo_config(&dir, "b", steps, 2, skip),
    );
    // The uninterrupted run, timing each phase (from its marker to the next one).
    let t = Instant::now();
    let (lines, _) = rl_killed_in(&a, "none", Duration::ZERO, &env);
    let total = t.elapsed();
    let p = phases(&lines);
    assert_eq!(p.len(), steps * 4, "{lines:?}");
    let mut took: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for w in p.windows(2) {
        took.entry(w[0].2.clone())
            .or_default()
            .push((w[1].0 - w[0].0).as_secs_f64());
    }
    let mean = |phase: &str| took[phase].iter().sum::<f64>() / took[phase].len() as f64;
    eprintln!(
        "faults: uninterrupted GRPO run of {steps} steps: {total:.1?}; mean rollout {:.3} s, \
         gradient pass {:.3} s, checkpoint write {:.3} s",
        mean("rollout"),
        mean("train"),
        mean("checkpoint")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261130);
    let mut landed: std::collections::BTreeMap<String, usize> = Default::default();
    let mut kills = 0;
    let mut runs = 0;
    let targets = ["rollout", "train", "checkpoint"];
    let mut k = 0;
    // Two kills per phase (more if one missed its phase), each followed by a resume; the
    // last resume runs to the end.
    let done = |landed: &std::collections::BTreeMap<String, usize>, kills: usize| {
        kills >= 6 && targets.iter().all(|t| landed.contains_key(*t))
    };
    loop {
        let missing = targets.iter().find(|t| !landed.contains_key(**t));
        let target = match (done(&landed, kills), missing) {
            (true, _) => "none",
            // Two kills aimed at each phase, then at any phase no kill has landed in yet.
            (false, Some(t)) if kills >= 6 => t,
            _ => targets[k % targets.len()],
        };
        k += 1;
        // A seeded delay into the phase: up to 40% of its mean duration in the uninterrupted
        // run (a kill that comes later lands in a later phase and counts there).
        let share = rng.random_range(0.0..0.4);
        let delay = match took.contains_key(target) {
            true => Duration::from_secs_f64(share * mean(target)),
            false => Duration::ZERO,
        };
        let (lines, killed) = rl_killed_in(&b, target, delay, &env);
        runs += 1;
        if !killed {
            break;
        }
        kills += 1;
        // Where it died: the last marker it printed (a checkpoint without `saved` after it
        // died during the write).
        let p = phases(&lines);
        let (_, step, last) = p.last().cloned().unwrap();
        let tmp_left = dir
            .join("b/checkpoints")
            .join(format!(".step-{step:06}.tmp"))
            .exists();
        eprintln!(
            "faults: kill {kills}: aimed at {target} +{delay:.0?}, died in step {step} {last}{}",
            if tmp_left {
                " (a half-written checkpoint left)"
            } else {
                ""
            }
        );
        *landed.entry(last).or_default() += 1;
        assert!(kills < steps, "the run does not progress: {lines:?}");
    }
    eprintln!("faults: {kills} kills, {runs} runs, landed in {landed:?}");
    for phase in targets {
        assert!(
            landed.get(phase).is_some_and(|&n| n > 0),
            "no kill during {phase}: {landed:?}"
        );
    }
    let (ra, rb) = (dir.join("a"), dir.join("b"));
    let (ma, mb) = (metrics(&ra), metrics(&rb));
    assert_eq!(ma.len(), steps);
    assert_eq!(ma, mb, "metrics after {kills} kills");
    assert!(
        ma.iter().all(|l| l["rows_trained"].as_u64() == Some(4)),
        "{ma:?}"
    );
    assert!(
        ma.iter().skip(1).all(|l| l["kl"].as_f64().unwrap() > 0.0),
        "{ma:?}"
    );
    assert_eq!(
        ma.iter()
            .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    );
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&ra, steps).join(f), &ck(&rb, steps).join(f)),
            "final {f} differs after {kills} kills"
        );
    }
    // Training moved the weights.
    let base = tensors(&tiny_model("qwen2").join("model.safetensors"));
    let last = tensors(&ck(&ra, steps).join("weights.safetensors"));
    assert!(base.iter().zip(&last).any(|((_, x), (_, y))| !x.equal(y)));
    // TensorBoard reads back exactly metrics.jsonl despite the torn event files.
    testkit::tensorboard::assert_tensorboard_matches_metrics(&rb);
}

// ---------------------------------------------------------------------------------------
// Non-finite losses and gradients.

fn nonfinite_env(spec: &str) -> [(&str, &str); 1] {
    [("RECTHINKER_DEBUG_NONFINITE", spec)]
}

#[test]
fn sft_nonfinite_steps_stop_naming_the_tensor_or_are_skipped() {
    let dir = scratch("faults-nan-sft");
    // Default: stop, naming the step and the tensor, before the optimizer step.
    let stop = sft_config(&dir, "stop", true, 4, "");
    let e = failed(run("sft", &stop, &[], &nonfinite_env("loss@3")));
    assert!(
        e.contains("step 3: the loss is NaN; stopped before the optimizer step"),
        "{e}"
    );
    let rs = dir.join("stop");
    assert_eq!(steps_logged(&rs), [1, 2]);
    assert!(ck(&rs, 2).exists() && !ck(&rs, 3).exists());
    let e = failed(run("sft", &stop, &[], &nonfinite_env("grad@2")));
    assert!(
        e.contains("step 2: the gradient of `model.layers.0.self_attn.q_proj.lora_A.weight` holds NaN or infinite values"),
        "{e}"
    );
    eprintln!("faults: SFT stopped with: {}", error_line(&e));
    // skip: steps 2 (loss) and 3 (gradient) are skipped and counted; weights unchanged.
    let skip = sft_config(&dir, "skip", true, 5, "nonfinite = \"skip\"");
    let e = ok(run("sft", &skip, &[], &nonfinite_env("loss@2,grad@3")));
    assert!(
        e.contains("warning: step 2: the loss is NaN; step skipped"),
        "{e}"
    );
    assert!(e.contains("(2 skipped so far)"), "{e}");
    let r = dir.join("skip");
    let m = metrics(&r);
    let counts: Vec<u64> = m
        .iter()
        .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [0, 1, 2, 2, 2]);
    assert!(
        m[1]["loss"].is_null() && m[1]["grad_norm"].is_null(),
        "{m:?}"
    );
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&r, 1).join(f), &ck(&r, 2).join(f)),
            "{f}: step 2"
        );
        assert!(
            same_tensors(&ck(&r, 2).join(f), &ck(&r, 3).join(f)),
            "{f}: step 3"
        );
        assert!(
            !same_tensors(&ck(&r, 3).join(f), &ck(&r, 4).join(f)),
            "{f}: step 4 trains"
        );
    }
    // A bad value of the variable is named.
    let e = failed(run("sft", &skip, &[], &nonfinite_env("nan@2")));
    assert!(e.contains("RECTHINKER_DEBUG_NONFINITE: `nan@2`"), "{e}");
}

#[test]
fn grpo_nonfinite_steps_stop_naming_the_tensor_or_are_skipped() {
    let dir = scratch("faults-nan-grpo");
    let stop = grpo_config(&dir, "stop", 3, 0, "");
    let e = failed(run("rl", &stop, &[], &nonfinite_env("grad@2")));
    assert!(
        e.contains("step 2: the gradient of `lm_head.weight` holds NaN or infinite values; stopped before the optimizer step"),
        "{e}"
    );
    eprintln!("faults: GRPO stopped with: {}", error_line(&e));
    let rs = dir.join("stop");
    assert_eq!(steps_logged(&rs), [1]);
    assert!(ck(&rs, 1).exists() && !ck(&rs, 2).exists());
    let skip = grpo_config(&dir, "skip", 3, 0, "nonfinite = \"skip\"");
    let e = ok(run("rl", &skip, &[], &nonfinite_env("loss@2")));
    assert!(
        e.contains("warning: step 2: the loss is NaN; step skipped"),
        "{e}"
    );
    let r = dir.join("skip");
    let m = metrics(&r);
    let counts: Vec<u64> = m
        .iter()
        .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [0, 1, 1]);
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&r, 1).join(f), &ck(&r, 2).join(f)),
            "{f}: step 2"
        );
        assert!(
            !same_tensors(&ck(&r, 2).join(f), &ck(&r, 3).join(f)),
            "{f}: step 3 trains"
        );
    }
}
