//! Who may change state through the API: a bearer token from `[http] api_tokens`, kept as
//! SHA-256 digests and compared in constant time against every configured token (the
//! comparison of [`crate::ingest::tokens`]). With no token configured, every such request is
//! refused: the read routes need none.

use axum::http::{HeaderMap, header};
use thiserror::Error;

use crate::ingest::tokens::{constant_time_eq, digest};

/// Why a state-changing request is refused (answered 401, or 403 when none is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("no api token is configured: set [http] api_tokens to allow changes")]
    NoTokensConfigured,
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the bearer token is not one of [http] api_tokens")]
    Unknown,
}

/// The configured tokens, as digests.
#[derive(Clone)]
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
}

impl ApiTokens {
    pub fn new(tokens: &[String]) -> ApiTokens {
        ApiTokens { digests: tokens.iter().map(|t| digest(t)).collect() }
    }

    /// Whether `headers` carry one of the tokens.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.digests.is_empty() {
            return Err(AuthError::NoTokensConfigured);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let wanted = digest(token);
        // Every token is compared, whatever matched before.
        let matched = self.digests.iter().fold(false, |found, d| constant_time_eq(d, &wanted) | found);
        if matched { Ok(()) } else { Err(AuthError::Unknown) }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_configured_token_is_accepted_in_either_case_of_bearer() {
        let tokens = ApiTokens::new(&["first-token".into(), "second-token".into()]);
        assert_eq!(tokens.check(&with_auth("Bearer second-token")), Ok(()));
        assert_eq!(tokens.check(&with_auth("bearer first-token")), Ok(()));
    }

    #[test]
    fn a_missing_malformed_or_wrong_token_is_refused() {
        let tokens = ApiTokens::new(&["first-token".into()]);
        assert_eq!(tokens.check(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(tokens.check(&with_auth("Basic Zmlyc3QtdG9rZW4=")), Err(AuthError::Missing));
        assert_eq!(tokens.check(&with_auth("Bearer first-toke")), Err(AuthError::Unknown));
        assert_eq!(tokens.check(&with_auth("Bearer first-token-and-more")), Err(AuthError::Unknown));
    }

    #[test]
    fn without_configured_tokens_every_change_is_refused() {
        let tokens = ApiTokens::new(&[]);
        assert_eq!(tokens.check(&with_auth("Bearer anything")), Err(AuthError::NoTokensConfigured));
        assert_eq!(tokens.check(&HeaderMap::new()), Err(AuthError::NoTokensConfigured));
    }
}
