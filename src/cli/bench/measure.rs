//! The measurements of `pinpoint bench`: forward, decode, patching, GEMM and one train
//! step, each a JSON row with its floor ratio.

use super::flags::BenchArgs;
use super::flops::{activation_flops, forward_flops, layer_flops, n_params, sweep_flops};
use super::setup::{patching_inputs, random_seqs, Source};
use super::timing::{ceiling_size, gemm_name, gemms, median, time_gemm, time_reps, Ceil};
use anyhow::Result;
use pinpoint::backend::{Backend, TrainBackend};
use pinpoint::diagnose::path_patching::{
    activation_patching_last, clean_runs, path_patching_fast, path_patching_literal, Node,
};
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::Positions;
use pinpoint::{Model, Taps};
use serde_json::{json, Value};
use std::time::Instant;

/// One benchmark session on one backend: rows accumulate in `rows`.
pub(super) struct Ctx<'a> {
    pub(super) a: &'a BenchArgs,
    pub(super) ceil: Ceil,
    pub(super) rows: &'a mut Vec<Value>,
}

impl Ctx<'_> {
    /// Print and keep a row, with the fields every row has.
    fn emit<B: Backend>(&mut self, b: &B, src: &Source, mut row: Value) {
        let o = row.as_object_mut().expect("object");
        o.insert("card".into(), b.device_name().into());
        o.insert("backend".into(), b.name().into());
        o.insert("model".into(), src.label().into());
        o.insert("gemm_tflops".into(), (self.ceil.gemm / 1e12).into());
        if let Some(c) = self.ceil.copy {
            o.insert("copy_gbps".into(), (c / 1e9).into());
        }
        println!("{row}");
        self.rows.push(row);
    }

    /// `flops / ceiling` seconds.
    fn flop_floor(&self, flops: f64) -> f64 {
        flops / self.ceil.gemm
    }
}

fn peak_gib<B: Backend>(b: &B) -> Result<Value> {
    Ok(match b.peak_memory()? {
        Some(p) => json!(p as f64 / (1u64 << 30) as f64),
        None => Value::Null,
    })
}

fn bench_forward<B: TrainBackend>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let seqs = random_seqs(model.cfg.vocab_size, a.batch, a.seq, 0);
    let (taps, logit_rows) = if a.logits == "all" {
        (Taps::new().with_logits(Positions::All), a.batch * a.seq)
    } else {
        (Taps::new().with_logits(Positions::Last), a.batch)
    };
    b.reset_peak_memory()?;
    let times = time_reps(b, a.reps, || model.forward(&seqs, &taps).map(|_| ()))?;
    let s = median(times);
    let flops = forward_flops(&model.cfg, a.batch, a.seq, logit_rows);
    let row = json!({
        "bench": "forward", "batch": a.batch, "seq": a.seq, "logits": a.logits,
        "median_s": s, "reps": a.reps, "tokens_per_s": (a.batch * a.seq) as f64 / s,
        "flops": flops, "floor_ratio": s / cx.flop_floor(flops), "peak_gib": peak_gib(b)?,
    });
    cx.emit(b, src, row);
    Ok(())
}

fn bench_decode<B: TrainBackend>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let prompts = random_seqs(model.cfg.vocab_size, a.batch, a.seq, 1);
    let cfg = GenConfig {
        max_new_tokens: a.new_tokens,
        ..Default::default()
    };
    b.reset_peak_memory()?;
    model.forward(&prompts, &Taps::new())?; // warm-up
    let (mut times, mut prefill) = (vec![], vec![]);
    let mut steps = 1usize;
    for _ in 0..a.reps.max(1) {
        b.synchronize()?;
        let t = Instant::now();
        model.forward(&prompts, &Taps::new())?;
        b.synchronize()?;
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = generate(model, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {})?;
        b.synchronize()?;
        steps = out.iter().map(|g| g.tokens.len()).max().unwrap_or(1).max(1);
        times.push((t.elapsed().as_secs_f64() - p).max(0.0));
        prefill.push(p);
    }
    let s = median(times);
    // The prefill yields the first token; every later token is one decode step.
    let steps = steps.saturating_sub(1).max(1) as f64;
    let per_step = s / steps;
    let weight_bytes = n_params(&model.cfg) * b.elem_bytes() as f64;
    let floor = cx.ceil.copy.map(|c| weight_bytes / c);
    let row = json!({
        "bench": "decode", "batch": a.batch, "prompt_len": a.seq, "new_tokens": a.new_tokens,
        "decode_s": s, "prefill_s": median(prefill), "reps": a.reps,
        "ms_per_step": 1e3 * per_step, "tokens_per_s": a.batch as f64 / per_step,
        "weight_bytes": weight_bytes, "floor_ms_per_step": floor.map(|f| f * 1e3),
        "floor_ratio": floor.map(|f| per_step / f), "peak_gib": peak_gib(b)?,
    });
    cx.emit(b, src, row);
    Ok(())
}

