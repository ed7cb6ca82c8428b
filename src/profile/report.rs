//! A [`Profile`] as a table (one row per phase and op, over the layers it ran in), as
//! `profile.json` (those rows, and one per phase, op and layer) and as `trace.json` in the
//! Trace Event Format (complete events `"ph": "X"`, microseconds; spans enclose their ops on
//! one track, so Perfetto and chrome://tracing nest them).

use super::{OpRec, Profile};
use crate::backend::TrainBackend;
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Measured ceilings of the device: dense GEMM FLOP/s, and the memory bandwidth of a
/// streaming add `x += y` into a buffer already touched (bytes read + written).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    pub flop_s: f64,
    pub byte_s: f64,
}

impl Ceilings {
    /// Best of `reps` runs of a square GEMM of side `n` (`linear`) and of `x += y` over
    /// `stream_elems` elements (`add_assign`: no allocation inside the timed call), on `b`
    /// itself (not recorded when `b` is the inner backend of a profile).
    pub fn measure<B: TrainBackend>(
        b: &B,
        n: usize,
        stream_elems: usize,
        reps: usize,
    ) -> Result<Self> {
        let best = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
            f()?; // warm-up
            let mut t = f64::INFINITY;
            for _ in 0..reps.max(1) {
                b.synchronize()?;
                let s = Instant::now();
                f()?;
                b.synchronize()?;
                t = t.min(s.elapsed().as_secs_f64());
            }
            Ok(t)
        };
        let x = b.uniform(&[n, n], 1, 1.0, 0.0)?;
        let w = b.uniform(&[n, n], 2, 1.0, 0.0)?;
        let gemm = best(&|| b.linear(&x, &w).map(drop))?;
        let shape = [stream_elems.div_ceil(4096), 4096];
        let y = b.uniform(&shape, 3, 0.0, 0.0)?;
        let x = std::sync::Mutex::new(b.uniform(&shape, 4, 0.0, 0.0)?);
        let stream = best(&|| {
            let mut x = x.lock().unwrap_or_else(|e| e.into_inner());
            b.add_assign(&mut x, &y)
        })?;
        let bytes = 3.0 * (shape[0] * shape[1] * b.elem_bytes()) as f64;
        Ok(Self {
            flop_s: 2.0 * (n as f64).powi(3) / gemm,
            byte_s: bytes / stream,
        })
    }
}

/// One row of the table: an op in a phase, over the layers listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub phase: &'static str,
    pub op: &'static str,
    /// The layers it ran in (empty: outside every layer).
    pub layers: Vec<usize>,
    pub calls: usize,
    pub total_s: f64,
    pub flops: f64,
    pub bytes: f64,
}

impl Row {
    /// Seconds the op would take at the ceilings (the larger of compute and memory time),
    /// and which bound that is.
    pub fn floor(&self, c: &Ceilings) -> (f64, &'static str) {
        let (tc, tm) = (self.flops / c.flop_s, self.bytes / c.byte_s);
        if tc >= tm {
            (tc, "compute")
        } else {
            (tm, "memory")
        }
    }

    fn json(&self, wall: f64, c: Option<&Ceilings>) -> Value {
        let mut v = json!({
            "phase": self.phase, "op": self.op, "layers": layer_list(&self.layers),
            "calls": self.calls, "total_ms": 1e3 * self.total_s,
            "mean_ms": 1e3 * self.total_s / self.calls as f64,
            "pct_wall": 100.0 * self.total_s / wall,
            "flops": self.flops, "bytes": self.bytes,
            "flop_s": self.flops / self.total_s, "byte_s": self.bytes / self.total_s,
        });
        if let Some(c) = c {
            let (floor, bound) = self.floor(c);
            v["bound"] = bound.into();
            v["floor_ms"] = (1e3 * floor).into();
            v["of_ceiling"] = (floor / self.total_s).into();
        }
        v
    }
}

