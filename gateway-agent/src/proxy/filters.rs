//! HTTPRoute filters applied to requests and responses, and the header hygiene of a proxy.

use std::net::SocketAddr;

use gateway_model::http::{HeaderModifier, PathMatch, PathModifier};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Applies a RequestHeaderModifier or ResponseHeaderModifier: set replaces, add appends, remove
/// deletes. Invalid names or values are skipped (the model validated them already).
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        headers.remove(name.as_str());
    }
}

/// The path after a ReplaceFullPath / ReplacePrefixMatch modifier. "ReplacePrefixMatch" replaces
/// the part of the path the rule's PathPrefix matched, keeping the rest.
pub fn rewrite_path(path: &str, matched: &PathMatch, m: &PathModifier) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let prefix = match matched {
                PathMatch::Prefix(p) => p.trim_end_matches('/'),
                _ => "",
            };
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let base = replacement.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (true, false) => rest.to_string(),
                (false, _) => format!("{base}{rest}"),
            }
        }
    }
}

/// Hop-by-hop headers a proxy never forwards (RFC 9110 §7.6.1), as constants: removing by a
/// `&str` name parses it again on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the (few) names instead of nine lookups.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Other names the Connection header lists. The usual `Connection: keep-alive` (every
    // keep-alive backend response) and `close` name nothing beyond the fixed set, so they
    // allocate nothing.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for token in value.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(token))
            {
                continue;
            }
            // from_bytes lowercases, as header names compare.
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host, as proxies set them.
pub fn set_forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: &str, https: bool) {
    use std::io::Write as _;
    // The client address is formatted into a stack buffer: no allocation when there is no
    // earlier X-Forwarded-For to extend.
    let mut buf = [0u8; 64];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{}", peer.ip());
        cursor.position() as usize
    };
    let client = &buf[..len];
    let xff = match headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::as_bytes)
    {
        Some(prev) if !prev.is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client);
            HeaderValue::from_bytes(&v)
        }
        _ => HeaderValue::from_bytes(client),
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let http::header::Entry::Vacant(e) = headers.entry(X_FORWARDED_HOST)
        && let Ok(v) = HeaderValue::try_from(host)
    {
        e.insert(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_match_keeps_the_rest_of_the_path() {
        // From the spec's HTTPPathModifier examples: prefix /foo replaced by /bar.
        let prefix = PathMatch::Prefix("/foo".into());
        let table = [
            ("/foo/bar", "/bar", "/bar/bar"),
            ("/foo", "/bar", "/bar"),
            ("/foo/", "/bar", "/bar/"),
            ("/foo/bar", "/", "/bar"),
            ("/foo", "/", "/"),
            ("/foo/bar", "/xyz/", "/xyz/bar"),
        ];
        for (path, replacement, want) in table {
            let got = rewrite_path(
                path,
                &prefix,
                &PathModifier::ReplacePrefixMatch(replacement.into()),
            );
            assert_eq!(got, want, "{path} with prefix /foo -> {replacement}");
        }
        assert_eq!(
            rewrite_path("/a/b", &prefix, &PathModifier::ReplaceFullPath("/x".into())),
            "/x"
        );
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        h.insert("x-gone", HeaderValue::from_static("bye"));
        modify_headers(
            &mut h,
            &HeaderModifier {
                set: vec![("X-Set".into(), "new".into())],
                add: vec![("x-add".into(), "two".into())],
                remove: vec!["x-gone".into()],
            },
        );
        assert_eq!(h["x-set"], "new");
        assert_eq!(h.get_all("x-add").iter().count(), 2);
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Private,close"),
        );
        h.append("connection", HeaderValue::from_static("x-other"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
