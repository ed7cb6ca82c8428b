//! `pinpoint circuit`: exact edge scores from every earlier head and MLP into the top
//! heads of a heads.json (or named heads, or the logits) through q, k and v, with EAP and
//! EAP-IG beside them; writes circuit.json, circuit.svg and circuit.png.

use super::diagnose::{build_metric, load_pairs, PairArgs};
use super::{Device, DeviceArg, ModelArg};
use anyhow::{bail, Context, Result};
use pinpoint::backend::TrainBackend;
use pinpoint::diagnose::circuit::{circuit, CircuitOptions, Receiver};
use pinpoint::diagnose::circuit_report::write_circuit;
use pinpoint::diagnose::pairs;
use pinpoint::guard::{self, flag};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::util::progress_bar;
use pinpoint::Model;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CircuitArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub pairs: PairArgs,
    /// Receivers: the top --top-k heads of this heads.json (from `pinpoint diagnose`).
    #[arg(long, conflicts_with_all = ["heads_list", "logits"])]
    pub heads: Option<PathBuf>,
    /// Receivers by name, comma-separated: "L3H5,L10H2" or "blocks.3.attn.hook_z[:, :, 5]".
    #[arg(long, conflicts_with = "logits")]
    pub heads_list: Option<String>,
    /// The receiver is the logits (each sender's direct path).
    #[arg(long)]
    pub logits: bool,
    /// How many heads of --heads (or --heads-list) receive.
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,
    /// Edges drawn in circuit.svg / circuit.png (all edges are in circuit.json).
    #[arg(long, default_value_t = 30)]
    pub top_edges: usize,
    /// EAP-IG's points on the path from X_r to X_c (0: skip EAP-IG).
    #[arg(long, default_value_t = 8)]
    pub ig_steps: usize,
    /// Patched positions: only `last` (the paper's; pairs align at their last token).
    #[arg(long, default_value = "last")]
    pub positions: String,
    /// Pairs per batch.
    #[arg(long, default_value_t = 8)]
    pub chunk: usize,
    #[arg(long, default_value = "circuit")]
    pub out: PathBuf,
}

/// The flags' checks, before any model is loaded.
pub fn check(a: &CircuitArgs) -> Result<()> {
    if a.positions != "last" {
        bail!(
            "--positions {:?}: a circuit patches the last position only (pairs of different \
             lengths align there); other positions are not supported",
            a.positions
        );
    }
    if a.heads.is_none() && a.heads_list.is_none() && !a.logits {
        bail!("give the receivers: --heads heads.json, --heads-list L3H5,... or --logits");
    }
    flag::at_least("--top-k", a.top_k, 1)?;
    flag::at_least("--top-edges", a.top_edges, 1)?;
    flag::at_least("--chunk", a.chunk, 1)?;
    if let Some(h) = &a.heads {
        guard::input_file(h, "--heads file")?;
    }
    match &a.pairs.pairs {
        Some(f) => guard::input_file(f, "--pairs file")?,
        None => flag::at_least("--n", a.pairs.n, 1)?,
    }
    let inputs: Vec<&Path> = a.model.model.iter().map(|p| p.as_path()).collect();
    guard::output_dir(&a.out, "--out", &inputs)
}

pub fn run(a: CircuitArgs) -> Result<()> {
    match a.device.device {
        Device::Cpu => {
            let super::Loaded { dir, tok, model } = a.model.load()?;
            run_on(&a, &dir, &tok, &model)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let dir = a.model.resolve()?;
            let tok = Tokenizer::from_dir(&dir)?;
            let (cfg, w, _) = pinpoint::model::checkpoint::load_model_dir(&dir)?;
            let model = Model::from_host(cfg, &w, a.device.cuda()?)?;
            drop(w);
            run_on(&a, &dir, &tok, &model)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(super::no_cuda()),
    }
}

fn receivers<B: TrainBackend>(a: &CircuitArgs, model: &Model<B>) -> Result<Vec<Receiver>> {
    let heads = match (&a.heads, &a.heads_list) {
        _ if a.logits => return Ok(vec![Receiver::Logits]),
        (Some(p), _) => pinpoint::tune::read_heads_json(p, &model.cfg, a.top_k)?,
        (None, Some(l)) => {
            let mut h = pinpoint::tune::parse_heads_list(l, &model.cfg)?;
            h.truncate(a.top_k);
            h
        }
        (None, None) => bail!("give --heads, --heads-list or --logits"),
    };
    Ok(heads.into_iter().map(Receiver::Head).collect())
}

fn run_on<B: TrainBackend>(
    a: &CircuitArgs,
    dir: &Path,
    tok: &Tokenizer,
    model: &Model<B>,
) -> Result<()> {
    let receivers = receivers(a, model)?;
    let loaded = load_pairs(&a.pairs)?;
    let token_pairs = pairs::tokenize_pairs(tok, &loaded.pairs)?;
    let (metric, syc, anti) = build_metric(&a.pairs, model, tok, &token_pairs)?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    eprintln!(
        "circuit of {name} on {}: {} receivers, {} pairs, labels {syc:?} vs {anti:?}",
        model.backend_name(),
        receivers.len(),
        token_pairs.len()
    );
    let opts = CircuitOptions {
        receivers: receivers.clone(),
        ig_steps: a.ig_steps,
        chunk: a.chunk,
    };
    let steps = 2 * receivers.len() * token_pairs.len();
    let pb = progress_bar(steps as u64, "circuit", true);
    let t0 = std::time::Instant::now();
    let c = circuit(model, &token_pairs, &metric, &opts, pb.as_ref())?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let all: Vec<f64> = c.exact.per_pair.iter().flatten().copied().collect();
    pinpoint::guard::finite64("edge scores", &all)
        .context("the circuit produced non-finite scores; nothing was written")?;
    write_circuit(&a.out, &c, &name, token_pairs.len(), a.top_edges)?;
    let (eap, ig) = c.agreements();
    crate::outln!("rank  edge                          exact       eap    eap-ig  receiver hook");
    for (rank, &e) in c.ranking().iter().take(a.top_edges.min(20)).enumerate() {
        let edge = c.edges()[e];
        crate::outln!(
            "{:>4}  {:<28} {:>9.4} {:>9.4} {:>9}  {}",
            rank + 1,
            edge.label(),
            c.exact_mean(e),
            c.eap_mean(e),
            c.eap_ig_mean(e).map_or("-".into(), |v| format!("{v:.4}")),
            edge.receiver.tl_name(edge.channel, c.n_layers)
        );
    }
    eprintln!(
        "{} edges in {:.1} s; EAP vs exact: Spearman {:.3}, top-10 overlap {:.2}, top-50 {:.2}{}",
        c.ranking().len(),
        t0.elapsed().as_secs_f64(),
        eap.spearman,
        eap.top10_overlap,
        eap.top50_overlap,
        ig.map_or(String::new(), |g| format!(
            "; EAP-IG: Spearman {:.3}, top-10 {:.2}, top-50 {:.2}",
            g.spearman, g.top10_overlap, g.top50_overlap
        ))
    );
    eprintln!(
        "wrote {}/circuit.json, circuit.svg, circuit.png",
        a.out.display()
    );
    Ok(())
}
