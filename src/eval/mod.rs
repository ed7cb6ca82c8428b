//! Evaluation: question data, the two-turn "are you sure?" protocol, judges, metrics with
//! intervals, KL drift, behavioural knockout, and the training-data builder.

pub mod answer;
pub mod challenges;
pub mod datasets;
pub mod easy;
pub mod judge;
pub mod kl;
pub mod knockout;
pub mod make_data;
pub mod metrics;
pub mod probe;
pub mod protocol;
pub mod question;
pub mod transfer;

pub use metrics::{Metrics, Rate};
pub use protocol::{ProtocolConfig, Transcript};
pub use question::{Gold, Question};
