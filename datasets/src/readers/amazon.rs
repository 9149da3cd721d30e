//! Amazon Reviews, JSON lines: the 2018 release (`reviewerID asin overall unixReviewTime`,
//! 5-core review files, and `meta_*.json`) and the 2023 release (`user_id parent_asin rating
//! timestamp` in milliseconds, and `meta_*.jsonl`). Files must be decompressed.

use super::{find_file, read_text, require_rows};
use crate::raw::{Interaction, ItemMeta, RawDataset};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

fn json_lines(path: &Path) -> Result<Vec<(usize, Value)>> {
    if path.extension().is_some_and(|e| e == "gz") {
        bail!("{}: decompress the file first (gunzip)", path.display());
    }
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    require_rows(out.len(), path, 1)?;
    Ok(out)
}

fn req_str(v: &Value, key: &str, path: &Path, line: usize) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => bail!("{}:{line}: missing string field `{key}`", path.display()),
    }
}

fn req_f64(v: &Value, key: &str, path: &Path, line: usize) -> Result<f64> {
    match v.get(key) {
        Some(Value::Number(n)) => n
            .as_f64()
            .with_context(|| format!("{}:{line}: `{key}` out of range", path.display())),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .with_context(|| {
                let shown: String = s.chars().take(40).collect();
                format!(
                    "{}:{line}: `{key}` = {shown:?} is not a number",
                    path.display()
                )
            }),
        _ => bail!("{}:{line}: missing numeric field `{key}`", path.display()),
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        _ => Vec::new(),
    }
}

/// "$12.99" or 12.99 -> 12.99; ranges and blanks -> None.
fn price(v: Option<&Value>) -> Option<f32> {
    match v? {
        Value::Number(n) => n.as_f64().map(|p| p as f32),
        Value::String(s) => s
            .trim()
            .trim_start_matches('$')
            .replace(',', "")
            .parse()
            .ok(),
        _ => None,
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    let parts = str_list(v);
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Where a review line keeps its fields: the two releases name them differently.
struct ReviewFields {
    user: &'static str,
    item: &'static str,
    rating: &'static str,
    timestamp: &'static str,
    /// Timestamp units per second (2023 writes milliseconds).
    per_second: f64,
}

const REVIEWS_2018: ReviewFields = ReviewFields {
    user: "reviewerID",
    item: "asin",
    rating: "overall",
    timestamp: "unixReviewTime",
    per_second: 1.0,
};

/// Items are keyed by `parent_asin`, as the 2023 benchmarks do.
const REVIEWS_2023: ReviewFields = ReviewFields {
    user: "user_id",
    item: "parent_asin",
    rating: "rating",
    timestamp: "timestamp",
    per_second: 1000.0,
};

fn read_reviews(path: &Path, f: &ReviewFields) -> Result<Vec<Interaction>> {
    json_lines(path)?
        .into_iter()
        .map(|(line, v)| {
            let rating = req_f64(&v, f.rating, path, line)? as f32;
            if !rating.is_finite() {
                bail!("{}:{line}: `{}` out of range", path.display(), f.rating);
            }
            Ok(Interaction {
                user: req_str(&v, f.user, path, line)?,
                item: req_str(&v, f.item, path, line)?,
                rating,
                timestamp: (req_f64(&v, f.timestamp, path, line)? / f.per_second) as i64,
            })
        })
        .collect()
}

/// `dir` holds one reviews file (`*.json`, e.g. `CDs_and_Vinyl_5.json`) and optionally one
/// `meta_*.json`.
pub fn read_2018(dir: &Path) -> Result<RawDataset> {
    let reviews = find_file(dir, "Amazon 2018 reviews (*.json)", |n| {
        n.ends_with(".json") && !n.starts_with("meta_")
    })?;
    let mut ds = RawDataset {
        name: "amazon2018".into(),
        ..Default::default()
    };
    ds.interactions = read_reviews(&reviews, &REVIEWS_2018)?;
    if let Ok(meta) = find_file(dir, "meta", |n| {
        n.starts_with("meta_") && n.ends_with(".json")
    }) {
        for (line, v) in json_lines(&meta)? {
            let asin = req_str(&v, "asin", &meta, line)?;
            if ds.items.contains_key(&asin) {
                continue; // published metadata can repeat a product: the first entry counts
            }
            let categories = str_list(v.get("category"));
            ds.items.insert(
                asin,
                ItemMeta {
                    title: v
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                    year: None,
                    categories,
                    brand: v
                        .get("brand")
                        .and_then(Value::as_str)
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    price: price(v.get("price")),
                    description: text_of(v.get("description")),
                    also_buy: str_list(v.get("also_buy")),
                    also_view: str_list(v.get("also_view")),
                },
            );
        }
    }
    Ok(ds)
}

/// `dir` holds one reviews file (`*.jsonl`, e.g. `CDs_and_Vinyl.jsonl`) and optionally one
/// `meta_*.jsonl`. Items are keyed by `parent_asin`, as the 2023 benchmarks do.
pub fn read_2023(dir: &Path) -> Result<RawDataset> {
    let reviews = find_file(dir, "Amazon 2023 reviews (*.jsonl)", |n| {
        n.ends_with(".jsonl") && !n.starts_with("meta_")
    })?;
    let mut ds = RawDataset {
        name: "amazon2023".into(),
        ..Default::default()
    };
    ds.interactions = read_reviews(&reviews, &REVIEWS_2023)?;
    if let Ok(meta) = find_file(dir, "meta", |n| {
        n.starts_with("meta_") && n.ends_with(".jsonl")
    }) {
        for (line, v) in json_lines(&meta)? {
            let id = req_str(&v, "parent_asin", &meta, line)?;
            if ds.items.contains_key(&id) {
                continue; // published metadata can repeat a product: the first entry counts
            }
            let details = v.get("details");
            let brand = v
                .get("store")
                .and_then(Value::as_str)
                .or_else(|| details.and_then(|d| d.get("Label")).and_then(Value::as_str))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let year = details
                .and_then(|d| {
                    d.get("Date First Available")
                        .or_else(|| d.get("Original Release Date"))
                })
                .and_then(Value::as_str)
                .and_then(|s| {
                    s.split(|c: char| !c.is_ascii_digit())
                        .filter(|p| p.len() == 4)
                        .find_map(|p| p.parse().ok())
                });
            let mut categories = str_list(v.get("categories"));
            if categories.is_empty() {
                categories = str_list(v.get("main_category"));
            }
            ds.items.insert(
                id,
                ItemMeta {
                    title: v
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                    year,
                    categories,
                    brand,
                    price: price(v.get("price")),
                    description: text_of(v.get("description")),
                    also_buy: str_list(v.get("bought_together")),
                    also_view: Vec::new(),
                },
            );
        }
    }
    Ok(ds)
}
