//! The hyper service: body limits, authentication, fault injection, routing, and GDN error
//! answers. Nothing here panics on input; every failure becomes a GDN error body.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::auth::AuthCheck;
use super::error::{self, ApiError};
use super::faults::RequestFault;
use super::params::{percent_decode, Query};
use super::State;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// An error that makes hyper drop the connection (used to inject connection resets).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by gdnlite fault injection")]
pub struct InjectedReset;

/// A JSON answer from a value.
pub fn json_response(status: StatusCode, body: &Value) -> Resp {
    json_bytes_response(status, body.to_string().into_bytes())
}

/// A JSON answer from already-encoded bytes.
pub fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// An answer without a body.
pub fn empty_response(status: StatusCode) -> Resp {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The GDN error body for `error`.
pub fn error_response(error: &ApiError) -> Resp {
    json_response(error.status, &error.body())
}

/// Entry point of the service for one request.
pub async fn serve(state: Arc<State>, request: Request<Incoming>) -> Result<Resp, InjectedReset> {
    let path = request.uri().path().to_string();
    let fabric_call = path.starts_with("/_fabric/");
    if fabric_call {
        let latency = state.faults.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match state.faults.request_fault() {
            RequestFault::None => {}
            RequestFault::Reset => return Err(InjectedReset),
            RequestFault::Unavailable => {
                return Ok(error_response(&ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error::SERVICE_UNAVAILABLE,
                    "service unavailable (gdnlite fault injection); retry",
                )))
            }
            RequestFault::RateLimited => {
                let mut r = error_response(&ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    error::TOO_MANY_REQUESTS,
                    "too many requests (gdnlite fault injection); retry later",
                ));
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return Ok(r);
            }
        }
    }
    Ok(match route(&state, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    })
}

async fn read_body(
    state: &State,
    body: Incoming,
    declared: Option<u64>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            error::REQUEST_TOO_LARGE,
            format!(
                "request body too large: the limit is {} bytes; send smaller batches",
                state.max_body
            ),
        )
    };
    if declared.is_some_and(|n| n > state.max_body as u64) {
        return Err(too_large());
    }
    match Limited::new(body, state.max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_parameter(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// The percent-decoded, non-empty segments of a request path.
pub(crate) fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s, false).ok_or_else(|| {
                ApiError::bad_parameter("the path is not valid percent-encoded UTF-8")
            })
        })
        .collect()
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        error::NOT_FOUND,
        format!("unknown path '{path}'"),
    )
}

async fn route(state: &Arc<State>, request: Request<Incoming>) -> Result<Resp, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let segments = path_segments(&path)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = Query::parse(parts.uri.query())?;
    let method = parts.method.clone();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    if segs == ["_open", "auth"] {
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                error::METHOD_NOT_ALLOWED,
                "use POST",
            ));
        }
        let body = read_body(state, body, declared).await?;
        return login(state, &body);
    }
    let now = super::now_secs();
    if state.credentials.check(
        parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        now,
    ) == AuthCheck::Denied
    {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, error::UNAUTHORIZED, "not authorized to execute this request: send 'Authorization: apikey <key>' or 'bearer <jwt>'"));
    }
    match segs.as_slice() {
        ["_api", "user"] if method == Method::GET => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "error": false, "code": 200,
                    "result": [{"tenant": state.tenant, "user": "root", "active": true, "extra": {}}],
                }),
            ));
        }
        ["datacenter", "local"] if method == Method::GET => {
            let host = parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "name": "gdnlite", "local": true, "status": 1,
                    "tags": {"url": host, "api": host, "role": "gdnlite"},
                }),
            ));
        }
        ["_ws", "ws", "v2", "consumer", "persistent", tenant, namespace, stream, subscription] => {
            return super::streams::consumer(
                state,
                parts,
                (*tenant).to_string(),
                (*namespace).to_string(),
                (*stream).to_string(),
                (*subscription).to_string(),
                &query,
            );
        }
        _ => {}
    }
    let ["_fabric", fabric, "_api", rest @ ..] = segs.as_slice() else {
        return Err(not_found(&path));
    };
    if *fabric != state.fabric {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            error::DATABASE_NOT_FOUND,
            format!(
                "database not found: fabric '{fabric}' (gdnlite serves '{}')",
                state.fabric
            ),
        ));
    }
    let body = read_body(state, body, declared).await?;
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string())
    };
    let preconditions = || super::documents::Preconditions {
        if_match: header(hyper::header::IF_MATCH),
        if_none_match: header(hyper::header::IF_NONE_MATCH),
    };
    match rest {
        ["collection"] => {
            super::collections::handle(state, &method, None, None, &query, &body).await
        }
        ["collection", name] => {
            super::collections::handle(state, &method, Some(name), None, &query, &body).await
        }
        ["collection", name, action] => {
            super::collections::handle(state, &method, Some(name), Some(action), &query, &body)
                .await
        }
        ["document", collection] => {
            super::documents::handle(
                state,
                &method,
                collection,
                None,
                &query,
                preconditions(),
                &body,
            )
            .await
        }
        ["document", collection, key] => {
            super::documents::handle(
                state,
                &method,
                collection,
                Some(key),
                &query,
                preconditions(),
                &body,
            )
            .await
        }
        ["cursor"] if method == Method::POST => super::cursor::create(state, &body),
        ["cursor", id] if method == Method::PUT || method == Method::POST => {
            super::cursor::next(state, id)
        }
        ["cursor", id] if method == Method::DELETE => super::cursor::delete(state, id),
        ["streams"] if method == Method::GET => super::streams::list(state, &query),
        ["streams", stream, "stats"] if method == Method::GET => {
            super::streams::stats(state, stream)
        }
        _ => Err(not_found(&path)),
    }
}

fn login(state: &State, body: &Bytes) -> Result<Resp, ApiError> {
    let body = super::json::parse_body(body)?;
    let user = body
        .get("email")
        .or_else(|| body.get("username"))
        .and_then(Value::as_str);
    let password = body.get("password").and_then(Value::as_str);
    match (user, password) {
        (Some(user), Some(password)) if state.credentials.login_matches(user, password) => {
            let jwt = state
                .credentials
                .issue_token(&state.tenant, "root", super::now_secs());
            Ok(json_response(
                StatusCode::OK,
                &json!({"jwt": jwt, "tenant": state.tenant, "username": "root"}),
            ))
        }
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            error::UNAUTHORIZED,
            "wrong credentials",
        )),
        _ => Err(ApiError::bad_parameter(
            "the body must have 'email' (or 'username') and 'password' strings",
        )),
    }
}
