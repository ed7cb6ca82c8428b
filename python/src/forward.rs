//! One forward with TransformerLens-shaped outputs: cached activations copied straight into
//! padded arrays `[batch, max_len, width]` (one copy per hook point: the counter
//! `activation_copies` counts them), attention patterns `[batch, head, q, k]`, Python hooks
//! that see and may replace an activation, and the engine's own patches and ablations
//! (no Python in the loop).

use crate::blocking;
use crate::engine::Engine;
use crate::on_model;
use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pinpoint::heads::{
    Ablation, Callback, Capture, ForwardOutput, HeadId, HookFn, HookPoint, Patch, Positions, Taps,
};
use pinpoint::model::{HostTensor, ModelConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

static COPIES: AtomicUsize = AtomicUsize::new(0);

/// How many activation copies the cache has made in this process (one per hook point per
/// forward when each is copied once).
#[pyfunction]
pub fn activation_copies() -> usize {
    COPIES.load(Ordering::SeqCst)
}

/// A cache request: a hook point, or a layer's attention pattern.
enum Want {
    Point(HookPoint),
    Pattern(usize),
}

fn parse_name(name: &str, n_layers: usize) -> PyResult<Want> {
    let t = name.trim();
    let layer_ok = |l: usize, max: usize| {
        if l > max {
            Err(PyValueError::new_err(format!(
                "hook {name:?}: the model has {n_layers} layers (0..{})",
                n_layers - 1
            )))
        } else {
            Ok(())
        }
    };
    if let Some(l) = t
        .strip_prefix("blocks.")
        .and_then(|r| r.strip_suffix(".attn.hook_pattern"))
    {
        let l: usize = l.parse().map_err(|_| unknown(name))?;
        layer_ok(l, n_layers - 1)?;
        return Ok(Want::Pattern(l));
    }
    let p: HookPoint = t.parse().map_err(|_| unknown(name))?;
    // resid_pre(L) is the final residual (hook_resid_post of the last layer).
    let max = if matches!(p, HookPoint::ResidPre(_)) {
        n_layers
    } else {
        n_layers - 1
    };
    layer_ok(p.layer(), max)?;
    Ok(Want::Point(p))
}

fn unknown(name: &str) -> PyErr {
    PyValueError::new_err(format!(
        "unknown hook point {name:?}; {}, blocks.{{l}}.attn.hook_pattern",
        pinpoint::heads::HOOK_FORMS
    ))
}

/// Row width at a hook point.
fn width(cfg: &pinpoint::model::ModelConfig, p: HookPoint) -> usize {
    match p {
        HookPoint::Z(_) => cfg.num_attention_heads * cfg.head_dim,
        _ => cfg.hidden_size,
    }
}

/// A padded `[batch, max_len, width]` buffer filled from packed rows.
struct Padded {
    max_len: usize,
    width: usize,
    data: Vec<f32>,
}

impl Padded {
    fn new(batch: usize, max_len: usize, width: usize) -> Self {
        Self {
            max_len,
            width,
            data: vec![0.0; batch * max_len * width],
        }
    }
    fn fill(&mut self, index: &[(usize, usize)], h: &HostTensor) {
        let w = self.width;
        for (i, &(s, p)) in index.iter().enumerate() {
            let at = (s * self.max_len + p) * w;
            self.data[at..at + w].copy_from_slice(&h.data[i * w..(i + 1) * w]);
        }
    }
    fn write_back(&self, index: &[(usize, usize)], h: &mut HostTensor) {
        let w = self.width;
        for (i, &(s, p)) in index.iter().enumerate() {
            let at = (s * self.max_len + p) * w;
            h.data[i * w..(i + 1) * w].copy_from_slice(&self.data[at..at + w]);
        }
    }
}

/// The engine's own edits, named by hook: a patch `(name, seq, pos, col0, values)`, an
/// ablation `(name, col0, values)`.
type PatchSpec = (String, usize, usize, usize, Vec<f32>);
type AblationSpec = (String, usize, Vec<f32>);

fn point_of(name: &str, n_layers: usize) -> PyResult<HookPoint> {
    match parse_name(name, n_layers)? {
        Want::Point(p) => Ok(p),
        Want::Pattern(_) => Err(PyValueError::new_err(format!(
            "{name}: attention patterns can be cached but not edited; edit blocks.{{l}}.attn.hook_z"
        ))),
    }
}

fn check_cols(name: &str, col0: usize, len: usize, w: usize) -> PyResult<()> {
    if len == 0 || col0 + len > w {
        return Err(PyValueError::new_err(format!(
            "{name}: values of length {len} from column {col0} do not fit its width {w}"
        )));
    }
    Ok(())
}

/// The batch's shape: `batch` sequences, the longest `max_len` tokens.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    max_len: usize,
}

