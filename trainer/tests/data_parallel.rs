//! Data-parallel SFT and GRPO (issue 12) as real processes on localhost over Gloo: 2 ranks
//! launched by hand and with srun's variables (rank 0 hosts the store) and by torchrun (its
//! agent serves the store)
//! train the tiny model to the same parameters as 1 process with the same global batch; a
//! rank killed mid-run makes the other exit with an error naming it, well within the
//! timeout, and the last checkpoint stays loadable.

use testkit as support;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tch::Tensor;

const BIN: &str = env!("CARGO_BIN_EXE_recthinker");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const LAUNCH_VARS: [&str; 10] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RUN_ID",
];

/// `program` with none of the launchers' variables, its output piped.
fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for k in LAUNCH_VARS {
        c.env_remove(k);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// `recthinker` as a single process.
fn plain() -> Command {
    command(Path::new(BIN))
}

/// Waits for `child` at most `limit` (killing it past that); (success, stdout + stderr).
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut out);
    match status {
        Some(s) => (s.success(), out),
        None => (false, format!("{out}\n<killed after {limit:?}>")),
    }
}

fn run_single(args: &[&str]) {
    let child = plain().args(args).spawn().unwrap();
    let (ok, out) = finish(child, Duration::from_secs(120));
    assert!(ok, "{args:?}:\n{out}");
}

