//! The policy the origin verifies its own callers' tokens with: the edges' core, against the
//! origin's own key set.

use edgeauth_core::Policy;

/// The edge policy the origin applies to itself: its own issuer and audience, defaults
/// otherwise. The keys are the origin's own published ones ([`crate::key_rotation`]).
#[derive(Debug)]
pub struct SelfVerifier {
    policy: Policy,
}

impl SelfVerifier {
    /// Built once at start-up from the configuration.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, anyhow::Error> {
        let policy = Policy::from_json(
            &serde_json::json!({"issuers": [issuer], "audiences": [audience], "cache": {"max_entries": 0}}).to_string(),
        )?;
        Ok(Self { policy })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}
