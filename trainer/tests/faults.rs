//! Checkpoint faults during training (issue 14 item 3), on tiny random models so each run
//! takes seconds:
//!
//! - checkpoints carry a manifest (sizes and SHA-256); a damaged file is refused naming it,
//!   `--resume` falls back to the newest checkpoint that verifies, `export` refuses;
//! - a checkpoint write that fails (RLIMIT_FSIZE, as a full disk) stops the run naming the
//!   checkpoint and leaves the previous one intact.
//!
//! A GRPO run killed at random moments is `kill_resume.rs`; non-finite steps `nonfinite.rs`.

mod fault_kit;

use fault_kit::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use tch::Tensor;
use testkit::scratch;
use trainer::checkpoint;

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
