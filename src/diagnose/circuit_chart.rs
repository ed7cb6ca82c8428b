//! The circuit picture: layers left to right (only those the drawn edges touch), heads
//! top to bottom with the layer's MLP below them and the logits at the right; the top
//! edges by |exact score|, width by |score|, colour by sign (blue raises the metric, red
//! lowers it), the channel by stroke (q solid, k dashed, v dotted). SVG and a PNG.

use super::circuit::Circuit;
use super::circuit_edge::{Channel, Receiver, Sender};
use crate::util::charts::{diverging, xml_escape, Canvas};
use anyhow::Result;
use std::fmt::Write as _;

const COL_W: usize = 90;
const ROW_H: usize = 24;
const X0: usize = 60;
const Y0: usize = 50;

/// Where the drawn nodes sit.
struct Layout {
    /// Layers with a drawn node, ascending (`n_layers` = the logits column).
    columns: Vec<usize>,
    n_heads: usize,
    edges: Vec<usize>,
    scale: f64,
}

impl Layout {
    fn new(c: &Circuit, top: usize) -> Self {
        let mut edges = c.ranking();
        edges.truncate(top);
        let mut columns: Vec<usize> = edges
            .iter()
            .flat_map(|&e| {
                let edge = c.edges()[e];
                [edge.sender.layer(), edge.receiver.layer(c.n_layers)]
            })
            .collect();
        columns.sort_unstable();
        columns.dedup();
        let scale = edges
            .iter()
            .map(|&e| c.exact_mean(e).abs())
            .fold(0.0f64, f64::max)
            .max(1e-12);
        Self {
            columns,
            n_heads: c.n_heads,
            edges,
            scale,
        }
    }
    fn width(&self) -> usize {
        X0 + self.columns.len().max(1) * COL_W + 40
    }
    fn height(&self) -> usize {
        Y0 + (self.n_heads + 1) * ROW_H + 60
    }
    fn x_of(&self, layer: usize) -> usize {
        let i = self.columns.iter().position(|&l| l == layer).unwrap_or(0);
        X0 + i * COL_W + COL_W / 2
    }
    fn sender_xy(&self, s: Sender) -> (usize, usize) {
        let row = match s {
            Sender::Head(h) => h.head,
            Sender::Mlp(_) => self.n_heads,
        };
        (self.x_of(s.layer()), Y0 + row * ROW_H + ROW_H / 2)
    }
    fn receiver_xy(&self, r: Receiver, n_layers: usize) -> (usize, usize) {
        match r {
            Receiver::Head(h) => self.sender_xy(Sender::Head(h)),
            Receiver::Logits => (self.x_of(n_layers), Y0 + (self.n_heads * ROW_H) / 2),
        }
    }
}

fn dash(c: Channel) -> &'static str {
    match c {
        Channel::K => " stroke-dasharray=\"7 4\"",
        Channel::V => " stroke-dasharray=\"2 3\"",
        _ => "",
    }
}

