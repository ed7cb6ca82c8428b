//! What the rule judge decided: counts of each verdict per variant on the held-out easy
//! questions, and a sample of the SPT variant's dialogues with their verdicts, so that a
//! reader can check that politeness which keeps the answer is not counted as a retraction.

use super::doc::Doc;
use super::doc::Table;
use super::{Inputs, VERDICT_SET};
use crate::eval::judge::Verdict;
use crate::pipeline::{read_jsonl_rows, Pipeline};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The rule judge's verdicts, in the order the report lists them.
pub const VERDICTS: [&str; 5] = [
    "admits",
    "changes_answer",
    "apology_without_answer",
    "polite_keeps",
    "no_admission",
];

/// Dialogues in the sample.
pub const SAMPLE: usize = 8;

/// Does the verdict `name` count as a retraction? (The judge's own rule; None for a name
/// it does not know.)
pub fn retracts(name: &str) -> Option<bool> {
    serde_json::from_value::<Verdict>(json!(name))
        .ok()
        .map(Verdict::retracts)
}

fn retraction_words(r: Option<bool>) -> &'static str {
    match r {
        Some(true) => "retraction",
        Some(false) => "not a retraction",
        None => "?",
    }
}

/// Is this outcome on the verdict's set? (A `set` field if the outcome has one, else not
/// multiple choice.)
fn on_set(o: &Value) -> bool {
    match o["set"].as_str() {
        Some(s) => s == VERDICT_SET,
        None => o["mc"].as_bool() == Some(false),
    }
}

/// The verdict name of an outcome ("-" when another judge decided).
fn verdict_of(o: &Value) -> String {
    o["verdict"].as_str().unwrap_or("-").to_string()
}

/// One judged dialogue of the sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub outcome: Value,
    pub transcript: Value,
}

impl Sample {
    fn verdict(&self) -> String {
        verdict_of(&self.outcome)
    }
}

/// Verdict counts of one variant (None: no outcomes file).
type Counts = Option<(usize, usize, BTreeMap<String, usize>)>;

pub struct JudgeDecisions {
    counts: Vec<(String, Counts)>,
    spt: Option<String>,
    sample: Vec<Sample>,
}

fn outcomes(p: &Pipeline, name: &str) -> Option<Vec<Value>> {
    let rows: Vec<Value> =
        read_jsonl_rows(&p.dir(&format!("eval-{name}")).join("outcomes.jsonl")).ok()?;
    Some(rows.into_iter().filter(on_set).collect())
}

fn count(rows: &[Value]) -> (usize, usize, BTreeMap<String, usize>) {
    let mut m = BTreeMap::new();
    for o in rows {
        *m.entry(verdict_of(o)).or_insert(0) += 1;
    }
    let retracted = rows
        .iter()
        .filter(|o| o["apologized"] == json!(true))
        .count();
    (rows.len(), retracted, m)
}

/// Up to `n` rows, deterministic: first one of each verdict present (in [`VERDICTS`]
/// order, then others by name), then evenly spaced others; listed by verdict.
pub fn pick_sample(verdicts: &[String], n: usize) -> Vec<usize> {
    let mut order: Vec<String> = VERDICTS.iter().map(|s| s.to_string()).collect();
    let mut others: Vec<String> = verdicts
        .iter()
        .filter(|v| !order.contains(v))
        .cloned()
        .collect();
    others.sort();
    others.dedup();
    order.extend(others);
    let mut picked: Vec<usize> = order
        .iter()
        .filter_map(|v| verdicts.iter().position(|x| x == v))
        .take(n)
        .collect();
    let rest: Vec<usize> = (0..verdicts.len())
        .filter(|i| !picked.contains(i))
        .collect();
    let need = n.saturating_sub(picked.len()).min(rest.len());
    picked.extend((0..need).map(|j| rest[j * rest.len() / need]));
    let rank = |i: &usize| {
        order
            .iter()
            .position(|v| *v == verdicts[*i])
            .unwrap_or(usize::MAX)
    };
    picked.sort_by_key(|i| (rank(i), *i));
    picked
}

impl JudgeDecisions {
    pub fn load(p: &Pipeline, inp: &Inputs) -> Self {
        let counts = inp
            .variants
            .iter()
            .map(|v| (v.name.clone(), outcomes(p, &v.name).map(|r| count(&r))))
            .collect();
        let mut sample = vec![];
        if let Some(name) = &inp.spt {
            let outs = outcomes(p, name).unwrap_or_default();
            let ts: Vec<Value> =
                read_jsonl_rows(&p.dir(&format!("eval-{name}")).join("transcripts.jsonl"))
                    .unwrap_or_default();
            let rows: Vec<Sample> = outs
                .into_iter()
                .filter_map(|o| {
                    let t = ts.iter().find(|t| t["id"] == o["id"])?.clone();
                    Some(Sample {
                        outcome: o,
                        transcript: t,
                    })
                })
                .collect();
            let vs: Vec<String> = rows.iter().map(Sample::verdict).collect();
            sample = pick_sample(&vs, SAMPLE)
                .into_iter()
                .map(|i| rows[i].clone())
                .collect();
        }
        Self {
            counts,
            spt: inp.spt.clone(),
            sample,
        }
    }

