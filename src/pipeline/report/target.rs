//! The project's targets as the report's verdict lists them (its own and the transfer
//! section's): each with its status, a detail in words, and the value and threshold.

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    NotMet,
    NotMeasured,
}

impl Status {
    pub(super) fn of(met: bool) -> Self {
        if met {
            Status::Met
        } else {
            Status::NotMet
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT met",
            Status::NotMeasured => "not measured",
        }
    }
    pub(super) fn class(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "notmet",
            Status::NotMeasured => "nm",
        }
    }
    pub(super) fn key(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "not_met",
            Status::NotMeasured => "not_measured",
        }
    }
}

/// One of the project's targets, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
}

impl Target {
    pub(super) fn not_measured(name: &str, why: String) -> Self {
        Self {
            name: name.into(),
            status: Status::NotMeasured,
            detail: why,
            value: None,
            threshold: None,
        }
    }
}
