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

/// Writes into a temporary file beside `path`; `finish` moves it into place. Dropped without
/// `finish` (an error on the way), it removes the temporary file: a failed write leaves
/// neither a torn store nor a stray temporary behind.
pub struct Writer {
    file: Option<hdf5::File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.close();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
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
            file: Some(file),
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn file(&self) -> Result<&hdf5::File> {
        self.file.as_ref().context("the store was already finished")
    }

    fn parent_group(&self, name: &str) -> Result<(hdf5::Group, String)> {
        let mut group: hdf5::Group = (**self.file()?).clone();
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
        self.file()?
            .new_attr::<VarLenUnicode>()
            .create(name)?
            .write_scalar(&v)?;
        Ok(())
    }

    /// Closes the file and moves it into place.
    pub fn finish(mut self) -> Result<()> {
        let file = self.file.take().context("the store was already finished")?;
        let done = file.close().context("closing HDF5 file").and_then(|()| {
            std::fs::rename(&self.tmp, &self.path).with_context(|| {
                format!("renaming {} to {}", self.tmp.display(), self.path.display())
            })
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
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
    let version: u32 = r.attr("schema_version")?.trim().parse().with_context(|| {
        format!(
            "{}: attribute `schema_version` is not a version number",
            r.path.display()
        )
    })?;
    if version != SCHEMA_VERSION {
        bail!("{}: schema version {version}, this build reads {SCHEMA_VERSION}; run `recthinker data prepare` again", r.path.display());
    }
    let config: PrepareConfig = serde_json::from_str(&r.attr("config")?)
        .with_context(|| format!("{}: parsing attribute `config`", r.path.display()))?;
    let bad = |name: &str, what: String| -> anyhow::Error {
        anyhow::anyhow!("{}: dataset /{name}: {what}", r.path.display())
    };
    // Parallel datasets of one table must have one row each.
    let same_len = |a: &str, na: usize, b: &str, nb: usize| -> Result<()> {
        if na != nb {
            return Err(bad(b, format!("{nb} rows, but /{a} has {na}")));
        }
        Ok(())
    };
    let meta_rows = |ids: &str, metas: &str| -> Result<Vec<(String, String)>> {
        let (ids_v, metas_v) = (r.get_strings(ids)?, r.get_strings(metas)?);
        same_len(ids, ids_v.len(), metas, metas_v.len())?;
        Ok(ids_v.into_iter().zip(metas_v).collect())
    };
    let items = meta_rows("items/raw_id", "items/meta")?
        .into_iter()
        .enumerate()
        .map(|(k, (raw_id, m))| {
            Ok(Item {
                raw_id,
                meta: serde_json::from_str(&m)
                    .map_err(|e| bad("items/meta", format!("row {k}: {e}")))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let users = meta_rows("users/raw_id", "users/meta")?
        .into_iter()
        .enumerate()
        .map(|(k, (raw_id, m))| {
            Ok(User {
                raw_id,
                meta: serde_json::from_str(&m)
                    .map_err(|e| bad("users/meta", format!("row {k}: {e}")))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (n_items, n_users) = (items.len(), users.len());
    // Every index must point into its table.
    let in_range = |name: &str, ids: &[u32], n: usize| -> Result<()> {
        match ids.iter().position(|&i| i as usize >= n) {
            Some(k) => Err(bad(name, format!("row {k} = {} is not below {n}", ids[k]))),
            None => Ok(()),
        }
    };
    let offsets: Vec<u64> = r.get("events/user_offsets")?;
    let (item, rating, ts): (Vec<u32>, Vec<f32>, Vec<i64>) = (
        r.get("events/item")?,
        r.get("events/rating")?,
        r.get("events/timestamp")?,
    );
    same_len("events/item", item.len(), "events/rating", rating.len())?;
    same_len("events/item", item.len(), "events/timestamp", ts.len())?;
    in_range("events/item", &item, n_items)?;
    if let Some(k) = rating.iter().position(|x| !x.is_finite()) {
        return Err(bad(
            "events/rating",
            format!("row {k} is not a finite number"),
        ));
    }
    if offsets.len() != n_users + 1
        || offsets.first() != Some(&0)
        || offsets.last() != Some(&(item.len() as u64))
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(bad(
            "events/user_offsets",
            format!(
                "expected {} non-decreasing offsets from 0 to {} (the length of /events/item)",
                n_users + 1,
                item.len()
            ),
        ));
    }
    let sequences: Vec<Vec<Event>> = offsets
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
    if let Some(u) = sequences.iter().position(|s| s.len() < 2) {
        return Err(bad(
            "events/user_offsets",
            format!("user {u} has fewer than 2 events (no validation and test target)"),
        ));
    }
    let (fi, fr, fe): (Vec<u32>, Vec<u32>, Vec<u32>) = (
        r.get("kg/item")?,
        r.get("kg/relation")?,
        r.get("kg/entity")?,
    );
    same_len("kg/item", fi.len(), "kg/relation", fr.len())?;
    same_len("kg/item", fi.len(), "kg/entity", fe.len())?;
    let relations = r.get_strings("kg/relations")?;
    let entities = r.get_strings("kg/entities")?;
    in_range("kg/item", &fi, n_items)?;
    in_range("kg/relation", &fr, relations.len())?;
    in_range("kg/entity", &fe, entities.len())?;
    let kg = KnowledgeGraph {
        facts: fi
            .into_iter()
            .zip(fr)
            .zip(fe)
            .map(|((i, rel), e)| (i, rel, e))
            .collect(),
        relations,
        entities,
    };
    let episodes = |name: &str| -> Result<Vec<Episode>> {
        let path = |field: &str| format!("episodes/{name}/{field}");
        let users: Vec<u32> = r.get(&path("user"))?;
        let pos: Vec<u32> = r.get(&path("pos"))?;
        let tix: Vec<u32> = r.get(&path("target_index"))?;
        let cands: Vec<u32> = r.get(&path("candidates"))?;
        let c = config.candidates;
        same_len(&path("user"), users.len(), &path("pos"), pos.len())?;
        same_len(&path("user"), users.len(), &path("target_index"), tix.len())?;
        if cands.len() != users.len() * c {
            return Err(bad(
                &path("candidates"),
                format!("{} ids, expected {}", cands.len(), users.len() * c),
            ));
        }
        in_range(&path("user"), &users, n_users)?;
        in_range(&path("target_index"), &tix, c)?;
        in_range(&path("candidates"), &cands, n_items)?;
        (0..users.len())
            .map(|k| {
                let seq = &sequences[users[k] as usize];
                let Some(target) = seq.get(pos[k] as usize) else {
                    return Err(bad(
                        &path("pos"),
                        format!(
                            "row {k} = {} is past its user's {} events",
                            pos[k],
                            seq.len()
                        ),
                    ));
                };
                let candidates = cands[k * c..(k + 1) * c].to_vec();
                if candidates[tix[k] as usize] != target.item {
                    return Err(bad(
                        &path("target_index"),
                        format!("row {k} does not point at the episode's target"),
                    ));
                }
                Ok(Episode {
                    user: users[k],
                    pos: pos[k],
                    candidates,
                    target_index: tix[k],
                })
            })
            .collect()
    };
    let sparse_users: Vec<u32> = r.get("subsets/sparse")?;
    let dense_users: Vec<u32> = r.get("subsets/dense")?;
    in_range("subsets/sparse", &sparse_users, n_users)?;
    in_range("subsets/dense", &dense_users, n_users)?;
    Ok(Prepared {
        train: episodes("train")?,
        valid: episodes("valid")?,
        test: episodes("test")?,
        sparse_users,
        dense_users,
        config,
        items,
        users,
        sequences,
        kg,
    })
}
