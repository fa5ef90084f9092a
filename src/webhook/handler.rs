//! One webhook request: method, authentication, body, payload, matching, wakes.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::auth::Secrets;
use super::matching::concerned;
use super::payload::{self, Shape};
use super::wake::{RequestCheck, Wake};
use super::{BODY_TIMEOUT, MAX_BODY, Receiver};

/// How a request ended: the answer, and the metric's labels.
struct Answer {
    status: StatusCode,
    shape: Shape,
    /// The `result` label.
    result: &'static str,
    body: String,
}

impl Answer {
    fn new(status: StatusCode, shape: Shape, result: &'static str, body: String) -> Answer {
        Answer {
            status,
            shape,
            result,
            body,
        }
    }
}

/// Answers one request and counts it.
pub(super) async fn handle<P: RequestCheck>(
    receiver: &Receiver<P>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let answer = answer(receiver, peer, request).await;
    receiver
        .metrics
        .webhook_request(answer.shape.label(), answer.result);
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    let content_type = if answer.status == StatusCode::ACCEPTED {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if answer.status != StatusCode::ACCEPTED {
        // a refused request's body may be unread: do not keep the connection for another
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    match answer.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

async fn answer<P: RequestCheck>(
    receiver: &Receiver<P>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Answer {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let hint = Shape::hint(content_type.as_deref());
    if request.method() != Method::POST {
        let status = StatusCode::METHOD_NOT_ALLOWED;
        return Answer::new(status, hint, "method_not_allowed", "POST only\n".into());
    }
    let options = &receiver.options;
    let secrets = match Secrets::load(
        options.token_file.as_deref(),
        options.hmac_key_file.as_deref(),
    )
    .await
    {
        Ok(secrets) => secrets,
        Err(e) => {
            tracing::error!(error = %e, "webhook: a secret file cannot be used; refusing every request");
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            return Answer::new(status, hint, "error", "receiver misconfigured\n".into());
        }
    };
    let (parts, body) = request.into_parts();
    let bearer = secrets.bearer_ok(&parts.headers);
    if !bearer && !secrets.may_sign(&parts.headers) {
        return unauthorized(peer, hint);
    }
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer(hint),
    };
    if !bearer && !secrets.signature_ok(&parts.headers, &body) {
        return unauthorized(peer, hint);
    }
    let parsed = match payload::parse(content_type.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => {
            tracing::info!(remote = %peer, shape = bad.shape.label(), why = %bad.why, "webhook: payload refused");
            let status = StatusCode::BAD_REQUEST;
            return Answer::new(status, bad.shape, "bad_request", format!("{}\n", bad.why));
        }
    };
    wake(receiver, peer, parsed).await
}

/// Matches the pushes to sources and wakes them (the patches run afterwards).
async fn wake<P: RequestCheck>(
    receiver: &Receiver<P>,
    peer: SocketAddr,
    parsed: payload::Parsed,
) -> Answer {
    let shape = parsed.shape;
    if parsed.pushes.is_empty() {
        let body = r#"{"pushes":0,"sources":0}"#.to_string();
        return Answer::new(StatusCode::ACCEPTED, shape, "ignored", body);
    }
    if !receiver.sources.is_ready().await {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let body = "sources not listed yet; retry\n".to_string();
        return Answer::new(status, shape, "unavailable", body);
    }
    // matching parses every source's spec: off the async runtime
    let sources = receiver.sources.snapshot();
    let pushes = parsed.pushes.clone();
    let Ok(keys) = tokio::task::spawn_blocking(move || concerned(&sources, &pushes)).await else {
        let body = "matching failed\n".to_string();
        return Answer::new(StatusCode::INTERNAL_SERVER_ERROR, shape, "error", body);
    };
    let mut coalesced = 0;
    for wakeup in &keys {
        match receiver
            .waker
            .wake(wakeup.key.clone(), wakeup.expect.clone())
        {
            Wake::Scheduled => {}
            Wake::Coalesced | Wake::Dropped => coalesced += 1,
        }
    }
    let pushes: Vec<String> = parsed.pushes.iter().map(ToString::to_string).collect();
    tracing::info!(
        remote = %peer,
        shape = shape.label(),
        pushes = ?pushes,
        sources = keys.len(),
        coalesced,
        "webhook: push received"
    );
    let body = serde_json::json!({"pushes": parsed.pushes.len(), "sources": keys.len()});
    Answer::new(StatusCode::ACCEPTED, shape, "accepted", body.to_string())
}

fn unauthorized(peer: SocketAddr, shape: Shape) -> Answer {
    // never the header values: only where it came from and what it looked like
    tracing::warn!(remote = %peer, shape = shape.label(), "webhook: unauthorized request refused");
    let status = StatusCode::UNAUTHORIZED;
    Answer::new(status, shape, "unauthorized", "unauthorized\n".into())
}

/// The body, read through the size bound within [`BODY_TIMEOUT`]; else the answer to give
/// (for the shape the headers announced).
async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
) -> Result<Bytes, fn(Shape) -> Answer> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large);
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    match collected.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Ok(Err(_)) => Err(broken),
        Err(_) => Err(slow),
    }
}

fn too_large(shape: Shape) -> Answer {
    let body = format!("body over {MAX_BODY} bytes\n");
    Answer::new(StatusCode::PAYLOAD_TOO_LARGE, shape, "too_large", body)
}

fn broken(shape: Shape) -> Answer {
    let body = "body not read\n".to_string();
    Answer::new(StatusCode::BAD_REQUEST, shape, "bad_request", body)
}

fn slow(shape: Shape) -> Answer {
    let body = "body not sent in time\n".to_string();
    Answer::new(StatusCode::REQUEST_TIMEOUT, shape, "bad_request", body)
}
