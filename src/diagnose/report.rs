//! Diagnosis outputs: heads.json, heads.csv, a layers x heads heatmap (SVG and PNG) and a
//! markdown summary; SVG charts for attention shares and knockout curves.

use super::run::Diagnosis;
use crate::model::{model_header, ModelConfig};
use crate::util::{atomic_write, write_json};
use anyhow::Result;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;

// The pictures are drawn by util::charts (the pipeline report draws them too).
pub use crate::util::charts::{bars_svg, grouped_bars_svg, heatmap_png, heatmap_svg, lines_svg};

/// Write heads.json, heads.csv, heatmap.svg, heatmap.png and summary.md into `out`.
pub fn write_diagnosis(
    out: &Path,
    cfg: &ModelConfig,
    model_id: &str,
    data: &serde_json::Value,
    labels: (&str, &str),
    d: &Diagnosis,
    top_k: usize,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let command: Vec<String> = std::env::args().collect();
    let heads_json = json!({
        "model": model_header(cfg, model_id),
        "data": data,
        "metric": {"kind": d.metric.kind, "syc_token": d.metric.syc, "anti_token": d.metric.anti,
                   "syc_label": labels.0, "anti_label": labels.1},
        "method": d.config,
        "n_pairs": d.n_pairs,
        "reference_metric": d.reference_metric,
        "counterfactual_metric": d.counterfactual_metric,
        "seconds": {"clean_runs": d.seconds_clean, "sweep": d.seconds_sweep},
        "command": command.join(" "),
        // What each entry's score measures the patch of, in TransformerLens' names: the
        // head's slice of z (`[batch, pos, head_index, d_head]`) of its layer.
        "hook": "blocks.{layer}.attn.hook_z[:, position, head]",
        "heads": d.heads,
    });
    write_json(&out.join("heads.json"), &heads_json)?;
    let mut csv = String::from("rank,layer,head,position,score,std\n");
    for h in &d.heads {
        let pos = h.position.map(|p| p.to_string()).unwrap_or_default();
        writeln!(
            csv,
            "{},{},{},{},{},{}",
            h.rank, h.layer, h.head, pos, h.score, h.std
        )?;
    }
    atomic_write(&out.join("heads.csv"), csv.as_bytes())?;
    // Heatmap over (layer, head): the best (most negative) score of each head over positions.
    let (l_n, h_n) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    let mut grid = vec![vec![f64::NAN; h_n]; l_n];
    for h in &d.heads {
        let c = &mut grid[h.layer][h.head];
        if c.is_nan() || h.score < *c {
            *c = h.score;
        }
    }
    let top: Vec<(usize, usize)> = d
        .heads
        .iter()
        .take(top_k)
        .map(|h| (h.layer, h.head))
        .collect();
    let title = format!(
        "{model_id}: {:?} patching, {} pairs ({:?})",
        d.config.method, d.n_pairs, d.metric.kind
    );
    atomic_write(
        &out.join("heatmap.svg"),
        heatmap_svg(&grid, &top, &title).as_bytes(),
    )?;
    atomic_write(&out.join("heatmap.png"), &heatmap_png(&grid, &top)?)?;
    atomic_write(
        &out.join("summary.md"),
        summary_md(d, model_id, labels, top_k).as_bytes(),
    )?;
    Ok(())
}

fn summary_md(d: &Diagnosis, model_id: &str, labels: (&str, &str), top_k: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Sycophancy heads of {model_id}\n");
    let _ = writeln!(
        s,
        "{:?} patching at {:?}, metric {:?} with labels {:?} (token {}) vs {:?} (token {}), {} pairs{}.\n",
        d.config.method,
        d.config.positions,
        d.metric.kind,
        labels.0,
        d.metric.syc,
        labels.1,
        d.metric.anti,
        d.n_pairs,
        if d.config.freeze_mlp { ", MLPs frozen" } else { "" }
    );
    let _ = writeln!(
        s,
        "Clean metric: reference {:.4}, counterfactual {:.4}. Clean runs {:.2} s, sweep {:.2} s.\n",
        d.reference_metric, d.counterfactual_metric, d.seconds_clean, d.seconds_sweep
    );
    let total: f64 = d
        .heads
        .iter()
        .filter(|h| h.score < 0.0)
        .map(|h| -h.score)
        .sum();
    let top: f64 = d
        .heads
        .iter()
        .take(top_k)
        .filter(|h| h.score < 0.0)
        .map(|h| -h.score)
        .sum();
    if total > 0.0 {
        let _ = writeln!(
            s,
            "Sparsity: the top {top_k} of {} nodes ({:.1}%) carry {:.1}% of the total negative effect.\n",
            d.heads.len(),
            100.0 * top_k as f64 / d.heads.len() as f64,
            100.0 * top / total
        );
    }
    // Heads by TransformerLens' label, and the slice of its hook_z the score patches.
    let _ = writeln!(
        s,
        "| rank | head | hook | score | std |\n|---:|---|---|---:|---:|"
    );
    for h in d.heads.iter().take(top_k.max(10)) {
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {:.3} | {:.3} |",
            h.rank,
            h.label(),
            h.z_hook(),
            h.score,
            h.std
        );
    }
    let _ = writeln!(s, "\n![heatmap](heatmap.svg)");
    s
}
