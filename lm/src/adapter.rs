//! PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`, as
//! `peft` saves them): loading one onto its base model, and extracting one from a fine-tuned
//! model as the truncated SVD of its difference to the base, so that a model trained by
//! several LoRA stages (SFT, then GRPO on the merged SFT model) ships as one small adapter
//! that `PeftModel.from_pretrained(base, dir)` and `Policy::load(dir)` both read.

use crate::lora::MODULES;
use crate::model::Model;
use crate::weights::{save_safetensors, Checkpoint};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of a causal LM's parameter names inside an adapter file.
const PEFT_PREFIX: &str = "base_model.model.";

/// The fields of PEFT's `adapter_config.json` this loader uses (others are ignored).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    pub base_model_name_or_path: String,
    pub r: i64,
    pub lora_alpha: f64,
    /// A list of module names or a regex string in PEFT; informational here (the factors in
    /// the file say which projections they adapt).
    #[serde(default)]
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
}

/// A directory is an adapter directory when it has `adapter_config.json` and no `config.json`.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).exists() && !dir.join("config.json").exists()
}

pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: AdapterConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(t) = cfg.peft_type.as_deref().filter(|t| *t != "LORA") {
        bail!(
            "{}: peft_type `{t}`; only LORA adapters load",
            path.display()
        );
    }
    if cfg.use_rslora {
        bail!("{}: use_rslora adapters are not supported", path.display());
    }
    if cfg.r <= 0 {
        bail!("{}: r must be positive, got {}", path.display(), cfg.r);
    }
    Ok(cfg)
}

/// The base model directory an adapter names: as written (relative to the working directory,
/// as PEFT reads it), else relative to the adapter directory.
pub fn base_dir(dir: &Path, cfg: &AdapterConfig) -> Result<PathBuf> {
    let p = PathBuf::from(&cfg.base_model_name_or_path);
    for cand in [p.clone(), dir.join(&p)] {
        if cand.join("config.json").exists() {
            return Ok(cand);
        }
    }
    bail!(
        "{}: base model `{}` (base_model_name_or_path) is not a model directory, neither from the \
         working directory nor from the adapter's; run from the directory it is relative to",
        dir.join(CONFIG_FILE).display(),
        cfg.base_model_name_or_path
    )
}

/// Merges the adapter in `dir` into `model`'s weights (`W += alpha/r * B A` for every
/// projection it has factors for), leaving no adapter variables behind, so the result trains
/// and exports as a plain model. The file must hold both factors of each target and nothing
/// that matches no projection.
pub fn merge_into(model: &Model, dir: &Path, cfg: &AdapterConfig) -> Result<()> {
    let weights = dir.join(WEIGHTS_FILE);
    let ckpt = Checkpoint::open_files(vec![weights.clone()])?;
    let scale = cfg.lora_alpha / cfg.r as f64;
    let vars = model.vs.variables();
    let mut used = 0usize;
    tch::no_grad(|| -> Result<()> {
        for (name, w) in &vars {
            let Some(stem) = name.strip_suffix(".weight") else {
                continue;
            };
            let key = |f: &str| format!("{PEFT_PREFIX}{stem}.{f}.weight");
            let (ka, kb) = (key("lora_A"), key("lora_B"));
            match (ckpt.contains(&ka), ckpt.contains(&kb)) {
                (false, false) => continue,
                (true, true) => {}
                _ => bail!(
                    "{}: `{stem}` has only one of lora_A / lora_B",
                    weights.display()
                ),
            }
            let (out, inp) = (w.size()[0], w.size()[1]);
            let a = ckpt.load(&ka, &[cfg.r, inp], Kind::Float, w.device())?;
            let b = ckpt.load(&kb, &[out, cfg.r], Kind::Float, w.device())?;
            let delta = (b.matmul(&a) * scale).to_kind(w.kind());
            let _ = w.shallow_clone().g_add_(&delta);
            used += 2;
        }
        Ok(())
    })?;
    let total = ckpt.names().count();
    if used != total {
        let mut extra: Vec<&String> = ckpt
            .names()
            .filter(|k| {
                let base = k
                    .strip_prefix(PEFT_PREFIX)
                    .and_then(|n| n.rsplit_once(".lora_"))
                    .map(|(stem, _)| format!("{stem}.weight"));
                !base.is_some_and(|n| vars.contains_key(&n))
            })
            .collect();
        extra.sort();
        bail!(
            "{}: {} tensors match no projection of the model, e.g. `{}`",
            weights.display(),
            total - used,
            extra.first().map(|s| s.as_str()).unwrap_or("?")
        );
    }
    if used == 0 {
        bail!("{}: no LoRA factors", weights.display());
    }
    Ok(())
}

/// What an extraction kept, per projection kind and overall.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Extraction {
    pub rank: i64,
    pub matrices: usize,
    /// Fraction of the difference's squared Frobenius norm the rank-r factors keep (1 = exact).
    pub energy_kept: f64,
    pub min_energy_kept: f64,
    /// Relative Frobenius error ||delta - BA|| / ||delta||, worst matrix.
    pub max_relative_error: f64,
    pub energy_kept_by_module: BTreeMap<String, f64>,
    pub parameters: i64,
    pub bytes: u64,
}

