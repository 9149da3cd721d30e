//! `recthinker view RUN_DIR`: a run's `metrics.jsonl` as one page: its main curves, then
//! every metric's curve (inline SVG) beside the PNG `recthinker plot` drew of it (embedded as
//! a `data:` URL), a table of last / min / max values and the resolved config.

use super::{html, svg};
use crate::plot::{GRPO_OVERVIEW, SFT_OVERVIEW};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

const CSS: &str = include_str!("run.css");
const JS: &str = include_str!("run.js");

/// Metric name -> (step, value), in file order.
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The numeric series of `run_dir/metrics.jsonl`. Every line must be a JSON object with a
/// numeric `step`; one that is not is an error naming `file:line`.
pub fn read_metrics(run_dir: &Path) -> Result<Series> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a run directory has the metrics.jsonl that sft and rl write)",
            path.display()
        )
    })?;
    let mut series = Series::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(at)?;
        let Some(obj) = v.as_object() else {
            bail!("{}: not a JSON object", at());
        };
        let Some(step) = obj.get("step").and_then(|s| s.as_f64()) else {
            bail!("{}: no numeric `step`", at());
        };
        for (k, x) in obj {
            if let (Some(x), true) = (x.as_f64(), k != "step") {
                series.entry(k.clone()).or_default().push((step, x));
            }
        }
    }
    if series.is_empty() {
        bail!("{}: no metrics", path.display());
    }
    Ok(series)
}

/// The PNG `recthinker plot` writes for `name`, as a `data:` URL, when the run has it.
fn png(run_dir: &Path, file: &str) -> Result<Option<String>> {
    let p = run_dir.join("plots").join(file);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(Some(format!(
            "data:image/png;base64,{}",
            html::base64(&bytes)
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// The page for the run in `run_dir`.
pub fn page(run_dir: &Path, series: &Series) -> Result<String> {
    let name = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run_dir.display().to_string());
    let grpo = series.contains_key("reward_mean");
    let main: &[&str] = if grpo { &GRPO_OVERVIEW } else { &SFT_OVERVIEW };
    let steps = series
        .values()
        .flat_map(|p| p.iter().map(|x| x.0))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<header><h1>{n}</h1><div class="muted">{p} &middot; {kind} run &middot; {m} metrics &middot; last step {s}</div></header>"#,
        n = html::escape(&name),
        p = html::escape(&run_dir.display().to_string()),
        kind = if grpo { "GRPO" } else { "SFT" },
        m = series.len(),
        s = number(steps),
    );
    body.push_str(
        r#"<div id="controls"><input id="filter" type="search" placeholder="filter metrics" aria-label="filter metrics"> <label><input id="show-png" type="checkbox" checked> PNGs beside the curves</label></div>"#,
    );
    body.push_str(r#"<h2>Main curves</h2><div class="grid" id="overview">"#);
    for m in main.iter().filter(|m| series.contains_key(**m)) {
        body.push_str(&svg::chart(m, &series[*m]));
    }
    body.push_str("</div>");
    if let Some(url) = png(run_dir, "overview.png")? {
        let _ = write!(
            body,
            r#"<details class="png"><summary>plots/overview.png</summary><img alt="overview.png" src="{url}"></details>"#
        );
    }
    body.push_str(r#"<h2>Every metric</h2><table id="summary"><thead><tr><th>metric</th><th class="num">points</th><th class="num">last</th><th class="num">min</th><th class="num">max</th></tr></thead><tbody>"#);
    for (m, points) in series {
        let vals = points.iter().map(|p| p.1);
        let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let last = points.last().map_or(f64::NAN, |p| p.1);
        let _ = write!(
            body,
            r##"<tr data-metric="{e}"><td><a href="#m-{a}">{e}</a></td><td class="num">{n}</td><td class="num">{l}</td><td class="num">{lo}</td><td class="num">{hi}</td></tr>"##,
            e = html::escape(m),
            a = anchor(m),
            n = points.len(),
            l = number(last),
            lo = number(lo),
            hi = number(hi),
        );
    }
    body.push_str("</tbody></table><div id=\"metrics\">");
    for (m, points) in series {
        let file = format!("{}.png", m.replace(['@', '/'], "_"));
        let _ = write!(
            body,
            r#"<section class="metric" id="m-{a}" data-metric="{e}"><div class="pair">{chart}"#,
            a = anchor(m),
            e = html::escape(m),
            chart = svg::chart(m, points)
        );
        match png(run_dir, &file)? {
            Some(url) => {
                let _ = write!(
                    body,
                    r#"<figure class="png"><img alt="{f}" src="{url}"><figcaption>plots/{f}</figcaption></figure>"#,
                    f = html::escape(&file)
                );
            }
            None => {
                let _ = write!(
                    body,
                    r#"<figure class="png missing"><figcaption>no plots/{f} (recthinker plot RUN_DIR draws it)</figcaption></figure>"#,
                    f = html::escape(&file)
                );
            }
        }
        body.push_str("</div></section>");
    }
    body.push_str("</div>");
    let config = run_dir.join("config.json");
    if let Ok(text) = std::fs::read_to_string(&config) {
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        let _ = write!(
            body,
            r#"<h2>Config</h2><details><summary>config.json</summary><pre>{}</pre></details>"#,
            html::escape(&pretty)
        );
    }
    let data = serde_json::json!({"run": name, "metrics": series.keys().collect::<Vec<_>>()});
    html::page(
        &format!("{name}: run"),
        CSS,
        &body,
        &html::script_json(&data)?,
        JS,
    )
}

/// An id-safe form of a metric name (`val_ndcg@10` -> `val_ndcg_10`).
fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