fn logits_positions(logits: &str) -> PyResult<Positions> {
    match logits {
        "all" => Ok(Positions::All),
        "last" => Ok(Positions::Last),
        "none" => Ok(Positions::None),
        o => Err(PyValueError::new_err(format!(
            "logits must be \"all\", \"last\" or \"none\", got {o:?}"
        ))),
    }
}

/// The engine's own patches and ablations, checked against the model and the batch.
fn add_edits(
    taps: &mut Taps,
    cfg: &ModelConfig,
    seqs: &[Vec<u32>],
    patches: Vec<PatchSpec>,
    ablations: Vec<AblationSpec>,
) -> PyResult<()> {
    let nl = cfg.num_hidden_layers;
    for (name, seq, pos, col0, values) in patches {
        let point = point_of(&name, nl)?;
        check_cols(&name, col0, values.len(), width(cfg, point))?;
        if seq >= seqs.len() || pos >= seqs[seq].len() {
            return Err(PyValueError::new_err(format!(
                "{name}: no token at sequence {seq}, position {pos}"
            )));
        }
        taps.patches.push(Patch {
            point,
            seq,
            pos,
            col0,
            values,
        });
    }
    for (name, col0, values) in ablations {
        let point = point_of(&name, nl)?;
        check_cols(&name, col0, values.len(), width(cfg, point))?;
        taps.ablations.push(Ablation {
            point,
            col0,
            values,
        });
    }
    Ok(())
}

/// A Python hook as an engine callback: the rows go out padded, `[batch * max_len *
/// width]`, and what `f(name, array)` returns (the same size) is written back.
fn python_hook(name: String, f: PyObject, d: Dims, w: usize) -> HookFn {
    Arc::new(move |_, index, h: &mut HostTensor| {
        Python::with_gil(|py| -> PyResult<()> {
            let mut buf = Padded::new(d.batch, d.max_len, w);
            buf.fill(index, h);
            let back = f.call1(py, (name.as_str(), buf.data.into_pyarray(py)))?;
            let back: PyReadonlyArray1<f32> = back.extract(py)?;
            let want = d.batch * d.max_len * w;
            if back.len() != want {
                return Err(PyValueError::new_err(format!(
                    "hook {name}: returned {} values, expected {want}",
                    back.len()
                )));
            }
            let data = back.as_slice()?.to_vec();
            Padded {
                max_len: d.max_len,
                width: w,
                data,
            }
            .write_back(index, h);
            Ok(())
        })
        .map_err(anyhow::Error::from)?;
        Ok(true)
    })
}

/// What the cache holds after the forward: per name, its padded buffer (filled by a
/// callback, one copy) or the layer whose attention patterns it wants.
type CacheSinks = (Vec<(String, Arc<Mutex<Padded>>)>, Vec<(String, usize)>);

fn add_cache(
    taps: &mut Taps,
    cfg: &ModelConfig,
    names: Vec<String>,
    d: Dims,
) -> PyResult<CacheSinks> {
    let (mut cached, mut patterns) = (vec![], vec![]);
    for name in names {
        match parse_name(&name, cfg.num_hidden_layers)? {
            Want::Pattern(l) => {
                for h in 0..cfg.num_attention_heads {
                    taps.patterns.push(HeadId::new(l, h));
                }
                patterns.push((name, l));
            }
            Want::Point(point) => {
                let buf = Arc::new(Mutex::new(Padded::new(
                    d.batch,
                    d.max_len,
                    width(cfg, point),
                )));
                let sink = buf.clone();
                let f: HookFn = Arc::new(move |_, index, h| {
                    COPIES.fetch_add(1, Ordering::SeqCst);
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .fill(index, h);
                    Ok(false)
                });
                taps.callbacks.push(Callback { point, f });
                cached.push((name, buf));
            }
        }
    }
    Ok((cached, patterns))
}

