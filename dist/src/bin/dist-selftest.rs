//! Run by `dist/tests/multiprocess.rs` as several real processes (manual launch or torchrun).
//!   dist-selftest collectives        all-reduce (sum, avg), broadcast, barrier, all-gather
//!   dist-selftest exit-early RANK    one collective, then RANK exits; the others must fail
//!                                    with an error naming RANK and print it
//!   dist-selftest gpu                NCCL on this rank's GPU (cuda:LOCAL_RANK), a real process
//!                                    group even for a world of one: bf16 gradients
//!                                    all-reduced (sum, avg), broadcast, barrier, and the time
//!                                    of a 64 MiB bf16 all-reduce (needs `--features nccl`;
//!                                    scripts/gpu_check_dist.sh)
//! Prints `OK rank R` on success; `EXPECTED-FAILURE rank R after S s: <error>` in the second
//! mode; any other outcome exits non-zero.
use anyhow::{bail, ensure, Result};
use dist::{ProcessGroup, ReduceOp};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).expect("tensor to vec")
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

/// Rank r's tensors: a few shapes and dtypes, one non-contiguous, one that requires grad.
fn tensors(r: usize) -> Vec<Tensor> {
    let s = (r + 1) as f64;
    vec![
        Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]) * s,
        Tensor::from_slice(&[s as f32; 5]),
        Tensor::from_slice(&[0.5f64 * s, -s]),
        (Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3]) + s).tr(),
        Tensor::from_slice(&[s as f32]).set_requires_grad(true),
        Tensor::from_slice(&[r as i64 + 1, 10]),
    ]
}

fn collectives(pg: &ProcessGroup) -> Result<()> {
    let (rank, world) = (pg.rank(), pg.world_size());
    for op in [ReduceOp::Sum, ReduceOp::Avg] {
        let ts = tensors(rank);
        let ts = if op == ReduceOp::Avg {
            ts[..5].iter().map(|t| t.shallow_clone()).collect()
        } else {
            ts
        };
        pg.all_reduce(&ts, op)?;
        for (i, t) in ts.iter().enumerate() {
            let mut want = vec![0f64; t.numel()];
            for r in 0..world {
                for (w, v) in want.iter_mut().zip(values(&tensors(r)[i])) {
                    *w += v;
                }
            }
            if op == ReduceOp::Avg {
                want.iter_mut().for_each(|w| *w /= world as f64);
            }
            ensure!(
                close(&values(t), &want),
                "rank {rank}: {op:?} tensor {i}: {:?} != {want:?}",
                values(t)
            );
        }
    }
    // Broadcast from the last rank.
    let root = world - 1;
    let ts = tensors(rank);
    pg.broadcast(&ts, root)?;
    for (i, t) in ts.iter().enumerate() {
        ensure!(
            values(t) == values(&tensors(root)[i]),
            "rank {rank}: broadcast tensor {i}"
        );
    }
    // Average of a gradient, through its shared handle.
    let w = Tensor::from_slice(&[1f32, 2.0]).set_requires_grad(true);
    (&w * (rank as f64 + 1.0)).sum(Kind::Float).backward();
    pg.all_reduce(&[w.grad()], ReduceOp::Avg)?;
    let want = (1..=world).sum::<usize>() as f64 / world as f64;
    ensure!(
        close(&values(&w.grad()), &[want, want]),
        "rank {rank}: grad {:?}",
        values(&w.grad())
    );
    pg.barrier()?;
    // Variable-length host values.
    let mine: Vec<f64> = (0..=rank).map(|i| (rank * 10 + i) as f64).collect();
    let all = pg.all_gather_f64(&mine)?;
    for (r, got) in all.iter().enumerate() {
        let want: Vec<f64> = (0..=r).map(|i| (r * 10 + i) as f64).collect();
        ensure!(
            got == &want,
            "rank {rank}: all_gather from rank {r}: {got:?} != {want:?}"
        );
    }
    pg.barrier()?;
    Ok(())
}

