//! Tests only: a Kubernetes client whose API server is the test itself, which checks each
//! request in turn (method, path, body) and answers it, so a test states the exact
//! sequence of requests an effectful step makes. These never replace the end-to-end
//! tests against a real API server; they pin down orders and counts those cannot see.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// The test's side of the mocked API server.
pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

/// A client and the API server it talks to.
pub fn pair() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// One request as the API server saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

impl ApiServer {
    /// Waits for the next request, checks its method and path (without the query), answers
    /// `status` with `answer`, and returns what was asked. Panics when the next request is
    /// another one, or none comes (every client dropped).
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, answer: Value) -> Seen {
        let seen = self.next(status, answer).await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, path),
            "unexpected request, body {}",
            seen.body
        );
        seen
    }

    /// Answers the next request, whatever it is, and returns it.
    pub async fn next(&mut self, status: u16, answer: Value) -> Seen {
        let Some((request, send)) = self.0.next_request().await else {
            panic!("no further request came");
        };
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(answer.to_string().into_bytes()))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        send.send_response(response);
        Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Checks that no request comes after the clients are dropped.
    pub async fn expect_no_more(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// A `Status` answer, as the API server sends with an error code.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    })
}
