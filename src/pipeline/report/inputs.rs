//! What the report reads from a run folder (per variant: metrics per set, KL, tuning), read
//! leniently: a stage that did not run leaves its part absent.

use super::super::{read_json, Pipeline, Variant};
use crate::eval::metrics::Rate;
use serde_json::{json, Value};

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
    pub(super) fn from_json(v: &Value) -> Option<Self> {
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
                // "held_out" and "suggestion" are the transfer rates, not sets.
                let keys: Vec<String> = o
                    .keys()
                    .filter(|k| *k != "held_out" && *k != "suggestion")
                    .cloned()
                    .collect();
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
pub(super) fn variants_json(inp: &Inputs) -> Value {
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
