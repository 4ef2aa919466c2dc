//! A mock Kubernetes API server for reconciler tests (kube's tower-test
//! pattern): each scenario names the exact requests expected, in order,
//! answers them, and checks what was sent.
#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use std::time::Duration;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct ApiServer(pub Handle);

impl ApiServer {
    /// A client wired to a new mock server.
    pub fn pair(default_ns: &str) -> (kube::Client, ApiServer) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(svc, default_ns), ApiServer(handle))
    }

    /// Takes the next request, checks method and path, answers with
    /// `respond(body)`, and returns the request's query and body.
    pub async fn expect(
        &mut self,
        method: &str,
        path: &str,
        respond: impl FnOnce(&Value) -> (u16, Value),
    ) -> (String, Value) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {path}, got no request"))
            .expect("service dropped");
        let got = format!("{} {}", req.method(), req.uri().path());
        assert_eq!(got, format!("{method} {path}"), "unexpected request order");
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (code, answer) = respond(&body);
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        (query, body)
    }

    /// Fails if the reconciler sends anything more.
    pub async fn nothing_more(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// Answers a write with what was sent, as the API server would.
pub fn echo(body: &Value) -> (u16, Value) {
    (200, body.clone())
}

/// Answers a status patch with the whole object carrying the new status.
pub fn with_status<T: serde::Serialize>(obj: &T) -> impl FnOnce(&Value) -> (u16, Value) + use<T> {
    let full = serde_json::to_value(obj).unwrap();
    move |body: &Value| {
        let mut f = full;
        f["status"] = body["status"].clone();
        (200, f)
    }
}
