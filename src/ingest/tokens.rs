//! Who may write which applications' beats: `[[ingest.tokens]]`, each a bearer token and
//! the app_id globs it may write.
//!
//! Tokens are kept as SHA-256 digests and compared in constant time, every configured token
//! each time, so that neither the answer's timing nor a memory dump gives one away.

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use crate::config::IngestToken;

/// One token: its digest and what it may write.
struct Grant {
    digest: [u8; 32],
    apps: GlobSet,
}

/// The configured tokens; none: every request may write every app.
pub struct Tokens {
    grants: Vec<Grant>,
}

/// Who a request is.
#[derive(Debug)]
pub enum Access {
    /// No token is configured: everything is allowed.
    Open,
    /// The index of the token the request carried.
    Token(usize),
}

/// Why a request may not write at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the bearer token is not one of the configured tokens")]
    Unknown,
}

impl Tokens {
    /// Compiles the configured tokens (globs already checked by the config).
    pub fn new(tokens: &[IngestToken]) -> Result<Tokens, globset::Error> {
        let grants = tokens
            .iter()
            .map(|t| {
                let mut apps = GlobSetBuilder::new();
                for glob in &t.apps {
                    apps.add(Glob::new(glob)?);
                }
                Ok(Grant { digest: digest(&t.token), apps: apps.build()? })
            })
            .collect::<Result<_, globset::Error>>()?;
        Ok(Tokens { grants })
    }

    /// Who sends `authorization` (the header's value, if any).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Access, AuthError> {
        if self.grants.is_empty() {
            return Ok(Access::Open);
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let wanted = digest(token);
        let mut found = None;
        // Every grant is compared, whatever matched before.
        for (i, grant) in self.grants.iter().enumerate() {
            if constant_time_eq(&grant.digest, &wanted) {
                found.get_or_insert(i);
            }
        }
        found.map(Access::Token).ok_or(AuthError::Unknown)
    }

    /// Whether `access` may write `app_id`.
    pub fn allows(&self, access: &Access, app_id: &str) -> bool {
        match access {
            Access::Open => true,
            Access::Token(i) => self.grants[*i].apps.is_match(app_id),
        }
    }
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal or not, in a time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[
            IngestToken { token: "alpha".into(), apps: vec!["checkout-*".into()] },
            IngestToken { token: "beta".into(), apps: vec!["billing".into(), "crm-?".into()] },
        ])
        .unwrap()
    }

    #[test]
    fn a_token_writes_only_its_apps() {
        let t = tokens();
        let alpha = t.authenticate(Some("Bearer alpha")).unwrap();
        assert!(t.allows(&alpha, "checkout-api") && !t.allows(&alpha, "billing"));
        let beta = t.authenticate(Some("Bearer beta")).unwrap();
        assert!(t.allows(&beta, "billing") && t.allows(&beta, "crm-1") && !t.allows(&beta, "crm-12"));
    }

    #[test]
    fn a_missing_or_wrong_token_is_refused() {
        let t = tokens();
        assert_eq!(t.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(t.authenticate(Some("Basic alpha")).unwrap_err(), AuthError::Missing);
        assert_eq!(t.authenticate(Some("Bearer alph")).unwrap_err(), AuthError::Unknown);
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let t = Tokens::new(&[]).unwrap();
        let access = t.authenticate(None).unwrap();
        assert!(t.allows(&access, "anything"));
    }
}