fn bench_patching<B: TrainBackend>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let (token_pairs, metric) = patching_inputs(a.pairs, a.seq, src, &model.cfg)?;
    let tokens: usize = token_pairs
        .iter()
        .map(|p| p.reference.len() + p.counterfactual.len())
        .sum();
    let chunk = token_pairs.len().max(1);
    // Warm-up of every stage, then timed repetitions.
    b.reset_peak_memory()?;
    let mut runs = clean_runs(model, &token_pairs, &metric, chunk, None)?;
    path_patching_fast(model, &runs, &metric, false, chunk, None)?;
    activation_patching_last(model, &token_pairs, &runs, &metric, None)?;
    let (mut clean, mut sweep, mut act) = (vec![], vec![], vec![]);
    for _ in 0..a.reps.max(1) {
        b.synchronize()?;
        let t = Instant::now();
        runs = clean_runs(model, &token_pairs, &metric, chunk, None)?;
        b.synchronize()?;
        clean.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        path_patching_fast(model, &runs, &metric, false, chunk, None)?;
        b.synchronize()?;
        sweep.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        activation_patching_last(model, &token_pairs, &runs, &metric, None)?;
        b.synchronize()?;
        act.push(t.elapsed().as_secs_f64());
    }
    let peak = peak_gib(b)?;
    let n_heads = model.all_heads().len();
    let nodes: Vec<Node> = model
        .all_heads()
        .into_iter()
        .step_by((n_heads / a.oracle_heads.max(1)).max(1))
        .take(a.oracle_heads)
        .map(|head| Node { head, pos: None })
        .collect();
    let oracle_per_head = if nodes.is_empty() {
        None
    } else {
        let t = Instant::now();
        path_patching_literal(model, &token_pairs, &runs, &nodes, &metric, false, 8, None)?;
        b.synchronize()?;
        Some(t.elapsed().as_secs_f64() / nodes.len() as f64)
    };
    let (c, s, ac) = (median(clean), median(sweep), median(act));
    let p_n = token_pairs.len();
    let seq_mean = tokens as f64 / (2 * p_n).max(1) as f64;
    // Clean runs: each pair's common prefix once and both suffixes (as `clean_runs`),
    // all-vocabulary logits of 2P last rows; attention not counted.
    let processed: usize = token_pairs
        .iter()
        .map(|p| {
            let (r, c) = (p.reference.len(), p.counterfactual.len());
            let lcp = p
                .reference
                .iter()
                .zip(&p.counterfactual)
                .take_while(|(a, b)| a == b)
                .count()
                .min(r - 1)
                .min(c - 1);
            r + c - lcp
        })
        .sum();
    let clean_flops =
        processed as f64 * model.cfg.num_hidden_layers as f64 * layer_flops(&model.cfg)
            + forward_flops(&model.cfg, 0, 0, 2 * p_n);
    let (sf, af) = (
        sweep_flops(&model.cfg, p_n),
        activation_flops(&model.cfg, p_n, seq_mean as usize),
    );
    let oracle_all = oracle_per_head.map(|o| o * n_heads as f64);
    let row = json!({
        "bench": "patching", "pairs": p_n, "prompt_tokens": tokens, "seq": seq_mean,
        "clean_tokens_processed": processed,
        "heads": n_heads, "metric": format!("{:?}", metric.kind), "reps": a.reps,
        "clean_runs_s": c, "fast_sweep_s": s, "total_s": c + s,
        "heads_per_s": n_heads as f64 / (c + s),
        "clean_flops": clean_flops, "sweep_flops": sf,
        "clean_floor_ratio": c / cx.flop_floor(clean_flops),
        "sweep_floor_ratio": s / cx.flop_floor(sf),
        "activation_sweep_s": ac, "activation_total_s": c + ac, "activation_flops": af,
        "activation_floor_ratio": ac / cx.flop_floor(af),
        "oracle_s_per_head": oracle_per_head, "oracle_all_heads_s_extrapolated": oracle_all,
        "speedup_vs_oracle": oracle_all.map(|o| o / (c + s)),
        "peak_gib": peak,
    });
    cx.emit(b, src, row);
    Ok(())
}

