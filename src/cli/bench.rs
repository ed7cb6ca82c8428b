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
    /// What to time: forward (prefill) or decode.
    #[arg(value_parser = ["forward", "decode"])]
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
