//! A circuit's agreement statistics (EAP and EAP-IG against the exact scores) and its
//! `circuit.json`.

use super::circuit::Circuit;
use super::circuit_edge::{Edge, Receiver, Sender};
use serde::Serialize;
use serde_json::{json, Value};

/// How an approximation ranks the edges (with a path) against the exact scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Spearman's rank correlation of the mean scores (signed).
    pub spearman: f64,
    /// Fraction of the exact top-k edges (by |mean score|) among the approximation's top-k.
    pub top10_overlap: f64,
    pub top50_overlap: f64,
    pub edges: usize,
}

/// Spearman's rank correlation: the one path patching's attribution check uses.
pub use super::attribution::spearman;

/// Fraction of the top `k` of `a` by |value| that are in the top `k` of `b` (k capped at the
/// length).
pub fn top_overlap(a: &[f64], b: &[f64], k: usize) -> f64 {
    let k = k.min(a.len());
    if k == 0 {
        return f64::NAN;
    }
    let top = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&x, &y| v[y].abs().total_cmp(&v[x].abs()).then(x.cmp(&y)));
        idx.truncate(k);
        idx
    };
    let (ta, tb) = (top(a), top(b));
    ta.iter().filter(|i| tb.contains(i)).count() as f64 / k as f64
}

/// Agreement of approximate mean scores `approx` with `exact` (both over the same edges).
pub fn agreement(exact: &[f64], approx: &[f64]) -> Agreement {
    Agreement {
        spearman: spearman(exact, approx),
        top10_overlap: top_overlap(exact, approx, 10),
        top50_overlap: top_overlap(exact, approx, 50),
        edges: exact.len(),
    }
}

impl Circuit {
    /// (EAP, EAP-IG) agreement over the edges with a path.
    pub fn agreements(&self) -> (Agreement, Option<Agreement>) {
        let idx = self.ranking();
        let ex: Vec<f64> = idx.iter().map(|&e| self.exact_mean(e)).collect();
        let eap: Vec<f64> = idx.iter().map(|&e| self.eap_mean(e)).collect();
        let ig = self.eap_ig.as_ref().map(|_| {
            let v: Vec<f64> = idx
                .iter()
                .map(|&e| self.eap_ig_mean(e).unwrap_or(f64::NAN))
                .collect();
            agreement(&ex, &v)
        });
        (agreement(&ex, &eap), ig)
    }

    fn std(&self, e: usize) -> f64 {
        let v = &self.exact.per_pair[e];
        let m = self.exact_mean(e);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64).sqrt()
    }

    fn node_json(&self, e: &Edge, sender: bool) -> Value {
        let (l_n, h_n) = (self.n_layers, self.n_heads);
        if sender {
            let (kind, head) = match e.sender {
                Sender::Head(h) => ("head", Some(h.head)),
                Sender::Mlp(_) => ("mlp", None),
            };
            json!({"name": e.sender.label(), "kind": kind, "layer": e.sender.layer(),
                   "head": head, "hook": e.sender.tl_name()})
        } else {
            let (kind, head) = match e.receiver {
                Receiver::Head(h) => ("head", Some(h.head)),
                Receiver::Logits => ("logits", None),
            };
            let _ = h_n;
            json!({"name": e.receiver.label(), "kind": kind, "layer": e.receiver.layer(l_n),
                   "head": head})
        }
    }

    /// circuit.json: the definition, nodes, edges with a path ranked by |exact| (with their
    /// TransformerLens hooks, channel, exact mean and std, EAP and EAP-IG means) and the
    /// agreement.
    pub fn to_json(&self, model: &str, n_pairs: usize) -> Value {
        let mut nodes: Vec<(String, Value)> = vec![];
        let mut push = |v: Value| {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            if !nodes.iter().any(|(n, _)| *n == name) {
                nodes.push((name, v));
            }
        };
        let ranking = self.ranking();
        for &e in &ranking {
            let edge = &self.edges()[e];
            push(self.node_json(edge, false));
            push(self.node_json(edge, true));
        }
        let edges: Vec<Value> = ranking
            .iter()
            .enumerate()
            .map(|(rank, &e)| {
                let edge = &self.edges()[e];
                json!({
                    "rank": rank + 1,
                    "sender": edge.sender.label(),
                    "receiver": edge.receiver.label(),
                    "channel": edge.channel.name(),
                    "sender_hook": edge.sender.tl_name(),
                    "receiver_hook": edge.receiver.tl_name(edge.channel, self.n_layers),
                    "exact": self.exact_mean(e),
                    "exact_std": self.std(e),
                    "eap": self.eap_mean(e),
                    "eap_ig": self.eap_ig_mean(e),
                })
            })
            .collect();
        let (eap, ig) = self.agreements();
        json!({
            "model": model,
            "pairs": n_pairs,
            "positions": "last",
            "metric": self.metric,
            "ig_steps": self.ig_steps,
            "reference_mean": self.reference.iter().sum::<f64>() / self.reference.len().max(1) as f64,
            "definition": "exact: the sender's last-position output takes its counterfactual \
                value, every other component keeps its clean output, the receiver's channel \
                (q, k or v) at the last position is recomputed from the residual so changed, \
                and the metric is read with that channel patched into the clean run, later \
                heads frozen at their clean values and MLPs recomputed (path patching's \
                carry); eap: first-order term at X_r; eap_ig: the gradient averaged over \
                ig_steps points from X_r's receiver input to X_c's",
            "nodes": nodes.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "edges": edges,
            "agreement": {"eap": eap, "eap_ig": ig},
        })
    }
}

/// Write `circuit.json`, `circuit.svg` and `circuit.png` into `dir` (each to a temporary
/// file renamed into place), the picture with the top `top_edges` edges.
pub fn write_circuit(
    dir: &std::path::Path,
    c: &Circuit,
    model: &str,
    n_pairs: usize,
    top_edges: usize,
) -> anyhow::Result<()> {
    use crate::util::{atomic_write, write_json};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let mut json = c.to_json(model, n_pairs);
    json["top_edges"] = json!(top_edges);
    write_json(&dir.join("circuit.json"), &json)?;
    let title =
        format!("{model}: what feeds the receivers (top {top_edges} edges, {n_pairs} pairs)");
    atomic_write(
        &dir.join("circuit.svg"),
        super::circuit_chart::circuit_svg(c, top_edges, &title).as_bytes(),
    )?;
    atomic_write(
        &dir.join("circuit.png"),
        &super::circuit_chart::circuit_png(c, top_edges)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spearman against hand-worked values; overlap counts by |value|.
    #[test]
    fn rank_statistics() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // ranks a = 1,2,3,4; b = 2,1,4,3: d^2 sum = 4, rho = 1 - 6*4/(4*15) = 0.6.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]) - 0.6).abs() < 1e-12);
        assert_eq!(top_overlap(&[-5.0, 1.0, 0.1], &[0.2, -3.0, 9.0], 1), 0.0);
        assert_eq!(top_overlap(&[-5.0, 1.0, 0.1], &[7.0, -3.0, 0.0], 2), 1.0);
        assert_eq!(top_overlap(&[-5.0, 1.0, 0.1], &[7.0, 0.0, 3.0], 2), 0.5);
    }
}