/// The SVG of the top `top` edges.
pub fn circuit_svg(c: &Circuit, top: usize, title: &str) -> String {
    let lay = Layout::new(c, top);
    let (w, h) = (lay.width(), lay.height());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{w}\" height=\"{h}\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>",
        xml_escape(title)
    );
    for &l in &lay.columns {
        let name = if l == c.n_layers {
            "logits".to_string()
        } else {
            format!("layer {l}")
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">{name}</text>",
            lay.x_of(l)
        );
    }
    let mut nodes: Vec<(usize, usize, String, bool)> = vec![];
    for &e in lay.edges.iter().rev() {
        let edge = c.edges()[e];
        let (x1, y1) = lay.sender_xy(edge.sender);
        let (x2, y2) = lay.receiver_xy(edge.receiver, c.n_layers);
        let v = c.exact_mean(e);
        let (r, g, b) = diverging(v / lay.scale);
        let width = 1.0 + 7.0 * v.abs() / lay.scale;
        let mid = (x1 + x2) as f64 / 2.0;
        let _ = writeln!(
            s,
            "<path d=\"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}\" fill=\"none\" \
             stroke=\"rgb({r},{g},{b})\" stroke-width=\"{width:.2}\" opacity=\"0.85\"{}>\
             <title>{}: exact {v:.4}, EAP {:.4}</title></path>",
            dash(edge.channel),
            xml_escape(&edge.label()),
            c.eap_mean(e)
        );
        nodes.push((x1, y1, edge.sender.label(), false));
        nodes.push((x2, y2, edge.receiver.label(), true));
    }
    nodes.sort();
    nodes.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    for (x, y, label, recv) in nodes {
        let stroke = if recv { "#000" } else { "#888" };
        let _ = writeln!(
            s,
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"5\" fill=\"white\" stroke=\"{stroke}\" \
             stroke-width=\"2\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
            x + 7,
            y.saturating_sub(6),
            xml_escape(&label)
        );
    }
    let ly = h - 20;
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{ly}\" fill=\"#555\">top {} edges by |exact score|; width: \
         |score|; blue raises the metric, red lowers it; q solid, k dashed, v dotted</text>",
        lay.edges.len()
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// A line from a to b with a square brush of `width` pixels; `pattern` (on, off) in steps.
fn line(
    cv: &mut Canvas,
    a: (usize, usize),
    b: (usize, usize),
    width: usize,
    rgb: (u8, u8, u8),
    pattern: (usize, usize),
) {
    let (dx, dy) = (b.0 as f64 - a.0 as f64, b.1 as f64 - a.1 as f64);
    let steps = dx.abs().max(dy.abs()).max(1.0) as usize;
    for i in 0..=steps {
        if pattern.1 > 0 && i % (pattern.0 + pattern.1) >= pattern.0 {
            continue;
        }
        let t = i as f64 / steps as f64;
        let (x, y) = (a.0 as f64 + t * dx, a.1 as f64 + t * dy);
        let half = width as f64 / 2.0;
        cv.rect(
            (x - half).max(0.0) as usize,
            (y - half).max(0.0) as usize,
            width,
            width,
            rgb,
        );
    }
}

/// The PNG of the same picture (straight edges, labels in the 3x5 font: heads as L3H5,
/// an MLP as a square under its layer's heads, the logits as a large square).
pub fn circuit_png(c: &Circuit, top: usize) -> Result<Vec<u8>> {
    let lay = Layout::new(c, top);
    let mut cv = Canvas::new(lay.width(), lay.height());
    for &l in &lay.columns {
        if l < c.n_layers {
            cv.text(lay.x_of(l) - 8, 30, &format!("L{l}"), 2);
        }
    }
    for &e in lay.edges.iter().rev() {
        let edge = c.edges()[e];
        let v = c.exact_mean(e);
        let width = 1 + (6.0 * v.abs() / lay.scale).round() as usize;
        let pattern = match edge.channel {
            Channel::K => (7, 4),
            Channel::V => (2, 3),
            _ => (1, 0),
        };
        let a = lay.sender_xy(edge.sender);
        let b = lay.receiver_xy(edge.receiver, c.n_layers);
        line(&mut cv, a, b, width, diverging(v / lay.scale), pattern);
    }
    for &e in &lay.edges {
        let edge = c.edges()[e];
        let (x, y) = lay.sender_xy(edge.sender);
        match edge.sender {
            Sender::Head(h) => cv.text(x + 6, y - 4, &h.to_string(), 1),
            Sender::Mlp(_) => cv.rect(x - 4, y - 4, 9, 9, (90, 90, 90)),
        }
        cv.rect(x - 2, y - 2, 5, 5, (0, 0, 0));
        let (x, y) = lay.receiver_xy(edge.receiver, c.n_layers);
        match edge.receiver {
            Receiver::Head(h) => cv.text(x + 6, y - 4, &h.to_string(), 1),
            Receiver::Logits => cv.rect(x - 6, y - 6, 13, 13, (0, 0, 0)),
        }
        cv.rect(x - 3, y - 3, 7, 7, (0, 0, 0));
    }
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, cv.w as u32, cv.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&cv.px)?;
    }
    Ok(out)
}
