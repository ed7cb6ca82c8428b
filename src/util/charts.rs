//! Pictures a person would rather look at than JSON: the layers x heads heatmap (SVG and a
//! dependency-free PNG), bar charts, line charts and grouped bars with intervals (SVG).

use anyhow::Result;
use std::fmt::Write as _;

/// Diverging colour: negative red, positive blue, zero white; `t` in [-1, 1].
pub(crate) fn diverging(t: f64) -> (u8, u8, u8) {
    if t.is_nan() {
        return (200, 200, 200);
    }
    let t = t.clamp(-1.0, 1.0);
    let f = |a: f64| (255.0 * (1.0 - a)).round() as u8;
    if t < 0.0 {
        (255, f(-t * 0.85), f(-t * 0.85))
    } else {
        (f(t * 0.85), f(t * 0.6), 255)
    }
}

fn scale_of(grid: &[Vec<f64>]) -> f64 {
    grid.iter()
        .flatten()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(1e-12)
}

/// Layers as rows (0 at top), heads as columns; top-k heads outlined in black.
pub fn heatmap_svg(grid: &[Vec<f64>], top: &[(usize, usize)], title: &str) -> String {
    let (rows, cols) = (grid.len(), grid.first().map_or(0, Vec::len));
    let cell = 18.0;
    let (x0, y0) = (50.0, 40.0);
    let width = x0 + cols as f64 * cell + 120.0;
    let height = y0 + rows as f64 * cell + 40.0;
    let scale = scale_of(grid);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="16" font-size="12">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="32">head</text>"#,
        x0 + cols as f64 * cell / 2.0 - 10.0
    );
    for c in 0..cols {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{c}</text>"#,
            x0 + (c as f64 + 0.5) * cell,
            y0 - 3.0
        );
    }
    for (r, row) in grid.iter().enumerate() {
        let y = y0 + r as f64 * cell;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">L{r}</text>"#,
            x0 - 4.0,
            y + cell * 0.7
        );
        for (c, &v) in row.iter().enumerate() {
            let (cr, cg, cb) = diverging(v / scale);
            let x = x0 + c as f64 * cell;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({cr},{cg},{cb})"><title>L{r}H{c}: {v:.4}</title></rect>"#
            );
        }
    }
    for &(r, c) in top {
        let (x, y) = (x0 + c as f64 * cell, y0 + r as f64 * cell);
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="black" stroke-width="2"/>"#,
            x + 1.0,
            y + 1.0,
            cell - 2.0,
            cell - 2.0
        );
    }
    // Colour bar.
    let bx = x0 + cols as f64 * cell + 20.0;
    let bh = (rows as f64 * cell).max(60.0);
    for i in 0..50 {
        let t = 1.0 - 2.0 * i as f64 / 49.0;
        let (cr, cg, cb) = diverging(t);
        let _ = writeln!(
            s,
            r#"<rect x="{bx}" y="{}" width="14" height="{}" fill="rgb({cr},{cg},{cb})"/>"#,
            y0 + bh * i as f64 / 50.0,
            bh / 50.0 + 0.5
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}">{:+.3}</text>"#,
        bx + 18.0,
        y0 + 8.0,
        scale
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}">0</text>"#,
        bx + 18.0,
        y0 + bh / 2.0 + 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}">{:+.3}</text>"#,
        bx + 18.0,
        y0 + bh,
        -scale
    );
    let _ = writeln!(s, "</svg>");
    s
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// 3x5 glyphs for the PNG axis labels.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'L' => [4, 4, 4, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        _ => [0; 5],
    }
}

pub(crate) struct Canvas {
    pub(crate) w: usize,
    pub(crate) h: usize,
    pub(crate) px: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }
    pub(crate) fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: (u8, u8, u8)) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
            }
        }
    }
    pub(crate) fn text(&mut self, x: usize, y: usize, s: &str, scale: usize) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (r, bits) in g.iter().enumerate() {
                for b in 0..3 {
                    if bits & (4 >> b) != 0 {
                        self.rect(
                            x + (k * 4 + b) * scale,
                            y + r * scale,
                            scale,
                            scale,
                            (0, 0, 0),
                        );
                    }
                }
            }
        }
    }
}

