//! Real processes, real Gloo over localhost: `dist-selftest` launched as 2 ranks by hand
//! (rank 0 hosts the store) and by torchrun (its agent serves the store), and a rank that
//! exits early making the other fail, quickly, with an error naming it.
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dist-selftest");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` at most `limit`, killing it past that; returns (success, stdout+stderr).
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
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    match status {
        Some(s) => (s.success(), out),
        None => (false, format!("{out}\n<killed after {limit:?}>")),
    }
}

fn manual(world: usize, args: &[&str], extra: &[(&str, &str)]) -> Vec<(bool, String)> {
    let port = free_port().to_string();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            let mut c = Command::new(BIN);
            c.args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .env_remove("TORCHELASTIC_RUN_ID")
                .env_remove("SLURM_NTASKS")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in extra {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(60)))
        .collect()
}

#[test]
fn manual_launch_collectives() {
    for bucket in ["67108864", "16"] {
        let outs = manual(2, &["collectives"], &[("DIST_SELFTEST_BUCKET", bucket)]);
        for (r, (ok, out)) in outs.iter().enumerate() {
            assert!(
                *ok && out.contains(&format!("OK rank {r} of 2 (env)")),
                "bucket {bucket}, rank {r}:\n{out}"
            );
        }
    }
}

#[test]
fn a_rank_that_exits_early_is_named() {
    for quitter in [1usize, 0] {
        let outs = manual(
            2,
            &["exit-early", &quitter.to_string()],
            &[("DIST_SELFTEST_TIMEOUT_S", "15")],
        );
        let survivor = 1 - quitter;
        let (ok, out) = &outs[survivor];
        assert!(*ok, "rank {survivor}:\n{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("EXPECTED-FAILURE"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains(&format!("rank {quitter}")),
            "the error must name rank {quitter}: {line}"
        );
        let secs: f64 = line
            .split(" after ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(secs < 15.0, "failed only after {secs} s: {line}");
        assert!(
            outs[quitter]
                .1
                .contains(&format!("rank {quitter} exits early")),
            "{}",
            outs[quitter].1
        );
    }
}

#[test]
fn torchrun_launch_collectives() {
    let torchrun = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} is missing: run scripts/setup.sh",
        torchrun.display()
    );
    let child = Command::new(&torchrun)
        .args(["--nproc-per-node", "2", "--master-addr", "127.0.0.1"])
        .arg(format!("--master-port={}", free_port()))
        .args(["--no-python", BIN, "collectives"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, out) = finish(child, Duration::from_secs(90));
    assert!(ok, "{out}");
    for r in 0..2 {
        assert!(
            out.contains(&format!("OK rank {r} of 2 (torchrun)")),
            "rank {r}:\n{out}"
        );
    }
}