/// `0-29`, `3`, `0-2,5`, or `-` for none.
pub fn layer_list(layers: &[usize]) -> String {
    if layers.is_empty() {
        return "-".into();
    }
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            layers[i].to_string()
        } else {
            format!("{}-{}", layers[i], layers[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Rows keyed by `key` of each op, in the order of first appearance.
fn group<K: Ord + Clone>(p: &Profile, key: impl Fn(&OpRec) -> K) -> Vec<Row> {
    let mut order: Vec<K> = vec![];
    let mut rows: BTreeMap<K, Row> = BTreeMap::new();
    for o in &p.ops {
        let (phase, layer) = p.place(o);
        let k = key(o);
        let r = rows.entry(k.clone()).or_insert_with(|| {
            order.push(k.clone());
            Row {
                phase,
                op: o.name,
                layers: vec![],
                calls: 0,
                total_s: 0.0,
                flops: 0.0,
                bytes: 0.0,
            }
        });
        r.calls += 1;
        r.total_s += o.end - o.start;
        r.flops += o.cost.flops;
        r.bytes += o.cost.bytes;
        if let Some(l) = layer {
            if let Err(at) = r.layers.binary_search(&l) {
                r.layers.insert(at, l);
            }
        }
    }
    order
        .into_iter()
        .map(|k| rows.remove(&k).expect("every key has a row"))
        .collect()
}

/// One row per (phase, op), layers merged; in the order ops first ran.
pub fn rows(p: &Profile) -> Vec<Row> {
    group(p, |o| (p.place(o).0, o.name))
}

/// One row per (phase, op, layer).
pub fn layer_rows(p: &Profile) -> Vec<Row> {
    group(p, |o| {
        let (phase, layer) = p.place(o);
        (phase, o.name, layer)
    })
}

fn si(x: f64, unit: &str) -> String {
    let (v, p) = match x.abs() {
        a if a >= 1e12 => (x / 1e12, "T"),
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    format!("{v:.1} {p}{unit}")
}

/// The table, largest rows first, with the time outside ops last.
pub fn table(p: &Profile, c: Option<&Ceilings>) -> String {
    let mut rows = rows(p);
    rows.sort_by(|a, b| b.total_s.total_cmp(&a.total_s));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} · clock: {} · wall {:.1} ms{}",
        p.device,
        p.clock,
        1e3 * p.wall_s,
        c.map_or(String::new(), |c| format!(
            " · ceilings: GEMM {}, stream {}",
            si(c.flop_s, "FLOP/s"),
            si(c.byte_s, "B/s")
        ))
    );
    let _ = writeln!(
        s,
        "{:<10} {:<18} {:<8} {:>6} {:>10} {:>9} {:>6} {:>11} {:>11} {:>13} {:>12} {:>8} {:>7}",
        "phase",
        "op",
        "layers",
        "calls",
        "total ms",
        "mean ms",
        "%wall",
        "FLOPs",
        "bytes",
        "FLOP/s",
        "B/s",
        "bound",
        "of ceil"
    );
    for r in &rows {
        let (bound, of) = match c {
            Some(c) => {
                let (f, b) = r.floor(c);
                (b.to_string(), format!("{:.0}%", 100.0 * f / r.total_s))
            }
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<10} {:<18} {:<8} {:>6} {:>10.2} {:>9.3} {:>5.1}% {:>11} {:>11} {:>13} {:>12} {:>8} {:>7}",
            r.phase,
            r.op,
            layer_list(&r.layers),
            r.calls,
            1e3 * r.total_s,
            1e3 * r.total_s / r.calls as f64,
            100.0 * r.total_s / p.wall_s,
            si(r.flops, ""),
            si(r.bytes, "B"),
            si(r.flops / r.total_s, ""),
            si(r.bytes / r.total_s, ""),
            bound,
            of
        );
    }
    let outside = p.wall_s - p.ops_s();
    let _ = writeln!(
        s,
        "{:<10} {:<18} {:<8} {:>6} {:>10.2} {:>9} {:>5.1}%   (host work, launches, synchronisation)",
        "-",
        "outside ops",
        "-",
        "-",
        1e3 * outside,
        "-",
        100.0 * outside / p.wall_s
    );
    s
}

/// `profile.json`: the rows, the per-layer rows, the wall and the time outside ops.
pub fn profile_json(p: &Profile, c: Option<&Ceilings>, workload: Value) -> Value {
    json!({
        "workload": workload,
        "device": p.device,
        "clock": p.clock,
        "wall_s": p.wall_s,
        "ops_s": p.ops_s(),
        "outside_ops_s": p.wall_s - p.ops_s(),
        "ceilings": c.map(|c| json!({"gemm_flop_s": c.flop_s, "stream_byte_s": c.byte_s})),
        "rows": rows(p).iter().map(|r| r.json(p.wall_s, c)).collect::<Vec<_>>(),
        "layer_rows": layer_rows(p).iter().map(|r| r.json(p.wall_s, c)).collect::<Vec<_>>(),
    })
}

/// `trace.json` (Trace Event Format): one complete event per span and per op on one track,
/// times in microseconds; an op's args carry its FLOPs and bytes.
pub fn trace_json(p: &Profile) -> Value {
    let us = |s: f64| 1e6 * s;
    let mut ev = vec![
        json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 1,
               "args": {"name": format!("pinpoint · {}", p.device)}}),
        json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": 1,
               "args": {"name": format!("{} clock", p.clock)}}),
    ];
    for s in &p.spans {
        ev.push(json!({
            "name": s.label(), "cat": "span", "ph": "X", "pid": 1, "tid": 1,
            "ts": us(s.start), "dur": us(s.end - s.start),
        }));
    }
    for o in &p.ops {
        let (phase, layer) = p.place(o);
        ev.push(json!({
            "name": o.name, "cat": "op", "ph": "X", "pid": 1, "tid": 1,
            "ts": us(o.start), "dur": us(o.end - o.start),
            "args": {"phase": phase, "layer": layer, "flops": o.cost.flops, "bytes": o.cost.bytes},
        }));
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms"})
}

/// Ceilings of a backend (CPU: a 1024 GEMM and 64 Mi elements streamed; GPU-sized where
/// the backend has limited device memory).
pub fn ceilings_for<B: TrainBackend>(b: &B) -> Result<Ceilings> {
    if b.memory_info().is_some() {
        Ceilings::measure(b, 8192, 1 << 28, 5)
    } else {
        Ceilings::measure(b, 1024, 1 << 26, 3)
    }
}
