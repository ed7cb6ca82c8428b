//! The Llama/Mistral decoder, written once over [`Backend`]: prefill and KV-cache steps,
//! with the taps of [`crate::heads`] applied between ops. Each layer is
//! `model::layer::layer_forward`, which the training forward runs too.

use crate::backend::{AttnShape, Backend, SeqSpan};
use crate::heads::{Capture, ForwardOutput, HeadId, HookPoint, Positions, Taps};
use crate::model::checkpoint::load_model_dir;
use crate::model::layer::{layer_forward, plain_linear, LayerIo, Parts};
use crate::model::mask::LayerParam;
use crate::model::{HostTensor, ModelConfig, ModelWeights, StoreDtype};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// A loaded model on one backend.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub weights: ModelWeights<B::Tensor>,
    pub backend: B,
    /// Dtype the checkpoint was stored in (used when saving).
    pub dtype: StoreDtype,
    /// Directory it was loaded from, if any.
    pub dir: Option<PathBuf>,
}

impl<B: Backend> Model<B> {
    /// Load a HF model directory onto `backend`.
    pub fn load_on(dir: &Path, backend: B) -> Result<Self> {
        let (cfg, w, dtype) = load_model_dir(dir)?;
        let mut m = Model::from_host(cfg, &w, backend)?;
        m.dtype = dtype;
        m.dir = Some(dir.to_path_buf());
        Ok(m)
    }
}

/// A capture gathered on the device, downloaded when the forward ends: the hook point,
/// the rows `[n, width]`, and the (sequence, position) of each row.
type PendingCapture<T> = (HookPoint, T, Vec<(usize, usize)>);

/// KV cache: per layer, keys and values `[slots * capacity, G * D]`; slot s, position p
/// lives at row `s * capacity + p`. `lens[s]` tokens of slot s are filled.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Tensor>,
    pub v: Vec<B::Tensor>,
    pub capacity: usize,
    pub lens: Vec<usize>,
}

/// One sequence fed to a forward call: `tokens` continue slot `seq` at position `pos0`.
/// Say once per process (on stderr) that a sequence runs past the context the model was
/// trained for: it still runs, as in HF transformers, but positions past
/// `max_position_embeddings` were never trained and results there mean little.
pub fn warn_past_context(max_positions: usize, len: usize) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if len > max_positions {
        WARNED.call_once(|| {
            eprintln!(
                "warning: a sequence of {len} tokens runs past max_position_embeddings ({max_positions}) in config.json; the model was not trained on positions past it"
            )
        });
    }
}

struct Input<'a> {
    /// The name taps use for this sequence.
    seq: usize,
    /// Its KV-cache slot (when a cache is used).
    slot: usize,
    tokens: &'a [u32],
    pos0: usize,
}

/// Whole sequences from position 0, sequence i in slot i.
fn whole_sequences(seqs: &[Vec<u32>]) -> Vec<Input<'_>> {
    seqs.iter()
        .enumerate()
        .map(|(i, s)| Input {
            seq: i,
            slot: i,
            tokens: s,
            pos0: 0,
        })
        .collect()
}

