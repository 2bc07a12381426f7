//! A Kubernetes API server stand-in on 127.0.0.1 (plain HTTP) that speaks the real list/watch/
//! patch protocol closely enough for kube-rs: paged lists (`limit`/`continue`, at most
//! [`PAGE`] items a page whatever the client asks), watch streams of newline-delimited WatchEvents
//! (ADDED/MODIFIED/DELETED, BOOKMARK when asked), 410 Gone for a resourceVersion older than the
//! last compaction, dropped watch connections on demand, 404 for resources marked "not
//! installed", 403 for resources marked forbidden, `type=X` field selectors and `k=v[,k=v]`
//! label selectors on lists and watches, server-side-apply PATCH on `/status` (recorded),
//! POST/PUT/GET for Leases and Events. The test mutates the objects with [`ApiServer::apply`] /
//! [`ApiServer::delete`].

#![allow(dead_code, reason = "each test uses a different part")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Largest page a list returns.
pub const PAGE: usize = 2;

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET, PATCH, ...
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The bearer token, if any (tells agents apart).
    pub token: Option<String>,
    /// Content-Type.
    pub content_type: Option<String>,
    /// The body, parsed as JSON when it is.
    pub body: Value,
}

#[derive(Default)]
struct Collection {
    api_version: String,
    kind: String,
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object) of every change, for watches.
    log: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    collections: BTreeMap<String, Collection>,
    missing: BTreeSet<String>,
    forbidden: BTreeSet<String>,
    compacted: u64,
    epoch: u64,
    requests: Vec<Request>,
    gone_sent: usize,
}

/// The stand-in, serving until dropped.
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _rt: tokio::runtime::Runtime,
}

/// (collection key, kind, apiVersion) of every resource served.
const RESOURCES: &[(&str, &str, &str)] = &[
    (
        "gateway.networking.k8s.io/v1/gatewayclasses",
        "GatewayClass",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1/gateways",
        "Gateway",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1/httproutes",
        "HTTPRoute",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1/grpcroutes",
        "GRPCRoute",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1/tlsroutes",
        "TLSRoute",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1/referencegrants",
        "ReferenceGrant",
        "gateway.networking.k8s.io/v1",
    ),
    (
        "gateway.networking.k8s.io/v1alpha2/tcproutes",
        "TCPRoute",
        "gateway.networking.k8s.io/v1alpha2",
    ),
    (
        "gateway.networking.k8s.io/v1alpha2/udproutes",
        "UDPRoute",
        "gateway.networking.k8s.io/v1alpha2",
    ),
    ("/v1/services", "Service", "v1"),
    ("/v1/namespaces", "Namespace", "v1"),
    ("/v1/nodes", "Node", "v1"),
    ("/v1/pods", "Pod", "v1"),
    ("/v1/secrets", "Secret", "v1"),
    ("/v1/events", "Event", "v1"),
    (
        "discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    (
        "coordination.k8s.io/v1/leases",
        "Lease",
        "coordination.k8s.io/v1",
    ),
];

fn collection_key(api_version: &str, kind: &str) -> String {
    RESOURCES
        .iter()
        .find(|(_, k, v)| *k == kind && *v == api_version)
        .map(|(key, _, _)| key.to_string())
        .unwrap_or_else(|| panic!("the stand-in does not serve {api_version} {kind}"))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl ApiServer {
    /// Starts serving on a free loopback port.
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut inner = Inner::default();
        for (key, kind, api_version) in RESOURCES {
            inner.collections.insert(
                key.to_string(),
                Collection {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                    ..Default::default()
                },
            );
        }
        let inner = Arc::new(Mutex::new(inner));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        ApiServer {
            addr,
            inner,
            _rt: rt,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (token `token`) to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path, token: &str) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster: {{server: \"{}\"}}\nusers:\n- name: agent\n  user: {{token: {token}}}\ncontexts:\n- name: standin\n  context: {{cluster: standin, user: agent, namespace: default}}\ncurrent-context: standin\n",
                self.url()
            ),
        )
        .unwrap();
    }

    /// Creates or updates an object (generation bumps when anything but status changes).
    pub fn apply(&self, object: Value) {
        let mut inner = self.inner.lock().unwrap();
        upsert(&mut inner, object, true);
    }

    /// Deletes an object.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        let c = inner
            .collections
            .get_mut(&collection_key(api_version, kind))
            .unwrap();
        let mut old = c
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
            .expect("deleting an object that does not exist");
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.log.push((rv, "DELETED", old));
    }

    /// Marks a resource as not installed (404 on every request), e.g. `.../v1alpha2/tcproutes`.
    pub fn set_missing(&self, key: &str) {
        self.inner.lock().unwrap().missing.insert(key.to_string());
    }

    /// Marks a resource as forbidden to every client (403 on every request), e.g. `/v1/pods`.
    pub fn set_forbidden(&self, key: &str) {
        self.inner.lock().unwrap().forbidden.insert(key.to_string());
    }

    /// Ends every open watch (the clients reconnect from the last resourceVersion they saw).
    pub fn drop_watches(&self) {
        self.inner.lock().unwrap().epoch += 1;
    }

    /// Ends every open watch, applies `objects` without any watch event, and compacts: a watch
    /// from any earlier resourceVersion gets 410 Gone, so only a relist shows the change.
    pub fn compact_with(&self, objects: Vec<Value>) {
        let mut inner = self.inner.lock().unwrap();
        inner.epoch += 1;
        for o in objects {
            upsert(&mut inner, o, false);
        }
        inner.compacted = inner.rv;
    }

    /// How many 410 Gone errors were sent.
    pub fn gone_sent(&self) -> usize {
        self.inner.lock().unwrap().gone_sent
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// PATCH requests on `/status` so far.
    pub fn status_patches(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == "PATCH" && r.uri.split('?').next().unwrap().ends_with("/status")
            })
            .collect()
    }

    /// An object as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap();
        inner.collections[&collection_key(api_version, kind)]
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        inner.collections[&collection_key(api_version, kind)]
            .objects
            .values()
            .cloned()
            .collect()
    }
}

