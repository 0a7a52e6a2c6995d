use thiserror::Error;

/// Why a value is not acceptable. Every message names the offending value and, where it helps,
/// what would be accepted instead, because these texts reach users verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("invalid {what} '{value}': {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid rule: {0}")]
    Rule(String),
    #[error("invalid JSON for {what}: {reason}")]
    Json { what: &'static str, reason: String },
}

impl ModelError {
    pub fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ModelError::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub fn rule(reason: impl Into<String>) -> Self {
        ModelError::Rule(reason.into())
    }
}
