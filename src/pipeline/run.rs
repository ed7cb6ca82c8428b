//! The pipeline's stage sequence, from the split to the report: the top of the pipeline
//! (it names the stages and the report; they name only the pipeline's state in mod.rs).

use super::report;
use super::{Pipeline, Variant};
use crate::backend::TrainBackend;
use crate::model::tokenizer::Tokenizer;
use crate::transformer::Model;
use anyhow::Result;
use std::path::Path;

impl Pipeline {
    /// Run every stage (up to `stop_after`, if given: for tests and partial runs) on the CPU.
    pub fn run_all(&mut self, stop_after: Option<&str>) -> Result<()> {
        self.run_all_on(stop_after, &|dir: &Path| Model::load_cpu(dir))
    }

    /// Run every stage with models loaded by `load` (a directory onto one backend: the
    /// CPU, or a GPU).
    pub fn run_all_on<B: TrainBackend>(
        &mut self,
        stop_after: Option<&str>,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        self.cfg.check_stop_after(stop_after)?;
        let base = load(&self.cfg.model_dir)?;
        self.check_weights()?;
        let tok = Tokenizer::from_dir(&self.cfg.model_dir)?;
        tok.check_vocab(base.cfg.vocab_size, &self.cfg.model_dir)?;
        macro_rules! stop {
            ($n:expr) => {
                if stop_after == Some($n) {
                    return Ok(());
                }
            };
        }
        self.stage("split", |p, d| p.split_stage(d))?;
        stop!("split");
        self.stage("diagnose", |p, d| p.diagnose_stage(d, &base, &tok))?;
        stop!("diagnose");
        if self.cfg.circuit_receivers > 0 {
            self.stage("circuit", |p, d| p.circuit_stage(d, &base, &tok))?;
            stop!("circuit");
        }
        self.stage("make-data", |p, d| p.make_data_stage(d, &base, &tok))?;
        stop!("make-data");
        for v in self.cfg.variants() {
            if v != Variant::Base {
                let name = format!("tune-{}", v.name());
                self.stage(&name, |p, d| p.tune_stage(d, &v, &tok, load))?;
                stop!(name.as_str());
            }
        }
        for v in self.cfg.variants() {
            let name = format!("eval-{}", v.name());
            self.stage(&name, |p, d| p.eval_stage(d, &v, &base, &tok, load))?;
            stop!(name.as_str());
        }
        for v in self.cfg.variants() {
            if v != Variant::Base {
                let name = format!("kl-{}", v.name());
                self.stage(&name, |p, d| p.kl_stage(d, &v, &base, &tok, load))?;
                stop!(name.as_str());
            }
        }
        if self.cfg.n_knockout > 0 {
            self.stage("knockout", |p, d| p.knockout_stage(d, &base, &tok))?;
            stop!("knockout");
        }
        // The report is cheap and always rewritten from the stage outputs.
        report::write_report(self)?;
        Ok(())
    }
}