/// The heatmap as a PNG (cells, top-k outlines, axis numbers, colour bar).
pub fn heatmap_png(grid: &[Vec<f64>], top: &[(usize, usize)]) -> Result<Vec<u8>> {
    let (rows, cols) = (grid.len(), grid.first().map_or(0, Vec::len));
    let cell = 16;
    let (x0, y0) = (40, 24);
    let w = x0 + cols * cell + 60;
    let h = y0 + rows * cell + 16;
    let mut cv = Canvas::new(w, h);
    let scale = scale_of(grid);
    for c in 0..cols {
        cv.text(x0 + c * cell + 2, y0 - 14, &c.to_string(), 2);
    }
    for (r, row) in grid.iter().enumerate() {
        cv.text(4, y0 + r * cell + 3, &format!("L{r}"), 2);
        for (c, &v) in row.iter().enumerate() {
            cv.rect(
                x0 + c * cell,
                y0 + r * cell,
                cell,
                cell,
                diverging(v / scale),
            );
        }
    }
    for &(r, c) in top {
        let (x, y) = (x0 + c * cell, y0 + r * cell);
        cv.rect(x, y, cell, 2, (0, 0, 0));
        cv.rect(x, y + cell - 2, cell, 2, (0, 0, 0));
        cv.rect(x, y, 2, cell, (0, 0, 0));
        cv.rect(x + cell - 2, y, 2, cell, (0, 0, 0));
    }
    let bx = x0 + cols * cell + 16;
    let bh = rows * cell;
    for i in 0..bh {
        let t = 1.0 - 2.0 * i as f64 / bh.max(2) as f64;
        cv.rect(bx, y0 + i, 14, 1, diverging(t));
    }
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&cv.px)?;
    }
    Ok(out)
}

/// A bar chart SVG (e.g. attention share of top-k heads vs the rest).
pub fn bars_svg(title: &str, labels: &[String], values: &[f64], highlight: &[bool]) -> String {
    let bw = 22.0;
    let (x0, y0, ph) = (50.0, 30.0, 200.0);
    let w = x0 + labels.len() as f64 * bw + 20.0;
    let max = values.iter().fold(0.0f64, |m, v| m.max(*v)).max(1e-12);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="9">"#,
        y0 + ph + 60.0
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{x0}" y="16" font-size="12">{}</text>"#,
        xml_escape(title)
    );
    for (i, (l, v)) in labels.iter().zip(values).enumerate() {
        let hgt = ph * v / max;
        let x = x0 + i as f64 * bw;
        let fill = if highlight.get(i).copied().unwrap_or(false) {
            "#d62728"
        } else {
            "#7f7f7f"
        };
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{hgt}" fill="{fill}"><title>{l}: {v:.4}</title></rect><text transform="translate({},{}) rotate(60)">{}</text>"#,
            x + 2.0,
            y0 + ph - hgt,
            bw - 4.0,
            x + 6.0,
            y0 + ph + 4.0,
            xml_escape(l)
        );
    }
    let _ = write!(
        s,
        r#"<text x="4" y="{}">{max:.3}</text><text x="4" y="{}">0</text></svg>"#,
        y0 + 8.0,
        y0 + ph
    );
    s
}

/// A line chart SVG of one or more series over shared x values.
pub fn lines_svg(title: &str, xlabel: &str, xs: &[f64], series: &[(String, Vec<f64>)]) -> String {
    let (x0, y0, pw, ph) = (50.0, 30.0, 420.0, 220.0);
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"];
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let xmax = xs.iter().copied().fold(1e-12, f64::max);
    let px = |x: f64| x0 + pw * x / xmax;
    let py = |y: f64| y0 + ph * (1.0 - (y - lo) / (hi - lo));
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="10"><rect width="100%" height="100%" fill="white"/><text x="{x0}" y="16" font-size="12">{}</text>"#,
        x0 + pw + 160.0,
        y0 + ph + 40.0,
        xml_escape(title)
    );
    let _ = write!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/><text x="{}" y="{}">{}</text><text x="4" y="{}">{hi:.3}</text><text x="4" y="{}">{lo:.3}</text>"#,
        y0 + ph,
        x0 + pw,
        y0 + ph,
        y0 + ph,
        x0 + pw / 2.0,
        y0 + ph + 28.0,
        xml_escape(xlabel),
        y0 + 8.0,
        y0 + ph
    );
    for x in xs {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{x}</text>"#,
            px(*x),
            y0 + ph + 14.0
        );
    }
    for (k, (name, ys)) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" fill="{c}">{}</text>"#,
            x0 + pw + 10.0,
            y0 + 14.0 * (k as f64 + 1.0),
            xml_escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// A grouped bar chart SVG with error bars: one group per entry of `groups` (e.g. a
