//! One request: route it with the model, apply the rule's filters, forward it to a weighted
//! backend, and map failures to the status codes the spec names (404 no route, 500 no usable
//! backend, 503 no ready endpoint, 502 unreachable, 504 timeout) — as grpc-status for gRPC.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use gateway_model::http::{Fallback, Filter, HttpRule, PathMatch, RequestView};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;

use super::{Shared, filters, upstream};

/// The response body type of the proxy.
pub type Body = BoxBody<Bytes, hyper::Error>;

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
    let model = shared.model.load_full();
    let Some(l) = model.http.iter().find(|l| l.address == listener) else {
        return Ok(error(grpc, StatusCode::NOT_FOUND, "no listener"));
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().as_str().to_string();
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
            host: &host,
            method: &method,
            path: &path,
            query: &query,
            headers: &lookup,
        };
        l.route(&view).cloned()
    };
    let Some(rule) = rule else {
        let resp = error(grpc, StatusCode::NOT_FOUND, "no route matches");
        record(
            &shared, peer, &method, &host, &path, "none", "none", &resp, started,
        );
        return Ok(resp);
    };
    let grpc = grpc || rule.grpc;
    let mut picked = String::from("none");
    let work = serve_rule(
        &shared,
        peer,
        req,
        &rule,
        &host,
        &path,
        &query,
        grpc,
        https,
        &mut picked,
    );
    let resp = match rule.timeouts.request {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(resp) => resp,
            Err(_) => error(grpc, StatusCode::GATEWAY_TIMEOUT, "request timeout"),
        },
        None => work.await,
    };
    record(
        &shared,
        peer,
        &method,
        &host,
        &path,
        &rule.route,
        &picked,
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
async fn serve_rule(
    shared: &Shared,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    rule: &HttpRule,
    host: &str,
    path: &str,
    query: &str,
    grpc: bool,
    https: bool,
    picked: &mut String,
) -> Response<Body> {
    let mut response_mods = Vec::new();
    let mut new_path = path.to_string();
    let mut new_host: Option<String> = None;
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
            Filter::ResponseHeaderModifier(m) => response_mods.push(m.clone()),
            Filter::UrlRewrite { hostname, path: pm } => {
                if let Some(h) = hostname {
                    new_host = Some(h.clone());
                }
                if let Some(pm) = pm {
                    new_path = filters::rewrite_path(path, &rule.matcher.path, pm);
                }
            }
            // Mirroring and CORS are carried in the model; this proxy does not apply them yet.
            Filter::RequestMirror { .. } | Filter::Cors(_) => {}
        }
    }
    if rule.fallback == Fallback::InternalError {
        return error(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no usable backend");
    }
    let Some(backend) = upstream::pick(&rule.backends) else {
        return error(grpc, StatusCode::INTERNAL_SERVER_ERROR, "no usable backend");
    };
    picked.clone_from(&backend.name);
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
    for f in &backend.filters {
        match f {
            Filter::RequestHeaderModifier(m) => filters::modify_headers(req.headers_mut(), m),
            Filter::ResponseHeaderModifier(m) => response_mods.push(m.clone()),
            _ => {}
        }
    }

    let path_and_query = if query.is_empty() {
        new_path
    } else {
        format!("{new_path}?{query}")
    };
    let uri: Uri = match format!("http://{endpoint}{path_and_query}").parse() {
        Ok(u) => u,
        Err(_) => return error(grpc, StatusCode::BAD_REQUEST, "invalid path"),
    };
    *req.uri_mut() = uri;
    filters::strip_hop_by_hop(req.headers_mut());
    filters::set_forwarded(req.headers_mut(), peer, host, https);
    if let Some(h) = new_host
        && let Ok(v) = HeaderValue::try_from(h)
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if grpc || backend.h2c {
        // gRPC needs the TE: trailers hop-by-hop header end to end.
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
        *req.version_mut() = http::Version::HTTP_2;
    } else {
        *req.version_mut() = http::Version::HTTP_11;
    }
    let client = if backend.h2c {
        &shared.upstreams.h2c
    } else {
        &shared.upstreams.http1
    };
    let sent = client.request(req);
    let result = match rule.timeouts.backend_request {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(r) => r,
            Err(_) => return error(grpc, StatusCode::GATEWAY_TIMEOUT, "backend timeout"),
        },
        None => sent.await,
    };
    let mut resp = match result {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => {
            tracing::debug!(backend = %backend.name, %endpoint, error = %e, "upstream request failed");
            return error(grpc, StatusCode::BAD_GATEWAY, "backend unreachable");
        }
    };
    filters::strip_hop_by_hop(resp.headers_mut());
    for m in &response_mods {
        filters::modify_headers(resp.headers_mut(), m);
    }
    resp
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
