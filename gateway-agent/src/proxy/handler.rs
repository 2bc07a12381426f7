//! One request: route it with the model, apply the rule's filters, forward it to a weighted
//! backend, and map failures to the status codes the spec names (404 no route, 500 no usable
//! backend, 503 no ready endpoint, 502 unreachable, 504 timeout) — as grpc-status for gRPC.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use gateway_model::http::{Fallback, Filter, HeaderModifier, HttpRule, PathMatch, RequestView};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;

use super::{Shared, cors, filters, upstream};

/// The response body type of the proxy.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Whether the request is gRPC (errors then travel as grpc-status, not HTTP bodies).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A locally generated error: an HTTP status with a short body, or for gRPC a trailers-only
/// response (HTTP 200 with grpc-status) as the gRPC protocol expects.
fn error(grpc: bool, status: StatusCode, why: &str) -> Response<Body> {
    if grpc {
        // https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
        let code = match status {
            StatusCode::NOT_FOUND => "12", // UNIMPLEMENTED
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => "14", // UNAVAILABLE
            StatusCode::GATEWAY_TIMEOUT => "4", // DEADLINE_EXCEEDED
            _ => "13",                     // INTERNAL
        };
        let mut resp = Response::new(full(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(v) = HeaderValue::try_from(why) {
            h.insert("grpc-message", v);
        }
        return resp;
    }
    let mut resp = Response::new(full(format!("{} {why}\n", status.as_u16())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    listener: SocketAddr,
    peer: SocketAddr,
    https: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let grpc = is_grpc(&req);
    // The rule is borrowed from this snapshot of the model for the whole request: no copy of
    // the rule, and a reload cannot change it under a request in flight.
    let model = shared.model.load_full();
    let Some(l) = model.http.iter().find(|l| l.address == listener) else {
        return Ok(error(grpc, StatusCode::NOT_FOUND, "no listener"));
    };
    // Cheap handles on the request's parts (shared bytes, no copies): the request itself is
    // modified and moved on below.
    let uri = req.uri().clone();
    let host_header = req.headers().get(header::HOST).cloned();
    let method = req.method().clone();
    let host = host_header
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let rule = {
        let headers = req.headers();
        let lookup = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let view = RequestView {
            host,
            method: method.as_str(),
            path,
            query,
            headers: &lookup,
        };
        l.route(&view)
    };
    let Some(rule) = rule else {
        let resp = error(grpc, StatusCode::NOT_FOUND, "no route matches");
        record(
            &shared,
            peer,
            method.as_str(),
            host,
            path,
            "none",
            "none",
            &resp,
            started,
        );
        return Ok(resp);
    };
    let grpc = grpc || rule.grpc;
    let mut picked = "none";
    // hyper moves the request's future whenever it stores it (HTTP/2: into a task of its own),
    // so the large part of it lives on the heap, allocated once: this future stays small.
    let work = || {
        serve_rule(
            &shared,
            peer,
            req,
            rule,
            host,
            &uri,
            grpc,
            https,
            &mut picked,
        )
    };
    let resp = match rule.timeouts.request {
        Some(limit) => match tokio::time::timeout(limit, Box::pin(work())).await {
            Ok(resp) => resp,
            Err(_) => error(grpc, StatusCode::GATEWAY_TIMEOUT, "request timeout"),
        },
        None => Box::pin(work()).await,
    };
    record(
        &shared,
        peer,
        method.as_str(),
        host,
        path,
        &rule.route,
        picked,
        &resp,
        started,
    );
    Ok(resp)
}

/// Metrics and the optional access log line for one request.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one access-log line"
)]
fn record(
    shared: &Shared,
    peer: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    route: &str,
    backend: &str,
    resp: &Response<Body>,
    started: std::time::Instant,
) {
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    shared
        .metrics
        .observe(route, backend, status, elapsed.as_secs_f64());
    if shared.access_log {
        tracing::info!(
            target: "access",
            %peer, method, host, path, status, route, backend,
            micros = elapsed.as_micros() as u64,
        );
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one request, borrowed once"
)]
async fn serve_rule<'r>(
    shared: &Shared,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    rule: &'r HttpRule,
    host: &str,
    uri: &Uri,
    grpc: bool,
    https: bool,
    picked: &mut &'r str,
) -> Response<Body> {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let mut response_mods: Vec<&HeaderModifier> = Vec::new();
    let mut new_path: Option<String> = None;
    let mut new_host: Option<&str> = None;
    let mut mirrors = Vec::new();
    let mut cors = None;
    for f in &rule.filters {
        match f {
            Filter::RequestRedirect {
                scheme,
                hostname,
                port,
                path: pm,
                status,
            } => {
                return redirect(
                    host,
                    path,
                    query,
                    &rule.matcher.path,
                    scheme,
                    hostname,
                    *port,
                    pm,
                    *status,
                    https,
                );
            }
            Filter::RequestHeaderModifier(m) => filters::modify_headers(req.headers_mut(), m),
            Filter::ResponseHeaderModifier(m) => response_mods.push(m),
            Filter::UrlRewrite { hostname, path: pm } => {
                if let Some(h) = hostname {
                    new_host = Some(h);
                }
                if let Some(pm) = pm {
                    new_path = Some(filters::rewrite_path(path, &rule.matcher.path, pm));
                }
            }
            Filter::RequestMirror { backend, percent } => mirrors.push((backend, *percent)),
            Filter::Cors(c) => cors = Some(c),
        }
    }
    let origin = cors.and_then(|_| req.headers().get(header::ORIGIN).cloned());
    let origin = origin.as_ref().and_then(|v| v.to_str().ok());
    if let (Some(c), Some(o)) = (cors, origin)
        && req.method() == http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return cors::preflight(c, o);
    }
    if rule.fallback == Fallback::InternalError {
        return error(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no usable backend");
    }

    // The request's own path and query when no filter rewrote the path (shared bytes, no copy).
    let path_and_query = match new_path {
        None => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(p) => {
            let joined = if query.is_empty() {
                p
            } else {
                format!("{p}?{query}")
            };
            match PathAndQuery::try_from(joined) {
                Ok(pq) => pq,
                Err(_) => return error(grpc, StatusCode::BAD_REQUEST, "invalid rewritten path"),
            }
        }
    };
    // Upgrades (WebSocket and others): keep the Upgrade/Connection pair for the backend and take
    // the client side of the upgrade before the request is forwarded.
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .filter(|v| v.to_str().is_ok() && req.version() == http::Version::HTTP_11)
        .cloned();
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    filters::strip_hop_by_hop(req.headers_mut());
    if let Some(proto) = upgrade {
        req.headers_mut().insert(header::UPGRADE, proto);
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    filters::set_forwarded(req.headers_mut(), peer, host, https);
    if let Some(h) = new_host
        && let Ok(v) = HeaderValue::try_from(h)
    {
        req.headers_mut().insert(header::HOST, v);
    } else if !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::try_from(host)
    {
        // An HTTP/2 client names the host in :authority; an HTTP/1.1 upstream needs it as Host.
        req.headers_mut().insert(header::HOST, v);
    }
    let (parts, body) = req.into_parts();
    // A request that may be sent more than once (mirror copies, retries) is buffered when it
    // announces a small body; larger or unannounced bodies stream once, without copies or retries.
    let replay = !mirrors.is_empty() || rule.retry.is_some();
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodyless = announced == Some(0)
        || (announced.is_none() && !parts.headers.contains_key(header::TRANSFER_ENCODING));
    let mut streaming = Some(body);
    let mut buffered: Option<Bytes> = None;
    if replay && (bodyless || announced.is_some_and(|n| n <= MAX_REPLAY_BODY)) {
        match streaming.take().map(|b| b.collect()) {
            Some(collect) => match Box::pin(collect).await {
                Ok(collected) => buffered = Some(collected.to_bytes()),
                Err(_) => return error(grpc, StatusCode::BAD_REQUEST, "request body aborted"),
            },
            None => unreachable!("the body is taken once"),
        }
    }
    let mut head = RequestHead {
        method: parts.method,
        headers: parts.headers,
        path_and_query,
        grpc,
    };
    if let Some(bytes) = &buffered {
        for (mirror, percent) in mirrors {
            if fastrand::f64() * 100.0 < percent {
                mirror_request(shared, &head, mirror, bytes.clone());
            }
        }
    }

    let attempts = rule.retry.as_ref().map_or(1, |r| 1 + r.attempts.max(1)) as usize;
    // The error to answer with when every attempt failed (built only then).
    let mut outcome = None;
    for attempt in 0..attempts {
        if attempt > 0
            && let Some(backoff) = rule.retry.as_ref().and_then(|r| r.backoff)
        {
            Box::pin(tokio::time::sleep(backoff)).await;
        }
        let body = match (&buffered, streaming.take()) {
            (Some(bytes), _) => full(bytes.clone()),
            (None, Some(b)) => b.boxed(),
            // A streamed body can be sent only once.
            (None, None) => break,
        };
        let Some(backend) = upstream::pick(&rule.backends) else {
            return error(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no usable backend");
        };
        *picked = &backend.name;
        if !backend.resolved {
            return error(
                grpc,
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend reference not resolved",
            );
        }
        let Some(endpoint) = upstream::endpoint(backend) else {
            return error(grpc, StatusCode::SERVICE_UNAVAILABLE, "no ready endpoint");
        };
        let last = attempt + 1 == attempts;
        // The last attempt takes the headers; earlier ones (retries) send copies.
        let mut headers = if last {
            std::mem::take(&mut head.headers)
        } else {
            head.headers.clone()
        };
        let mut backend_mods = Vec::new();
        for f in &backend.filters {
            match f {
                Filter::RequestHeaderModifier(m) => filters::modify_headers(&mut headers, m),
                Filter::ResponseHeaderModifier(m) => backend_mods.push(m),
                _ => {}
            }
        }
        let retryable_codes = rule
            .retry
            .as_ref()
            .map(|r| r.codes.as_slice())
            .unwrap_or(&[]);
        match send(
            shared,
            &head,
            headers,
            backend,
            endpoint,
            body,
            rule.timeouts.backend_request,
        )
        .await
        {
            Ok(mut resp) => {
                if !last && retryable_codes.contains(&resp.status().as_u16()) {
                    continue;
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade {
                        tunnel(client, hyper::upgrade::on(&mut resp));
                    }
                    return resp.map(upstream::ResponseBody::boxed);
                }
                filters::strip_hop_by_hop(resp.headers_mut());
                for m in response_mods.iter().chain(&backend_mods) {
                    filters::modify_headers(resp.headers_mut(), m);
                }
                if let (Some(c), Some(o)) = (cors, origin) {
                    cors::decorate(c, o, resp.headers_mut());
                }
                return resp.map(upstream::ResponseBody::boxed);
            }
            Err(status) => {
                outcome = Some(status);
                if last {
                    break;
                }
            }
        }
    }
    match outcome {
        Some(status) => error(
            grpc,
            status,
            if status == StatusCode::GATEWAY_TIMEOUT {
                "backend timeout"
            } else {
                "backend unreachable"
            },
        ),
        None => error(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no usable backend"),
    }
}

/// Once both sides have switched protocols, copies bytes between them until either closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}

/// Bodies up to this size are buffered when a request may be replayed (mirrors, retries).
const MAX_REPLAY_BODY: u64 = 1 << 20;

/// What every attempt and mirror copy of a request shares.
struct RequestHead {
    method: http::Method,
    headers: http::HeaderMap,
    path_and_query: PathAndQuery,
    grpc: bool,
}

/// Sends one attempt to `endpoint`: a response, or the status to answer with (502, 504).
async fn send(
    shared: &Shared,
    head: &RequestHead,
    headers: http::HeaderMap,
    backend: &gateway_model::http::Backend,
    endpoint: SocketAddr,
    body: Body,
    timeout: Option<std::time::Duration>,
) -> Result<Response<upstream::ResponseBody>, StatusCode> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = Uri::from(head.path_and_query.clone());
    *req.headers_mut() = headers;
    if head.grpc || backend.h2c {
        // gRPC needs the TE: trailers hop-by-hop header end to end.
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
        *req.version_mut() = http::Version::HTTP_2;
    }
    if head.grpc && !backend.h2c {
        tracing::debug!(backend = %backend.name, %endpoint, "gRPC request for an HTTP/1.1 backend");
        return Err(StatusCode::BAD_GATEWAY);
    }
    let upstreams = &shared.upstreams;
    let sent = || async {
        if backend.h2c {
            Box::pin(upstreams.send_h2c(endpoint, req)).await
        } else {
            upstreams.send_http1(endpoint, req).await
        }
    };
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, Box::pin(sent()))
            .await
            .map_err(|_| StatusCode::GATEWAY_TIMEOUT)?,
        None => sent().await,
    };
    result.map_err(|e| {
        tracing::debug!(backend = %backend.name, %endpoint, error = %e, "upstream request failed");
        StatusCode::BAD_GATEWAY
    })
}

/// Fire and forget: a copy of the request to the mirror backend; its answer is ignored and it
/// never delays or changes the client's response.
fn mirror_request(
    shared: &Shared,
    head: &RequestHead,
    mirror: &gateway_model::http::Backend,
    body: Bytes,
) {
    let Some(endpoint) = upstream::endpoint(mirror) else {
        return;
    };
    let mut req = Request::new(full(body));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = Uri::from(head.path_and_query.clone());
    *req.headers_mut() = head.headers.clone();
    let upstreams = shared.upstreams.clone();
    let h2c = mirror.h2c;
    if h2c {
        *req.version_mut() = http::Version::HTTP_2;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let sent = if h2c {
                upstreams.send_h2c(endpoint, req).await
            } else {
                upstreams.send_http1(endpoint, req).await
            };
            if let Ok(resp) = sent {
                // Drain the answer so the pooled connection can be reused.
                let _ = resp.into_body().collect().await;
            }
        })
        .await;
    });
}

