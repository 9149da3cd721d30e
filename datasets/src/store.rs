//! The HDF5 store: one file holds the prepared dataset (schema version and the config that
//! made it as attributes), and the collaborative models trained on it: `/models` on the
//! evaluation horizon, `/models_train` on the training horizon (`tools::world::Horizon`).
//! Files are written to a temporary path and renamed, so a crash never leaves a torn file.

use crate::prepare::{Episode, Event, Item, KnowledgeGraph, PrepareConfig, Prepared, User};
use anyhow::{bail, Context, Result};
use hdf5::types::{H5Type, VarLenUnicode};
use std::path::{Path, PathBuf};

/// 2: a second model set, `/models_train`, for training episodes.
pub const SCHEMA_VERSION: u32 = 2;

pub struct Writer {
    file: hdf5::File,
    tmp: PathBuf,
    path: PathBuf,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file path", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file =
            hdf5::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn parent_group(&self, name: &str) -> Result<(hdf5::Group, String)> {
        let mut group: hdf5::Group = (*self.file).clone();
        let mut parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
        let leaf = parts.pop().context("empty dataset name")?.to_string();
        for p in parts {
            group = if group.link_exists(p) {
                group.group(p)?
            } else {
                group.create_group(p)?
            };
        }
        Ok((group, leaf))
    }

    pub fn put<T: H5Type>(&self, name: &str, data: &[T]) -> Result<()> {
        let (g, leaf) = self.parent_group(name)?;
        g.new_dataset_builder()
            .with_data(data)
            .create(leaf.as_str())
            .with_context(|| format!("writing dataset {name}"))?;
        Ok(())
    }

