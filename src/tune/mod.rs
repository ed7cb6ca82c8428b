//! Supervised pinpoint tuning: train only chosen heads' slices (or a baseline: full
//! fine-tuning, attention, MLP, LoRA) with AdamW, masks acting inside the optimizer.

pub mod mask;
