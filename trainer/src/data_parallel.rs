//! Data-parallel training over the `dist` crate (PyTorch's c10d: Gloo on CPU, NCCL on CUDA).
//!
//! Every rank holds the whole model and the whole data set and walks the same seeded data
//! order; each takes its shard of every global batch ([`DataParallel::shard`]: a contiguous,
//! balanced slice, so a GRPO group stays on one rank), computes its rows' loss normalized by
//! the *global* batch's count (tokens or rows), and [`DataParallel::all_reduce_grads`] sums
//! the gradients, so every rank holds the gradient of the whole global batch, as one process
//! would compute it, before clipping and the optimizer step. Parameters and optimizer state
//! are broadcast from rank 0 at the start ([`DataParallel::sync_start`]), which also carries a
//! resume: only rank 0 reads the checkpoint. Rank 0 alone writes metrics, plots and
//! checkpoints, and validates; the others keep a scratch run directory of their own and wait.
//!
//! Launched by torchrun or Slurm (variables read by [`dist::LaunchEnv`]); without those
//! variables, or with a world of one, nothing is initialized and training runs exactly as a
//! single process. `RECTHINKER_DIST_TIMEOUT_S` (default 1800) bounds the rendezvous and every
//! collective: it must exceed the longest time one rank can run ahead of the others (rank 0's
//! validation and checkpoint writes, an unbalanced rollout). A rank that exits or is killed is
//! detected within seconds (its connections close and its heartbeat stops) and every other
//! rank stops with an error naming it.

use crate::optim::AdamW;
use crate::train_common::{RunSpec, Trainee};
use anyhow::{bail, Context, Result};
use dist::{ProcessGroup, ReduceOp};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// The environment variable holding the collective timeout in seconds.
pub const TIMEOUT_VAR: &str = "RECTHINKER_DIST_TIMEOUT_S";
const DEFAULT_TIMEOUT_S: f64 = 1800.0;

/// This process's place in a data-parallel job (a job of one when not launched as several).
pub struct DataParallel {
    pg: ProcessGroup,
    /// Seconds spent in gradient all-reduces (for the benchmark and the metrics).
    reduce_seconds: std::cell::Cell<f64>,
    /// A non-main rank's scratch run directory, removed on drop (an error ends the run too).
    scratch: std::cell::RefCell<Option<PathBuf>>,
}

/// The contiguous, balanced slice of `n` items that rank `rank` of `world` takes: the first
/// `n % world` ranks take one item more.
pub fn shard_range(n: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Whether the launcher's variables describe a job of more than one process.
fn launched_as_several() -> bool {
    ["WORLD_SIZE", "SLURM_NTASKS"].iter().any(|k| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n > 1)
    })
}

fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Err(_) => Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_S)),
        Ok(v) => {
            let s: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| *s > 0.0)
                .with_context(|| {
                    format!("{TIMEOUT_VAR}={v:?} is not a positive number of seconds")
                })?;
            Ok(Duration::from_secs_f64(s))
        }
    }
}

impl DataParallel {
    /// A single process: every collective is a no-op.
    pub fn single() -> Self {
        Self {
            pg: ProcessGroup::single(),
            reduce_seconds: std::cell::Cell::new(0.0),
            scratch: std::cell::RefCell::new(None),
        }
    }

    /// Joins the job torchrun, `srun` or manual `RANK`/`WORLD_SIZE`/`MASTER_*` variables
    /// describe; without them (or with a world of one) a single process, nothing initialized.
    pub fn from_env() -> Result<Self> {
        if !launched_as_several() {
            return Ok(Self::single());
        }
        let timeout = timeout_from_env()?;
        let pg = ProcessGroup::from_env(timeout)?;
        eprintln!(
            "data parallel: rank {} of {} ({} launch, store {}:{}, timeout {:.0} s)",
            pg.rank(),
            pg.world_size(),
            pg.launch().launcher,
            pg.launch().master_addr,
            pg.launch().master_port,
            timeout.as_secs_f64()
        );
        Ok(Self {
            pg,
            reduce_seconds: std::cell::Cell::new(0.0),
            scratch: std::cell::RefCell::new(None),
        })
    }

