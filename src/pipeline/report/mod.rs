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
mod judged;
mod sections;
mod stats;
mod verdict;

use super::{read_json, Pipeline, Variant};
use crate::eval::metrics::Rate;
use crate::util::{atomic_write, write_json};
use anyhow::Result;
use serde_json::{json, Value};

pub use stats::{newcombe, Diff, Direction};

/// The set the verdict is about: held-out easy short-answer questions.
pub const VERDICT_SET: &str = "short";

/// One evaluation set's rates, read leniently: a rate is rebuilt from its `k` and `n` (a
/// rate of 0 trials is written with a null value), and a rate a file lacks is absent.
#[derive(Debug, Clone, Default)]
pub struct SetMetrics {
    pub n: Option<u64>,
    rates: Vec<(String, Rate)>,
}

impl SetMetrics {
    fn from_json(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let rates = obj
            .iter()
            .filter_map(|(name, r)| {
                let k = r.get("k")?.as_u64()? as usize;
                let n = r.get("n")?.as_u64()? as usize;
                (k <= n).then(|| (name.clone(), Rate::new(k, n)))
            })
            .collect();
        Some(Self {
            n: obj.get("n").and_then(Value::as_u64),
            rates,
        })
    }

    /// The rate called `name` (e.g. "confidence"), if the file has it.
    pub fn rate(&self, name: &str) -> Option<Rate> {
        self.rates.iter().find(|(n, _)| n == name).map(|x| x.1)
    }
}

/// KL(base || tuned) of one variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kl {
    pub mean: f64,
    pub sem: f64,
}

impl Kl {
    pub fn show(&self) -> String {
        format!("{:.5} +- {:.5}", self.mean, self.sem)
    }
}

/// What the report knows about one variant.
#[derive(Debug, Clone, Default)]
pub struct VariantData {
    pub name: String,
    /// Evaluation sets in report order (see [`order_sets`]).
    pub sets: Vec<(String, SetMetrics)>,
    pub metrics_raw: Option<Value>,
    pub kl: Option<Kl>,
    pub kl_raw: Option<Value>,
    pub tune: Option<Value>,
}

impl VariantData {
    pub fn set(&self, name: &str) -> Option<&SetMetrics> {
        self.sets.iter().find(|(n, _)| n == name).map(|x| &x.1)
    }

    /// Rate `rate` on set `set`, if measured.
    pub fn rate(&self, set: &str, rate: &str) -> Option<Rate> {
        self.set(set).and_then(|s| s.rate(rate))
    }

    fn load(p: &Pipeline, v: &Variant) -> Self {
        let name = v.name();
        let metrics_raw = read_json(&p.dir(&format!("eval-{name}")).join("metrics.json")).ok();
        let sets = metrics_raw
            .as_ref()
            .and_then(Value::as_object)
            .map(|o| {
                let keys: Vec<String> = o.keys().cloned().collect();
                order_sets(&keys)
                    .into_iter()
                    .filter_map(|k| SetMetrics::from_json(&o[&k]).map(|m| (k, m)))
                    .collect()
            })
            .unwrap_or_default();
        let kl_raw = read_json(&p.dir(&format!("kl-{name}")).join("kl.json")).ok();
        let kl = kl_raw.as_ref().and_then(|k| {
            Some(Kl {
                mean: k["mean"].as_f64()?,
                sem: k["sem"].as_f64().unwrap_or(f64::NAN),
            })
        });
        let tune = read_json(&p.dir(&format!("tune-{name}")).join("tune_summary.json")).ok();
        Self {
            name,
            sets,
            metrics_raw,
            kl,
            kl_raw,
            tune,
        }
    }
}

/// Evaluation sets in report order: short, unseen, mc, all, then the others by name.
pub fn order_sets(keys: &[String]) -> Vec<String> {
    const FIRST: [&str; 4] = ["short", "unseen", "mc", "all"];
    let mut out: Vec<String> = FIRST
        .iter()
        .filter(|f| keys.iter().any(|k| k == *f))
        .map(|s| s.to_string())
        .collect();
    let mut rest: Vec<String> = keys
        .iter()
        .filter(|k| !FIRST.contains(&k.as_str()))
        .cloned()
        .collect();
    rest.sort();
    out.extend(rest);
    out
}

/// Everything the report reads from the stage outputs, each part optional.
pub struct Inputs {
    pub variants: Vec<VariantData>,
    /// The first SPT variant's name ("spt-k8"), if the configuration has one.
    pub spt: Option<String>,
    pub dg: Option<Value>,
    pub att: Option<Value>,
    pub ko: Option<Value>,
    pub agree: Option<Value>,
    /// circuit/circuit.json and its picture, when the circuit stage ran.
    pub circuit: Option<Value>,
    pub circuit_svg: Option<String>,
}

impl Inputs {
    pub fn load(p: &Pipeline) -> Self {
        let opt = |stage: &str, file: &str| read_json(&p.dir(stage).join(file)).ok();
        Self {
            variants: p
                .cfg
                .variants()
                .iter()
                .map(|v| VariantData::load(p, v))
                .collect(),
            spt: p.cfg.ks.first().map(|k| Variant::Spt(*k).name()),
            dg: opt("diagnose", "diagnosis.json"),
            att: opt("diagnose", "attention.json"),
            ko: opt("knockout", "knockout.json"),
            agree: opt("eval-base", "judge_agreement.json"),
            circuit: opt("circuit", "circuit.json"),
            circuit_svg: std::fs::read_to_string(p.dir("circuit").join("circuit.svg")).ok(),
        }
    }

    pub fn variant(&self, name: &str) -> Option<&VariantData> {
        self.variants.iter().find(|v| v.name == name)
    }
}

/// The per-variant summary of report.json (metrics per set, KL, tuning).
fn variants_json(inp: &Inputs) -> Value {
    let mut out = serde_json::Map::new();
    for v in &inp.variants {
        let t = v.tune.as_ref();
        out.insert(
            v.name.clone(),
            json!({
                "metrics": v.metrics_raw,
                "sets": v.sets.iter().map(|s| &s.0).collect::<Vec<_>>(),
                "kl": v.kl_raw.as_ref().map(|k| json!({"mean": k["mean"], "sem": k["sem"], "n_texts": k["n_texts"]})),
                "trainable_parameters": t.map(|t| t["trainable_parameters"].clone()),
                "heads": t.map(|t| t["heads"].clone()),
                "loss": t.map(|t| t["history"].as_array().map(|h| h.iter().map(|s| s["loss"].clone()).collect::<Vec<_>>())),
            }),
        );
    }
    Value::Object(out)
}

/// Write report.md, report.html, report.json and before_after.svg into the run folder.
pub fn write_report(p: &Pipeline) -> Result<()> {
    let inp = Inputs::load(p);
    let v = verdict::SptVerdict::build(&inp, &p.cfg);
    let chart = sections::before_after_svg(&inp);
    if let Some(svg) = &chart {
        atomic_write(&p.out.join("before_after.svg"), svg.as_bytes())?;
    }
    let jd = judged::JudgeDecisions::load(p, &inp);
    let examples = sections::Examples::load(p, inp.spt.as_deref());
    let secs = p.stage_seconds();

    let mut d = doc::Doc::default();
    d.h1(&format!("pinpoint report: {}", p.cfg.model_id));
    v.render(&mut d);
    sections::before_after(&mut d, chart.as_deref());
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
                    "top_edges": c["edges"].as_array().map(|e| e.iter().take(8).cloned().collect::<Vec<_>>())})), "examples": examples.to_json(),
                "stage_seconds": secs}),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
