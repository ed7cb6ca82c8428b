//! The report's sections after the verdict: the before/after chart, Table 1 per set, the
//! judge agreement, the diagnosis heatmap, the knockout curve, attention shares, loss
//! curves, example dialogues and stage times.

use super::doc::{Doc, Table};
use super::{Inputs, VariantData, VERDICT_SET};
use crate::diagnose::report::{bars_svg, grouped_bars_svg, heatmap_svg, lines_svg};
use crate::eval::metrics::Rate;
use crate::pipeline::{read_jsonl_rows, Pipeline, PipelineConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The rates of the before/after chart: (field, label).
const CHART: [(&str, &str); 4] = [
    ("first_accuracy", "first-answer accuracy"),
    ("confidence", "confidence"),
    ("truthfulness", "truthfulness"),
    ("revise_rate", "revise rate (wrong first)"),
];

fn show(r: Option<Rate>) -> String {
    r.map(|r| r.show()).unwrap_or_else(|| "-".into())
}

/// Grouped bars per variant on the verdict's set, with 95% intervals; None when no variant
/// has that set.
pub fn before_after_svg(inp: &Inputs) -> Option<String> {
    if !inp.variants.iter().any(|v| v.set(VERDICT_SET).is_some()) {
        return None;
    }
    Some(variant_bars_svg(
        inp,
        "before/after on held-out easy questions (95% Wilson intervals)",
        &CHART,
        &|v, f| v.rate(VERDICT_SET, f),
    ))
}

/// One group of bars per `(key, label)` of `rates`, one bar per variant: the rate
/// `rate_of(variant, key)` with its interval (a gap where it has no trials).
pub fn variant_bars_svg(
    inp: &Inputs,
    title: &str,
    rates: &[(&str, &str)],
    rate_of: &dyn Fn(&VariantData, &str) -> Option<Rate>,
) -> String {
    let groups: Vec<String> = rates.iter().map(|c| c.1.to_string()).collect();
    let series: Vec<(String, Vec<[f64; 3]>)> = inp
        .variants
        .iter()
        .map(|v| {
            let vals = rates
                .iter()
                .map(|(f, _)| match rate_of(v, f) {
                    Some(r) if r.n > 0 => [r.value, r.lo, r.hi],
                    _ => [f64::NAN; 3],
                })
                .collect();
            (v.name.clone(), vals)
        })
        .collect();
    grouped_bars_svg(title, &groups, &series, true)
}

pub fn before_after(d: &mut Doc, svg: Option<&str>) {
    d.h2("Before and after");
    match svg {
        Some(svg) => {
            d.md_only("![before/after](before_after.svg)\n\n");
            d.html_only(svg);
        }
        None => d.p(&format!(
            "Not measured: no evaluation has a \"{VERDICT_SET}\" set."
        )),
    }
}

/// Rows of one variant: one per evaluation set, or one row of "-" when not evaluated.
fn table1_rows(t: &mut Table, v: &VariantData) {
    let kl = match (&v.kl, v.name.as_str()) {
        (Some(k), _) => k.show(),
        (None, "base") => "0".into(),
        _ => "-".into(),
    };
    let params = match (&v.tune, v.name.as_str()) {
        (Some(t), _) => t["trainable_parameters"].to_string(),
        (None, "base") => "0".into(),
        _ => "-".into(),
    };
    if v.sets.is_empty() {
        let mut row = vec![v.name.clone(), params, "not measured".into()];
        row.extend(std::iter::repeat_n("-".to_string(), 6));
        row.push(kl);
        t.row(row);
        return;
    }
    for (set, m) in &v.sets {
        let mut row = vec![v.name.clone(), params.clone(), set.clone()];
        for f in [
            "first_accuracy",
            "confidence",
            "truthfulness",
            "apology_rate",
            "change_rate",
            "revise_rate",
        ] {
            row.push(show(m.rate(f)));
        }
        row.push(kl.clone());
        t.row(row);
    }
}

pub fn table1(d: &mut Doc, inp: &Inputs, c: &PipelineConfig) {
    d.h2("Table 1 (miniature)");
    d.p(&format!(
        "Evaluation: {} multiple-choice (MMLU, set \"mc\") + {} short-answer questions (held-out easy \
         questions, set \"short\"), held out from the {} + {} training questions; \"all\" is both. \
         Intervals are 95% Wilson intervals. KL(original || tuned) on {} OpenWebText texts cut to {} \
         tokens (mean +- s.e.). Revise rate: wrong first answers retracted after the challenge.",
        c.n_eval_mc, c.n_eval_short, c.n_train_mc, c.n_train_short, c.kl_texts, c.kl_len
    ));
    let mut t = Table::new(&[
        "model",
        "tuned params",
        "set",
        "first-answer acc.",
        "confidence",
        "truthfulness",
        "apology rate",
        "answer change",
        "revise rate (wrong first)",
        "KL",
    ]);
    for v in &inp.variants {
        table1_rows(&mut t, v);
    }
    d.table(&t);
}

/// report.json's per-set metrics: {variant: {set: rates}} as read.
pub fn metrics_json(inp: &Inputs) -> Value {
    let m: serde_json::Map<String, Value> = inp
        .variants
        .iter()
        .map(|v| (v.name.clone(), v.metrics_raw.clone().unwrap_or(Value::Null)))
        .collect();
    Value::Object(m)
}

pub fn judge_agreement(d: &mut Doc, inp: &Inputs) {
    if let Some(a) = &inp.agree {
        d.p(&format!(
            "Judge agreement (rules vs model-as-judge = the base model) on {} base dialogues: {}",
            a["agreement"]["n"], a["agreement"]
        ));
    }
}

/// The (layers x heads) grid of path-patching scores and the top heads to outline.
fn head_grid(heads: &[Value], k_top: usize) -> (Vec<Vec<f64>>, Vec<(usize, usize)>) {
    let dim = |key: &str| {
        heads
            .iter()
            .filter_map(|x| x[key].as_u64())
            .max()
            .map_or(0, |m| m as usize + 1)
    };
    let mut grid = vec![vec![f64::NAN; dim("head")]; dim("layer")];
    let mut top = vec![];
    for (i, x) in heads.iter().enumerate() {
        let (Some(l), Some(h)) = (x["layer"].as_u64(), x["head"].as_u64()) else {
            continue;
        };
        let (l, h) = (l as usize, h as usize);
        grid[l][h] = x["score"].as_f64().unwrap_or(f64::NAN);
        if i < k_top {
            top.push((l, h));
        }
    }
    (grid, top)
}

pub fn diagnosis(d: &mut Doc, inp: &Inputs, c: &PipelineConfig) {
    d.h2("Diagnosis");
    let Some(dg) = &inp.dg else {
        d.p("Not measured: diagnose/diagnosis.json is missing.");
        return;
    };
    let heads: Vec<Value> = dg["heads"].as_array().cloned().unwrap_or_default();
    let top: Vec<String> = heads
        .iter()
        .take(16)
        .map(|h| {
            format!(
                "L{}H{} ({:.1})",
                h["layer"],
                h["head"],
                h["score"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    d.p(&format!(
        "Top heads (path patching score, most negative first): {}",
        top.join(", ")
    ));
    d.md_only("Heatmap: `diagnose/heatmap.svg`; heads: `diagnose/heads.json`.\n\n");
    let (grid, outline) = head_grid(&heads, c.ks.iter().copied().max().unwrap_or(8));
    d.html_only(&format!(
        "<h3>Head heatmap (path patching)</h3>{}",
        heatmap_svg(
            &grid,
            &outline,
            "score per head (layers down, heads across)"
        )
    ));
}

pub fn knockout(d: &mut Doc, inp: &Inputs) {
    let Some(ko) = &inp.ko else { return };
    d.h2("Behavioural knockout (top-k heads mean-ablated)");
    let pts: Vec<&Value> = ko.as_array().into_iter().flatten().collect();
    let rate = |v: &Value| -> Option<Rate> { serde_json::from_value(v.clone()).ok() };
    let mut t = Table::new(&["k", "apology rate", "accuracy after challenge"]);
    for pt in &pts {
        t.row(vec![
            pt["k"].to_string(),
            show(rate(&pt["apology_rate"])),
            show(rate(&pt["final_accuracy"])),
        ]);
    }
    d.table(&t);
    let xs: Vec<f64> = pts.iter().map(|p| p["k"].as_f64().unwrap_or(0.0)).collect();
    let ys = |key: &str| -> Vec<f64> {
        pts.iter()
            .map(|p| p[key]["value"].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    d.html_only(&lines_svg(
        "top-k heads mean-ablated",
        "k",
        &xs,
        &[
            ("apology rate".into(), ys("apology_rate")),
            ("accuracy after challenge".into(), ys("final_accuracy")),
        ],
    ));
}

pub fn attention(d: &mut Doc, inp: &Inputs) {
    let Some(a) = &inp.att else { return };
    let arr = |k: &str| a[k].as_array().cloned().unwrap_or_default();
    let shares: Vec<f64> = arr("share")
        .iter()
        .map(|x| x.as_f64().unwrap_or(0.0))
        .collect();
    let ranks: Vec<Option<u64>> = arr("rank").iter().map(Value::as_u64).collect();
    let heads: Vec<String> = arr("heads")
        .iter()
        .map(|x| format!("L{}H{}", x["layer"], x["head"]))
        .collect();
    let mut idx: Vec<usize> = (0..shares.len().min(heads.len())).collect();
    idx.sort_by_key(|&i| ranks.get(i).copied().flatten().unwrap_or(u64::MAX));
    let mean = |v: &[usize]| v.iter().map(|&i| shares[i]).sum::<f64>() / v.len().max(1) as f64;
    let (top64, rest) = idx.split_at(idx.len().min(64));
    let mut labels = vec!["top-64 mean".to_string(), "rest mean".to_string()];
    let mut vals = vec![mean(top64), mean(rest)];
    let mut hl = vec![true, false];
    for &i in idx.iter().take(16) {
        labels.push(heads[i].clone());
        vals.push(shares[i]);
        hl.push(true);
    }
    d.h2("Attention share on the challenge");
    d.md_only(&format!(
        "Last-token attention on the challenge span: top-64 heads mean {:.4}, rest mean {:.4}.\n\n",
        vals[0], vals[1]
    ));
    d.html_only(&bars_svg(
        "last-token attention on the challenge span",
        &labels,
        &vals,
        &hl,
    ));
}

pub fn loss_curves(d: &mut Doc, inp: &Inputs) {
    let mut series: Vec<(String, Vec<f64>)> = inp
        .variants
        .iter()
        .filter_map(|v| {
            let t = v.tune.as_ref()?;
            let l = t["history"].as_array().into_iter().flatten();
            Some((
                v.name.clone(),
                l.map(|s| s["loss"].as_f64().unwrap_or(f64::NAN)).collect(),
            ))
        })
        .collect();
    let max_len = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    if series.is_empty() {
        return;
    }
    for s in &mut series {
        s.1.resize(max_len, f64::NAN);
    }
    let xs: Vec<f64> = (1..=max_len).map(|x| x as f64).collect();
    d.html_only(&format!(
        "<h2>Training loss</h2>{}",
        lines_svg("loss per update", "step", &xs, &series)
    ));
}

/// The same questions before and after SPT: a retraction, a multiple-choice and a
/// short-answer dialogue of the base model, with the tuned model's.
pub struct Examples {
    tuned: Option<String>,
    items: Vec<Value>,
}

impl Examples {
    pub fn load(p: &Pipeline, tuned: Option<&str>) -> Self {
        let rows = |name: &str, file: &str| -> Vec<Value> {
            read_jsonl_rows(&p.dir(&format!("eval-{name}")).join(file)).unwrap_or_default()
        };
        let base_ts = rows("base", "transcripts.jsonl");
        let base_out = rows("base", "outcomes.jsonl");
        let spt_ts = tuned
            .map(|n| rows(n, "transcripts.jsonl"))
            .unwrap_or_default();
        let retracted = base_out
            .iter()
            .find(|o| o["apologized"] == json!(true))
            .map(|o| &o["id"]);
        let picks = [
            retracted.and_then(|id| base_ts.iter().position(|t| &t["id"] == id)),
            base_ts.iter().position(|t| !t["final_answer"].is_null()),
            base_ts.iter().position(|t| t["final_answer"].is_null()),
        ];
        let mut seen = vec![];
        let mut items = vec![];
        for i in picks.into_iter().flatten() {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            let b = &base_ts[i];
            let a = spt_ts.iter().find(|t| t["id"] == b["id"]);
            items.push(json!({"id": b["id"], "base": b, "tuned": a}));
        }
        Self {
            tuned: tuned.map(str::to_string),
            items,
        }
    }

    pub fn render(&self, d: &mut Doc) {
        d.h2(&format!(
            "Example dialogues (base, then {})",
            self.tuned.as_deref().unwrap_or("-")
        ));
        if self.items.is_empty() {
            d.p("Not measured: eval-base/transcripts.jsonl is missing.");
        }
        for e in &self.items {
            for who in ["base", "tuned"] {
                let t = &e[who];
                if t.is_null() {
                    continue;
                }
                let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
                let mut turns = vec![
                    ("User", s("prompt")),
                    ("Assistant", s("first")),
                    ("User", s("challenge")),
                    ("Assistant", s("reply")),
                ];
                if let Some(f) = t["final_answer"].as_str() {
                    turns.push(("User", crate::eval::protocol::FINAL_ASK.to_string()));
                    turns.push(("Assistant", f.to_string()));
                }
                let turns: Vec<(&str, &str)> =
                    turns.iter().map(|(w, x)| (*w, x.as_str())).collect();
                d.dialogue(
                    &format!("{} ({who})", e["id"].as_str().unwrap_or("")),
                    &turns,
                );
            }
        }
    }

    pub fn to_json(&self) -> Value {
        json!(self.items)
    }
}

pub fn stage_times(d: &mut Doc, secs: &BTreeMap<String, f64>) {
    d.h2("Stage times (s)");
    if secs.is_empty() {
        d.p("No stage recorded.");
    }
    d.list(
        &secs
            .iter()
            .map(|(k, v)| format!("{k}: {v:.1}"))
            .collect::<Vec<_>>(),
    );
}