/// metric), one bar per series in each group (e.g. a model). Each series holds one
/// [value, lo, hi] per group; a non-finite value draws "n/a", non-finite bounds no error
/// bar. `percent`: values are proportions, drawn on a 0-100% axis; otherwise the axis runs
/// from 0 to the largest value or bound.
pub fn grouped_bars_svg(
    title: &str,
    groups: &[String],
    series: &[(String, Vec<[f64; 3]>)],
    percent: bool,
) -> String {
    let colors = [
        "#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
    ];
    let (bw, gap) = (22.0, 24.0);
    let gw = series.len().max(1) as f64 * bw + gap;
    let (x0, y0, ph) = (50.0, 36.0, 220.0);
    let pw = groups.len() as f64 * gw;
    let ymax = if percent {
        1.0
    } else {
        series
            .iter()
            .flat_map(|s| s.1.iter().flatten().copied())
            .filter(|v| v.is_finite())
            .fold(1e-12f64, f64::max)
    };
    let py = |v: f64| (10.0 * (y0 + ph * (1.0 - (v / ymax).clamp(0.0, 1.0)))).round() / 10.0;
    let tick = |v: f64| {
        if percent {
            format!("{:.0}%", 100.0 * v)
        } else {
            format!("{v:.3}")
        }
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="10"><rect width="100%" height="100%" fill="white"/><text x="{x0}" y="16" font-size="12">{}</text>"#,
        x0 + pw + 130.0,
        y0 + ph + 40.0,
        xml_escape(title)
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#e0e0e0"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + pw,
            x0 - 4.0,
            py(v) + 3.0,
            tick(v),
            y = py(v)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#,
        y0 + ph,
        x0 + pw,
        y0 + ph,
        y0 + ph
    );
    for (g, label) in groups.iter().enumerate() {
        let gx = x0 + g as f64 * gw + gap / 2.0;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            gx + (gw - gap) / 2.0,
            y0 + ph + 14.0,
            xml_escape(label)
        );
        for (k, (name, vals)) in series.iter().enumerate() {
            let c = colors[k % colors.len()];
            let x = gx + k as f64 * bw;
            let [v, lo, hi] = vals.get(g).copied().unwrap_or([f64::NAN; 3]);
            let tip = format!(
                "{}, {}: {} [{}, {}]",
                xml_escape(name),
                xml_escape(label),
                tick(v),
                tick(lo),
                tick(hi)
            );
            let text = if percent {
                format!("{:.0}", 100.0 * v)
            } else {
                format!("{v:.2}")
            };
            s.push_str(&interval_bar(
                c,
                (x, bw),
                [y0 + ph, py(v), py(lo), py(hi)],
                [v, lo, hi],
                &tip,
                &text,
            ));
        }
    }
    for (k, (name, _)) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        let y = y0 + 14.0 * k as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            x0 + pw + 12.0,
            y,
            x0 + pw + 26.0,
            y + 9.0,
            xml_escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// One bar of [`grouped_bars_svg`] at (x, width) in colour `c`: `ys` are the pixel rows of
/// the axis, the value and the interval's bounds, `v` the values behind them (a
/// non-finite value draws "n/a", non-finite bounds no error bar); `tip` is the tooltip
/// and `text` the label above the bar.
fn interval_bar(
    c: &str,
    (x, bw): (f64, f64),
    ys: [f64; 4],
    v: [f64; 3],
    tip: &str,
    text: &str,
) -> String {
    let [y_axis, y_v, y_lo, y_hi] = ys;
    let cx = x + bw / 2.0;
    if !v[0].is_finite() {
        return format!(
            r#"<text x="{cx}" y="{}" text-anchor="middle" font-size="8" fill="{c}">n/a</text>"#,
            y_axis - 3.0
        );
    }
    let mut s = format!(
        r#"<rect x="{}" y="{y_v}" width="{}" height="{}" fill="{c}"><title>{tip}</title></rect>"#,
        x + 1.0,
        bw - 2.0,
        y_axis - y_v
    );
    let mut top = y_v;
    if v[1].is_finite() && v[2].is_finite() {
        let _ = write!(
            s,
            r#"<path d="M{cx},{y_lo}V{y_hi}M{},{y_lo}H{}M{},{y_hi}H{}" stroke="black" fill="none"/>"#,
            cx - 3.0,
            cx + 3.0,
            cx - 3.0,
            cx + 3.0
        );
        top = top.min(y_hi);
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{}" text-anchor="middle" font-size="8">{text}</text>"#,
        top - 3.0
    );
    s
}