fn bench_gemm<B: TrainBackend>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let c = &model.cfg;
    let n = a.batch * a.seq;
    let s = ceiling_size(b);
    let mut shapes = vec![("square", s, s, s)];
    shapes.extend([
        ("q/o", n, c.hidden_size, c.q_dim()),
        ("k/v", n, c.hidden_size, c.kv_dim()),
        ("gate/up", n, c.hidden_size, c.intermediate_size),
        ("down", n, c.intermediate_size, c.hidden_size),
        ("lm_head", n, c.hidden_size, c.vocab_size),
    ]);
    for gemm in gemms(b) {
        for &(what, rows, k, m) in &shapes {
            let t = time_gemm(b, (rows, k, m), gemm, a.reps, false)?;
            let flops = 2.0 * (rows * k * m) as f64;
            let row = json!({
                "bench": "gemm", "gemm": gemm_name(gemm), "op": what, "n": rows, "k": k, "m": m,
                "median_s": t, "reps": a.reps, "tflops": flops / t / 1e12,
                "floor_ratio": t / cx.flop_floor(flops),
            });
            cx.emit(b, src, row);
        }
    }
    if let Some(copy) = cx.ceil.copy {
        let row = json!({"bench": "copy", "bytes_per_s": copy, "gbps": copy / 1e9,
            "note": "device-to-device copy of 512 MiB, bytes read + written"});
        cx.emit(b, src, row);
    }
    Ok(())
}

/// One SPT step (`bench_train_step`: a warm-up step, then the timed one) on a fresh model
/// per repetition. `probe` is another handle on the same device, to read the memory peak
/// after the step (which owns its model).
pub(super) fn bench_train<B: TrainBackend>(
    cx: &mut Ctx,
    src: &Source,
    probe: &B,
    make: &dyn Fn() -> Result<Model<B>>,
) -> Result<()> {
    let a = cx.a;
    let mut times = vec![];
    let mut cfg = None;
    probe.reset_peak_memory()?;
    for _ in 0..a.reps.max(1) {
        let m = make()?;
        cfg = Some(m.cfg.clone());
        times.push(a.train_step()?.time(m)?);
    }
    let peak = peak_gib(probe)?;
    let cfg = cfg.expect("at least one rep");
    let s = median(times);
    // Forward with all logits, plus the input-gradient backward of every layer (about the
    // forward again); weight gradients of the k heads are comparatively small.
    let flops = 2.0 * forward_flops(&cfg, a.batch, a.seq, a.batch * a.seq);
    let row = json!({
        "bench": "train", "batch": a.batch, "seq": a.seq, "k": a.k, "reps": a.reps,
        "loss_tokens": a.loss_tokens,
        "mem_cap_gib": a.mem_cap_gib,
        "median_s": s, "tokens_per_s": (a.batch * a.seq) as f64 / s,
        "flops": flops, "floor_ratio": s / cx.flop_floor(flops), "peak_gib": peak,
    });
    cx.emit(probe, src, row);
    Ok(())
}

/// Everything but `train` on one model.
pub(super) fn bench_model<B: TrainBackend>(
    cx: &mut Ctx,
    src: &Source,
    model: &Model<B>,
) -> Result<()> {
    for what in &cx.a.what {
        match what.as_str() {
            "forward" => bench_forward(cx, src, model)?,
            "decode" => bench_decode(cx, src, model)?,
            "patching" => bench_patching(cx, src, model)?,
            "gemm" => bench_gemm(cx, src, model)?,
            _ => {}
        }
    }
    Ok(())
}
