//! Multi-process collectives on tch tensors: a small C++ shim (`src/shim.cpp`) over libtorch's
//! own c10d — a `TCPStore` for the rendezvous, `ProcessGroupGloo` for CPU tensors and host
//! values, and `ProcessGroupNCCL` for CUDA tensors when built with the `nccl` feature.
//!
//! [`ProcessGroup::from_env`] reads the launcher's variables (torchrun: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`; Slurm `srun`:
//! `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` with `MASTER_ADDR`/`MASTER_PORT` exported
//! by the batch script). Without them, or with a world of one, it is a single process and
//! every collective is a no-op.
//!
//! Collectives work in place on the tensors given (tch tensors are shared handles: pass
//! `var.grad()` to reduce a gradient). Tensors are passed to C++ as tch's `at::Tensor`
//! pointers, and coalesced into flat buffers per dtype and device, at most
//! [`ProcessGroup::bucket_bytes`] each. A failed or timed-out collective returns an error that
//! names this rank and the ranks to blame (exited, or alive but not in the collective).
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, CStr, CString};
use std::time::Duration;
use tch::Tensor;

mod ffi {
    use std::ffi::{c_char, c_int};
    #[repr(C)]
    pub struct RawPg {
        _private: [u8; 0],
    }
    extern "C" {
        pub fn rt_dist_free_str(s: *mut c_char);
        #[allow(clippy::too_many_arguments)]
        pub fn rt_dist_new(
            host: *const c_char,
            port: u16,
            rank: c_int,
            world: c_int,
            store_mode: c_int,
            timeout_ms: i64,
            prefix: *const c_char,
            gloo_ifname: *const c_char,
            use_nccl: c_int,
            out: *mut *mut RawPg,
        ) -> *mut c_char;
        pub fn rt_dist_free(pg: *mut RawPg);
        pub fn rt_dist_all_reduce(
            pg: *mut RawPg,
            ts: *const *mut torch_sys::C_tensor,
            n: usize,
            op: c_int,
            bucket_bytes: i64,
        ) -> *mut c_char;
        pub fn rt_dist_broadcast(
            pg: *mut RawPg,
            ts: *const *mut torch_sys::C_tensor,
            n: usize,
            root: c_int,
            bucket_bytes: i64,
        ) -> *mut c_char;
        pub fn rt_dist_barrier(pg: *mut RawPg) -> *mut c_char;
        pub fn rt_dist_all_gather_f64(
            pg: *mut RawPg,
            vals: *const f64,
            n: usize,
            out: *mut f64,
        ) -> *mut c_char;
        pub fn rt_dist_has_nccl() -> c_int;
    }
}

/// Turns the shim's returned error string (NULL = success) into a `Result`, freeing it.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'ed by the shim.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::rt_dist_free_str(err) };
    Err(anyhow!(msg))
}

/// The reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (floating-point tensors only).
    Avg,
}

/// Where this process sits in the job, as the launcher described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun serves the store itself (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank
    /// connects as a client. Otherwise rank 0 hosts it.
    pub agent_store: bool,
    /// torchrun's restart count: namespaces the store keys of each attempt.
    pub restart: u32,
    /// `torchrun`, `slurm`, `env` (manual), or `single`.
    pub launcher: &'static str,
}

impl LaunchEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the launch variables through `get` (the environment, or a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            k: &str,
        ) -> Result<Option<T>> {
            match get(k) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => {
                    v.trim().parse().map(Some).map_err(|_| {
                        anyhow!("environment variable {k}={v:?} is not a valid number")
                    })
                }
            }
        }
        let torchrun =
            get("TORCHELASTIC_RUN_ID").is_some() || get("TORCHELASTIC_USE_AGENT_STORE").is_some();
        let (rank, world, local, launcher) = if let Some(world) = num::<usize>(&get, "WORLD_SIZE")?
        {
            let rank =
                num(&get, "RANK")?.ok_or_else(|| anyhow!("WORLD_SIZE is set but RANK is not"))?;
            let local = num(&get, "LOCAL_RANK")?.unwrap_or(rank);
            (
                rank,
                world,
                local,
                if torchrun { "torchrun" } else { "env" },
            )
        } else if let Some(world) = num::<usize>(&get, "SLURM_NTASKS")? {
            let rank = num(&get, "SLURM_PROCID")?
                .ok_or_else(|| anyhow!("SLURM_NTASKS is set but SLURM_PROCID is not"))?;
            let local = num(&get, "SLURM_LOCALID")?.unwrap_or(0);
            (rank, world, local, "slurm")
        } else {
            (0, 1, 0, "single")
        };
        if world == 0 {
            bail!("world size is 0");
        }
        if rank >= world {
            bail!("rank {rank} is not below the world size {world}");
        }
        let single = world == 1;
        let master_addr = match get("MASTER_ADDR").filter(|s| !s.trim().is_empty()) {
            Some(a) => a.trim().to_owned(),
            None if single => "127.0.0.1".to_owned(),
            None => bail!(
                "{launcher} launch with {world} ranks but MASTER_ADDR is not set (under Slurm: \
                 export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1))"
            ),
        };
        let master_port = num::<u16>(&get, "MASTER_PORT")?.unwrap_or(29500);
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let restart = num(&get, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0);
        Ok(Self {
            rank,
            world_size: world,
            local_rank: local,
            master_addr,
            master_port,
            agent_store,
            restart,
            launcher: if single { "single" } else { launcher },
        })
    }
}

