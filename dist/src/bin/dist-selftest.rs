//! Run by `dist/tests/multiprocess.rs` as several real processes (manual launch or torchrun).
//!   dist-selftest collectives        all-reduce (sum, avg), broadcast, barrier, all-gather
//!   dist-selftest exit-early RANK    one collective, then RANK exits; the others must fail
//!                                    with an error naming RANK and print it
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
        _ => bail!("usage: dist-selftest collectives | exit-early RANK"),
    }
    Ok(())
}