/// `world` ranks launched by hand (RANK/WORLD_SIZE/MASTER_*; rank 0 hosts the store).
fn spawn_manual(world: usize, args: &[&str], extra: &[(&str, &str)]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let mut c = plain();
            c.args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            for (k, v) in extra {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect()
}

fn run_manual(world: usize, args: &[&str]) {
    let children = spawn_manual(world, args, &[]);
    for (r, c) in children.into_iter().enumerate() {
        let (ok, out) = finish(c, Duration::from_secs(120));
        assert!(ok, "rank {r} of {world}, {args:?}:\n{out}");
    }
}

/// `world` ranks with the variables `srun` sets (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID)
/// and the MASTER_ADDR/MASTER_PORT a batch script exports; rank 0 hosts the store.
fn run_slurm(world: usize, args: &[&str]) {
    let port = free_port().to_string();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            plain()
                .args(args)
                .env("SLURM_NTASKS", world.to_string())
                .env("SLURM_PROCID", r.to_string())
                .env("SLURM_LOCALID", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let (ok, out) = finish(c, Duration::from_secs(120));
        assert!(ok, "Slurm-style rank {r} of {world}, {args:?}:\n{out}");
        if r == 0 {
            assert!(out.contains("(slurm launch"), "{out}");
        }
    }
}

fn run_torchrun(args: &[&str]) {
    let torchrun = repo_root().join(".venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} is missing: run scripts/setup.sh",
        torchrun.display()
    );
    let child = command(&torchrun)
        .args(["--nproc-per-node", "2", "--master-addr", "127.0.0.1"])
        .arg(format!("--master-port={}", free_port()))
        .args(["--no-python", BIN])
        .args(args)
        .spawn()
        .unwrap();
    let (ok, out) = finish(child, Duration::from_secs(150));
    assert!(ok, "torchrun {args:?}:\n{out}");
}

fn weights(ckpt: &Path) -> Vec<(String, Tensor)> {
    let path = ckpt.join("weights.safetensors");
    let mut v = Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The largest, over tensors, of max|a - b| / max|b|: the parameters' relative difference.
fn max_rel_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| max_abs_diff(x, y) / y.abs().max().double_value(&[]).max(1e-12))
        .fold(0.0, f64::max)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let msgs = serde_json::json!([
                {"role": "system", "content": "You rank movies."},
                {"role": "user", "content": format!("User {i}. Candidates: 1. Heat 2. Fargo 3. Casino")},
                {"role": "assistant", "content": "<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"},
                {"role": "tool", "content": format!("<tool_response>\nFargo (1996), rated {}\n</tool_response>", i % 5 + 1)},
                {"role": "assistant", "content": format!("<think>Done{}.</think>\n<answer>{}, 1, 3</answer>", "!".repeat(i), i % 2 + 2)}
            ]);
            serde_json::json!({ "messages": msgs }).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// An SFT config: a global batch of 3 (2 rows on rank 0, 1 on rank 1), full fine-tuning or
/// LoRA, a checkpoint every step.
fn sft_config(dir: &Path, name: &str, lora: bool, steps: usize) -> PathBuf {
    let mut text = format!(
        "run_dir = {:?}\nmodel = {:?}\ntrain_file = {:?}\nseed = 5\nsteps = {steps}\nbatch_size = 3\nmicro_batch = 2\nmax_len = 512\nsave_every = 1\n[optim]\nlr = 0.01\nwarmup_steps = 1\n",
        dir.join(name),
        tiny_model("llama"),
        conversations(dir)
    );
    if lora {
        text.push_str(
            "[lora]\nrank = 4\nalpha = 8.0\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n",
        );
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn ckpt(dir: &Path, name: &str, step: usize) -> PathBuf {
    dir.join(name).join(format!("checkpoints/step-{step:06}"))
}

fn assert_equal_runs(dir: &Path, want: &str, got: &str, steps: usize, what: &str) {
    let (w, g) = (
        weights(&ckpt(dir, want, steps)),
        weights(&ckpt(dir, got, steps)),
    );
    let rel = max_rel_diff(&g, &w);
    eprintln!("{what}: max relative parameter difference {rel:.3e}");
    assert!(rel <= 1e-5, "{what}: max relative difference {rel}");
    // The metrics rank 0 wrote are the whole batch's.
    let (mw, mg) = (metrics(&dir.join(want)), metrics(&dir.join(got)));
    assert_eq!(mw.len(), mg.len(), "{what}: metric lines");
    for (a, b) in mw.iter().zip(&mg) {
        for key in ["loss", "tokens", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{what}: {key} {x} vs {y}"
            );
        }
    }
}

#[test]
fn sft_two_ranks_equal_one_rank() {
    let dir = scratch("dp-sft");
    for lora in [false, true] {
        let tag = if lora { "lora" } else { "full" };
        let one = format!("one-{tag}");
        let two = format!("two-{tag}");
        let c1 = sft_config(&dir, &one, lora, 2);
        let c2 = sft_config(&dir, &two, lora, 2);
        run_single(&["sft", "--config", c1.to_str().unwrap()]);
        run_manual(2, &["sft", "--config", c2.to_str().unwrap()]);
        assert_equal_runs(&dir, &one, &two, 2, &format!("SFT {tag}, 2 ranks by hand"));
        // The parameters did move.
        let start = weights(&ckpt(&dir, &one, 1));
        assert!(max_rel_diff(&weights(&ckpt(&dir, &one, 2)), &start) > 1e-3);
    }
    // Slurm's variables (rank 0 hosts the store).
    let sl = sft_config(&dir, "slurm", false, 2);
    run_slurm(2, &["sft", "--config", sl.to_str().unwrap()]);
    assert_equal_runs(
        &dir,
        "one-full",
        "slurm",
        2,
        "SFT full, 2 ranks as srun starts them",
    );
    // torchrun (agent store), and a resume on another world size: 2 ranks for step 1, then
    // 1 process for step 2, as the uninterrupted single process.
    let tr = sft_config(&dir, "torchrun", true, 2);
    run_torchrun(&["sft", "--config", tr.to_str().unwrap()]);
    assert_equal_runs(&dir, "one-lora", "torchrun", 2, "SFT LoRA, torchrun");
    let re = sft_config(&dir, "resharded", true, 2);
    run_manual(
        2,
        &["sft", "--config", re.to_str().unwrap(), "--stop-after", "1"],
    );
    run_single(&["sft", "--config", re.to_str().unwrap(), "--resume"]);
    assert_equal_runs(&dir, "one-lora", "resharded", 2, "SFT resumed on 1 of 2");
}

#[test]
fn a_killed_rank_stops_the_other_with_an_error() {
    let timeout_s = 30.0;
    // Rank 1, then rank 0 (which also serves the store in a launch by hand).
    for victim in [1usize, 0] {
        let dir = scratch("dp-kill");
        let cfg = sft_config(&dir, "run", true, 100_000);
        let mut children = spawn_manual(
            2,
            &["sft", "--config", cfg.to_str().unwrap()],
            &[("RECTHINKER_DIST_TIMEOUT_S", "30")],
        );
        // Rank 0 logs each step: wait for two.
        let log = dir.join("run/metrics.jsonl");
        let start = Instant::now();
        while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no progress in 90 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut killed_child = children.remove(victim);
        killed_child.kill().unwrap();
        killed_child.wait().unwrap();
        let killed = Instant::now();
        let survivor = 1 - victim;
        let (ok, out) = finish(children.remove(0), Duration::from_secs(120));
        let secs = killed.elapsed().as_secs_f64();
        assert!(
            !ok,
            "rank {survivor} succeeded after rank {victim} was killed:\n{out}"
        );
        assert!(
            secs < timeout_s,
            "rank {survivor} took {secs:.1} s to stop (timeout {timeout_s} s):\n{out}"
        );
        let error = out
            .lines()
            .find(|l| l.to_lowercase().starts_with("error"))
            .unwrap_or_else(|| panic!("no error line:\n{out}"));
        assert!(
            out.contains(&format!("rank {victim}")),
            "the error must name rank {victim}:\n{out}"
        );
        eprintln!("rank {survivor} stopped {secs:.1} s after rank {victim} was killed: {error}");
        // The newest checkpoint loads.
        let latest = trainer::checkpoint::latest(&dir.join("run/checkpoints"))
            .unwrap()
            .expect("a checkpoint");
        assert!(!weights(&latest).is_empty());
    }
}

/// A GRPO config on real MovieLens-100k: 4 episodes x 3 samples per step (2 groups per
/// rank), 2 inner epochs, weight decay and a KL term. The tiny random policy never answers
/// validly, so every group's rewards are equal: with `keep_zero_variance_groups` the groups
/// still train, and the second inner epoch's gradient is the KL term's (the first epoch's
/// weight decay moved the policy off the reference), through the same per-group
/// micro-batches, global normalization and all-reduce as a policy-gradient term.
fn rl_config(dir: &Path, name: &str, data: &Path) -> PathBuf {
    let text = format!(
        "run_dir = {:?}\nmodel = {:?}\ndata = {:?}\nseed = 1\nsteps = 2\nepisodes_per_step = 4\ngroup_size = 3\nkeep_zero_variance_groups = true\ninner_epochs = 2\nsave_every = 1\nreport_to = [\"jsonl\"]\n[agent]\ntemperature = 1.0\nmax_new_tokens = 16\nmax_turns = 2\n[loss]\nbeta = 0.1\n[optim]\nlr = 0.01\nwarmup_steps = 1\nweight_decay = 0.5\n",
        dir.join(name),
        tiny_model("qwen2"),
        data
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The GRPO metric lines `a` and `b` agree to `tol` (relative).
fn assert_same_metrics(a: &serde_json::Value, b: &serde_json::Value, tol: f64, what: &str) {
    for key in [
        "reward_mean",
        "reward_std",
        "generated_tokens",
        "groups_kept",
        "rows_trained",
        "loss",
        "kl",
        "entropy",
    ] {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!(
            (x - y).abs() <= tol * x.abs().max(1.0),
            "{what}: step {}: {key} {x} vs {y}",
            a["step"]
        );
    }
}

#[test]
fn grpo_two_ranks_equal_one_rank() {
    let dir = scratch("dp-grpo");
    let data = dir.join("ml.h5");
    prepare_ml100k(BIN, &data);
    let one = rl_config(&dir, "one", &data);
    let two = rl_config(&dir, "two", &data);
    let resumed = rl_config(&dir, "resumed", &data);
    run_single(&["rl", "--config", one.to_str().unwrap()]);
    run_manual(2, &["rl", "--config", two.to_str().unwrap()]);
    // Stopped after step 1 and resumed with the same world size.
    run_manual(
        2,
        &[
            "rl",
            "--config",
            resumed.to_str().unwrap(),
            "--stop-after",
            "1",
        ],
    );
    run_manual(
        2,
        &["rl", "--config", resumed.to_str().unwrap(), "--resume"],
    );
    // One step: 2 ranks (each summing its 2 groups' gradients, then the all-reduce) equal one
    // process (summing the 4 groups' in turn) up to the order of that floating-point sum.
    let rel = max_rel_diff(
        &weights(&ckpt(&dir, "two", 1)),
        &weights(&ckpt(&dir, "one", 1)),
    );
    eprintln!("GRPO step 1, 2 ranks vs 1: max relative parameter difference {rel:.3e}");
    assert!(rel <= 1e-5, "GRPO step 1: max relative difference {rel}");
    let (m1, m2, mr) = (
        metrics(&dir.join("one")),
        metrics(&dir.join("two")),
        metrics(&dir.join("resumed")),
    );
    // Rank 0's metrics are over every rank's rows.
    assert_same_metrics(&m1[0], &m2[0], 1e-5, "GRPO step 1, 2 ranks vs 1");
    assert!(m2[0].get("allreduce_seconds").is_some(), "{}", m2[0]);
    // The step's gradient was not zero: the weights moved and the next step's KL is large.
    assert_eq!(m1[0]["rows_trained"].as_u64(), Some(12));
    assert!(m1[1]["kl"].as_f64().unwrap() > 1e-3, "{}", m1[1]);
    let rel2 = max_rel_diff(
        &weights(&ckpt(&dir, "two", 2)),
        &weights(&ckpt(&dir, "one", 2)),
    );
    // Not held to 1e-5: AdamW's early steps move each weight by about lr whatever the size of
    // its gradient, so step 1's rounding differences (in gradients near 0) grow in step 2.
    eprintln!("GRPO step 2, 2 ranks vs 1: max relative parameter difference {rel2:.3e}");
    // A resume with the same world size continues exactly.
    let rel = max_rel_diff(
        &weights(&ckpt(&dir, "resumed", 2)),
        &weights(&ckpt(&dir, "two", 2)),
    );
    assert!(
        rel == 0.0,
        "GRPO resumed on 2 ranks: max relative difference {rel}"
    );
    for (a, b) in m2.iter().zip(&mr) {
        assert_same_metrics(a, b, 0.0, "GRPO resumed on 2 ranks");
    }
    assert_eq!(mr.len(), 2);
}
