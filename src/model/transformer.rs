//! The evaluation forward over [`Backend`]: prefill and KV-cache steps, with the taps of
//! [`crate::heads`] applied between ops. It runs the one driver (`model::driver`: packing,
//! embedding, `model::layer::layer_forward` per layer, final norm and head) that the
//! training forward runs too; what is its own is plugged in through [`EvalIo`].

use crate::backend::Backend;
use crate::heads::{Capture, ForwardOutput, HeadId, HookPoint, Taps};
use crate::model::checkpoint::load_model_dir;
pub use crate::model::driver::warn_past_context;
use crate::model::driver::{
    embed, final_logits, run_layers, whole_sequences, Batch, Input, KvRows,
};
use crate::model::layer::{plain_linear, LayerIo, Parts};
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

/// How a forward call uses a KV cache.
enum KvMode<'c, B: Backend> {
    /// No cache: each sequence starts at position 0.
    None,
    /// Append this call's keys/values to the cache (generation).
    Write(&'c mut KvCache<B>),
    /// Continue prefixes held in the cache without changing it; slots may repeat.
    Read(&'c KvCache<B>),
}

impl<B: Backend> KvMode<'_, B> {
    /// Where this call's keys and values live.
    fn rows(&self) -> KvRows {
        match self {
            KvMode::None => KvRows::Own,
            KvMode::Write(c) => KvRows::Cache {
                slots: c.lens.len(),
                capacity: c.capacity,
                read: false,
            },
            KvMode::Read(c) => KvRows::Cache {
                slots: c.lens.len(),
                capacity: c.capacity,
                read: true,
            },
        }
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
        batch: &Batch,
        taps: &Taps,
        pending: &mut Vec<PendingCapture<B::Tensor>>,
    ) -> Result<()> {
        if !taps.touches(point) {
            return Ok(());
        }
        let b = &self.backend;
        let n_rows = batch.row_id.len();
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
                    if let Some(r) = batch.row_of(p.seq, p.pos) {
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
            b.edit_on_host(x, &mut |h| (c.f)(point, &batch.row_id, h))
                .with_context(|| format!("hook at {}", point.tl_name()))?;
        }
        // Gathered on the device now, downloaded after the forward: a download waits for
        // the device, and one per hook point would stall the launch queue every layer.
        for (p, pos) in taps.capture.iter().filter(|(p, _)| *p == point) {
            let rows = batch.select(pos);
            let index = rows.iter().map(|&r| batch.row_id[r]).collect();
            pending.push((*p, b.gather_rows(x, &rows)?, index));
        }
        Ok(())
    }

    /// The forward (`model::driver`). `start = (l, resid)` skips embedding and layers below l.
    fn run_from(
        &self,
        inputs: &[Input<'_>],
        mut kv: KvMode<'_, B>,
        taps: &Taps,
        start: Option<(usize, B::Tensor)>,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        let b = &self.backend;
        let batch = Batch::new(cfg, inputs, kv.rows())?;
        for p in &taps.patches {
            ensure!(
                p.point.layer() <= cfg.num_hidden_layers,
                "patch at {:?}: no such layer",
                p.point
            );
        }
        let cache_rows: Vec<usize> = match &kv {
            KvMode::Write(c) => inputs
                .iter()
                .flat_map(|i| (0..i.tokens.len()).map(move |t| i.slot * c.capacity + i.pos0 + t))
                .collect(),
            _ => vec![],
        };
        let mut out = ForwardOutput::default();
        let mut pending: Vec<PendingCapture<B::Tensor>> = vec![];
        let parts = self.parts();
        let (first_layer, x) = match start {
            Some((l, resid)) => (l, resid),
            None => (0, embed(&parts, &batch)?), // [n, d]
        };
        let mut io = EvalIo {
            m: self,
            inputs,
            batch: &batch,
            taps,
            pending: &mut pending,
            kv: &mut kv,
            cache_rows: &cache_rows,
            patterns: &mut out.patterns,
        };
        let x = run_layers(&parts, &mut io, first_layer, x, &batch)?;
        let rows = batch.select(&taps.logits);
        if !rows.is_empty() {
            let sel = b.gather_rows(&x, &rows)?;
            let logits = self.logits_of_residual(&sel)?;
            out.logits = Capture {
                index: rows.iter().map(|&r| batch.row_id[r]).collect(),
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
        Ok(final_logits(&self.parts(), resid)?.1)
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
    batch: &'a Batch,
    taps: &'a Taps,
    pending: &'a mut Vec<PendingCapture<B::Tensor>>,
    kv: &'a mut KvMode<'c, B>,
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
        let (b, shape, spans) = (&self.m.backend, self.m.cfg.attn_shape(), &self.batch.spans);
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
        self.m.hook(point, t, self.batch, self.taps, self.pending)
    }
}