/// Stores `object`; `log` false leaves no watch event (for [`ApiServer::compact_with`]).
fn upsert(inner: &mut Inner, mut object: Value, log: bool) -> Value {
    inner.rv += 1;
    inner.uid += 1;
    let (rv, uid) = (inner.rv, inner.uid);
    let key = collection_key(
        object["apiVersion"].as_str().unwrap(),
        object["kind"].as_str().unwrap(),
    );
    let c = inner.collections.get_mut(&key).unwrap();
    let id = (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        object["metadata"]["name"].as_str().unwrap().to_string(),
    );
    let old = c.objects.get(&id).cloned();
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    match &old {
        Some(old) => {
            meta["uid"] = old["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            let mut a = object.clone();
            let mut b = old.clone();
            for v in [&mut a, &mut b] {
                v.as_object_mut().unwrap().remove("status");
                v["metadata"] = json!({});
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] =
                json!(if a == b { generation } else { generation + 1 });
            if object.get("status").is_none()
                && let Some(s) = old.get("status")
            {
                object["status"] = s.clone();
            }
        }
        None => {
            meta["uid"] = json!(format!("uid-{uid}"));
            meta["generation"] = json!(1);
            meta["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
    }
    c.objects.insert(id, object.clone());
    if log {
        let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
        c.log.push((rv, type_, object.clone()));
    }
    object
}

/// (collection key, namespace from the path, name, subresource).
type Parsed = (String, Option<String>, Option<String>, Option<String>);

/// Splits an API path into its parts.
fn parse_path(path: &str) -> Option<Parsed> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *segs.first()? {
        "api" => (format!("/{}", segs.get(1)?), &segs[2..]),
        "apis" => (format!("{}/{}", segs.get(1)?, segs.get(2)?), &segs[3..]),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some((
        format!("{prefix}/{}", rest.first()?),
        ns,
        rest.get(1).map(|s| s.to_string()),
        rest.get(2).map(|s| s.to_string()),
    ))
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect()
}

/// `type=X` field selectors (what the agent uses for Secrets) and `k=v[,k=v]` label selectors
/// (its agent Pods).
fn selected(object: &Value, fields: Option<&String>, labels: Option<&String>) -> bool {
    let fields_match = match fields.and_then(|s| s.split_once('=')) {
        Some(("type", want)) => object["type"] == want,
        _ => true,
    };
    let labels_match = labels.into_iter().flat_map(|l| l.split(',')).all(|term| {
        let (k, v) = term
            .split_once('=')
            .unwrap_or_else(|| panic!("the stand-in only knows k=v label selectors: {term}"));
        object["metadata"]["labels"][k] == v
    });
    fields_match && labels_match
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let q = query(&uri);
    let mut guard = inner.lock().unwrap();
    guard.requests.push(Request {
        method: method.to_string(),
        uri: uri.to_string(),
        token,
        content_type,
        body: parsed_body.clone(),
    });
    let Some((key, ns, name, sub)) = parse_path(uri.path()) else {
        return reply(404, &status(404, "NotFound", "unknown path"));
    };
    if guard.missing.contains(&key) || !guard.collections.contains_key(&key) {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    if guard.forbidden.contains(&key) {
        return reply(
            403,
            &status(403, "Forbidden", "the stand-in forbids this resource"),
        );
    }
    let rv = guard.rv;
    match (method.as_str(), name, sub.as_deref()) {
        ("GET", None, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(rv);
            let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
            if from < guard.compacted {
                guard.gone_sent += 1;
                let e = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                return (StatusCode::OK, format!("{e}\n")).into_response();
            }
            let epoch = guard.epoch;
            drop(guard);
            let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            tokio::spawn(watch(
                inner.clone(),
                key,
                ns,
                q.get("fieldSelector").cloned(),
                q.get("labelSelector").cloned(),
                from,
                epoch,
                bookmarks,
                tx,
            ));
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(rx))
                .unwrap()
        }
        ("GET", None, _) => {
            let c = &guard.collections[&key];
            let items: Vec<Value> = c
                .objects
                .iter()
                .filter(|((o_ns, _), _)| ns.as_ref().is_none_or(|n| n == o_ns))
                .filter(|(_, o)| selected(o, q.get("fieldSelector"), q.get("labelSelector")))
                .map(|(_, o)| o.clone())
                .collect();
            let start: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
            let limit = q
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX)
                .min(PAGE);
            let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if start + page.len() < items.len() {
                meta["continue"] = json!((start + page.len()).to_string());
            }
            reply(
                200,
                &json!({"apiVersion": c.api_version, "kind": format!("{}List", c.kind), "metadata": meta, "items": page}),
            )
        }
        ("GET", Some(name), None) => {
            match guard.collections[&key]
                .objects
                .get(&(ns.unwrap_or_default(), name.clone()))
            {
                Some(o) => reply(200, o),
                None => reply(404, &status(404, "NotFound", &format!("{name} not found"))),
            }
        }
        ("POST", None, _) => {
            let mut o = parsed_body;
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            let ns = ns.unwrap_or_default();
            if guard.collections[&key]
                .objects
                .contains_key(&(ns.clone(), name.clone()))
            {
                return reply(
                    409,
                    &status(409, "AlreadyExists", &format!("{name} already exists")),
                );
            }
            if !ns.is_empty() {
                o["metadata"]["namespace"] = json!(ns);
            }
            let stored = upsert(&mut guard, o, true);
            reply(201, &stored)
        }
        ("PUT", Some(name), None) => {
            let ns = ns.unwrap_or_default();
            let Some(current) = guard.collections[&key]
                .objects
                .get(&(ns.clone(), name.clone()))
            else {
                return reply(404, &status(404, "NotFound", &format!("{name} not found")));
            };
            if current["metadata"]["resourceVersion"] != parsed_body["metadata"]["resourceVersion"]
            {
                return reply(
                    409,
                    &status(409, "Conflict", "the object has been modified"),
                );
            }
            let mut o = parsed_body;
            o["metadata"]["namespace"] = json!(ns);
            let stored = upsert(&mut guard, o, true);
            reply(200, &stored)
        }
        ("PATCH", Some(name), Some("status")) => {
            let ns = ns.unwrap_or_default();
            let Some(current) = guard.collections[&key]
                .objects
                .get(&(ns.clone(), name.clone()))
                .cloned()
            else {
                return reply(404, &status(404, "NotFound", &format!("{name} not found")));
            };
            let mut o = current;
            o["status"] = parsed_body["status"].clone();
            let stored = upsert(&mut guard, o, true);
            reply(200, &stored)
        }
        _ => reply(
            405,
            &status(405, "MethodNotAllowed", "not supported by the stand-in"),
        ),
    }
}

/// Streams the changes of `key` after `from` until the epoch changes or the client goes away.
#[allow(clippy::too_many_arguments, reason = "one call site")]
async fn watch(
    inner: Arc<Mutex<Inner>>,
    key: String,
    ns: Option<String>,
    fields: Option<String>,
    labels: Option<String>,
    mut from: u64,
    epoch: u64,
    bookmarks: bool,
    mut tx: futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    use futures::SinkExt as _;
    let mut idle = Duration::ZERO;
    loop {
        let lines: Vec<String> = {
            let guard = inner.lock().unwrap();
            if guard.epoch != epoch {
                return;
            }
            let c = &guard.collections[&key];
            let mut lines: Vec<String> = c
                .log
                .iter()
                .filter(|(rv, _, o)| {
                    *rv > from
                        && ns
                            .as_ref()
                            .is_none_or(|n| o["metadata"]["namespace"] == n.as_str())
                        && selected(o, fields.as_ref(), labels.as_ref())
                })
                .map(|(_, t, o)| json!({"type": t, "object": o}).to_string())
                .collect();
            if bookmarks && idle >= Duration::from_secs(1) {
                idle = Duration::ZERO;
                lines.push(
                    json!({"type": "BOOKMARK", "object": {"apiVersion": c.api_version, "kind": c.kind,
                        "metadata": {"resourceVersion": guard.rv.to_string()}}})
                    .to_string(),
                );
            }
            from = guard.rv;
            lines
        };
        for line in lines {
            if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle += Duration::from_millis(50);
    }
}