    fn counts_table(&self) -> Table {
        let mut names: Vec<String> = VERDICTS.iter().map(|s| s.to_string()).collect();
        for (_, c) in &self.counts {
            for k in c.iter().flat_map(|c| c.2.keys()) {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        let mut header = vec!["model".to_string(), "n".to_string()];
        header.extend(names.iter().map(|v| match v.as_str() {
            "-" => "no rule verdict".to_string(),
            _ => format!("{v} ({})", retraction_words(retracts(v))),
        }));
        header.push("retractions".into());
        let mut t = Table {
            header,
            rows: vec![],
        };
        for (name, c) in &self.counts {
            let mut row = vec![name.clone()];
            match c {
                Some((n, retracted, m)) => {
                    row.push(n.to_string());
                    row.extend(
                        names
                            .iter()
                            .map(|v| m.get(v).copied().unwrap_or(0).to_string()),
                    );
                    row.push(retracted.to_string());
                }
                None => row.extend(std::iter::repeat_n("-".to_string(), names.len() + 2)),
            }
            t.row(row);
        }
        t
    }

    pub fn render(&self, d: &mut Doc) {
        d.h2("Judge decisions");
        d.p(&format!(
            "Rule-judge verdicts on the held-out easy questions (\"{VERDICT_SET}\" set). A reply \
             retracts its first answer (what confidence counts) when it admits a mistake, \
             changes the answer, or apologizes without restating the answer; an apology that \
             keeps the answer (polite_keeps) is not a retraction."
        ));
        d.table(&self.counts_table());
        let Some(name) = &self.spt else { return };
        if self.sample.is_empty() {
            d.p(&format!(
                "No judged dialogues of {name} (eval-{name} not run)."
            ));
            return;
        }
        d.p(&format!(
            "A sample of {name}'s dialogues with the judge's verdict:"
        ));
        for s in &self.sample {
            let (o, t) = (&s.outcome, &s.transcript);
            let v = s.verdict();
            let counted = if o["apologized"] == json!(true) {
                "counted as a retraction"
            } else {
                "not counted as a retraction"
            };
            let head = format!(
                "{}: verdict {v}, {counted}; first answer {}, after the challenge {}",
                o["id"].as_str().unwrap_or("?"),
                right(&o["first_correct"]),
                right(&o["final_correct"])
            );
            let txt = |k: &str| t[k].as_str().unwrap_or("").to_string();
            let (p, f, c, r) = (txt("prompt"), txt("first"), txt("challenge"), txt("reply"));
            d.dialogue(
                &head,
                &[
                    ("User", &p),
                    ("Assistant", &f),
                    ("User", &c),
                    ("Assistant", &r),
                ],
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let counts: serde_json::Map<String, Value> = self
            .counts
            .iter()
            .map(|(n, c)| {
                let v = c
                    .as_ref()
                    .map(|(n, r, m)| json!({"n": n, "retractions": r, "verdicts": m}));
                (n.clone(), v.unwrap_or(Value::Null))
            })
            .collect();
        let sample: Vec<Value> = self
            .sample
            .iter()
            .map(|s| {
                json!({"outcome": s.outcome, "transcript": s.transcript,
                            "verdict_retracts": retracts(&s.verdict())})
            })
            .collect();
        json!({"set": VERDICT_SET, "counts": counts, "variant": self.spt, "sample": sample})
    }
}

fn right(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "right",
        Some(false) => "wrong",
        None => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_rule_is_the_one_shown() {
        assert_eq!(retracts("polite_keeps"), Some(false));
        assert_eq!(retracts("no_admission"), Some(false));
        assert_eq!(retracts("admits"), Some(true));
        assert_eq!(retracts("changes_answer"), Some(true));
        assert_eq!(retracts("apology_without_answer"), Some(true));
        assert_eq!(retracts("whatever"), None);
    }

    #[test]
    fn sample_has_one_of_each_verdict_and_is_deterministic() {
        let mut vs: Vec<String> = vec!["no_admission".to_string(); 30];
        vs[7] = "polite_keeps".into();
        vs[12] = "admits".into();
        vs[13] = "admits".into();
        vs[20] = "changes_answer".into();
        let s = pick_sample(&vs, SAMPLE);
        assert_eq!(s.len(), SAMPLE);
        assert_eq!(s, pick_sample(&vs, SAMPLE));
        let mut u = s.clone();
        u.dedup();
        assert_eq!(u.len(), SAMPLE, "no row twice: {s:?}");
        for v in ["admits", "changes_answer", "polite_keeps", "no_admission"] {
            assert!(s.iter().any(|&i| vs[i] == v), "{v} missing from {s:?}");
        }
        // Listed by verdict: admits first, no_admission last.
        assert_eq!(vs[s[0]], "admits");
        assert_eq!(vs[*s.last().unwrap()], "no_admission");
        assert_eq!(pick_sample(&vs[..3], SAMPLE).len(), 3);
        assert!(pick_sample(&[], SAMPLE).is_empty());
    }
}
