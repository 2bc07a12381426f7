//! HTTPRoute and GRPCRoute rules as the proxy serves them: precompiled matchers, typed filters,
//! weighted backends, and the spec's precedence order.

use std::{cmp::Ordering, net::SocketAddr, time::Duration};

use serde::Serialize;

/// What a matcher looks at in a request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// Host header or :authority.
    pub host: &'a str,
    /// Method, upper case.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query string without `?` ("" when none).
    pub query: &'a str,
    /// Header lookup: every value of a (case-insensitive) header name.
    pub headers: &'a dyn Fn(&str) -> Vec<String>,
}

/// A path match.
#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix on `/` element boundaries ("/foo" matches "/foo", "/foo/", "/foo/bar", not "/foobar").
    Prefix(String),
    /// A regular expression over the whole path.
    Regex(#[serde(with = "serde_regex")] regex::Regex),
}

/// A header or query-parameter value match.
#[derive(Debug, Clone, Serialize)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// A regular expression over the whole value.
    Regex(#[serde(with = "serde_regex")] regex::Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == v,
            ValueMatch::Regex(r) => full_match(r, v),
        }
    }
}

fn full_match(r: &regex::Regex, v: &str) -> bool {
    r.find(v)
        .is_some_and(|m| m.start() == 0 && m.end() == v.len())
}

/// One HTTPRouteMatch (or a GRPCRouteMatch translated to paths): all of its parts must match.
#[derive(Debug, Clone, Serialize)]
pub struct Matcher {
    /// The path match (defaults to prefix "/").
    pub path: PathMatch,
    /// Header matches, names lower-cased.
    pub headers: Vec<(String, ValueMatch)>,
    /// Query parameter matches (names are case-sensitive).
    pub query: Vec<(String, ValueMatch)>,
    /// The method, if matched.
    pub method: Option<String>,
}

impl Matcher {
    /// Whether the request satisfies every part.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
            PathMatch::Regex(r) => full_match(r, req.path),
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, m)| {
                // "If multiple entries specify equivalent header names, only the first entry with an
                // equivalent name MUST be considered" (validation rejects duplicates); for a header
                // sent several times, the values are joined as HTTP allows.
                let values = (req.headers)(name);
                !values.is_empty() && m.matches(&values.join(","))
            })
            && self
                .query
                .iter()
                .all(|(name, m)| query_value(req.query, name).is_some_and(|v| m.matches(&v)))
    }
}

/// Path-prefix matching on element boundaries, as the spec requires.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first value of query parameter `name` (percent-decoding is not applied; names are exact).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// A header modification (RequestHeaderModifier / ResponseHeaderModifier).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    pub set: Vec<(String, String)>,
    /// Append these values.
    pub add: Vec<(String, String)>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part the rule's PathPrefix matched.
    ReplacePrefixMatch(String),
}

/// A CORS policy (experimental HTTPCORSFilter).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`*` allowed).
    pub allow_origins: Vec<String>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Headers exposed to the client.
    pub expose_headers: Vec<String>,
    /// Whether credentials are allowed.
    pub allow_credentials: bool,
    /// Preflight cache time in seconds.
    pub max_age: Option<u32>,
}

/// A filter, typed and validated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum Filter {
    /// Change request headers.
    RequestHeaderModifier(HeaderModifier),
    /// Change response headers.
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect.
    RequestRedirect {
        /// `http` or `https`.
        scheme: Option<String>,
        /// New host.
        hostname: Option<String>,
        /// New port.
        port: Option<u16>,
        /// New path.
        path: Option<PathModifier>,
        /// 301 or 302 (default 302).
        status: u16,
    },
    /// Rewrite before forwarding.
    UrlRewrite {
        /// New Host.
        hostname: Option<String>,
        /// New path.
        path: Option<PathModifier>,
    },
    /// Send a copy of the request to another backend, ignoring its answer.
    RequestMirror {
        /// Where copies go (with weights, like any backend).
        backend: Backend,
        /// Share of requests mirrored, in percent (100 when unset).
        percent: f64,
    },
    /// Answer CORS preflights and decorate responses.
    Cors(Cors),
}

/// A backendRef resolved to endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backend {
    /// `namespace/service:port`.
    pub name: String,
    /// The backendRef's weight (0 never receives traffic).
    pub weight: u32,
    /// Ready endpoints; empty for a resolved Service with no ready endpoint (→ 503). Shared by
    /// every rule that uses the same Service port.
    pub endpoints: std::sync::Arc<Vec<SocketAddr>>,
    /// Whether the upstream speaks HTTP/2 cleartext (appProtocol h2c / kubernetes.io/h2c, or gRPC).
    pub h2c: bool,
    /// Filters of this backendRef only.
    pub filters: Vec<Filter>,
    /// False when the backendRef did not resolve: requests picked for it get a 500.
    pub resolved: bool,
}

/// What a matched rule does when it has no usable backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fallback {
    /// Forward to the weighted backends.
    Forward,
    /// Every backendRef is invalid, unresolved or weighted 0: answer 500.
    InternalError,
}

