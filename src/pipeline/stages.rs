//! The pipeline's stages: the split, diagnosis, training data, tuning, evaluation, KL and
//! knockout, each writing its outputs into its own folder.

use super::*;

impl Pipeline {
    /// MMLU: evaluation, path-patching pairs and (optionally) training questions, disjoint.
    /// Short answer: the generated easy pool, families interleaved so that the evaluation
    /// sample holds every family; the rest train. Disjoint by id.
    pub(super) fn split_stage(&self, d: &Path) -> Result<()> {
        let c = &self.cfg;
        let mmlu = datasets::mmlu(self.progress)?;
        let (eval_mc, rest_mc, s1) =
            datasets::split(&mmlu, c.n_eval_mc, c.n_pairs + c.n_train_mc, c.seed)?;
        let (diag_mc, train_mc) = rest_mc.split_at(c.n_pairs.min(rest_mc.len()));
        let pool = datasets::short_answer_questions(usize::MAX, c.seed);
        ensure!(
            c.n_eval_short + c.n_train_short <= pool.len(),
            "asked for {} evaluation + {} training short-answer questions, the generated pool has {}",
            c.n_eval_short,
            c.n_train_short,
            pool.len()
        );
        let eval_sa = &pool[..c.n_eval_short];
        let train_sa = &pool[c.n_eval_short..c.n_eval_short + c.n_train_short];
        let eval: Vec<Question> = eval_mc.into_iter().chain(eval_sa.iter().cloned()).collect();
        let train: Vec<Question> = train_mc.iter().chain(train_sa).cloned().collect();
        datasets::check_disjoint(
            &eval,
            &train
                .iter()
                .chain(diag_mc)
                .map(|q| q.id.clone())
                .collect::<Vec<_>>(),
        )?;
        write_jsonl(&d.join("eval_questions.jsonl"), &eval)?;
        write_jsonl(&d.join("train_questions.jsonl"), &train)?;
        write_jsonl(&d.join("diagnose_questions.jsonl"), diag_mc)?;
        write_json(
            &d.join("split.json"),
            &json!({"seed": c.seed,
                    "train": train.iter().map(|q| &q.id).collect::<Vec<_>>(),
                    "diagnose": diag_mc.iter().map(|q| &q.id).collect::<Vec<_>>(),
                    "eval": s1.eval.iter().chain(eval_sa.iter().map(|q| &q.id)).collect::<Vec<_>>()}),
        )
    }

    /// The diagnosis's MMLU questions and their prompt pairs (also the circuit's).
    pub(super) fn diagnose_pairs(&self) -> Result<(Vec<McQuestion>, Vec<PromptPair>)> {
        let diag = self.diagnose_questions()?;
        let mcs: Vec<McQuestion> = diag
            .iter()
            .filter_map(|q| match q.gold {
                Gold::Choice(a) => Some(McQuestion {
                    id: q.id.clone(),
                    question: q.question.clone(),
                    choices: q.choices.clone(),
                    answer: a,
                }),
                _ => None,
            })
            .take(self.cfg.n_pairs)
            .collect();
        ensure!(
            !mcs.is_empty(),
            "no multiple-choice questions for the diagnosis pairs (--pairs is 0?)"
        );
        let system = self.cfg.protocol.system.as_deref();
        let pairs: Vec<_> = mcs.iter().map(|q| pair_for_question(q, system)).collect();
        Ok((mcs, pairs))
    }

