//! The signature algorithms the core knows.

/// A JWS `alg` value the core can verify. Parsing is exact and case-sensitive (RFC 7515 §4.1.1),
/// so `none`, `None` or `eddsa` are simply unknown names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// HMAC with SHA-256: only in a policy that lists it alone.
    Hs256,
}

impl Algorithm {
    /// Parses the exact `alg` spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "EdDSA" => Self::EdDsa,
            "ES256" => Self::Es256,
            "RS256" => Self::Rs256,
            "PS256" => Self::Ps256,
            "HS256" => Self::Hs256,
            _ => return None,
        })
    }

    /// The `alg` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Hs256 => "HS256",
        }
    }

    /// Whether the algorithm uses a shared secret.
    pub fn is_symmetric(self) -> bool {
        matches!(self, Self::Hs256)
    }
}