/// Writes into `out` a rank-`rank` PEFT adapter that turns `base` into (approximately)
/// `tuned`: for every projection `delta = W_tuned - W_base = U S V^T`, `B = U_r sqrt(S_r)`,
/// `A = sqrt(S_r) V_r^T`, alpha = r (scale 1), stored in `kind`. Every other tensor must be
/// equal in both models (an adapter cannot carry it): an error names the first that is not.
/// `base_name` is written as `base_model_name_or_path`.
pub fn extract(
    base: &Path,
    tuned: &Path,
    base_name: &str,
    rank: i64,
    kind: Kind,
    out: &Path,
) -> Result<Extraction> {
    if rank <= 0 {
        bail!("--rank must be positive, got {rank}");
    }
    crate::device::init_torch(); // RECTHINKER_THREADS, as for every other torch op here
    let (b, t) = (Checkpoint::open(base)?, Checkpoint::open(tuned)?);
    let mut names: Vec<&String> = t.names().collect();
    names.sort();
    let mut tensors = BTreeMap::new();
    let mut targets: Vec<String> = Vec::new();
    let (mut kept, mut total, mut min_kept, mut max_err) = (0.0f64, 0.0f64, 1.0f64, 0.0f64);
    let mut by_module: HashMap<String, (f64, f64)> = HashMap::new();
    let mut matrices = 0;
    for name in names {
        if !b.contains(name) {
            bail!(
                "{}: tensor `{name}` is not in the base model {}",
                tuned.display(),
                base.display()
            );
        }
        let wt = t.load_any(name, Kind::Float, Device::Cpu)?;
        let wb = b.load_any(name, Kind::Float, Device::Cpu)?;

        if wt.size() != wb.size() {
            bail!(
                "tensor `{name}`: shape {:?} in {} but {:?} in the base",
                wt.size(),
                tuned.display(),
                wb.size()
            );
        }
        let module = MODULES
            .iter()
            .find(|m| name.ends_with(&format!(".{m}.weight")));
        let Some(module) = module else {
            let diff = (&wt - &wb).abs().max().double_value(&[]);
            if diff != 0.0 {
                bail!(
                    "tensor `{name}` differs from the base by up to {diff:e} and is not a LoRA \
                     projection ({}): an adapter cannot carry it",
                    MODULES.join(", ")
                );
            }
            continue;
        };
        let delta = wt - wb;
        let (u, s, v) = delta
            .f_svd(true, true)
            .with_context(|| format!("SVD of the difference of `{name}`"))?;
        let vh = v.tr();

        let r = rank.min(s.size()[0]);
        let sr = s.narrow(0, 0, r).sqrt();
        let bm = u.narrow(1, 0, r) * sr.unsqueeze(0);
        let am = sr.unsqueeze(1) * vh.narrow(0, 0, r);
        let e_all = s.square().sum(Kind::Double).double_value(&[]);
        let e_kept = s
            .narrow(0, 0, r)
            .square()
            .sum(Kind::Double)
            .double_value(&[]);
        let err = (&delta - bm.matmul(&am)).norm().double_value(&[]);
        let dnorm = delta.norm().double_value(&[]);
        kept += e_kept;
        total += e_all;
        if e_all > 0.0 {
            min_kept = min_kept.min(e_kept / e_all);
            max_err = max_err.max(err / dnorm);
        }
        let m = by_module.entry(module.to_string()).or_default();
        m.0 += e_kept;
        m.1 += e_all;
        if !targets.iter().any(|x| x == module) {
            targets.push(module.to_string());
        }
        // Pad to the full rank with zeros when a matrix is smaller than r (never for real models).
        let pad = |x: Tensor, dim: i64| {
            if r == rank {
                x
            } else {
                let mut shape = x.size();
                shape[dim as usize] = rank - r;
                Tensor::cat(&[x, Tensor::zeros(shape, (Kind::Float, Device::Cpu))], dim)
            }
        };
        let stem = name.trim_end_matches(".weight");
        tensors.insert(
            format!("{PEFT_PREFIX}{stem}.lora_A.weight"),
            pad(am, 0).to_kind(kind),
        );
        tensors.insert(
            format!("{PEFT_PREFIX}{stem}.lora_B.weight"),
            pad(bm, 1).to_kind(kind),
        );
        matrices += 1;
    }
    if matrices == 0 {
        bail!(
            "{}: no LoRA projection ({}) found",
            tuned.display(),
            MODULES.join(", ")
        );
    }
    targets.sort_by_key(|m| MODULES.iter().position(|x| x == m));
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "init_lora_weights": true,
        "target_modules": targets,
    });
    let parameters: i64 = tensors.values().map(|t| t.numel() as i64).sum();
    crate::fsutil::write_dir_atomic(out, |tmp| {
        save_safetensors(&tensors, None, &tmp.join(WEIGHTS_FILE))?;
        crate::fsutil::write_atomic(
            &tmp.join(CONFIG_FILE),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )
    })
    .with_context(|| format!("writing the adapter into {}", out.display()))?;
    let bytes = std::fs::metadata(out.join(WEIGHTS_FILE))?.len();
    Ok(Extraction {
        rank,
        matrices,
        energy_kept: if total > 0.0 { kept / total } else { 1.0 },
        min_energy_kept: min_kept,
        max_relative_error: max_err,
        energy_kept_by_module: by_module
            .into_iter()
            .map(|(k, (a, b))| (k, if b > 0.0 { a / b } else { 1.0 }))
            .collect(),
        parameters,
        bytes,
    })
}