    pub fn put_strings(&self, name: &str, data: &[String]) -> Result<()> {
        let v: Vec<VarLenUnicode> = data
            .iter()
            .map(|s| {
                s.replace('\0', " ")
                    .parse::<VarLenUnicode>()
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect::<Result<_>>()?;
        self.put(name, &v)
    }

    pub fn put_attr(&self, name: &str, value: &str) -> Result<()> {
        let v: VarLenUnicode = value
            .parse()
            .map_err(|e| anyhow::anyhow!("attribute {name}: {e}"))?;
        self.file
            .new_attr::<VarLenUnicode>()
            .create(name)?
            .write_scalar(&v)?;
        Ok(())
    }

    /// Closes the file and moves it into place.
    pub fn finish(self) -> Result<()> {
        let Self { file, tmp, path } = self;
        file.close().context("closing HDF5 file")?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}

pub struct Reader {
    file: hdf5::File,
    pub path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = hdf5::File::open(path).with_context(|| {
            format!(
                "opening {} (is it a file made by `recthinker data prepare`?)",
                path.display()
            )
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        let mut group: hdf5::Group = (*self.file).clone();
        let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
        for (i, p) in parts.iter().enumerate() {
            if !group.link_exists(p) {
                return false;
            }
            if i + 1 < parts.len() {
                match group.group(p) {
                    Ok(g) => group = g,
                    Err(_) => return false,
                }
            }
        }
        true
    }

    pub fn get<T: H5Type>(&self, name: &str) -> Result<Vec<T>> {
        self.file
            .dataset(name)
            .and_then(|d| d.read_raw::<T>())
            .with_context(|| format!("{}: reading dataset /{name}", self.path.display()))
    }

    pub fn get_strings(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .get::<VarLenUnicode>(name)?
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect())
    }

    pub fn attr(&self, name: &str) -> Result<String> {
        let v: VarLenUnicode = self
            .file
            .attr(name)
            .and_then(|a| a.read_scalar())
            .with_context(|| format!("{}: missing attribute `{name}`", self.path.display()))?;
        Ok(v.as_str().to_string())
    }
}

pub fn write_prepared(w: &Writer, p: &Prepared) -> Result<()> {
    w.put_attr("schema_version", &SCHEMA_VERSION.to_string())?;
    w.put_attr("config", &serde_json::to_string(&p.config)?)?;
    w.put_strings(
        "items/raw_id",
        &p.items.iter().map(|i| i.raw_id.clone()).collect::<Vec<_>>(),
    )?;
    w.put_strings(
        "items/meta",
        &p.items
            .iter()
            .map(|i| serde_json::to_string(&i.meta))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    w.put_strings(
        "users/raw_id",
        &p.users.iter().map(|u| u.raw_id.clone()).collect::<Vec<_>>(),
    )?;
    w.put_strings(
        "users/meta",
        &p.users
            .iter()
            .map(|u| serde_json::to_string(&u.meta))
            .collect::<Result<Vec<_>, _>>()?,
    )?;
    let mut offsets = vec![0u64];
    let (mut item, mut rating, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    for seq in &p.sequences {
        for e in seq {
            item.push(e.item);
            rating.push(e.rating);
            ts.push(e.timestamp);
        }
        offsets.push(item.len() as u64);
    }
    w.put("events/user_offsets", &offsets)?;
    w.put("events/item", &item)?;
    w.put("events/rating", &rating)?;
    w.put("events/timestamp", &ts)?;
    let (fi, fr, fe): (Vec<u32>, Vec<u32>, Vec<u32>) =
        p.kg.facts
            .iter()
            .fold((vec![], vec![], vec![]), |mut acc, f| {
                acc.0.push(f.0);
                acc.1.push(f.1);
                acc.2.push(f.2);
                acc
            });
    w.put("kg/item", &fi)?;
    w.put("kg/relation", &fr)?;
    w.put("kg/entity", &fe)?;
    w.put_strings("kg/relations", &p.kg.relations)?;
    w.put_strings("kg/entities", &p.kg.entities)?;
    for (name, eps) in [("train", &p.train), ("valid", &p.valid), ("test", &p.test)] {
        w.put(
            &format!("episodes/{name}/user"),
            &eps.iter().map(|e| e.user).collect::<Vec<_>>(),
        )?;
        w.put(
            &format!("episodes/{name}/pos"),
            &eps.iter().map(|e| e.pos).collect::<Vec<_>>(),
        )?;
        w.put(
            &format!("episodes/{name}/target_index"),
            &eps.iter().map(|e| e.target_index).collect::<Vec<_>>(),
        )?;
        w.put(
            &format!("episodes/{name}/candidates"),
            &eps.iter()
                .flat_map(|e| e.candidates.iter().copied())
                .collect::<Vec<_>>(),
        )?;
    }
    w.put("subsets/sparse", &p.sparse_users)?;
    w.put("subsets/dense", &p.dense_users)?;
    Ok(())
}

pub fn read_prepared(r: &Reader) -> Result<Prepared> {
    let version: u32 = r
        .attr("schema_version")?
        .parse()
        .context("schema_version")?;
    if version != SCHEMA_VERSION {
        bail!("{}: schema version {version}, this build reads {SCHEMA_VERSION}; run `recthinker data prepare` again", r.path.display());
    }
    let config: PrepareConfig =
        serde_json::from_str(&r.attr("config")?).context("parsing the stored config")?;
    let items = r
        .get_strings("items/raw_id")?
        .into_iter()
        .zip(r.get_strings("items/meta")?.iter())
        .map(|(raw_id, m)| {
            Ok(Item {
                raw_id,
                meta: serde_json::from_str(m).context("parsing stored item metadata")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let users = r
        .get_strings("users/raw_id")?
        .into_iter()
        .zip(r.get_strings("users/meta")?.iter())
        .map(|(raw_id, m)| {
            Ok(User {
                raw_id,
                meta: serde_json::from_str(m).context("parsing stored user metadata")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let offsets: Vec<u64> = r.get("events/user_offsets")?;
    let (item, rating, ts): (Vec<u32>, Vec<f32>, Vec<i64>) = (
        r.get("events/item")?,
        r.get("events/rating")?,
        r.get("events/timestamp")?,
    );
    let sequences = offsets
        .windows(2)
        .map(|w| {
            (w[0] as usize..w[1] as usize)
                .map(|k| Event {
                    item: item[k],
                    rating: rating[k],
                    timestamp: ts[k],
                })
                .collect()
        })
        .collect();
    let (fi, fr, fe): (Vec<u32>, Vec<u32>, Vec<u32>) = (
        r.get("kg/item")?,
        r.get("kg/relation")?,
        r.get("kg/entity")?,
    );
    let kg = KnowledgeGraph {
        facts: fi
            .into_iter()
            .zip(fr)
            .zip(fe)
            .map(|((i, rel), e)| (i, rel, e))
            .collect(),
        relations: r.get_strings("kg/relations")?,
        entities: r.get_strings("kg/entities")?,
    };
    let episodes = |name: &str| -> Result<Vec<Episode>> {
        let users: Vec<u32> = r.get(&format!("episodes/{name}/user"))?;
        let pos: Vec<u32> = r.get(&format!("episodes/{name}/pos"))?;
        let tix: Vec<u32> = r.get(&format!("episodes/{name}/target_index"))?;
        let cands: Vec<u32> = r.get(&format!("episodes/{name}/candidates"))?;
        let c = config.candidates;
        if cands.len() != users.len() * c {
            bail!(
                "{}: /episodes/{name}/candidates has {} ids, expected {}",
                r.path.display(),
                cands.len(),
                users.len() * c
            );
        }
        Ok((0..users.len())
            .map(|k| Episode {
                user: users[k],
                pos: pos[k],
                candidates: cands[k * c..(k + 1) * c].to_vec(),
                target_index: tix[k],
            })
            .collect())
    };
    Ok(Prepared {
        train: episodes("train")?,
        valid: episodes("valid")?,
        test: episodes("test")?,
        sparse_users: r.get("subsets/sparse")?,
        dense_users: r.get("subsets/dense")?,
        config,
        items,
        users,
        sequences,
        kg,
    })
}