/// Builds the redirect response. Unset parts keep the request's; a scheme change without a port
/// drops the port ("If no port is specified, the redirect port MUST be derived" from the scheme).
#[allow(clippy::too_many_arguments, reason = "the filter's fields")]
fn redirect(
    host: &str,
    path: &str,
    query: &str,
    matched: &PathMatch,
    scheme: &Option<String>,
    hostname: &Option<String>,
    port: Option<u16>,
    pm: &Option<gateway_model::http::PathModifier>,
    status: u16,
    https: bool,
) -> Response<Body> {
    let (req_host, req_port) = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    let request_scheme = if https { "https" } else { "http" };
    let scheme = scheme.clone().unwrap_or_else(|| request_scheme.into());
    let host = hostname.clone().unwrap_or_else(|| req_host.to_string());
    // The request's port carries over only when neither the host nor the scheme changes.
    let port = port.or(if hostname.is_none() && scheme == request_scheme {
        req_port
    } else {
        None
    });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = match port {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host,
    };
    let path = pm
        .as_ref()
        .map(|m| filters::rewrite_path(path, matched, m))
        .unwrap_or_else(|| path.to_string());
    let location = if query.is_empty() {
        format!("{scheme}://{authority}{path}")
    } else {
        format!("{scheme}://{authority}{path}?{query}")
    };
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