/// Layer `l`'s patterns `[batch, head, max_len, max_len]`, zero outside each sequence.
fn pattern_array(out: &ForwardOutput, l: usize, nh: usize, d: Dims) -> Vec<f32> {
    let m = d.max_len;
    let mut data = vec![0.0f32; d.batch * nh * m * m];
    for s in 0..d.batch {
        for h in 0..nh {
            let t = &out.patterns[&(HeadId::new(l, h), s)];
            let (q, k) = (t.shape[0], t.shape[1]);
            let base = (s * nh + h) * m * m;
            for i in 0..q {
                data[base + i * m..][..k].copy_from_slice(&t.data[i * k..][..k]);
            }
        }
    }
    data
}

/// The logits as numpy: `[batch, max_len, vocab]`, `[batch, vocab]` or None.
fn logits_array(
    py: Python<'_>,
    logits: Capture,
    which: &str,
    equal_lengths: bool,
    d: Dims,
    vocab: usize,
) -> PyResult<PyObject> {
    Ok(match which {
        // Equal lengths: the packed rows are already [batch, pos, vocab] (no copy).
        "all" if equal_lengths => logits
            .data
            .data
            .into_pyarray(py)
            .reshape([d.batch, d.max_len, vocab])?
            .into_any()
            .unbind(),
        "all" => {
            let mut p = Padded::new(d.batch, d.max_len, vocab);
            p.fill(&logits.index, &logits.data);
            p.data
                .into_pyarray(py)
                .reshape([d.batch, d.max_len, vocab])?
                .into_any()
                .unbind()
        }
        "last" => {
            let a: Bound<'_, PyArray1<f32>> = logits.data.data.into_pyarray(py);
            a.reshape([d.batch, vocab])?.into_any().unbind()
        }
        _ => py.None(),
    })
}

/// One forward of `seqs` (token id lists, any lengths). Returns (logits, cache):
/// logits `[batch, max_len, vocab]` ("all"), `[batch, vocab]` ("last") or None;
/// cache maps each of `names` to `[batch, max_len, width]` (patterns: `[batch, head,
/// max_len, max_len]`), zero past each sequence's end. `hooks`: (name, fn) with
/// fn(name, array `[batch * max_len * width]`) returning the array to write back.
#[pyfunction]
#[pyo3(signature = (engine, seqs, names, logits="all", hooks=vec![], patches=vec![], ablations=vec![], progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn forward<'py>(
    py: Python<'py>,
    engine: &Engine,
    seqs: Vec<Vec<u32>>,
    names: Vec<String>,
    logits: &str,
    hooks: Vec<(String, PyObject)>,
    patches: Vec<PatchSpec>,
    ablations: Vec<AblationSpec>,
    progress: Option<PyObject>,
) -> PyResult<(PyObject, Bound<'py, PyDict>)> {
    let cfg = engine.cfg().clone();
    if seqs.is_empty() {
        return Err(PyValueError::new_err("no sequences: give at least one"));
    }
    let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let d = Dims {
        batch: seqs.len(),
        max_len,
    };
    let mut taps = Taps::new().with_logits(logits_positions(logits)?);
    add_edits(&mut taps, &cfg, &seqs, patches, ablations)?;
    for (name, f) in hooks {
        let point = point_of(&name, cfg.num_hidden_layers)?;
        let f = python_hook(name, f, d, width(&cfg, point));
        taps.callbacks.push(Callback { point, f });
    }
    let (cached, patterns) = add_cache(&mut taps, &cfg, names, d)?;
    let out = blocking::run(py, progress.as_ref(), || {
        on_model!(engine, |m| m.forward(&seqs, &taps))
    })?;
    drop(taps); // releases the sinks' other owners
    let dict = PyDict::new(py);
    for (name, buf) in cached {
        let p = Arc::try_unwrap(buf)
            .ok()
            .expect("the forward released its hooks")
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let a = p
            .data
            .into_pyarray(py)
            .reshape([d.batch, max_len, p.width])?;
        dict.set_item(name, a)?;
    }
    let nh = cfg.num_attention_heads;
    for (name, l) in patterns {
        let a = pattern_array(&out, l, nh, d)
            .into_pyarray(py)
            .reshape([d.batch, nh, max_len, max_len])?;
        dict.set_item(name, a)?;
    }
    let equal = seqs.iter().all(|s| s.len() == max_len);
    let lg = logits_array(py, out.logits, logits, equal, d, cfg.vocab_size)?;
    Ok((lg, dict))
}
