//! RecBole atomic files (`.inter .item .user .kg .link`): tab-separated with typed headers
//! such as `item_id:token<TAB>movie_title:token_seq`. MovieLens-100k as shipped by PyPI
//! `recbole==1.2.1` under `recbole/dataset_example/ml-100k/`.

use super::{first_time, parse_finite, read_text, require_rows};
use crate::raw::{split_title_year, Interaction, ItemMeta, KgFact, RawDataset, UserMeta};
use anyhow::{bail, Result};
use std::path::Path;

/// Rows of an atomic file as (line number, fields), with the header's field names.
struct Atomic {
    names: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Atomic {
    fn read(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let mut lines = text.lines().enumerate();
        let Some((_, header)) = lines.next().filter(|(_, h)| !h.trim().is_empty()) else {
            bail!("{}:1: empty file, expected a typed header", path.display());
        };
        // Every header field is `name:type` (RecBole's atomic format); anything else is a
        // file with another delimiter or no header.
        let mut names = Vec::new();
        for field in header.split('\t') {
            match field.trim_end_matches('\r').split_once(':') {
                Some((name, ty))
                    if !name.is_empty()
                        && ["token", "token_seq", "float", "float_seq"].contains(&ty) =>
                {
                    names.push(name.to_string())
                }
                _ => bail!(
                    "{}:1: header field `{}` is not `name:type` (token, token_seq, float or \
                     float_seq) in a tab-separated header",
                    path.display(),
                    field.chars().take(60).collect::<String>()
                ),
            }
        }
        let mut rows = Vec::new();
        for (i, line) in lines {
            if line.is_empty() {
                continue;
            }
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            if fields.len() != names.len() {
                bail!(
                    "{}:{}: expected {} tab-separated fields ({}), found {}",
                    path.display(),
                    i + 1,
                    names.len(),
                    names.join(", "),
                    fields.len()
                );
            }
            rows.push((i + 1, fields));
        }
        require_rows(rows.len(), path, 2)?;
        Ok(Self { names, rows })
    }

    fn col(&self, name: &str, path: &Path) -> Result<usize> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(i),
            None => bail!(
                "{}:1: header has no field `{name}` (found: {})",
                path.display(),
                self.names.join(", ")
            ),
        }
    }
}

/// Reads `<dir>/<name>.inter` and, when present, `.item .user .kg .link`.
pub fn read(dir: &Path, name: &str) -> Result<RawDataset> {
    let mut ds = RawDataset {
        name: name.to_string(),
        ..Default::default()
    };
    let inter_path = dir.join(format!("{name}.inter"));
    let inter = Atomic::read(&inter_path)?;
    let (u, i) = (
        inter.col("user_id", &inter_path)?,
        inter.col("item_id", &inter_path)?,
    );
    let r = inter.col("rating", &inter_path)?;
    let t = inter.col("timestamp", &inter_path)?;
    for (line, f) in &inter.rows {
        ds.interactions.push(Interaction {
            user: f[u].clone(),
            item: f[i].clone(),
            rating: parse_finite(&f[r], "rating", &inter_path, *line)?,
            timestamp: parse_finite::<f64>(&f[t], "timestamp", &inter_path, *line)? as i64,
        });
    }
    let item_path = dir.join(format!("{name}.item"));
    if item_path.exists() {
        let items = Atomic::read(&item_path)?;
        let id = items.col("item_id", &item_path)?;
        let title = items.col("movie_title", &item_path)?;
        let year = items.names.iter().position(|n| n == "release_year");
        let class = items.names.iter().position(|n| n == "class");
        let mut seen = std::collections::HashMap::new();
        for (line, f) in &items.rows {
            first_time(&mut seen, &f[id], &item_path, *line)?;
            let (clean, title_year) = split_title_year(&f[title]);
            // The shipped ml-100k.item writes unknown years as "unkonwn": treat any
            // non-numeric year as unknown rather than rejecting the real file.
            let year = year
                .and_then(|y| f[y].trim().parse::<i32>().ok())
                .or(title_year);
            let categories = class
                .map(|c| f[c].split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            ds.items.insert(
                f[id].clone(),
                ItemMeta {
                    title: clean,
                    year,
                    categories,
                    ..Default::default()
                },
            );
        }
    }
    let user_path = dir.join(format!("{name}.user"));
    if user_path.exists() {
        let users = Atomic::read(&user_path)?;
        let id = users.col("user_id", &user_path)?;
        let get = |n: &str| users.names.iter().position(|x| x == n);
        let (age, gender, occ, zip) = (
            get("age"),
            get("gender"),
            get("occupation"),
            get("zip_code"),
        );
        let mut seen = std::collections::HashMap::new();
        for (line, f) in &users.rows {
            first_time(&mut seen, &f[id], &user_path, *line)?;
            let pick = |c: Option<usize>| c.map(|c| f[c].clone()).filter(|v| !v.is_empty());
            ds.users.insert(
                f[id].clone(),
                UserMeta {
                    age: pick(age),
                    gender: pick(gender),
                    occupation: pick(occ),
                    zip: pick(zip),
                },
            );
        }
    }
    let (kg_path, link_path) = (
        dir.join(format!("{name}.kg")),
        dir.join(format!("{name}.link")),
    );
    if kg_path.exists() && link_path.exists() {
        let link = Atomic::read(&link_path)?;
        let (li, le) = (
            link.col("item_id", &link_path)?,
            link.col("entity_id", &link_path)?,
        );
        let entity_to_item: std::collections::HashMap<&str, &str> = link
            .rows
            .iter()
            .map(|(_, f)| (f[le].as_str(), f[li].as_str()))
            .collect();
        let kg = Atomic::read(&kg_path)?;
        let (h, rel, tail) = (
            kg.col("head_id", &kg_path)?,
            kg.col("relation_id", &kg_path)?,
            kg.col("tail_id", &kg_path)?,
        );
        for (_, f) in &kg.rows {
            // Facts whose head is one of the dataset's movies; relations like
            // film.film.directed_by point from the movie to the director entity.
            if let Some(item) = entity_to_item.get(f[h].as_str()) {
                ds.kg.push(KgFact {
                    item: item.to_string(),
                    relation: f[rel].clone(),
                    entity: f[tail].clone(),
                });
            }
        }
    }
    Ok(ds)
}
