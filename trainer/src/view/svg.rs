//! One metric's curve as inline SVG: round ticks, the raw points, and for noisy metrics the
//! TensorBoard-smoothed line over them (the rule and weight of `plot`, so the page and the
//! PNGs agree).

use super::html::escape;
use crate::plot::{smooth, smoothed, tick, SMOOTHING};
use std::fmt::Write;

const W: f64 = 460.0;
const H: f64 = 260.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 34.0;
/// Points are drawn as dots up to this many.
const DOTS: usize = 80;

/// Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about
/// `want` of them.
pub fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= want as f64 + 0.5)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last)
        .map(|i| {
            let v = i as f64 * step;
            // 0.30000000000000004 -> 0.3 (as plot's tick labels read).
            tick(v).parse().unwrap_or(v)
        })
        .collect()
}

/// The y range drawn: the data's, padded, widened when flat.
fn y_range(points: &[(f64, f64)]) -> (f64, f64) {
    let (mut lo, mut hi) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if hi - lo < 1e-12 {
        let half = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - half, hi + half);
    }
    let pad = (hi - lo) * 0.06;
    (lo - pad, hi + pad)
}

/// `name`'s chart for `points` (step, value), finite values only.
pub fn chart(name: &str, points: &[(f64, f64)]) -> String {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" data-metric="{m}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{m}">"#,
        m = escape(name)
    );
    let smooth_it = smoothed(name, points.len());
    let caption = if smooth_it {
        format!("{name} (smoothed {SMOOTHING})")
    } else {
        name.to_string()
    };
    let _ = write!(
        s,
        r#"<text class="caption" x="{x}" y="18" text-anchor="middle">{c}</text>"#,
        x = W / 2.0,
        c = escape(&caption)
    );
    if points.is_empty() {
        s.push_str(
            r#"<text x="230" y="130" text-anchor="middle" class="empty">no values</text></svg>"#,
        );
        return s;
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (x0, x1) = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x0 + 1.0)
    };
    let (y0, y1) = y_range(&points);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + (y1 - y) / (y1 - y0) * ph;
    // Grid and ticks.
    for v in ticks(y0, y1, 5) {
        let y = py(v);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{y:.2}" y2="{y:.2}"/><text class="tick" x="{tx}" y="{ty:.2}" text-anchor="end">{l}</text>"#,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            l = escape(&tick(v))
        );
    }
    for v in ticks(x0, x1, 6).into_iter().filter(|v| v.fract() == 0.0) {
        let x = px(v);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{yb}"/><text class="tick" x="{x:.2}" y="{ty}" text-anchor="middle">{l}</text>"#,
            yb = H - BOTTOM,
            ty = H - BOTTOM + 15.0,
            l = escape(&tick(v))
        );
    }
    let _ = write!(
        s,
        r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/><text class="axis" x="{x}" y="{y}" text-anchor="middle">step</text>"#,
        x = LEFT + pw / 2.0,
        y = H - 4.0
    );
    let path = |vals: &mut dyn Iterator<Item = (f64, f64)>| {
        let mut d = String::new();
        for (i, (x, y)) in vals.enumerate() {
            let _ = write!(
                d,
                "{}{:.2},{:.2}",
                if i == 0 { "M" } else { "L" },
                px(x),
                py(y)
            );
        }
        d
    };
    let raw_class = if smooth_it { "raw faint" } else { "raw" };
    let _ = write!(
        s,
        r#"<path class="{raw_class}" d="{d}"/>"#,
        d = path(&mut points.iter().copied())
    );
    if points.len() <= DOTS {
        for &(x, y) in &points {
            let _ = write!(
                s,
                r#"<circle class="{raw_class}" cx="{:.2}" cy="{:.2}" r="2.5"><title>step {} {}: {}</title></circle>"#,
                px(x),
                py(y),
                tick(x),
                escape(name),
                tick(y)
            );
        }
    }
    if smooth_it {
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        let sm = smooth(&values, SMOOTHING);
        let _ = write!(
            s,
            r#"<path class="smooth" d="{d}"/>"#,
            d = path(&mut points.iter().zip(sm).map(|(p, v)| (p.0, v)))
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(1.0, 40.0, 6), vec![10.0, 20.0, 30.0, 40.0]);
        assert_eq!(ticks(0.013, 0.087, 5), vec![0.02, 0.04, 0.06, 0.08]);
        assert_eq!(ticks(2.0, 2.0, 5), vec![2.0]);
    }

    #[test]
    fn chart_draws_raw_and_smoothed_paths() {
        let pts: Vec<(f64, f64)> = (1..=10).map(|i| (i as f64, (i % 3) as f64)).collect();
        let loss = chart("loss", &pts);
        assert_eq!(loss.matches("<path").count(), 2, "{loss}");
        assert!(loss.contains("smoothed 0.6"));
        let val = chart("val_ndcg@10", &pts[..3]);
        assert_eq!(val.matches("<path").count(), 1);
        assert_eq!(val.matches("<circle").count(), 3);
        assert!(chart("x<y>", &[]).contains("x&lt;y&gt;"));
    }
}
