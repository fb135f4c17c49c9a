//! Outbound HTTP through `wasi:http`, blocking and simple.
//!
//! Only hosts the pipeline allowlisted are reachable; anything else fails
//! with [`HttpError::Denied`] before a connection is made.
//!
//! ```no_run
//! use skiff_step_sdk::http::Request;
//! let resp = Request::post("https://hooks.example.com/notify")
//!     .header("content-type", "application/json")
//!     .body(br#"{"text":"done"}"#.to_vec())
//!     .send()?;
//! assert!(resp.status < 400);
//! # Ok::<(), skiff_step_sdk::http::HttpError>(())
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be parsed.
    InvalidUrl(String),
    /// The host is not on the step's allowlist.
    Denied(String),
    /// The request failed on the way (DNS, connect, TLS, protocol).
    Transport(String),
    /// The response was larger than the limit given to [`Request::max_response_bytes`].
    TooLarge(u64),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            Self::Denied(m) => f.write_str(m),
            Self::Transport(m) => write!(f, "HTTP request failed: {m}"),
            Self::TooLarge(n) => write!(f, "HTTP response is larger than the {n}-byte limit"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A received response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    max_response_bytes: u64,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            max_response_bytes: 64 << 20,
        }
    }
    /// A GET request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }
    /// A POST request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }
    /// A PUT request.
    pub fn put(url: &str) -> Self {
        Self::new("PUT", url)
    }
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
    /// Caps the response body (64 MiB by default).
    pub fn max_response_bytes(mut self, n: u64) -> Self {
        self.max_response_bytes = n;
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = ParsedUrl::parse(&self.url)?;
        let headers = Fields::new();
        for (k, v) in &self.headers {
            headers
                .append(k, v.as_bytes())
                .map_err(|e| HttpError::InvalidUrl(format!("header `{k}` is not allowed: {e:?}")))?;
        }
        if let Some(body) = &self.body
            && !self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            let _ = headers.append("content-length", body.len().to_string().as_bytes());
        }
        let req = OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.into()),
        };
        let bad = |what: &str| HttpError::InvalidUrl(format!("{what} of `{}` is not valid", url.original));
        req.set_method(&method).map_err(|()| bad("method"))?;
        req.set_scheme(Some(&if url.https { Scheme::Https } else { Scheme::Http })).map_err(|()| bad("scheme"))?;
        req.set_authority(Some(&url.authority)).map_err(|()| bad("host"))?;
        req.set_path_with_query(Some(&url.path)).map_err(|()| bad("path"))?;

        let outgoing = match &self.body {
            Some(_) => Some(req.body().map_err(|()| HttpError::Transport("request body was taken twice".into()))?),
            None => None,
        };
        let future = outgoing_handler::handle(req, None).map_err(|e| map_error(e, &url.authority))?;
        if let (Some(out), Some(body)) = (outgoing, &self.body) {
            {
                let stream =
                    out.write().map_err(|()| HttpError::Transport("request body stream unavailable".into()))?;
                for chunk in body.chunks(4096) {
                    stream
                        .blocking_write_and_flush(chunk)
                        .map_err(|e| HttpError::Transport(format!("writing the request body: {e:?}")))?;
                }
            }
            OutgoingBody::finish(out, None).map_err(|e| map_error(e, &url.authority))?;
        }
        let incoming = loop {
            match future.get() {
                Some(Ok(Ok(resp))) => break resp,
                Some(Ok(Err(e))) => return Err(map_error(e, &url.authority)),
                Some(Err(())) => return Err(HttpError::Transport("response was taken twice".into())),
                None => future.subscribe().block(),
            }
        };
        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let body_res = incoming.consume().map_err(|()| HttpError::Transport("response body unavailable".into()))?;
        let mut body = Vec::new();
        {
            let stream = body_res.stream().map_err(|()| HttpError::Transport("response body unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        body.extend_from_slice(&chunk);
                        if body.len() as u64 > self.max_response_bytes {
                            return Err(HttpError::TooLarge(self.max_response_bytes));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Transport(format!("reading the response: {}", e.to_debug_string())));
                    }
                }
            }
        }
        Ok(Response { status, headers, body })
    }
}

fn map_error(e: ErrorCode, authority: &str) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!(
            "outbound HTTP to `{authority}` is not allowed: add it to the step's `permissions.hosts` in the pipeline"
        )),
        other => HttpError::Transport(format!("{other:?}")),
    }
}

struct ParsedUrl {
    original: String,
    https: bool,
    authority: String,
    path: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(HttpError::InvalidUrl(format!("`{url}` must start with http:// or https://")));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::InvalidUrl(format!("`{url}` has no host, or has credentials in it")));
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Self { original: url.into(), https, authority: authority.into(), path })
    }
}