    pub fn rank(&self) -> usize {
        self.pg.rank()
    }
    pub fn world_size(&self) -> usize {
        self.pg.world_size()
    }
    /// Rank 0: writes metrics and checkpoints, validates.
    pub fn is_main(&self) -> bool {
        self.pg.is_main()
    }
    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    /// This rank's items of a global batch of `n`.
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard_range(n, self.rank(), self.world_size())
    }

    /// The device this rank trains on: a configured `cuda` means `cuda:LOCAL_RANK` when
    /// launched as several processes (one GPU per process); anything else as configured.
    pub fn device(&self, configured: &str) -> String {
        if self.is_distributed() && configured == "cuda" {
            format!("cuda:{}", self.pg.local_rank())
        } else {
            configured.to_owned()
        }
    }

    /// Where this rank's run directory is: the configured one on rank 0; on the others a
    /// scratch directory under the system's temp dir (their config copy and logs go there,
    /// never into the shared run directory), removed when `self` drops.
    pub fn run_dir(&self, configured: &Path) -> PathBuf {
        if self.is_main() {
            return configured.to_path_buf();
        }
        let dir = std::env::temp_dir().join(format!(
            "recthinker-rank{}-{}",
            self.rank(),
            std::process::id()
        ));
        *self.scratch.borrow_mut() = Some(dir.clone());
        dir
    }

    /// Removes a non-main rank's scratch run directory (best effort; also done on drop).
    pub fn cleanup(&self, _configured: &Path) {
        if let Some(dir) = self.scratch.borrow_mut().take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Joins the process group if launched as several processes (torchrun, srun; else a
    /// world of one) and starts the run from `spec`: rank 0 owns the run directory (and reads
    /// the checkpoint on resume), each rank takes its device, and every rank starts from
    /// rank 0's parameters, optimizer state and step (`sync_start`).
    pub fn start_run(
        spec: &RunSpec,
        resolved_config: &impl serde::Serialize,
        resume: bool,
    ) -> Result<(Self, Trainee)> {
        let dp = Self::from_env()?;
        let run_dir = dp.run_dir(spec.run_dir);
        let device = dp.device(spec.device);
        let spec = RunSpec {
            run_dir: &run_dir,
            device: &device,
            ..*spec
        };
        let mut tr = Trainee::start(&spec, resolved_config, resume && dp.is_main())?;
        tr.start = dp.sync_start(&mut tr.opt, tr.start)?;
        Ok((dp, tr))
    }

    /// The end of a step, the same for SFT and GRPO: its metrics line logged, a checkpoint
    /// when one is due (written by rank 0, every rank waiting for it), and its validation
    /// NDCG@10 (`val_ndcg@10`) recorded for `export --select best`.
    pub fn end_step(
        &self,
        tr: &mut Trainee,
        steps_done: usize,
        line: &serde_json::Value,
    ) -> Result<()> {
        tr.run.log(line)?;
        if tr.checkpoint_due(steps_done) {
            if self.is_main() {
                tr.save_checkpoint(steps_done)?;
                tr.run.redraw_plots();
            }
            self.barrier("checkpoint")?;
        }
        if let Some(v) = line["val_ndcg@10"].as_f64() {
            tr.record_validation(steps_done, v, line["val_tool_calls"].as_f64())?;
        }
        Ok(())
    }

    /// After every rank has built its model and optimizer (rank 0 alone having read a
    /// checkpoint on resume): rank 0's parameters, optimizer moments and step and its start
    /// step go to every rank. Returns the start step. Checks that every rank has the same
    /// trainable parameters (names and sizes) first, naming the first rank that differs.
    pub fn sync_start(&self, opt: &mut AdamW, start: usize) -> Result<usize> {
        if !self.is_distributed() {
            return Ok(start);
        }
        // Names and sizes of the trainable parameters, hashed (FNV-1a) to 48 bits.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for (name, p) in &opt.params {
            for b in name.bytes().chain(p.numel().to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let signature = (h >> 16) as f64;
        let all = self
            .pg
            .all_gather_f64(&[signature, opt.params.len() as f64])
            .context("data parallel: comparing the ranks' parameters")?;
        if let Some(r) = all.iter().position(|v| v != &all[0]) {
            bail!(
                "data parallel: rank {r} has other trainable parameters than rank 0 \
                 ({} vs {} tensors): every rank must load the same model and config",
                all[r].get(1).copied().unwrap_or(0.0),
                all[0].get(1).copied().unwrap_or(0.0)
            );
        }
        let mut tensors: Vec<Tensor> = opt.params.iter().map(|(_, p)| p.detach()).collect();
        tensors.extend(
            opt.state()
                .into_iter()
                .filter(|(k, _)| k != "step")
                .map(|(_, t)| t),
        );
        self.pg
            .broadcast(&tensors, 0)
            .context("data parallel: broadcasting rank 0's parameters and optimizer state")?;
        let counts = self
            .pg
            .all_gather_f64(&[start as f64, opt.step as f64])
            .context("data parallel: broadcasting the start step")?;
        let start = counts[0][0] as usize;
        opt.step = counts[0][1] as usize;
        Ok(start)
    }

    /// Sums every trainable parameter's gradient over the ranks (in place, through the
    /// `grad()` handles), and `scalars` with them (per-rank loss shares and counts, which
    /// then hold the global values). A parameter without a gradient on this rank (no rows
    /// trained here) gets zeros first, so every rank reduces the same tensors.
    pub fn all_reduce_grads(&self, opt: &AdamW, scalars: &mut [f64]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let t0 = Instant::now();
        let missing: Vec<&Tensor> = opt
            .params
            .iter()
            .map(|(_, p)| p)
            .filter(|p| !p.grad().defined())
            .collect();
        if !missing.is_empty() {
            // Zero gradients through a backward of 0 * sum(p).
            let zero = missing
                .iter()
                .map(|p| p.sum(Kind::Float) * 0.0)
                .reduce(|a, b| a + b);
            if let Some(z) = zero {
                z.backward();
            }
        }
        let mut tensors: Vec<Tensor> = opt.params.iter().map(|(_, p)| p.grad()).collect();
        let host = Tensor::from_slice(scalars);
        tensors.push(host.shallow_clone());
        self.pg
            .all_reduce(&tensors, ReduceOp::Sum)
            .context("data parallel: all-reducing the gradients")?;
        let summed = Vec::<f64>::try_from(&host).context("reading the reduced scalars")?;
        scalars.copy_from_slice(&summed);
        self.reduce_seconds
            .set(self.reduce_seconds.get() + t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// Sums host values over the ranks.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let all = self
            .pg
            .all_gather_f64(values)
            .context("data parallel: summing host values")?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|r| r.get(i).copied().unwrap_or(0.0)).sum();
        }
        Ok(())
    }

    /// Every rank's `values`, concatenated in rank order.
    pub fn gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        if !self.is_distributed() {
            return Ok(values.to_vec());
        }
        Ok(self
            .pg
            .all_gather_f64(values)
            .context("data parallel: gathering host values")?
            .concat())
    }

    /// Waits for every rank (`what` names the point in the error).
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.pg
            .barrier()
            .with_context(|| format!("data parallel: waiting for every rank ({what})"))
    }

    /// Seconds spent in gradient all-reduces so far, and resets the count.
    pub fn take_reduce_seconds(&self) -> f64 {
        self.reduce_seconds.replace(0.0)
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        self.cleanup(Path::new(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_contiguous_balanced_and_cover_the_batch() {
        for n in 0..12 {
            for world in 1..5 {
                let ranges: Vec<Range<usize>> =
                    (0..world).map(|r| shard_range(n, r, world)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "{n} over {world}: {lens:?}");
            }
        }
        assert_eq!(shard_range(5, 0, 2), 0..3);
        assert_eq!(shard_range(5, 1, 2), 3..5);
    }

    #[test]
    fn single_process_reduces_nothing() {
        let dp = DataParallel::single();
        let p = Tensor::from_slice(&[1f32, 2.0]).set_requires_grad(true);
        (&p * 3.0).sum(Kind::Float).backward();
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())]);
        let mut s = [2.0, 5.0];
        dp.all_reduce_grads(&opt, &mut s).unwrap();
        assert_eq!(s, [2.0, 5.0]);
        assert_eq!(Vec::<f32>::try_from(&p.grad()).unwrap(), vec![3.0, 3.0]);
        assert_eq!(dp.sync_start(&mut opt, 7).unwrap(), 7);
        assert_eq!(dp.shard(4), 0..4);
        assert_eq!(dp.gather(&[1.0]).unwrap(), vec![1.0]);
    }
}
