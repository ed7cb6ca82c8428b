//! Diagnosis: which heads make the model sycophantic (METHOD.md sections 1 and 2).

pub mod activation;
pub mod attention;
pub mod attribution;
pub mod circuit;
pub mod circuit_chart;
pub mod circuit_edge;
pub mod circuit_exact;
pub mod circuit_grad;
pub mod circuit_receiver;
pub mod circuit_report;
pub mod inputs;
pub mod knockout;
pub mod metric;
pub mod pairs;
pub mod path_patching;
pub mod report;
pub mod run;
