//! Sizes checked against what the model and the machine allow, before anything is
//! allocated: sequence lengths against the model's context (`max_position_embeddings`),
//! byte counts against the memory available. Every error names the flag or the item and
//! the limit; products are computed with checked arithmetic.

use anyhow::{bail, Result};
use pinpoint::generate::context_limit;
use pinpoint::model::ModelConfig;

/// Bytes of memory the host can give without swapping (`MemAvailable` of /proc/meminfo);
/// None where that cannot be read.
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A product of sizes, or None when it overflows.
pub fn product(parts: &[usize]) -> Option<u128> {
    parts
        .iter()
        .try_fold(1u128, |acc, &p| acc.checked_mul(p as u128))
}

/// `GiB` with two decimals, for messages.
pub fn gib(bytes: u128) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Error unless `bytes` (None = past any count) fit in `available` (None: not known, so
/// only an overflowing count is refused). `what` names the flags that set the size.
pub fn fits_memory(
    what: &str,
    bytes: Option<u128>,
    available: Option<u64>,
    place: &str,
) -> Result<()> {
    match (bytes, available) {
        (None, _) => bail!("{what}: the memory this needs overflows a 128-bit count; give smaller values"),
        (Some(b), Some(av)) if b > av as u128 => bail!(
            "{what}: needs at least {} of memory, but {place} has {} available; give smaller values",
            gib(b),
            gib(av as u128)
        ),
        _ => Ok(()),
    }
}

/// `--max-new-tokens` (or another generation length flag) given explicitly past the model's
/// context can never be produced; the default is clamped to the context instead.
pub fn new_tokens(flag: &str, n: usize, cfg: &ModelConfig, dir: &std::path::Path) -> Result<()> {
    if let Some(ctx) = context_limit(cfg) {
        if n > ctx {
            bail!(
                "{flag} {n}: at most {ctx}, the model's context (max_position_embeddings in {})",
                dir.join("config.json").display()
            );
        }
    }
    Ok(())
}

/// Bytes of a KV cache of `slots` sequences of `len` positions (f32 keys and values, every
/// layer): what generation allocates first.
pub fn kv_cache_bytes(cfg: &ModelConfig, slots: usize, len: usize) -> Option<u128> {
    product(&[2, 4, cfg.num_hidden_layers, cfg.kv_dim(), slots, len])
}

/// `--max-len` of `tune` within the context, `--layers` within the model, a LoRA rank no
/// larger than the matrices it adapts (`lora`: `--lora-proj` and `--lora-rank` when the
/// mode trains adapters).
pub fn tune(
    cfg: &ModelConfig,
    max_len: Option<usize>,
    layers: Option<&[usize]>,
    lora: Option<(&str, usize)>,
) -> Result<()> {
    if let (Some(m), Some(ctx)) = (max_len, context_limit(cfg)) {
        if m > ctx {
            bail!("--max-len {m}: at most {ctx}, the model's context (max_position_embeddings in config.json)");
        }
    }
    if let Some(&l) = layers.and_then(|ls| ls.iter().find(|&&l| l >= cfg.num_hidden_layers)) {
        bail!(
            "--layers: layer {l} does not exist; the model has layers 0 to {}",
            cfg.num_hidden_layers - 1
        );
    }
    if let Some((lora_proj, rank)) = lora {
        for p in lora_proj
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (rows, cols) = proj_shape(cfg, p);
            let max = rows.min(cols);
            if rank > max {
                bail!(
                    "--lora-rank {rank}: at most {max} for --lora-proj {p} (its matrix is {rows} x {cols}; a larger rank adds nothing)"
                );
            }
        }
    }
    Ok(())
}

/// (out, in) of a projection named as `--lora-proj` names it (unknown names: no limit;
/// the parser names them).
fn proj_shape(cfg: &ModelConfig, p: &str) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match p.to_ascii_lowercase().trim_end_matches("_proj") {
        "q" => (cfg.q_dim(), h),
        "k" | "v" => (cfg.kv_dim(), h),
        "o" => (h, cfg.q_dim()),
        "gate" | "up" => (i, h),
        "down" => (h, i),
        _ => (usize::MAX, usize::MAX),
    }
}

/// Every training sequence fits the context; the error names the data file's line.
pub fn tune_data(
    data_file: &std::path::Path,
    lines: &[usize],
    lens: &[usize],
    cfg: &ModelConfig,
) -> Result<()> {
    let Some(ctx) = context_limit(cfg) else {
        return Ok(());
    };
    if let Some((line, len)) = lines.iter().zip(lens).find(|(_, &n)| n > ctx) {
        bail!(
            "--data {} line {line}: the conversation has {len} tokens, past the model's context of {ctx} (max_position_embeddings in config.json); shorten it or pass --max-len {ctx}",
            data_file.display()
        );
    }
    Ok(())
}

