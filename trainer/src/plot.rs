//! PNG line plots of a run's metrics, drawn by the program itself: one image per metric
//! (value against step) under `run_dir/plots/`. Labels use the DejaVu font when the system
//! has it (scripts/setup.sh installs it); without it the plots are drawn unlabelled.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

const W: usize = 640;
const H: usize = 400;
// Margins: left, right, top, bottom.
const L: usize = 70;
const R: usize = 20;
const T: usize = 36;
const B: usize = 40;
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

struct Canvas {
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![[255, 255, 255]; W * H],
        }
    }

    fn blend(&mut self, x: i64, y: i64, c: [u8; 3], a: f32) {
        if x < 0 || y < 0 || x >= W as i64 || y >= H as i64 {
            return;
        }
        let p = &mut self.px[y as usize * W + x as usize];
        for k in 0..3 {
            p[k] = (p[k] as f32 * (1.0 - a) + c[k] as f32 * a).round() as u8;
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                self.blend(x.round() as i64 + dx, y.round() as i64 + dy, c, 1.0);
            }
        }
    }

    fn text(
        &mut self,
        font: Option<&FontRef>,
        s: &str,
        x: f32,
        y: f32,
        size: f32,
        right_align: bool,
    ) {
        let Some(font) = font else { return };
        let scaled = font.as_scaled(PxScale::from(size));
        let width: f32 = s.chars().map(|c| scaled.h_advance(font.glyph_id(c))).sum();
        let mut pen = if right_align { x - width } else { x };
        for ch in s.chars() {
            let id = font.glyph_id(ch);
            let glyph = id.with_scale_and_position(PxScale::from(size), ab_glyph::point(pen, y));
            if let Some(outline) = font.outline_glyph(glyph) {
                let bb = outline.px_bounds();
                outline.draw(|gx, gy, cov| {
                    self.blend(
                        bb.min.x as i64 + gx as i64,
                        bb.min.y as i64 + gy as i64,
                        [30, 30, 30],
                        cov,
                    )
                });
            }
            pen += scaled.h_advance(id);
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            w.write_image_data(&self.px.concat())?;
        }
        lm::fsutil::write_atomic(path, &bytes)
    }
}

fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Plots `points` (step, value) to `path` with `title`.
pub fn line_plot(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    font: Option<&FontRef>,
) -> Result<()> {
    let mut c = Canvas::new();
    let (mut x0, mut x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x0 + 1.0);
    }
    if y1 - y0 < 1e-12 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = (y1 - y0) * 0.05;
    (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| L as f64 + (x - x0) / (x1 - x0) * (W - L - R) as f64;
    let sy = |y: f64| (H - B) as f64 - (y - y0) / (y1 - y0) * (H - T - B) as f64;
    let axis = [120, 120, 120];
    c.line((L as f64, T as f64), (L as f64, (H - B) as f64), axis);
    c.line(
        (L as f64, (H - B) as f64),
        ((W - R) as f64, (H - B) as f64),
        axis,
    );
    for k in 0..=4 {
        let v = y0 + (y1 - y0) * k as f64 / 4.0;
        let y = sy(v);
        for x in (L..W - R).step_by(6) {
            c.blend(x as i64, y as i64, [225, 225, 225], 1.0);
        }
        c.text(font, &tick(v), L as f32 - 6.0, y as f32 + 4.0, 12.0, true);
        let xv = x0 + (x1 - x0) * k as f64 / 4.0;
        let label = if x1 - x0 >= 8.0 {
            format!("{}", xv.round())
        } else {
            format!("{xv:.1}")
        };
        c.text(
            font,
            &label,
            sx(xv) as f32 - 8.0,
            (H - B) as f32 + 16.0,
            12.0,
            false,
        );
    }
    let color = [31, 119, 180];
    for w in points.windows(2) {
        c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), color);
    }
    for p in points {
        for d in -2i64..=2 {
            c.blend(sx(p.0) as i64 + d, sy(p.1) as i64, color, 1.0);
            c.blend(sx(p.0) as i64, sy(p.1) as i64 + d, color, 1.0);
        }
    }
    c.text(font, title, L as f32, 22.0, 16.0, false);
    c.text(font, "step", (W - R) as f32, (H - 8) as f32, 12.0, true);
    c.save(path)
}

/// One PNG per numeric metric of `run_dir/metrics.jsonl`, into `run_dir/plots/`.
pub fn plot_metrics(run_dir: &Path) -> Result<usize> {
    let path = run_dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
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
    let font_bytes = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok());
    let font = font_bytes
        .as_deref()
        .and_then(|b| FontRef::try_from_slice(b).ok());
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir)?;
    for (name, points) in &series {
        let file = name.replace(['@', '/'], "_");
        line_plot(
            &dir.join(format!("{file}.png")),
            name,
            points,
            font.as_ref(),
        )?;
    }
    Ok(series.len())
}
