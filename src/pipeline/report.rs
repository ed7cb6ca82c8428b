//! `report.md`, a self-contained `report.html` (inline SVG) and `report.json` from the
//! pipeline's stage outputs: a miniature of the paper's Table 1 (confidence,
//! truthfulness, KL with intervals, base vs SPT vs baselines), the head heatmap, the
//! knockout curve, attention-share bars, loss curves and example dialogues.

use super::{read_json, read_jsonl_rows, Pipeline};
use crate::diagnose::report::{bars_svg, heatmap_svg, lines_svg};
use crate::eval::metrics::Rate;
use crate::eval::protocol::Transcript;
use crate::util::{atomic_write, write_json};
use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write as _;

fn rate_of(v: &Value) -> Option<Rate> {
    serde_json::from_value(v.clone()).ok()
}

fn show(v: &Value) -> String {
    rate_of(v).map(|r| r.show()).unwrap_or_else(|| "-".into())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn write_report(p: &Pipeline) -> Result<()> {
    let mut rows = vec![];
    let mut variants = json!({});
    for v in p.cfg.variants() {
        let name = v.name();
        let m = read_json(&p.dir(&format!("eval-{name}")).join("metrics.json")).ok();
        let kl = read_json(&p.dir(&format!("kl-{name}")).join("kl.json")).ok();
        let tune = read_json(&p.dir(&format!("tune-{name}")).join("tune_summary.json")).ok();
        variants[&name] = json!({
            "metrics": m,
            "kl": kl.as_ref().map(|k| json!({"mean": k["mean"], "sem": k["sem"], "n_texts": k["n_texts"]})),
            "trainable_parameters": tune.as_ref().map(|t| t["trainable_parameters"].clone()),
            "heads": tune.as_ref().map(|t| t["heads"].clone()),
            "loss": tune.as_ref().map(|t| t["history"].as_array().map(|h| h.iter().map(|s| s["loss"].clone()).collect::<Vec<_>>())),
        });
        rows.push((name, m, kl, tune));
    }
    let dg = read_json(&p.dir("diagnose").join("diagnosis.json")).ok();
    let att = read_json(&p.dir("diagnose").join("attention.json")).ok();
    let ko = read_json(&p.dir("knockout").join("knockout.json")).ok();
    let agree = read_json(&p.dir("eval-base").join("judge_agreement.json")).ok();
    let top_heads: Vec<String> = dg
        .as_ref()
        .and_then(|d| d["heads"].as_array().cloned())
        .unwrap_or_default()
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

    // Markdown.
    let mut md = String::new();
    let _ = writeln!(md, "# pinpoint report: {}\n", p.cfg.model_id);
    let _ = writeln!(md, "Evaluation: {} multiple-choice (MMLU) + {} short-answer questions, held out from the {} + {} training questions. Intervals are 95% Wilson intervals. KL(original || tuned) on {} OpenWebText texts cut to {} tokens (mean +- s.e.).\n",
        p.cfg.n_eval_mc, p.cfg.n_eval_short, p.cfg.n_train_mc, p.cfg.n_train_short, p.cfg.kl_texts, p.cfg.kl_len);
    let _ = writeln!(md, "## Table 1 (miniature)\n");
    let _ = writeln!(md, "| model | tuned params | set | first-answer acc. | confidence | truthfulness | apology rate | answer change | KL |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (name, m, kl, tune) in &rows {
        let Some(m) = m else { continue };
        let klt = kl
            .as_ref()
            .map(|k| {
                format!(
                    "{:.5} +- {:.5}",
                    k["mean"].as_f64().unwrap_or(f64::NAN),
                    k["sem"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .unwrap_or_else(|| {
                if name == "base" {
                    "0".into()
                } else {
                    "-".into()
                }
            });
        let params = tune
            .as_ref()
            .map(|t| t["trainable_parameters"].to_string())
            .unwrap_or_else(|| "0".into());
        for set in ["mc", "short", "all"] {
            let s = &m[set];
            let _ = writeln!(
                md,
                "| {name} | {params} | {set} | {} | {} | {} | {} | {} | {klt} |",
                show(&s["first_accuracy"]),
                show(&s["confidence"]),
                show(&s["truthfulness"]),
                show(&s["apology_rate"]),
                show(&s["change_rate"])
            );
        }
    }
    if let Some(a) = &agree {
        let _ = writeln!(md, "\nJudge agreement (rules vs model-as-judge = the base model) on {} base dialogues: {}\n", a["agreement"]["n"], a["agreement"]);
    }
    let _ = writeln!(
        md,
        "\n## Diagnosis\n\nTop heads (path patching score, most negative first): {}\n",
        top_heads.join(", ")
    );
    let _ = writeln!(
        md,
        "Heatmap: `diagnose/heatmap.svg`; heads: `diagnose/heads.json`.\n"
    );
    if let Some(ko) = &ko {
        let _ = writeln!(md, "## Behavioural knockout (top-k heads mean-ablated)\n\n| k | apology rate | accuracy after challenge |\n|---|---|---|");
        for pt in ko.as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                pt["k"],
                show(&pt["apology_rate"]),
                show(&pt["final_accuracy"])
            );
        }
    }
    // Examples: the same questions before and after SPT.
    let tuned_name = p.cfg.ks.first().map(|k| format!("spt-k{k}"));
    let base_ts: Vec<Transcript> =
        read_jsonl_rows(&p.dir("eval-base").join("transcripts.jsonl")).unwrap_or_default();
    let spt_ts: Vec<Transcript> = tuned_name
        .as_ref()
        .and_then(|n| read_jsonl_rows(&p.dir(&format!("eval-{n}")).join("transcripts.jsonl")).ok())
        .unwrap_or_default();
    let mut examples = vec![];
    let picks: Vec<usize> = {
        let mc = base_ts.iter().position(|t| t.final_answer.is_some());
        let sa = base_ts.iter().position(|t| t.final_answer.is_none());
        let ap = base_ts
            .iter()
            .position(|t| crate::eval::judge::admits_mistake_rules(&t.reply));
        let mut v: Vec<usize> = [ap, mc, sa].into_iter().flatten().collect();
        v.dedup();
        v
    };
    let _ = writeln!(
        md,
        "\n## Example dialogues (base, then {})\n",
        tuned_name.clone().unwrap_or_default()
    );
    for i in picks {
        let b = &base_ts[i];
        let a = spt_ts.iter().find(|t| t.id == b.id);
        examples.push(json!({"id": b.id, "base": b, "tuned": a}));
        let _ = writeln!(
            md,
            "**{}**\n\n> User: {}\n",
            b.id,
            b.prompt.replace('\n', "\n> ")
        );
        for (who, t) in [("base", Some(b)), ("tuned", a)] {
            if let Some(t) = t {
                let _ = writeln!(
                    md,
                    "- {who}: first `{}` / challenge `{}` / reply `{}`{}",
                    t.first.replace('\n', " "),
                    t.challenge,
                    t.reply.replace('\n', " "),
                    t.final_answer
                        .as_ref()
                        .map(|f| format!(" / final `{}`", f.replace('\n', " ")))
                        .unwrap_or_default()
                );
            }
        }
        md.push('\n');
    }
    let secs = p.stage_seconds();
    let _ = writeln!(
        md,
        "\n## Stage times (s)\n\n{}",
        secs.iter()
            .map(|(k, v)| format!("- {k}: {v:.1}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    atomic_write(&p.out.join("report.md"), md.as_bytes())?;

    // JSON.
    write_json(
        &p.out.join("report.json"),
        &json!({"model": p.cfg.model_id, "config": p.cfg, "variants": variants,
                "diagnosis": dg.as_ref().map(|d| json!({"n_pairs": d["n_pairs"], "reference_metric": d["reference_metric"], "top": d["heads"].as_array().map(|h| h.iter().take(64).cloned().collect::<Vec<_>>())})),
                "attention": att, "knockout": ko, "judge_agreement": agree, "examples": examples,
                "stage_seconds": secs}),
    )?;

    // HTML with inline SVG.
    let mut h = String::new();
    let _ = write!(h, "<!doctype html><html><head><meta charset=\"utf-8\"><title>pinpoint report</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}</style></head><body>");
    let _ = write!(h, "<h1>pinpoint report: {}</h1>", esc(&p.cfg.model_id));
    // Table: render the markdown table rows as HTML.
    let _ = write!(h, "<h2>Table 1 (miniature)</h2><table>");
    for line in md
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        let tag = if line.contains("first-answer") {
            "th"
        } else {
            "td"
        };
        let _ = write!(
            h,
            "<tr>{}</tr>",
            cells
                .iter()
                .map(|c| format!("<{tag}>{}</{tag}>", esc(c.trim())))
                .collect::<String>()
        );
        if line.contains("| k |") {
            break;
        }
    }
    let _ = write!(h, "</table>");
    if let Some(d) = &dg {
        let l_n = d["heads"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["layer"].as_u64())
                    .max()
                    .unwrap_or(0) as usize
                    + 1
            })
            .unwrap_or(0);
        let h_n = d["heads"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["head"].as_u64())
                    .max()
                    .unwrap_or(0) as usize
                    + 1
            })
            .unwrap_or(0);
        let mut grid = vec![vec![f64::NAN; h_n]; l_n];
        let mut top = vec![];
        for (i, x) in d["heads"].as_array().into_iter().flatten().enumerate() {
            let (l, hh) = (
                x["layer"].as_u64().unwrap_or(0) as usize,
                x["head"].as_u64().unwrap_or(0) as usize,
            );
            grid[l][hh] = x["score"].as_f64().unwrap_or(f64::NAN);
            if i < p.cfg.ks.iter().copied().max().unwrap_or(8) {
                top.push((l, hh));
            }
        }
        let _ = write!(
            h,
            "<h2>Head heatmap (path patching)</h2>{}",
            heatmap_svg(&grid, &top, "score per head (layers down, heads across)")
        );
    }
    if let Some(ko) = &ko {
        let pts: Vec<&Value> = ko.as_array().into_iter().flatten().collect();
        let xs: Vec<f64> = pts.iter().map(|p| p["k"].as_f64().unwrap_or(0.0)).collect();
        let ap: Vec<f64> = pts
            .iter()
            .map(|p| p["apology_rate"]["value"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let ac: Vec<f64> = pts
            .iter()
            .map(|p| p["final_accuracy"]["value"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let _ = write!(
            h,
            "<h2>Behavioural knockout</h2>{}",
            lines_svg(
                "top-k heads mean-ablated",
                "k",
                &xs,
                &[
                    ("apology rate".into(), ap),
                    ("accuracy after challenge".into(), ac)
                ]
            )
        );
    }
    if let Some(a) = &att {
        let shares: Vec<f64> = a["share"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_f64().unwrap_or(0.0))
            .collect();
        let ranks: Vec<Option<u64>> = a["rank"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_u64())
            .collect();
        let heads: Vec<String> = a["heads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("L{}H{}", x["layer"], x["head"]))
            .collect();
        let mut idx: Vec<usize> = (0..shares.len()).collect();
        idx.sort_by_key(|&i| ranks.get(i).copied().flatten().unwrap_or(u64::MAX));
        let top64: Vec<usize> = idx.iter().copied().take(64).collect();
        let mean = |v: &[usize]| v.iter().map(|&i| shares[i]).sum::<f64>() / v.len().max(1) as f64;
        let rest: Vec<usize> = idx.iter().copied().skip(64).collect();
        let mut labels = vec!["top-64 mean".to_string(), "rest mean".to_string()];
        let mut vals = vec![mean(&top64), mean(&rest)];
        let mut hl = vec![true, false];
        for &i in idx.iter().take(16) {
            labels.push(heads[i].clone());
            vals.push(shares[i]);
            hl.push(true);
        }
        let _ = write!(
            h,
            "<h2>Attention share on the challenge</h2>{}",
            bars_svg(
                "last-token attention on the challenge span",
                &labels,
                &vals,
                &hl
            )
        );
    }
    let mut loss_series = vec![];
    let mut max_len = 0;
    for (name, _, _, tune) in &rows {
        if let Some(t) = tune {
            let l: Vec<f64> = t["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["loss"].as_f64().unwrap_or(f64::NAN))
                .collect();
            max_len = max_len.max(l.len());
            loss_series.push((name.clone(), l));
        }
    }
    if !loss_series.is_empty() {
        for s in &mut loss_series {
            s.1.resize(max_len, f64::NAN);
        }
        let xs: Vec<f64> = (1..=max_len).map(|x| x as f64).collect();
        let _ = write!(
            h,
            "<h2>Training loss</h2>{}",
            lines_svg("loss per update", "step", &xs, &loss_series)
        );
    }
    let _ = write!(h, "<h2>Example dialogues</h2>");
    for e in &examples {
        let _ = write!(h, "<h3>{}</h3>", esc(e["id"].as_str().unwrap_or("")));
        for who in ["base", "tuned"] {
            let t = &e[who];
            if t.is_null() {
                continue;
            }
            let _ = write!(
                h,
                "<pre><b>{who}</b>\nUser: {}\nAssistant: {}\nUser: {}\nAssistant: {}{}</pre>",
                esc(t["prompt"].as_str().unwrap_or("")),
                esc(t["first"].as_str().unwrap_or("")),
                esc(t["challenge"].as_str().unwrap_or("")),
                esc(t["reply"].as_str().unwrap_or("")),
                t["final_answer"]
                    .as_str()
                    .map(|f| format!(
                        "\nUser: {}\nAssistant: {}",
                        crate::eval::protocol::FINAL_ASK,
                        esc(f)
                    ))
                    .unwrap_or_default()
            );
        }
    }
    let _ = write!(h, "</body></html>");
    atomic_write(&p.out.join("report.html"), h.as_bytes())?;
    Ok(())
}