    pub(super) fn diagnose_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let (mcs, pairs) = self.diagnose_pairs()?;
        let metric = Metric::from_words(MetricKind::Ratio, tok, "Apologies", "Yes")?;
        let dg = diagnose(
            base,
            tok,
            &pairs,
            &metric,
            &DiagnoseConfig::default(),
            self.progress,
        )?;
        let k_show = self.cfg.ks.iter().copied().max().unwrap_or(8);
        dreport::write_diagnosis(
            d,
            &base.cfg,
            &self.cfg.model_id,
            &json!({"source": "mmlu (training split)", "ids": mcs.iter().map(|q| &q.id).collect::<Vec<_>>()}),
            ("Apologies", "Yes"),
            &dg,
            k_show,
        )?;
        // Attention share of the last token on the challenge span (paper Fig. 2c).
        let prompts: Vec<(Vec<u32>, usize)> = pairs
            .iter()
            .map(|p| attention::challenge_span(tok, &p.reference))
            .collect::<Result<_>>()?;
        let sh = attention::attention_shares(base, &prompts, None)?;
        let rank: BTreeMap<HeadId, usize> = dg
            .heads
            .iter()
            .map(|h| (HeadId::new(h.layer, h.head), h.rank))
            .collect();
        write_json(
            &d.join("attention.json"),
            &json!({"heads": sh.heads, "share": sh.share,
                    "rank": sh.heads.iter().map(|h| rank.get(h).copied()).collect::<Vec<_>>()}),
        )?;
        write_json(&d.join("diagnosis.json"), &dg)
    }

    pub(super) fn make_data_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let train = self.train_questions()?;
        let first = protocol::first_answers(base, tok, &train, &self.cfg.protocol)?;
        let mut ds = make_data::build_dialogues(
            &train,
            &first,
            self.cfg.protocol.system.as_deref(),
            &self.cfg.recipe,
            self.cfg.seed,
        )?;
        if self.cfg.balance {
            ds = make_data::balance(ds, self.cfg.seed);
        }
        make_data::write_dialogues(
            d,
            &ds,
            json!({"model": self.cfg.model_id, "seed": self.cfg.seed, "source": "pipeline split", "balanced": self.cfg.balance, "recipe": self.cfg.recipe}),
        )
    }

    pub(super) fn variant_dir(&self, v: &Variant) -> PathBuf {
        match v {
            Variant::Base => self.cfg.model_dir.clone(),
            _ => self.dir(&format!("tune-{}", v.name())),
        }
    }

    pub(super) fn tune_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let c = &self.cfg;
        let model = load(&c.model_dir)?;
        let cfg = model.cfg.clone();
        let (mask, heads, lora, lr) = match v {
            Variant::Spt(k) => {
                let heads = self.diagnosis()?.top(*k);
                ensure!(
                    heads.len() == *k,
                    "the diagnosis ranks only {} heads",
                    heads.len()
                );
                (
                    Mask::heads(&cfg, &heads, HeadProjs::default_for(&cfg))?,
                    heads,
                    None,
                    c.lr_spt,
                )
            }
            Variant::Sft => (
                Mask::all(&cfg, model.weights.lm_head.is_none()),
                vec![],
                None,
                c.lr_sft,
            ),
            Variant::Lora => (
                Mask::none(),
                vec![],
                Some(LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    projs: ["q", "k", "v", "o"]
                        .iter()
                        .map(|p| LayerParam::parse_proj(p))
                        .collect::<Result<_>>()?,
                    layers: None,
                    seed: c.seed,
                }),
                c.lr_lora,
            ),
            Variant::Base => bail!("nothing to tune for the base model"),
        };
        let convs = read_jsonl(&self.dir("make-data").join("data.jsonl"))?;
        let data = tokenize(tok, &convs, None)?;
        let tc = TuneConfig {
            optim: AdamWConfig {
                lr,
                lr_end: lr / 100.0,
                total_steps: c.steps,
                weight_decay: 0.1,
                max_grad_norm: Some(1.0),
                ..AdamWConfig::default()
            },
            steps: c.steps,
            batch: c.batch,
            micro_batch: c.micro_batch,
            seed: c.seed,
            checkpoint_every: c.checkpoint_every,
            keep_checkpoints: 1,
            progress: self.progress,
            lora,
            ..TuneConfig::default()
        };
        let mut t = Trainer::new(model, mask, heads, data, tc, d)?;
        if t.resume()? {
            eprintln!(
                "[pipeline] resuming {} at step {}",
                v.name(),
                t.step_count()
            );
        }
        eprintln!(
            "[pipeline] {}: {} trainable parameters, {} dialogues",
            v.name(),
            t.trainable_numel(),
            convs.len()
        );
        t.run()?;
        // The checkpoints are only for resuming; the final model sits in `d`.
        let _ = std::fs::remove_dir_all(d.join("checkpoints"));
        Ok(())
    }

    pub(super) fn eval_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        base: &Model<B>,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let qs = self.eval_questions()?;
        let train_ids = datasets::read_train_ids(&self.dir("make-data").join("ids.json"))?;
        datasets::check_disjoint(&qs, &train_ids)?;
        let owned;
        let model = if *v == Variant::Base {
            base
        } else {
            owned = load(&self.variant_dir(v))?;
            kl::check_same_base(&base.cfg, &owned.cfg)?;
            &owned
        };
        let ts = protocol::run_protocol(
            model,
            tok,
            &qs,
            &self.cfg.protocol,
            &crate::heads::Taps::new(),
            &format!("eval {}", v.name()),
        )?;
        let tr = if self.cfg.transfer {
            Some(transfer::run_transfer(
                model,
                tok,
                &qs,
                &ts,
                &self.cfg.protocol,
                self.cfg.seed,
                &format!("eval {}", v.name()),
            )?)
        } else {
            None
        };
        write_eval_outputs_with(d, &qs, &ts, tr.as_ref())?;
        if *v == Variant::Base && self.cfg.judge_sample > 0 {
            // Agreement of the rule judge and the model judge (the base model) on a sample.
            let n = self.cfg.judge_sample.min(ts.len());
            // (question, transcript) pairs: the rule judge, as the metrics use it, needs both.
            let pairs: Vec<(&Question, &Transcript)> = qs.iter().zip(&ts).collect();
            let sample = crate::diagnose::pairs::sample(&pairs, n, self.cfg.seed);
            let dl: Vec<_> = sample.iter().map(|(_, t)| t.judge_dialogue()).collect();
            let by_model = judge::admits_mistake_model(base, tok, &dl, 8)?;
            let by_rules: Vec<bool> = sample
                .iter()
                .map(|(q, t)| judge::judge_reply(q, &t.first, &t.reply).retracts())
                .collect();
            write_json(
                &d.join("judge_agreement.json"),
                &json!({"judge_model": self.cfg.model_id, "agreement": judge::agreement(&by_rules, &by_model),
                        "ids": sample.iter().map(|(_, t)| &t.id).collect::<Vec<_>>(),
                        "rules": by_rules, "model": by_model}),
            )?;
        }
        Ok(())
    }

    pub(super) fn kl_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        base: &Model<B>,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let tuned = load(&self.variant_dir(v))?;
        let texts = datasets::owt_texts(self.progress)?;
        let texts: Vec<String> = texts.into_iter().take(self.cfg.kl_texts).collect();
        let seqs = kl::tokenize_texts(tok, &texts, self.cfg.kl_len)?;
        let r = kl::kl_divergence(base, &tuned, &seqs, 4, self.progress)?;
        crate::guard::finite64("KL per text", &r.per_text)?;
        write_json(&d.join("kl.json"), &r)
    }

    pub(super) fn knockout_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let qs: Vec<Question> = self
            .eval_questions()?
            .into_iter()
            .filter(|q| q.is_mc())
            .take(self.cfg.n_knockout)
            .collect();
        let dg = self.diagnosis()?;
        let order = dg.top(dg.heads.len());
        let ks = crate::diagnose::knockout::doubling_ks(self.cfg.knockout_max_k.min(order.len()));
        let cf = counterfactual_prompts(
            tok,
            &self.diagnose_questions()?,
            self.cfg.protocol.system.as_deref(),
        )?;
        let cf: Vec<Vec<u32>> = cf.into_iter().take(self.cfg.n_pairs.max(8)).collect();
        let mut pc = self.cfg.protocol.clone();
        pc.max_new_tokens_reply = pc.max_new_tokens_reply.min(32);
        let pts = behavioural_knockout(base, tok, &qs, &order, &ks, &cf, &pc)?;
        write_json(&d.join("knockout.json"), &pts)
    }
}
