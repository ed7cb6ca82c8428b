//! The one model driver: the evaluation forward (`transformer.rs`: taps, KV cache) and the
//! training forward (`train/forward.rs`: adapters, saved activations) both pack their
//! sequences with [`Batch`], embed them with [`embed`], run [`run_layers`] (each layer is
//! `layer::layer_forward`, with what differs plugged in through [`LayerIo`]) and end with
//! [`final_logits`] (the final norm and the unembedding).

use crate::backend::{Backend, SeqSpan};
use crate::heads::{HookPoint, Positions};
use crate::model::layer::{layer_forward, LayerIo, Parts};
use crate::model::ModelConfig;
use anyhow::{bail, ensure, Result};

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

/// One sequence fed to a forward call: `tokens` continue slot `slot` at position `pos0`.
pub(crate) struct Input<'a> {
    /// The name taps use for this sequence.
    pub seq: usize,
    /// Its KV-cache slot (when a cache is used).
    pub slot: usize,
    pub tokens: &'a [u32],
    pub pos0: usize,
}

/// Whole sequences from position 0, sequence i in slot i.
pub(crate) fn whole_sequences<S: AsRef<[u32]>>(seqs: &[S]) -> Vec<Input<'_>> {
    seqs.iter()
        .enumerate()
        .map(|(i, s)| Input {
            seq: i,
            slot: i,
            tokens: s.as_ref(),
            pos0: 0,
        })
        .collect()
}

/// Where the keys and values of a call live.
#[derive(Clone, Copy)]
pub(crate) enum KvRows {
    /// In the call's own rows (no cache).
    Own,
    /// In a KV cache of `slots` slots of `capacity` rows (slot s, position p at row
    /// `s * capacity + p`); `read`: the cache is read, not written, and the call's new keys
    /// follow its rows in one concatenated tensor.
    Cache {
        slots: usize,
        capacity: usize,
        read: bool,
    },
}

/// The rows of one forward call: every input's tokens packed one after the other.
pub(crate) struct Batch {
    /// `[n]` token ids.
    pub ids: Vec<u32>,
    /// `[n]` absolute position of each row.
    pub positions: Vec<usize>,
    /// Per input: its rows and keys, for attention.
    pub spans: Vec<SeqSpan>,
    /// Per input: first row.
    pub offsets: Vec<usize>,
    /// Per row: (seq, absolute position).
    pub row_id: Vec<(usize, usize)>,
}

impl Batch {
    /// Pack `inputs` (none empty, every id inside the vocabulary; a warning past the
    /// trained context unless the RoPE variant is made to run there).
    pub fn new(cfg: &ModelConfig, inputs: &[Input<'_>], kv: KvRows) -> Result<Self> {
        ensure!(!inputs.is_empty(), "forward called with no sequences");
        let mut b = Batch {
            ids: vec![],
            positions: vec![],
            spans: Vec::with_capacity(inputs.len()),
            offsets: Vec::with_capacity(inputs.len()),
            row_id: vec![],
        };
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
            let off = b.ids.len();
            b.spans.push(SeqSpan {
                q_start: off,
                q_len: inp.tokens.len(),
                kv_start: match kv {
                    KvRows::Own => off,
                    KvRows::Cache { capacity, .. } => inp.slot * capacity,
                },
                pos0: inp.pos0,
                kv_new: match kv {
                    // New keys follow the cache's rows in the concatenated tensor.
                    KvRows::Cache {
                        slots,
                        capacity,
                        read: true,
                    } => Some(slots * capacity + off),
                    _ => None,
                },
            });
            b.offsets.push(off);
            b.ids.extend_from_slice(inp.tokens);
            b.positions.extend(inp.pos0..inp.pos0 + inp.tokens.len());
            b.row_id
                .extend((0..inp.tokens.len()).map(|t| (inp.seq, inp.pos0 + t)));
        }
        Ok(b)
    }

    /// Whole sequences from position 0, keys in their own rows.
    pub fn whole<S: AsRef<[u32]>>(cfg: &ModelConfig, seqs: &[S]) -> Result<Self> {
        Self::new(cfg, &whole_sequences(seqs), KvRows::Own)
    }

    /// Rows selected by `p`.
    pub fn select(&self, p: &Positions) -> Vec<usize> {
        match p {
            Positions::None => vec![],
            Positions::All => (0..self.row_id.len()).collect(),
            Positions::Last => self.spans.iter().map(|s| s.q_start + s.q_len - 1).collect(),
            Positions::At(ps) => (0..self.row_id.len())
                .filter(|&r| ps.contains(&self.row_id[r].1))
                .collect(),
        }
    }

    /// The row of (`seq`, `pos`), if this call has it.
    pub fn row_of(&self, seq: usize, pos: usize) -> Option<usize> {
        self.row_id.iter().position(|&id| id == (seq, pos))
    }
}

/// The residual entering layer 0: the embedding rows of the batch's ids, `[n, d]`.
pub(crate) fn embed<B: Backend>(m: &Parts<'_, B>, batch: &Batch) -> Result<B::Tensor> {
    m.backend.embed(&m.weights.embed, &batch.ids)
}

/// Layers `first..L` from `x`, the residual entering layer `first`; returns the final
/// residual `[n, d]` (before the final norm). `ResidPre(l)` is hooked before layer l and
/// `ResidPre(L)` on the result; each layer's input and activations go to
/// [`LayerIo::keep`].
pub(crate) fn run_layers<B: Backend>(
    m: &Parts<'_, B>,
    io: &mut impl LayerIo<B>,
    first: usize,
    mut x: B::Tensor,
    batch: &Batch,
) -> Result<B::Tensor> {
    let n_layers = m.weights.layers.len();
    let rope = m.cfg.rope.plan(&batch.spans);
    for l in first..n_layers {
        // A front end's Ctrl-C (`util::cancel`) stops a long forward between layers.
        crate::util::cancel::check()?;
        io.hook(HookPoint::ResidPre(l), &mut x)?;
        let (acts, x_out) = layer_forward(m, io, l, &x, &batch.positions, &rope)?;
        io.keep(l, x, acts);
        x = x_out;
    }
    io.hook(HookPoint::ResidPre(n_layers), &mut x)?;
    Ok(x)
}

/// The final norm and the unembedding of residual rows `x [n, d]`: `(hn, logits)`, `hn [n,
/// d]` the normed rows, `logits [n, vocab]` (the head is lm_head, or the embedding when
/// tied: [`crate::model::mask::head`]). The only copy: evaluation, training and their
/// backward's inputs all come from here.
pub(crate) fn final_logits<B: Backend>(
    m: &Parts<'_, B>,
    x: &B::Tensor,
) -> Result<(B::Tensor, B::Tensor)> {
    let b = m.backend;
    let hn = b.rmsnorm(x, &m.weights.final_norm, m.cfg.rms_norm_eps as f32)?;
    let logits = b.linear(&hn, crate::model::mask::head(m.weights).0)?;
    Ok((hn, logits))
}
