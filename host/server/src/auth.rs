//! API tokens: `Authorization: Bearer <token>`. Tokens are kept as SHA-256 hashes and each
//! reaches only its apps; a run of another app answers 404, as if it did not exist.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::Shared;
use super::api::ApiError;
use super::config::AppScope;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The apps it reaches.
    pub scope: AppScope,
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized(
                "this route needs an API token: send `Authorization: Bearer <token>` (the CLI reads --token or SKIFF_TOKEN)"
                    .into(),
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the `Authorization` header must be `Bearer <token>`".into()))?;
        let t = state.config.token(token).ok_or_else(|| {
            ApiError::Unauthorized("this token is not known to this host; check `tokens` in its config".into())
        })?;
        Ok(Caller { name: t.name.clone(), scope: t.scope.clone() })
    }
}
