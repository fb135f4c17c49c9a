//! The error every route answers with: a status and a sentence saying what to do, in JSON.

use super::*;

/// An error answered to the caller: a status and a sentence saying what to do. Internal
/// details go to the host's log, not to the caller.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized(String),
    /// 403: the token is known, but may not do this.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413.
    TooLarge(String),
    /// 422.
    Unprocessable(String),
    /// Any status, from the edge core.
    Status(u16, String),
    /// 500; the error is logged.
    Internal(anyhow::Error),
}

/// The JSON body of an error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub error: String,
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        ApiError::Status(e.status(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Status(s, m) => (StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST), m),
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "the host failed to handle the request; its log says why".into())
            }
        };
        let mut resp = Json(ErrorBody { status: code.as_u16(), error: msg }).into_response();
        *resp.status_mut() = code;
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
