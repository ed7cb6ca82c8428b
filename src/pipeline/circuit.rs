//! The circuit stage: exact edge scores from every earlier head and MLP into the top
//! `circuit_receivers` heads of the diagnosis, through q, k and v, with EAP and EAP-IG
//! (`docs/circuit.md`), on the diagnosis's pairs and metric. Reads only the base model:
//! no other stage's numbers change.

use super::*;
use crate::diagnose::circuit::{circuit, CircuitOptions, Receiver};
use crate::diagnose::circuit_report::write_circuit;
use crate::diagnose::pairs::tokenize_pairs;

/// EAP-IG's points on the path.
const IG_STEPS: usize = 8;
/// Edges drawn in circuit.svg / .png.
const TOP_EDGES: usize = 30;

impl Pipeline {
    pub(super) fn circuit_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let dg = self.diagnosis()?;
        let receivers: Vec<Receiver> = dg
            .top(self.cfg.circuit_receivers)
            .into_iter()
            .map(Receiver::Head)
            .collect();
        let (_, pairs) = self.diagnose_pairs()?;
        let token_pairs = tokenize_pairs(tok, &pairs)?;
        let opts = CircuitOptions {
            receivers,
            ig_steps: IG_STEPS,
            chunk: 8,
        };
        let c = circuit(base, &token_pairs, &dg.metric, &opts, None)?;
        let all: Vec<f64> = c.exact.per_pair.iter().flatten().copied().collect();
        crate::guard::finite64("circuit edge scores", &all)?;
        write_circuit(d, &c, &self.cfg.model_id, token_pairs.len(), TOP_EDGES)
    }
}
