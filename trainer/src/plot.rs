//! PNG curves of a run's metrics, drawn with plotters into `run_dir/plots/`: one image per
//! metric (value against step) and `overview.png` with the run's main curves side by side.
//! Noisy metrics get TensorBoard's smoothing (a debiased exponential moving average, weight
//! 0.6) drawn over their raw points; ticks are plotters' round values. Text uses DejaVu Sans
//! (scripts/setup.sh installs fonts-dejavu-core), read once at run time.

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// TensorBoard's default smoothing weight.
pub const SMOOTHING: f64 = 0.6;
const PANEL: (u32, u32) = (640, 400);
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];
/// The main curves of each kind of run, in overview order.
pub const SFT_OVERVIEW: [&str; 3] = ["loss", "lr", "val_ndcg@10"];
pub const GRPO_OVERVIEW: [&str; 6] = [
    "reward_mean",
    "ndcg@10",
    "valid_rate",
    "tool_calls",
    "val_ndcg@10",
    "loss",
];
const BLUE: RGBColor = RGBColor(31, 119, 180);

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Registers DejaVu Sans as plotters' "sans-serif" (once per process).
fn font() -> Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let (path, bytes) = FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
            .ok_or_else(|| {
                format!("no DejaVuSans.ttf in {FONT_PATHS:?} (install fonts-dejavu-core)")
            })?;
        // plotters keeps fonts for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// TensorBoard's smoothing: an exponential moving average debiased for its zero start.
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let (mut last, mut n) = (0.0, 0);
    values
        .iter()
        .map(|&v| {
            last = last * weight + (1.0 - weight) * v;
            n += 1;
            last / (1.0 - weight.powi(n))
        })
        .collect()
}

/// Whether a metric is noisy enough to smooth (not the schedule, not validation).
pub fn smoothed(name: &str, points: usize) -> bool {
    points >= 3 && name != "lr" && !name.starts_with("val_")
}

/// A tick label: the value rounded to 10 significant digits (so 0.30000000000000004 reads
/// 0.3), in plain notation, or in exponent notation when very small or large.
pub fn tick(v: f64) -> String {
    let r: f64 = format!("{v:.9e}").parse().unwrap_or(v);
    if r != 0.0 && (r.abs() < 1e-3 || r.abs() >= 1e6) {
        format!("{r:e}")
    } else {
        format!("{r}")
    }
}

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// One metric's chart on `area`: raw points, and the smoothed curve over them when noisy.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    points: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = points.iter().fold((i64::MAX, i64::MIN), |(a, b), p| {
        (a.min(p.0 as i64), b.max(p.0 as i64))
    });
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1, x0 + 1) };
    let (mut y0, mut y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if y1 - y0 < 1e-12 {
        let half = if y0 == 0.0 { 0.5 } else { y0.abs() * 0.1 };
        (y0, y1) = (y0 - half, y1 + half);
    }
    let pad = (y1 - y0) * 0.05;
    let smooth_it = smoothed(name, points.len());
    let caption = if smooth_it {
        format!("{name} (smoothed {SMOOTHING})")
    } else {
        name.to_string()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_desc("step")
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(drawing)?;
    let xy: Vec<(i64, f64)> = points.iter().map(|p| (p.0 as i64, p.1)).collect();
    let raw = if smooth_it {
        BLUE.mix(0.4)
    } else {
        BLUE.mix(1.0)
    };
    chart
        .draw_series(LineSeries::new(xy.iter().copied(), raw.stroke_width(1)))
        .map_err(drawing)?;
    if xy.len() <= 60 {
        chart
            .draw_series(xy.iter().map(|&p| Circle::new(p, 2, raw.filled())))
            .map_err(drawing)?;
    }
    if smooth_it {
        let values: Vec<f64> = xy.iter().map(|p| p.1).collect();
        let s = smooth(&values, SMOOTHING);
        chart
            .draw_series(LineSeries::new(
                xy.iter().zip(s).map(|(p, v)| (p.0, v)),
                BLUE.stroke_width(2),
            ))
            .map_err(drawing)?;
    }
    Ok(())
}

/// Draws `panels` (name, points) in a grid of `cols` columns under `title` and writes the
/// PNG to `path` atomically.
fn draw_png(
    path: &Path,
    title: Option<&str>,
    panels: &[(&str, &[(f64, f64)])],
    cols: usize,
) -> Result<()> {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let top = if title.is_some() { 40 } else { 0 };
    let (w, h) = (PANEL.0 * cols as u32, PANEL.1 * rows as u32 + top);
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let body = match title {
            Some(t) => root.titled(t, ("sans-serif", 24)).map_err(drawing)?,
            None => root.clone(),
        };
        for (area, (name, points)) in body.split_evenly((rows, cols)).iter().zip(panels) {
            panel(area, name, points)?;
        }
        root.present().map_err(drawing)?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&rgb)?;
    }
    lm::fsutil::write_atomic(path, &bytes)
}