/// How a forward call uses a KV cache.
enum KvMode<'c, B: Backend> {
    /// No cache: each sequence starts at position 0.
    None,
    /// Append this call's keys/values to the cache (generation).
    Write(&'c mut KvCache<B>),
    /// Continue prefixes held in the cache without changing it; slots may repeat.
    Read(&'c KvCache<B>),
}

/// Row bookkeeping of a packed call.
struct Layout {
    /// Per input: first row.
    offsets: Vec<usize>,
    /// Per row: (seq, absolute position).
    row_id: Vec<(usize, usize)>,
}

impl Layout {
    fn new(inputs: &[Input<'_>]) -> Self {
        let mut offsets = Vec::with_capacity(inputs.len());
        let mut row_id = Vec::new();
        for inp in inputs {
            offsets.push(row_id.len());
            row_id.extend((0..inp.tokens.len()).map(|i| (inp.seq, inp.pos0 + i)));
        }
        Self { offsets, row_id }
    }
    /// Rows selected by `p`.
    fn select(&self, inputs: &[Input<'_>], p: &Positions) -> Vec<usize> {
        match p {
            Positions::None => vec![],
            Positions::All => (0..self.row_id.len()).collect(),
            Positions::Last => inputs
                .iter()
                .zip(&self.offsets)
                .filter(|(i, _)| !i.tokens.is_empty())
                .map(|(i, o)| o + i.tokens.len() - 1)
                .collect(),
            Positions::At(ps) => (0..self.row_id.len())
                .filter(|&r| ps.contains(&self.row_id[r].1))
                .collect(),
        }
    }
    fn row_of(&self, seq: usize, pos: usize) -> Option<usize> {
        self.row_id.iter().position(|&id| id == (seq, pos))
    }
}

impl<B: Backend> Model<B> {
    /// Upload host weights to `backend`.
    pub fn from_host(cfg: ModelConfig, w: &ModelWeights<HostTensor>, backend: B) -> Result<Self> {
        let weights = w.try_map(|name, t| {
            backend
                .upload(t)
                .with_context(|| format!("uploading {name}"))
        })?;
        Ok(Self {
            cfg,
            weights,
            backend,
            dtype: StoreDtype::F32,
            dir: None,
        })
    }

    /// Download every weight to the host (f32).
    pub fn host_weights(&self) -> Result<ModelWeights<HostTensor>> {
        self.weights.try_map(|_, t| self.backend.download(t))
    }

    pub fn n_layers(&self) -> usize {
        self.cfg.num_hidden_layers
    }
    pub fn n_heads(&self) -> usize {
        self.cfg.num_attention_heads
    }
    pub fn head_dim(&self) -> usize {
        self.cfg.head_dim
    }
    pub fn all_heads(&self) -> Vec<HeadId> {
        (0..self.n_layers())
            .flat_map(|l| (0..self.n_heads()).map(move |h| HeadId::new(l, h)))
            .collect()
    }

    /// The config, backend and weights a layer reads (`model::layer`).
    pub(crate) fn parts(&self) -> Parts<'_, B> {
        Parts {
            cfg: &self.cfg,
            backend: &self.backend,
            weights: &self.weights,
        }
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
            window: self.cfg.sliding_window,
        }
    }

    /// Forward of whole sequences (no cache). Sequence i of `seqs` is `seq` i in taps.
    pub fn forward(&self, seqs: &[Vec<u32>], taps: &Taps) -> Result<ForwardOutput> {
        let inputs = whole_sequences(seqs);
        self.run_from(&inputs, KvMode::None, taps, None)
    }

    /// Forward of whole sequences starting at layer `layer`, with `resid [rows, d]` the
    /// residual stream entering it (packed rows of `seqs`, as captured by
    /// `HookPoint::ResidPre(layer)` with `Positions::All`). Layers below are skipped: this
    /// reuses a clean run's prefix when only layers >= `layer` change.
    pub fn forward_from(
        &self,
        layer: usize,
        seqs: &[Vec<u32>],
        resid: &HostTensor,
        taps: &Taps,
    ) -> Result<ForwardOutput> {
        self.check_start(layer, seqs.iter().map(Vec::len).sum(), resid)?;
        let inputs = whole_sequences(seqs);
        self.run_from(
            &inputs,
            KvMode::None,
            taps,
            Some((layer, self.backend.upload(resid)?)),
        )
    }

    /// Continue prefixes held in `cache` without changing it: `inputs[i] = (slot, tokens)`
    /// feeds `tokens` after slot's `cache.lens[slot]` tokens. Several inputs may share a
    /// slot (e.g. one patched copy per head). Taps name input i as seq i. With
    /// `start = Some((l, resid))`, embedding and layers below l are skipped and `resid`
    /// `[rows, d]` is the residual entering layer l.
    pub fn forward_on_prefix(
        &self,
        inputs: &[(usize, &[u32])],
        cache: &KvCache<B>,
        taps: &Taps,
        start: Option<(usize, &HostTensor)>,
    ) -> Result<ForwardOutput> {
        let mut ins = Vec::with_capacity(inputs.len());
        for (i, &(slot, tokens)) in inputs.iter().enumerate() {
            ensure!(
                slot < cache.lens.len(),
                "cache slot {slot} out of {}",
                cache.lens.len()
            );
            ins.push(Input {
                seq: i,
                slot,
                tokens,
                pos0: cache.lens[slot],
            });
        }
        let start = match start {
            Some((l, r)) => {
                self.check_start(l, inputs.iter().map(|i| i.1.len()).sum(), r)?;
                Some((l, self.backend.upload(r)?))
            }
            None => None,
        };
        self.run_from(&ins, KvMode::Read(cache), taps, start)
    }

    /// A start at layer `layer` needs a residual of `[rows, d_model]`.
    fn check_start(&self, layer: usize, rows: usize, resid: &HostTensor) -> Result<()> {
        ensure!(
            layer <= self.n_layers(),
            "start layer {layer} is past the last layer"
        );
        ensure!(
            resid.shape == [rows, self.cfg.hidden_size],
            "start residual has shape {:?}, expected [{rows}, {}]",
            resid.shape,
            self.cfg.hidden_size
        );
        Ok(())
    }

    /// `[a; b]` along rows.
    pub fn concat_rows(&self, a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
        let be = &self.backend;
        let (ra, cols) = (be.shape(a)[0], be.shape(a)[1]);
        let rb = be.shape(b)[0];
        let mut out = be.zeros(&[ra + rb, cols])?;
        be.scatter_rows(&mut out, &(0..ra).collect::<Vec<_>>(), a)?;
        be.scatter_rows(&mut out, &(ra..ra + rb).collect::<Vec<_>>(), b)?;
        Ok(out)
    }

    /// An empty KV cache for `slots` sequences of up to `capacity` tokens.
    pub fn new_cache(&self, slots: usize, capacity: usize) -> Result<KvCache<B>> {
        let rows = slots * capacity;
        let kvd = self.cfg.kv_dim();
        let mut k = Vec::with_capacity(self.n_layers());
        let mut v = Vec::with_capacity(self.n_layers());
        for _ in 0..self.n_layers() {
            k.push(self.backend.zeros(&[rows, kvd])?);
            v.push(self.backend.zeros(&[rows, kvd])?);
        }
        Ok(KvCache {
            k,
            v,
            capacity,
            lens: vec![0; slots],
        })
    }

    /// Feed `inputs[i] = (slot, tokens)` after what the cache holds for each slot.
    /// Taps name sequences by slot.
    pub fn forward_cached(
        &self,
        inputs: &[(usize, &[u32])],
        cache: &mut KvCache<B>,
        taps: &Taps,
    ) -> Result<ForwardOutput> {
        let mut ins = Vec::with_capacity(inputs.len());
        for &(slot, tokens) in inputs {
            ensure!(
                slot < cache.lens.len(),
                "cache slot {slot} out of {}",
                cache.lens.len()
            );
            let pos0 = cache.lens[slot];
            if pos0 + tokens.len() > cache.capacity {
                bail!(
                    "sequence {slot} would reach {} tokens, past the KV cache capacity {}",
                    pos0 + tokens.len(),
                    cache.capacity
                );
            }
            ins.push(Input {
                seq: slot,
                slot,
                tokens,
                pos0,
            });
        }
        let mut slots: Vec<usize> = ins.iter().map(|i| i.seq).collect();
        slots.sort_unstable();
        slots.dedup();
        ensure!(
            slots.len() == ins.len(),
            "a cache slot appears twice in one call"
        );
        let out = self.run_from(&ins, KvMode::Write(&mut *cache), taps, None)?;
        for i in &ins {
            cache.lens[i.seq] += i.tokens.len();
        }
        Ok(out)
    }

    /// Apply ablations, then patches, of `point` to `x`, then capture it.
    fn hook(
        &self,
        point: HookPoint,
        x: &mut B::Tensor,
        inputs: &[Input<'_>],
        layout: &Layout,
        taps: &Taps,
        pending: &mut Vec<PendingCapture<B::Tensor>>,
    ) -> Result<()> {
        if !taps.touches(point) {
            return Ok(());
        }
        let b = &self.backend;
        let n_rows = layout.row_id.len();
        for a in taps.ablations.iter().filter(|a| a.point == point) {
            let width = a.values.len();
            let values = HostTensor::new(vec![n_rows, width], a.values.repeat(n_rows));
            let rows: Vec<usize> = (0..n_rows).collect();
            b.write_slices(x, &rows, &vec![a.col0; n_rows], &values)
                .with_context(|| format!("ablation at {point:?}"))?;
        }
        let patches: Vec<_> = taps.patches.iter().filter(|p| p.point == point).collect();
        if !patches.is_empty() {
            // Group patches of equal width into one write.
            let mut widths: Vec<usize> = patches.iter().map(|p| p.values.len()).collect();
            widths.sort_unstable();
            widths.dedup();
            for w in widths {
                let (mut rows, mut cols, mut vals) = (vec![], vec![], vec![]);
                for p in patches.iter().filter(|p| p.values.len() == w) {
                    if let Some(r) = layout.row_of(p.seq, p.pos) {
                        rows.push(r);
                        cols.push(p.col0);
                        vals.extend_from_slice(&p.values);
                    }
                }
                if !rows.is_empty() {
                    let values = HostTensor::new(vec![rows.len(), w], vals);
                    b.write_slices(x, &rows, &cols, &values)
                        .with_context(|| format!("patch at {point:?}"))?;
                }
            }
        }
        for c in taps.callbacks.iter().filter(|c| c.point == point) {
            b.edit_on_host(x, &mut |h| (c.f)(point, &layout.row_id, h))
                .with_context(|| format!("hook at {}", point.tl_name()))?;
        }
        // Gathered on the device now, downloaded after the forward: a download waits for
        // the device, and one per hook point would stall the launch queue every layer.
        for (p, pos) in taps.capture.iter().filter(|(p, _)| *p == point) {
            let rows = layout.select(inputs, pos);
            let index = rows.iter().map(|&r| layout.row_id[r]).collect();
            pending.push((*p, b.gather_rows(x, &rows)?, index));
        }
        Ok(())
    }

    /// The forward. `start = (l, resid)` skips embedding and layers below l.
    fn run_from(
        &self,
        inputs: &[Input<'_>],
        mut kv: KvMode<'_, B>,
        taps: &Taps,
        start: Option<(usize, B::Tensor)>,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        let b = &self.backend;
        let w = &self.weights;
        ensure!(!inputs.is_empty(), "forward called with no sequences");
        for (i, inp) in inputs.iter().enumerate() {
            ensure!(!inp.tokens.is_empty(), "sequence {i} is empty");
            // Dynamic NTK RoPE is made to run past max_position_embeddings.
            if !cfg.rope.length_dependent() {
                warn_past_context(cfg.max_position_embeddings, inp.pos0 + inp.tokens.len());
            }
            if let Some(t) = inp.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                bail!(
                    "sequence {i}: token id {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                );
            }
        }
        for p in &taps.patches {
            ensure!(
                p.point.layer() <= cfg.num_hidden_layers,
                "patch at {:?}: no such layer",
                p.point
            );
        }
        let layout = Layout::new(inputs);
        let ids: Vec<u32> = inputs
            .iter()
            .flat_map(|i| i.tokens.iter().copied())
            .collect();
        let positions: Vec<usize> = layout.row_id.iter().map(|&(_, p)| p).collect();
        let spans: Vec<SeqSpan> = inputs
            .iter()
            .zip(&layout.offsets)
            .map(|(inp, &off)| SeqSpan {
                q_start: off,
                q_len: inp.tokens.len(),
                kv_start: match &kv {
                    KvMode::None => off,
                    KvMode::Write(c) => inp.slot * c.capacity,
                    KvMode::Read(c) => inp.slot * c.capacity,
                },
                pos0: inp.pos0,
                kv_new: match &kv {
                    // New keys follow the cache's rows in the concatenated tensor.
                    KvMode::Read(c) => Some(c.lens.len() * c.capacity + off),
                    _ => None,
                },
            })
            .collect();
        let cache_rows: Vec<usize> = match &kv {
            KvMode::Write(c) => inputs
                .iter()
                .flat_map(|i| (0..i.tokens.len()).map(move |t| i.slot * c.capacity + i.pos0 + t))
                .collect(),
            _ => vec![],
        };
        let rope = cfg.rope.plan(&spans);
        let mut out = ForwardOutput::default();
        let mut pending: Vec<PendingCapture<B::Tensor>> = vec![];
        let (first_layer, mut x) = match start {
            Some((l, resid)) => (l, resid),
            None => (0, b.embed(&w.embed, &ids)?), // [n, d]
        };
        for l in first_layer..w.layers.len() {
            crate::util::cancel::check()?;
            self.hook(
                HookPoint::ResidPre(l),
                &mut x,
                inputs,
                &layout,
                taps,
                &mut pending,
            )?;
            let mut io = EvalIo {
                m: self,
                inputs,
                layout: &layout,
                taps,
                pending: &mut pending,
                kv: &mut kv,
                spans: &spans,
                cache_rows: &cache_rows,
                patterns: &mut out.patterns,
            };
            x = layer_forward(&self.parts(), &mut io, l, &x, &positions, &rope)?.1;
        }
        self.hook(
            HookPoint::ResidPre(cfg.num_hidden_layers),
            &mut x,
            inputs,
            &layout,
            taps,
            &mut pending,
        )?;
        let rows = layout.select(inputs, &taps.logits);
        if !rows.is_empty() {
            let sel = b.gather_rows(&x, &rows)?;
            let logits = self.logits_of_residual(&sel)?;
            out.logits = Capture {
                index: rows.iter().map(|&r| layout.row_id[r]).collect(),
                data: b.download(&logits)?,
            };
        }
        for (point, rows, index) in pending {
            let data = b.download(&rows)?;
            out.captures.insert(point, Capture { index, data });
        }
        Ok(out)
    }

    /// Final norm and lm_head of residual rows `[n, d] -> [n, vocab]`.
    pub fn logits_of_residual(&self, resid: &B::Tensor) -> Result<B::Tensor> {
        let b = &self.backend;
        let w = &self.weights;
        let hn = b.rmsnorm(resid, &w.final_norm, self.cfg.rms_norm_eps as f32)?;
        b.linear(&hn, w.lm_head.as_ref().unwrap_or(&w.embed))
    }
}

impl<B: Backend> Model<B> {
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }
}

/// The evaluation side of [`LayerIo`]: plain linears, attention through the call's KV-cache
/// mode (with the probabilities the taps ask for), and the taps at every hook point.
struct EvalIo<'a, 'c, B: Backend> {
    m: &'a Model<B>,
    inputs: &'a [Input<'a>],
    layout: &'a Layout,
    taps: &'a Taps,
    pending: &'a mut Vec<PendingCapture<B::Tensor>>,
    kv: &'a mut KvMode<'c, B>,
    spans: &'a [SeqSpan],
    cache_rows: &'a [usize],
    patterns: &'a mut std::collections::BTreeMap<(HeadId, usize), HostTensor>,
}

impl<B: Backend> LayerIo<B> for EvalIo<'_, '_, B> {
    fn linear(&mut self, l: usize, p: LayerParam, x: &B::Tensor) -> Result<B::Tensor> {
        plain_linear(&self.m.parts(), l, p, x)
    }

    fn attention(
        &mut self,
        l: usize,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let (b, shape, spans) = (&self.m.backend, self.m.attn_shape(), self.spans);
        let n_inputs = self.inputs.len();
        let want: Vec<(usize, usize)> = self
            .taps
            .patterns
            .iter()
            .filter(|hd| hd.layer == l)
            .flat_map(|hd| (0..n_inputs).map(move |s| (s, hd.head)))
            .collect();
        let (z, pats) = match &mut *self.kv {
            KvMode::Write(c) => {
                b.scatter_rows(&mut c.k[l], self.cache_rows, k)?;
                b.scatter_rows(&mut c.v[l], self.cache_rows, v)?;
                b.attention(q, &c.k[l], &c.v[l], spans, shape, &want)?
            }
            KvMode::Read(c) => {
                let k_all = self.m.concat_rows(&c.k[l], k)?;
                let v_all = self.m.concat_rows(&c.v[l], v)?;
                b.attention(q, &k_all, &v_all, spans, shape, &want)?
            }
            KvMode::None => b.attention(q, k, v, spans, shape, &want)?,
        };
        for p in pats {
            self.patterns
                .insert((HeadId::new(l, p.head), self.inputs[p.seq].seq), p.probs);
        }
        Ok(z)
    }

    fn hook(&mut self, point: HookPoint, t: &mut B::Tensor) -> Result<()> {
        self.m
            .hook(point, t, self.inputs, self.layout, self.taps, self.pending)
    }
}
