//! A TEST DOUBLE of the Kubernetes API server, in memory, for end-to-end
//! reconciler tests: objects kept as JSON; GET, LIST with label selectors,
//! POST, PATCH (server-side apply, merge patch, JSON patch with its `test`
//! operations), DELETE honouring finalizers, and status subresources.
//! There are no watches: tests call the reconcilers themselves, as the
//! controller runtime would on each change.
#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// (collection path, name) -> object.
    objects: BTreeMap<(String, String), Value>,
    version: u64,
}

#[derive(Clone, Default)]
pub struct KubeDouble {
    state: Arc<Mutex<State>>,
}

/// Splits `/api/v1/namespaces/ns/pods/name/status` into the collection
/// (`/api/v1/namespaces/ns/pods`), the name and whether it is `status`.
fn split(path: &str) -> (String, Option<String>, bool) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns_at = parts.iter().position(|p| *p == "namespaces");
    let base = match ns_at {
        Some(i) => i + 3,
        None => parts.len().min(if parts[0] == "api" { 3 } else { 4 }),
    };
    let collection = format!("/{}", parts[..base.min(parts.len())].join("/"));
    let name = parts.get(base).map(|s| s.to_string());
    let status = parts.get(base + 1) == Some(&"status");
    (collection, name, status)
}

fn status_error(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// RFC 7386 merge.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v.trim_start_matches('='))
    })
}

impl KubeDouble {
    pub fn client(&self, default_ns: &str) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, default_ns)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `obj` as if created through the API (uid, version, time set).
    pub fn create<T: serde::Serialize>(&self, collection: &str, obj: &T) -> Value {
        let body = serde_json::to_value(obj).unwrap();
        let (code, v) = self.create_value(collection, body);
        assert_eq!(code, 201, "create {collection}: {v}");
        v
    }

    fn create_value(&self, collection: &str, mut body: Value) -> (u16, Value) {
        let mut s = self.lock();
        s.version += 1;
        let n = s.version;
        let name = match body.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) => n.to_string(),
            None => {
                let prefix = body
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("obj-");
                format!("{prefix}{n:05}")
            }
        };
        let key = (collection.to_string(), name.clone());
        if s.objects.contains_key(&key) {
            return status_error(409, "AlreadyExists", format!("{name} already exists"));
        }
        let meta = &mut body["metadata"];
        meta["name"] = json!(name);
        meta["uid"] = json!(format!("uid-{n:05}"));
        meta["resourceVersion"] = json!(n.to_string());
        meta["generation"] = json!(1);
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!(
                jiff::Timestamp::now()
                    .round(jiff::Unit::Second)
                    .unwrap()
                    .to_string()
            );
        }
        s.objects.insert(key, body.clone());
        (201, body)
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(collection.to_string(), name.to_string()))
            .cloned()
    }

    /// Replaces an object's status (as another controller would).
    pub fn set_status(&self, collection: &str, name: &str, status: Value) {
        let mut s = self.lock();
        let o = s
            .objects
            .get_mut(&(collection.to_string(), name.to_string()))
            .expect("object");
        o["status"] = status;
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every stored object outside `collection`, as JSON text.
    pub fn dump_except(&self, collection: &str) -> String {
        self.lock()
            .objects
            .iter()
            .filter(|((c, _), _)| c != collection)
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every Event recorded in `ns`, as `(reason, note)`.
    pub fn events(&self, ns: &str) -> Vec<(String, String)> {
        self.list(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (collection, name, status) = split(&path);
        let (code, v) = match (method.as_str(), name) {
            ("GET", None) => {
                let selector: String = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "labelSelector")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let items: Vec<Value> = self
                    .list(&collection)
                    .into_iter()
                    .filter(|o| matches_selector(o, &selector))
                    .collect();
                let version = self.lock().version.to_string();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List",
                           "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            ("GET", Some(n)) => match self.get(&collection, &n) {
                Some(o) => (200, o),
                None => status_error(404, "NotFound", format!("{n} not found")),
            },
            ("POST", None) => self.create_value(&collection, body),
            ("PATCH", Some(n)) => self.patch(&collection, &n, status, &content_type, &body),
            ("DELETE", Some(n)) => self.delete(&collection, &n),
            (m, _) => status_error(405, "MethodNotAllowed", format!("{m} {path}")),
        };
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap()
    }

    fn patch(
        &self,
        collection: &str,
        name: &str,
        status: bool,
        content_type: &str,
        body: &Value,
    ) -> (u16, Value) {
        let mut s = self.lock();
        let key = (collection.to_string(), name.to_string());
        let Some(current) = s.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{name} not found"));
        };
        let mut next = current.clone();
        if content_type.starts_with("application/json-patch") {
            // As the API server's implementation: testing a missing path
            // for null succeeds.
            let ops: Vec<Value> = body
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"]
                            .as_str()
                            .is_some_and(|p| next.pointer(p).is_none()))
                })
                .cloned()
                .collect();
            let p: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                Ok(p) => p,
                Err(e) => return status_error(400, "BadRequest", e.to_string()),
            };
            if let Err(e) = json_patch::patch(&mut next, &p) {
                return status_error(422, "Invalid", e.to_string());
            }
        } else if status {
            // A status patch changes the status only.
            next["status"] = body.get("status").cloned().unwrap_or(Value::Null);
        } else {
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("status");
            }
            merge(&mut next, &b);
        }
        s.version += 1;
        next["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let deleting = next.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = next
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if deleting && no_finalizers {
            s.objects.remove(&key);
        } else {
            s.objects.insert(key, next.clone());
        }
        (200, next)
    }

    fn delete(&self, collection: &str, name: &str) -> (u16, Value) {
        let mut s = self.lock();
        let key = (collection.to_string(), name.to_string());
        let Some(mut obj) = s.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{name} not found"));
        };
        let has_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(
                    jiff::Timestamp::now()
                        .round(jiff::Unit::Second)
                        .unwrap()
                        .to_string()
                );
                s.objects.insert(key, obj.clone());
            }
        } else {
            s.objects.remove(&key);
        }
        (200, obj)
    }
}