/// One process's handle on the job's process group (Gloo, plus NCCL with the `nccl` feature).
pub struct ProcessGroup {
    raw: *mut ffi::RawPg,
    env: LaunchEnv,
    timeout: Duration,
    bucket_bytes: i64,
}

// SAFETY: the C++ side serializes collectives under a mutex and owns its threads; the handle
// is only freed in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

/// Default coalescing bucket: 64 MiB.
pub const DEFAULT_BUCKET_BYTES: i64 = 64 << 20;

/// Whether this build has the NCCL backend (`nccl` feature).
pub fn has_nccl() -> bool {
    // SAFETY: a pure query.
    unsafe { ffi::rt_dist_has_nccl() != 0 }
}

impl ProcessGroup {
    /// A process group of one: every collective is a no-op.
    pub fn single() -> Self {
        let env =
            LaunchEnv::from_vars(|_| None).expect("the empty environment is a single process");
        Self {
            raw: std::ptr::null_mut(),
            env,
            timeout: Duration::from_secs(0),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Joins the job the launcher (torchrun, srun, or manual `RANK`/`WORLD_SIZE`/`MASTER_*`)
    /// describes. `timeout` bounds the rendezvous and every collective. `GLOO_SOCKET_IFNAME`
    /// picks the network interfaces (comma-separated); NCCL is used for CUDA tensors when built
    /// with `nccl` and CUDA is available, unless `RECTHINKER_DIST_NCCL=0`.
    pub fn from_env(timeout: Duration) -> Result<Self> {
        let env = LaunchEnv::from_env()?;
        let use_nccl = has_nccl()
            && tch::Cuda::is_available()
            && std::env::var("RECTHINKER_DIST_NCCL")
                .map(|v| v != "0")
                .unwrap_or(true);
        let ifname = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
        Self::connect(env, timeout, &ifname, use_nccl)
    }

    /// Joins the job described by `env`.
    pub fn connect(
        env: LaunchEnv,
        timeout: Duration,
        gloo_ifname: &str,
        use_nccl: bool,
    ) -> Result<Self> {
        if env.world_size == 1 {
            return Ok(Self {
                raw: std::ptr::null_mut(),
                env,
                timeout,
                bucket_bytes: DEFAULT_BUCKET_BYTES,
            });
        }
        Self::connect_group(env, timeout, gloo_ifname, use_nccl)
    }

    /// As [`ProcessGroup::connect`], but a world of one too gets a real process group (its
    /// own store, Gloo, and NCCL when asked): for checking a backend on one device
    /// (`dist-selftest gpu`).
    pub fn connect_group(
        env: LaunchEnv,
        timeout: Duration,
        gloo_ifname: &str,
        use_nccl: bool,
    ) -> Result<Self> {
        let ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let host = CString::new(env.master_addr.clone()).context("MASTER_ADDR holds a NUL byte")?;
        let prefix = CString::new(format!("recthinker/attempt_{}/", env.restart))?;
        let ifname = CString::new(gloo_ifname).context("GLOO_SOCKET_IFNAME holds a NUL byte")?;
        let rank = c_int::try_from(env.rank).context("rank out of range")?;
        let world = c_int::try_from(env.world_size).context("world size out of range")?;
        let store_mode = c_int::from(!env.agent_store);
        let mut raw = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `raw` is set only on success.
        check(unsafe {
            ffi::rt_dist_new(
                host.as_ptr(),
                env.master_port,
                rank,
                world,
                store_mode,
                ms,
                prefix.as_ptr(),
                ifname.as_ptr(),
                c_int::from(use_nccl),
                &mut raw,
            )
        })
        .with_context(|| {
            format!(
                "joining the process group ({} launch, rank {}/{}, store {}:{})",
                env.launcher, env.rank, env.world_size, env.master_addr, env.master_port
            )
        })?;
        Ok(Self {
            raw,
            env,
            timeout,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// Sets the coalescing bucket size in bytes (0: one buffer per dtype/device run).
    pub fn with_bucket_bytes(mut self, bytes: i64) -> Self {
        self.bucket_bytes = bytes.max(0);
        self
    }

    pub fn bucket_bytes(&self) -> i64 {
        self.bucket_bytes
    }
    pub fn rank(&self) -> usize {
        self.env.rank
    }
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }
    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }
    /// Rank 0: the one that logs, evaluates and writes checkpoints.
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }
    pub fn launch(&self) -> &LaunchEnv {
        &self.env
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    fn is_single(&self) -> bool {
        self.raw.is_null()
    }

    fn ptrs(tensors: &[Tensor]) -> Vec<*mut torch_sys::C_tensor> {
        tensors
            .iter()
            .map(|t| t.as_ptr() as *mut torch_sys::C_tensor)
            .collect()
    }

    /// Reduces every tensor across ranks, in place (all must have the same shapes and dtypes
    /// on every rank, in the same order).
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        if self.is_single() || tensors.is_empty() {
            return Ok(());
        }
        let ptrs = Self::ptrs(tensors);
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
        };
        // SAFETY: the pointers are live `at::Tensor`s borrowed for the call.
        check(unsafe {
            ffi::rt_dist_all_reduce(self.raw, ptrs.as_ptr(), ptrs.len(), op, self.bucket_bytes)
        })
    }

    /// Copies rank `root`'s tensors into every other rank's, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size() {
            bail!(
                "broadcast root {root} is not a rank of {}",
                self.world_size()
            );
        }
        if self.is_single() || tensors.is_empty() {
            return Ok(());
        }
        let ptrs = Self::ptrs(tensors);
        let root = c_int::try_from(root)?;
        // SAFETY: as in all_reduce.
        check(unsafe {
            ffi::rt_dist_broadcast(self.raw, ptrs.as_ptr(), ptrs.len(), root, self.bucket_bytes)
        })
    }

    /// Waits until every rank reaches its barrier.
    pub fn barrier(&self) -> Result<()> {
        if self.is_single() {
            return Ok(());
        }
        // SAFETY: a live handle.
        check(unsafe { ffi::rt_dist_barrier(self.raw) })
    }

    /// Every rank's `values` (lengths may differ), indexed by rank. For small host values:
    /// counts, losses, rewards.
    pub fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        if self.is_single() {
            return Ok(vec![values.to_vec()]);
        }
        let world = self.world_size();
        let mut lens = vec![0f64; world];
        let mine = [values.len() as f64];
        // SAFETY: `mine` holds 1 value and `lens` world values, as the call requires.
        check(unsafe {
            ffi::rt_dist_all_gather_f64(self.raw, mine.as_ptr(), 1, lens.as_mut_ptr())
        })?;
        let max = lens.iter().fold(0f64, |a, &b| a.max(b)) as usize;
        let mut padded = values.to_vec();
        padded.resize(max, 0.0);
        let mut all = vec![0f64; world * max];
        // SAFETY: `padded` holds `max` values and `all` world * max.
        check(unsafe {
            ffi::rt_dist_all_gather_f64(self.raw, padded.as_ptr(), max, all.as_mut_ptr())
        })?;
        Ok((0..world)
            .map(|r| {
                let row = &all[r * max..(r + 1) * max];
                row[..(lens[r] as usize).min(max)].to_vec()
            })
            .collect())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: created by rt_dist_new and freed once.
            unsafe { ffi::rt_dist_free(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<LaunchEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn single_without_variables() {
        let e = env(&[]).unwrap();
        assert_eq!((e.rank, e.world_size, e.launcher), (0, 1, "single"));
        let pg = ProcessGroup::single();
        let t = Tensor::from_slice(&[1f32, 2.0]);
        pg.all_reduce(&[t.shallow_clone()], ReduceOp::Avg).unwrap();
        pg.broadcast(&[t.shallow_clone()], 0).unwrap();
        pg.barrier().unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
        assert_eq!(pg.all_gather_f64(&[3.0]).unwrap(), vec![vec![3.0]]);
        assert!(pg.broadcast(&[t], 1).is_err());
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap();
        assert_eq!(
            e,
            LaunchEnv {
                rank: 1,
                world_size: 4,
                local_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 29400,
                agent_store: true,
                restart: 2,
                launcher: "torchrun"
            }
        );
    }

    #[test]
    fn slurm_variables() {
        let e = env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "n01"),
        ])
        .unwrap();
        assert_eq!(
            (
                e.rank,
                e.world_size,
                e.local_rank,
                e.launcher,
                e.agent_store
            ),
            (3, 8, 1, "slurm", false)
        );
        assert_eq!(e.master_port, 29500);
        let err = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MASTER_ADDR"), "{err}");
    }

    #[test]
    fn bad_variables_are_errors() {
        assert!(env(&[("WORLD_SIZE", "2")]).is_err());
        assert!(env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "x")]).is_err());
        assert!(env(&[("WORLD_SIZE", "two"), ("RANK", "0")]).is_err());
        assert!(env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "x"),
            ("MASTER_PORT", "99999")
        ])
        .is_err());
    }
}