/// NCCL on this rank's GPU: bf16 gradients reduced exactly (small integers), then timed.
fn gpu(timeout: Duration) -> Result<()> {
    ensure!(
        dist::has_nccl(),
        "dist-selftest gpu: built without NCCL (cargo build -p dist --features nccl)"
    );
    ensure!(
        tch::Cuda::is_available(),
        "dist-selftest gpu: no CUDA device is available to libtorch"
    );
    let env = dist::LaunchEnv::from_env()?;
    let (rank, world, launcher) = (env.rank, env.world_size, env.launcher);
    let dev = tch::Device::Cuda(env.local_rank);
    let ifname = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
    let pg = ProcessGroup::connect_group(env, timeout, &ifname, true)?;
    let r1 = rank as f64 + 1.0;
    // Rank r's gradient of (r + 1) * sum(x W^T) over 8 rows of ones: 8 (r + 1) everywhere.
    let w = Tensor::ones([64, 32], (Kind::BFloat16, dev)).set_requires_grad(true);
    let x = Tensor::ones([8, 32], (Kind::BFloat16, dev));
    (x.matmul(&w.tr()).sum(Kind::Float) * r1).backward();
    let g = w.grad();
    ensure!(
        g.kind() == Kind::BFloat16 && g.device() == dev,
        "rank {rank}: the gradient is {:?} on {:?}",
        g.kind(),
        g.device()
    );
    pg.all_reduce(&[g.shallow_clone()], ReduceOp::Sum)?;
    let want = 8.0 * (world * (world + 1) / 2) as f64;
    let got = values(&g);
    ensure!(
        got.iter().all(|v| *v == want),
        "rank {rank}: bf16 gradient sum {:?}.. != {want}",
        &got[..4]
    );
    let a = Tensor::full([1000], r1, (Kind::BFloat16, dev));
    pg.all_reduce(&[a.shallow_clone()], ReduceOp::Avg)?;
    let want = (world + 1) as f64 / 2.0;
    ensure!(
        values(&a).iter().all(|v| (v - want).abs() <= 1e-2 * want),
        "rank {rank}: bf16 average {:?}.. != {want}",
        &values(&a)[..4]
    );
    let b = Tensor::full([16], r1, (Kind::BFloat16, dev));
    pg.broadcast(&[b.shallow_clone()], 0)?;
    ensure!(
        values(&b).iter().all(|v| *v == 1.0),
        "rank {rank}: broadcast"
    );
    pg.barrier()?;
    // 64 MiB of bf16: one warm-up, then the mean of 5.
    let big = Tensor::ones([32 << 20], (Kind::BFloat16, dev));
    pg.all_reduce(&[big.shallow_clone()], ReduceOp::Sum)?;
    tch::Cuda::synchronize(env_index(dev));
    let t0 = Instant::now();
    for _ in 0..5 {
        pg.all_reduce(&[big.shallow_clone()], ReduceOp::Sum)?;
    }
    tch::Cuda::synchronize(env_index(dev));
    let ms = t0.elapsed().as_secs_f64() * 1000.0 / 5.0;
    pg.barrier()?;
    println!(
        "OK gpu rank {rank} of {world} ({launcher}, nccl, {dev:?}): bf16 gradient all-reduce \
         sum and avg exact, broadcast, barrier; 64 MiB bf16 all-reduce {ms:.2} ms"
    );
    Ok(())
}

fn env_index(dev: tch::Device) -> i64 {
    match dev {
        tch::Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let timeout = Duration::from_secs_f64(
        std::env::var("DIST_SELFTEST_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20.0),
    );
    let bucket: i64 = std::env::var("DIST_SELFTEST_BUCKET")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(dist::DEFAULT_BUCKET_BYTES);
    if args.get(1).map(String::as_str) == Some("gpu") {
        return gpu(timeout);
    }
    let pg = ProcessGroup::from_env(timeout)?.with_bucket_bytes(bucket);
    let rank = pg.rank();
    match args.get(1).map(String::as_str) {
        Some("collectives") => {
            collectives(&pg)?;
            println!(
                "OK rank {rank} of {} ({})",
                pg.world_size(),
                pg.launch().launcher
            );
        }
        Some("exit-early") => {
            let quitter: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
            let t = Tensor::from_slice(&[1f32]);
            pg.all_reduce(&[t.shallow_clone()], ReduceOp::Sum)?;
            if rank == quitter {
                println!("rank {rank} exits early");
                std::process::exit(0);
            }
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(300));
            match pg.all_reduce(&[t], ReduceOp::Sum) {
                Ok(()) => bail!("rank {rank}: all_reduce succeeded although rank {quitter} exited"),
                Err(e) => {
                    println!(
                        "EXPECTED-FAILURE rank {rank} after {:.1} s: {e:#}",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        _ => bail!("usage: dist-selftest collectives | exit-early RANK | gpu"),
    }
    Ok(())
}
