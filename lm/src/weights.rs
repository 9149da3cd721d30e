//! Reads HF safetensors checkpoints (single file or sharded with an index) tensor by tensor.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// All safetensors files of a checkpoint, memory-mapped, with a name -> file map.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    location: HashMap<String, usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: missing object `weight_map`", index.display()))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
                dir.display()
            );
        };
        Self::open_files(paths)
    }

    /// The given safetensors files as one checkpoint (e.g. a PEFT `adapter_model.safetensors`).
    pub fn open_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the file is opened read-only; we assume no one truncates it while we run.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            let st = SafeTensors::deserialize(&mmap)
                .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
            for name in st.names() {
                location.insert(name.to_string(), i);
            }
            files.push((path, mmap));
        }
        Ok(Self { files, location })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.location.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Loads `name`, checks its shape, converts to `kind` on `device`.
    pub fn load(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        self.load_checked(name, Some(shape), kind, device)
    }

    /// Loads `name` whatever its shape, converted to `kind` on `device`.
    pub fn load_any(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        self.load_checked(name, None, kind, device)
    }

    fn load_checked(
        &self,
        name: &str,
        shape: Option<&[i64]>,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let &i = self
            .location
            .get(name)
            .with_context(|| format!("checkpoint is missing tensor `{name}`"))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)?;
        let view = st
            .tensor(name)
            .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        let got: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape.is_some_and(|s| s != got.as_slice()) {
            bail!(
                "tensor `{name}` in {} has shape {got:?}, expected {:?} from config.json",
                path.display(),
                shape.unwrap_or_default()
            );
        }
        let src_kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => bail!(
                "tensor `{name}` in {} has dtype {other:?}; expected a float type",
                path.display()
            ),
        };
        let t = Tensor::f_from_data_size(view.data(), &got, src_kind)
            .with_context(|| format!("tensor `{name}`: building from bytes"))?;
        Ok(t.to_kind(kind).to_device(device))
    }
}

/// Writes tensors to one safetensors file atomically (temporary file, then rename).
pub fn save_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    struct View {
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    }
    impl safetensors::View for &View {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.data)
        }
        fn data_len(&self) -> usize {
            self.data.len()
        }
    }
    let mut views = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let (dtype, elem) = match t.kind() {
            Kind::Float => (Dtype::F32, 4),
            Kind::BFloat16 => (Dtype::BF16, 2),
            Kind::Half => (Dtype::F16, 2),
            Kind::Int64 => (Dtype::I64, 8),
            k => bail!("tensor `{name}`: cannot save kind {k:?}"),
        };
        let numel = t.numel();
        let mut data = vec![0u8; numel * elem];
        t.f_copy_data_u8(&mut data, numel)
            .with_context(|| format!("copying tensor `{name}` to host"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        views.push((name.clone(), View { dtype, shape, data }));
    }
    let refs: Vec<(&str, &View)> = views.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let bytes = safetensors::serialize(refs, metadata)
        .with_context(|| format!("serializing {}", path.display()))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Loads tensors by their HF names, candle-`VarBuilder` style: `vb.pp("self_attn")` descends
/// one module, `vb.get("weight", shape)` loads `<prefix>.weight` from the checkpoint (shape
/// checked, converted to the model's kind and device) and registers it in the `VarStore` under
/// the same dotted name, so each module loads itself and the name tree follows the struct tree.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    ckpt: &'a Checkpoint,
    used: &'a RefCell<HashSet<String>>,
    path: tch::nn::Path<'a>,
    prefix: String,
    kind: Kind,
}

impl<'a> VarBuilder<'a> {
    /// The root builder over `ckpt`, registering into `vs`; every loaded name goes into `used`.
    pub fn new(
        ckpt: &'a Checkpoint,
        used: &'a RefCell<HashSet<String>>,
        vs: &'a tch::nn::VarStore,
        kind: Kind,
    ) -> Self {
        Self {
            ckpt,
            used,
            path: vs.root(),
            prefix: String::new(),
            kind,
        }
    }

    /// The builder of the submodule `name` (a module name or a layer index).
    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        Self {
            ckpt: self.ckpt,
            used: self.used,
            path: self.path.sub(&name),
            prefix: self.name(&name),
            kind: self.kind,
        }
    }

    /// The full HF name of `leaf` under this builder.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// Whether the checkpoint holds `<prefix>.<leaf>`.
    pub fn contains(&self, leaf: &str) -> bool {
        self.ckpt.contains(&self.name(leaf))
    }

    /// Loads `<prefix>.<leaf>` with `shape` and registers it as a trainable variable.
    pub fn get(&self, leaf: &str, shape: &[i64]) -> Result<Tensor> {
        let name = self.name(leaf);
        let t = self
            .ckpt
            .load(&name, shape, self.kind, self.path.device())?;
        self.used.borrow_mut().insert(name);
        Ok(self.path.add(leaf, t, true))
    }
}