/// Both prompts of every pair fit the context; the error names the pair (and its file).
pub fn pairs(
    cfg: &ModelConfig,
    pairs: &[pinpoint::diagnose::pairs::TokenPair],
    file: Option<&std::path::Path>,
) -> Result<()> {
    let from = file.map_or(String::new(), |f| format!(" of --pairs {}", f.display()));
    for p in pairs {
        for (side, ids) in [
            ("reference", &p.reference),
            ("counterfactual", &p.counterfactual),
        ] {
            pinpoint::generate::check_fits_context(
                cfg,
                &format!("pair #{}{from} ({}): its {side} prompt", p.index, p.source),
                ids.len(),
            )?;
        }
    }
    Ok(())
}

/// A prompt shortened for messages: its first 40 characters.
pub fn short(text: &str) -> String {
    let s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

/// A lower bound on the bytes one `bench` workload holds at once on a model of `cfg`:
/// one layer's activations of `--batch` x `--seq` rows (`elem` bytes each), the logits
/// (f32), the KV cache of a decode run and the weights (`weight_bytes`). None on overflow.
pub fn bench_bytes(a: &super::bench::BenchArgs, cfg: &ModelConfig, elem: usize) -> Option<u128> {
    let rows = product(&[a.batch, a.seq])?.max(product(&[a.pairs, a.seq, 2])?);
    let width =
        (4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.q_dim() + 2 * cfg.kv_dim()) as u128;
    let logit_rows = if a.logits == "all" {
        rows
    } else {
        a.batch as u128
    };
    let acts = rows.checked_mul(width)?.checked_mul(elem as u128)?;
    let logits = logit_rows
        .checked_mul(cfg.vocab_size as u128)?
        .checked_mul(4)?;
    let decode_len = a.seq.checked_add(a.new_tokens)?;
    let kv = product(&[
        2,
        elem,
        cfg.num_hidden_layers,
        cfg.kv_dim(),
        a.batch,
        decode_len,
    ])?;
    acts.checked_add(logits)?.checked_add(kv)
}

/// `bench` on a model of `cfg`: refuse sizes whose memory is past what `available` holds.
pub fn bench(
    a: &super::bench::BenchArgs,
    cfg: &ModelConfig,
    elem: usize,
    available: Option<u64>,
    place: &str,
) -> Result<()> {
    let what = format!(
        "bench --batch {} --seq {} --new-tokens {}",
        a.batch, a.seq, a.new_tokens
    );
    fits_memory(&what, bench_bytes(a, cfg, elem), available, place)
}

/// `generate` / `chat`: an explicit `--max-new-tokens` (`max_new_tokens`) within the
/// context, and the KV cache of `prompts` (the longest `longest` tokens) within the host's
/// memory.
pub fn generation(
    max_new_tokens: usize,
    cfg: &ModelConfig,
    dir: &std::path::Path,
    prompts: &[Vec<u32>],
) -> Result<()> {
    if super::args::given("max_new_tokens") {
        new_tokens("--max-new-tokens", max_new_tokens, cfg, dir)?;
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let len = match context_limit(cfg) {
        Some(ctx) => longest.max(ctx.min(longest.saturating_add(max_new_tokens))),
        None => longest.saturating_add(max_new_tokens),
    };
    let what = format!(
        "--max-new-tokens {max_new_tokens} after {} prompt(s) of up to {longest} tokens",
        prompts.len()
    );
    fits_memory(
        &what,
        kv_cache_bytes(cfg, prompts.len(), len),
        host_available(),
        "this machine",
    )
}

/// `profile` on the CPU: the same lower bound as `bench` (one layer's activations, the
/// logits, a decode KV cache) against the host's available memory.
pub fn profile(a: &super::profile::ProfileArgs) -> Result<()> {
    if a.device.device != super::Device::Cpu {
        return Ok(()); // the GPU's memory is known only once the backend is up
    }
    let cfg = match &a.shape {
        Some(s) => super::bench::shape_config(s)?,
        None => ModelConfig::from_file(&a.model.resolve()?.join("config.json"))?,
    };
    let rows = product(&[a.batch, a.seq]).zip(product(&[a.pairs, a.seq, 2]));
    let width =
        (4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.q_dim() + 2 * cfg.kv_dim()) as u128;
    let bytes = rows.and_then(|(r, p)| {
        let r = r.max(p);
        let acts = r.checked_mul(width)?.checked_mul(4)?;
        let logits = r.checked_mul(cfg.vocab_size as u128)?.checked_mul(4)?;
        let len = a.seq.checked_add(a.new_tokens)?;
        let kv = kv_cache_bytes(&cfg, a.batch, len)?;
        acts.checked_add(logits)?.checked_add(kv)
    });
    let what = format!(
        "profile --batch {} --seq {} --new-tokens {} --pairs {}",
        a.batch, a.seq, a.new_tokens, a.pairs
    );
    fits_memory(&what, bytes, host_available(), "this machine")
}
