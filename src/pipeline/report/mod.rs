//! `report.md`, a self-contained `report.html` (inline SVG), `report.json` and
//! `before_after.svg` from the pipeline's stage outputs. The report opens with a plain
//! verdict on the first SPT variant (did it help on held-out easy questions, by how much,
//! which targets it met), then a before/after chart, a miniature of the paper's Table 1
//! per evaluation set, the rule judge's decisions, the head heatmap, the knockout curve,
//! attention-share bars, loss curves, example dialogues and stage times.
//!
//! A stage that did not run (no SFT baseline, no knockout) shows "-" or "not measured";
//! it never fails the report.

mod circuit;
mod doc;
mod inputs;
mod judged;
mod sections;
mod stats;
mod target;
mod transfer;
mod verdict;

use super::Pipeline;
use crate::util::{atomic_write, write_json};
use anyhow::Result;
use serde_json::json;

use inputs::variants_json;
pub use inputs::{order_sets, Inputs, Kl, SetMetrics, VariantData, VERDICT_SET};
pub use stats::{newcombe, Diff, Direction};

/// Write report.md, report.html, report.json and before_after.svg into the run folder.
pub fn write_report(p: &Pipeline) -> Result<()> {
    let inp = Inputs::load(p);
    let v = verdict::SptVerdict::build(&inp, &p.cfg);
    let chart = sections::before_after_svg(&inp);
    if let Some(svg) = &chart {
        atomic_write(&p.out.join("before_after.svg"), svg.as_bytes())?;
    }
    let transfer_chart = transfer::chart_svg(&inp);
    if let Some(svg) = &transfer_chart {
        atomic_write(&p.out.join("transfer.svg"), svg.as_bytes())?;
    }
    let jd = judged::JudgeDecisions::load(p, &inp);
    let examples = sections::Examples::load(p, inp.spt.as_deref());
    let secs = p.stage_seconds();

    let mut d = doc::Doc::default();
    d.h1(&format!("pinpoint report: {}", p.cfg.model_id));
    v.render(&mut d);
    sections::before_after(&mut d, chart.as_deref());
    transfer::render(&mut d, &inp, transfer_chart.as_deref());
    sections::table1(&mut d, &inp, &p.cfg);
    sections::judge_agreement(&mut d, &inp);
    jd.render(&mut d);
    sections::diagnosis(&mut d, &inp, &p.cfg);
    circuit::section(&mut d, &inp);
    sections::knockout(&mut d, &inp);
    sections::attention(&mut d, &inp);
    sections::loss_curves(&mut d, &inp);
    examples.render(&mut d);
    sections::stage_times(&mut d, &secs);
    atomic_write(&p.out.join("report.md"), d.md.as_bytes())?;
    atomic_write(&p.out.join("report.html"), d.finish_html().as_bytes())?;

    let dg = inp.dg.as_ref().map(|d| {
        json!({"n_pairs": d["n_pairs"], "reference_metric": d["reference_metric"],
               "top": d["heads"].as_array().map(|h| h.iter().take(64).cloned().collect::<Vec<_>>())})
    });
    write_json(
        &p.out.join("report.json"),
        &json!({"model": p.cfg.model_id, "config": p.cfg, "verdict": v.to_json(),
                "metrics": sections::metrics_json(&inp), "variants": variants_json(&inp),
                "judge_decisions": jd.to_json(), "diagnosis": dg, "attention": inp.att,
                "knockout": inp.ko, "judge_agreement": inp.agree,
                "circuit": inp.circuit.as_ref().map(|c| json!({"agreement": c["agreement"],
                    "top_edges": c["edges"].as_array().map(|e| e.iter().take(8).cloned().collect::<Vec<_>>())})),
                "examples": examples.to_json(),
                "stage_seconds": secs, "transfer": transfer::to_json(&inp)}),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