/// The numeric series of `run_dir/metrics.jsonl`, by metric name, as (step, value).
pub fn read_series(run_dir: &Path) -> Result<Series> {
    let path = run_dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut series = Series::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        for (k, x) in v.as_object().into_iter().flatten() {
            if let (Some(x), true) = (x.as_f64(), k != "step") {
                series.entry(k.clone()).or_default().push((step, x));
            }
        }
    }
    Ok(series)
}

/// One PNG per numeric metric of `run_dir/metrics.jsonl` and `overview.png` (SFT: loss, lr,
/// val_ndcg@10; GRPO: reward_mean, ndcg@10, valid_rate, tool_calls, val_ndcg@10, loss; those
/// present) into `run_dir/plots/`. Returns the number of images written.
pub fn plot_metrics(run_dir: &Path) -> Result<usize> {
    let series = read_series(run_dir)?;
    font()?;
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, points) in &series {
        let file = dir.join(format!("{}.png", name.replace(['@', '/'], "_")));
        draw_png(&file, None, &[(name, points)], 1)
            .with_context(|| format!("plotting {}", file.display()))?;
    }
    let kind: &[&str] = if series.contains_key("reward_mean") {
        &GRPO_OVERVIEW
    } else {
        &SFT_OVERVIEW
    };
    let main: Vec<(&str, &[(f64, f64)])> = kind
        .iter()
        .filter_map(|k| series.get(*k).map(|p| (*k, &p[..])))
        .collect();
    if main.is_empty() {
        return Ok(series.len());
    }
    let run_name = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run_dir.display().to_string());
    let file = dir.join("overview.png");
    draw_png(&file, Some(&run_name), &main, 3)
        .with_context(|| format!("plotting {}", file.display()))?;
    Ok(series.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_tensorboards_debiased_ema() {
        // TensorBoard: last = last * w + (1 - w) * v; smoothed = last / (1 - w^n).
        let s = smooth(&[1.0, 2.0, 3.0], 0.6);
        assert!((s[0] - 1.0).abs() < 1e-12);
        assert!((s[1] - (0.24 * 1.0 + 0.4 * 2.0) / 0.64).abs() < 1e-12);
        assert!((s[2] - (0.6 * (0.24 + 0.8) + 1.2) / (1.0 - 0.216)).abs() < 1e-12);
        assert_eq!(smooth(&[5.0; 4], 0.6), vec![5.0; 4]);
    }

    /// PNG width and height from the IHDR chunk.
    fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn draws_one_image_per_metric_and_an_overview() {
        let dir = std::env::var_os("RECTHINKER_PLOT_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("plot-unit-{}", std::process::id()))
            });
        for (kind, cols, rows) in [("sft", 3, 1), ("grpo", 3, 2)] {
            let run = dir.join(kind);
            std::fs::create_dir_all(&run).unwrap();
            let mut lines = String::new();
            for step in 1..=40u32 {
                let noise = ((step * 7919) % 13) as f64 / 13.0 - 0.5;
                let mut v = serde_json::json!({"step": step, "loss": 2.0 / (step as f64).sqrt() + 0.3 * noise,
                    "lr": 1.5e-4 * (1.0 - step as f64 / 40.0), "grad_norm": 1.0 + noise});
                if kind == "grpo" {
                    v["reward_mean"] = serde_json::json!(0.02 * step as f64 + noise);
                    v["ndcg@10"] = serde_json::json!(0.3 + 0.1 * noise);
                    v["valid_rate"] = serde_json::json!(1.0);
                    v["tool_calls"] = serde_json::json!(2.0 + noise);
                }
                if step % 10 == 0 {
                    v["val_ndcg@10"] = serde_json::json!(0.5 + 0.005 * step as f64);
                }
                lines.push_str(&format!("{v}\n"));
            }
            std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
            let metrics = if kind == "grpo" { 8 } else { 4 };
            assert_eq!(plot_metrics(&run).unwrap(), metrics + 1);
            assert_eq!(png_size(&run.join("plots/val_ndcg_10.png")), PANEL);
            assert_eq!(
                png_size(&run.join("plots/overview.png")),
                (PANEL.0 * cols, PANEL.1 * rows + 40)
            );
        }
        if std::env::var_os("RECTHINKER_PLOT_DIR").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick(0.1 + 0.2), "0.3");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1.5e-4), "1.5e-4");
        assert_eq!(tick(-0.05), "-0.05");
        assert_eq!(tick(2e6), "2e6");
    }
}
