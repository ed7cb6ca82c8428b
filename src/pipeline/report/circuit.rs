//! The report's "What feeds the sycophancy heads" section, from `circuit/circuit.json`.

use super::doc::{Doc, Table};
use super::Inputs;
use serde_json::Value;

/// Edges listed in the section.
const SHOWN: usize = 8;

pub fn section(d: &mut Doc, inp: &Inputs) {
    let Some(c) = &inp.circuit else { return };
    d.h2("What feeds the sycophancy heads");
    let edges: Vec<&Value> = c["edges"].as_array().into_iter().flatten().collect();
    let receivers: Vec<String> = {
        let mut r: Vec<String> = edges
            .iter()
            .filter_map(|e| e["receiver"].as_str().map(String::from))
            .collect();
        r.sort();
        r.dedup();
        r
    };
    d.p(&format!(
        "Exact path patching of every earlier head and MLP into the query, key and value of \
         the top heads ({}) at the last position, on the diagnosis pairs ({} edges; score in \
         the diagnosis's units, negative lowers the sycophancy metric). Strongest edges:",
        receivers.join(", "),
        edges.len()
    ));
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut t = Table::new(&["edge", "channel", "exact", "EAP", "EAP-IG"]);
    for e in edges.iter().take(SHOWN) {
        t.row(vec![
            format!(
                "{} -> {}",
                e["sender"].as_str().unwrap_or("?"),
                e["receiver"].as_str().unwrap_or("?")
            ),
            e["channel"].as_str().unwrap_or("?").to_string(),
            num(&e["exact"]),
            num(&e["eap"]),
            num(&e["eap_ig"]),
        ]);
    }
    d.table(&t);
    let agree = |name: &str| {
        let a = &c["agreement"][name];
        a["spearman"].as_f64().map(|s| {
            format!(
                "{name}: Spearman {s:.2}, top-10 overlap {}, top-50 overlap {}",
                num(&a["top10_overlap"]),
                num(&a["top50_overlap"])
            )
        })
    };
    let parts: Vec<String> = ["eap", "eap_ig"].iter().filter_map(|n| agree(n)).collect();
    if !parts.is_empty() {
        d.p(&format!(
            "Agreement of the approximations with the exact scores over all edges: {}.",
            parts.join("; ")
        ));
    }
    d.md_only("Picture: `circuit/circuit.svg`; all edges: `circuit/circuit.json`.\n\n");
    if let Some(svg) = &inp.circuit_svg {
        d.html_only(&format!("<h3>Top edges</h3>{svg}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The section lists the strongest edges with their channel and scores, and the
    /// agreement; without circuit.json it is absent.
    #[test]
    fn section_from_circuit_json() {
        let mut inp = Inputs {
            variants: vec![],
            spt: None,
            dg: None,
            att: None,
            ko: None,
            agree: None,
            circuit: None,
            circuit_svg: None,
        };
        let mut d = Doc::default();
        section(&mut d, &inp);
        assert!(d.md.is_empty());
        inp.circuit = Some(json!({
            "edges": [{"sender": "L3H1", "receiver": "L14H2", "channel": "v", "exact": -1.25,
                       "eap": -1.0, "eap_ig": null}],
            "agreement": {"eap": {"spearman": 0.5, "top10_overlap": 0.4, "top50_overlap": 0.6},
                          "eap_ig": null}
        }));
        section(&mut d, &inp);
        for want in [
            "What feeds the sycophancy heads",
            "L3H1 -> L14H2",
            "-1.250",
            "eap: Spearman 0.50, top-10 overlap 0.400",
        ] {
            assert!(d.md.contains(want), "missing {want:?} in\n{}", d.md);
        }
    }
}