/// Timeouts of a rule.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, from the client's first byte to the last response byte.
    pub request: Option<Duration>,
    /// One attempt against a backend.
    pub backend_request: Option<Duration>,
}

/// A retry policy (experimental HTTPRouteRetry).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Retry {
    /// Status codes that trigger a retry.
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Delay between attempts.
    pub backoff: Option<Duration>,
}

/// One (route, rule, match) as the proxy serves it.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRule {
    /// `Kind namespace/name` of the route.
    pub route: String,
    /// Index of the rule inside the route.
    pub rule: usize,
    /// The match.
    pub matcher: Matcher,
    /// Rule-level filters in order.
    pub filters: Vec<Filter>,
    /// Weighted backends.
    pub backends: Vec<Backend>,
    /// What to do without a usable backend.
    pub fallback: Fallback,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: Option<Retry>,
    /// A GRPCRoute rule: errors are reported as grpc-status trailers.
    pub grpc: bool,
    /// Precedence key (see [`precedence`]); not serialised.
    #[serde(skip)]
    pub order: OrderKey,
}

/// What the spec's precedence compares, captured at compile time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderKey {
    /// 0 exact path, 1 prefix, 2 regex.
    pub path_kind: u8,
    /// Length of the path value (longer first).
    pub path_len: usize,
    /// Whether a method is matched.
    pub has_method: bool,
    /// Number of header matches.
    pub headers: usize,
    /// Number of query matches.
    pub query: usize,
    /// The route's creationTimestamp (RFC 3339; "" sorts first).
    pub created: String,
    /// `namespace/name` of the route.
    pub route_name: String,
    /// Rule index, then match index, inside the route.
    pub position: (usize, usize),
}

/// The HTTPRoute precedence: "Proxy or Load Balancer routing configuration generated from
/// HTTPRoutes MUST prioritize matches based on the following criteria, continuing on ties:
/// Exact path match; Prefix path match with largest number of characters; Method match; Largest
/// number of header matches; Largest number of query param matches. If ties still exist across
/// multiple Routes, matching precedence MUST be determined in order of the following criteria:
/// the oldest Route based on creation timestamp; the Route appearing first in alphabetical order
/// by {namespace}/{name}. If ties still exist within an HTTPRoute, matching precedence MUST be
/// granted to the FIRST matching rule (in list order)."
pub fn precedence(a: &OrderKey, b: &OrderKey) -> Ordering {
    a.path_kind
        .cmp(&b.path_kind)
        .then(b.path_len.cmp(&a.path_len))
        .then(b.has_method.cmp(&a.has_method))
        .then(b.headers.cmp(&a.headers))
        .then(b.query.cmp(&a.query))
        .then(a.created.cmp(&b.created))
        .then(a.route_name.cmp(&b.route_name))
        .then(a.position.cmp(&b.position))
}

/// Serde helpers for regexes in `/debug/model`: written as their pattern.
mod serde_regex {
    pub fn serialize<S: serde::Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        path_kind: u8,
        path_len: usize,
        method: bool,
        headers: usize,
        created: &str,
        name: &str,
    ) -> OrderKey {
        OrderKey {
            path_kind,
            path_len,
            has_method: method,
            headers,
            query: 0,
            created: created.into(),
            route_name: name.into(),
            position: (0, 0),
        }
    }

    #[test]
    fn precedence_table_from_the_spec() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-02T00:00:00Z";
        // (winner, loser, the spec's reason)
        let table = [
            (
                key(0, 4, false, 0, t1, "b/b"),
                key(1, 10, true, 3, t0, "a/a"),
                "exact path over prefix",
            ),
            (
                key(1, 8, false, 0, t1, "b/b"),
                key(1, 4, true, 3, t0, "a/a"),
                "longer prefix first",
            ),
            (
                key(1, 4, true, 0, t1, "b/b"),
                key(1, 4, false, 3, t0, "a/a"),
                "method match next",
            ),
            (
                key(1, 4, false, 2, t1, "b/b"),
                key(1, 4, false, 1, t0, "a/a"),
                "most header matches",
            ),
            (
                key(1, 4, false, 0, t0, "b/b"),
                key(1, 4, false, 0, t1, "a/a"),
                "oldest creationTimestamp",
            ),
            (
                key(1, 4, false, 0, t0, "a/a"),
                key(1, 4, false, 0, t0, "a/b"),
                "namespace/name alphabetical",
            ),
        ];
        for (winner, loser, why) in table {
            assert_eq!(precedence(&winner, &loser), Ordering::Less, "{why}");
            assert_eq!(precedence(&loser, &winner), Ordering::Greater, "{why}");
        }
    }

    #[test]
    fn prefix_matches_on_element_boundaries() {
        // "PathPrefix: /abc matches /abc, /abc/ and /abc/def but not /abcd."
        for (prefix, path, want) in [
            ("/abc", "/abc", true),
            ("/abc", "/abc/", true),
            ("/abc", "/abc/def", true),
            ("/abc", "/abcd", false),
            ("/abc/", "/abc", true),
            ("/", "/anything", true),
        ] {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }
}
