//! The experimental HTTPCORSFilter: answer preflights, decorate responses for allowed origins.

use gateway_model::http::Cors;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::handler::Body;

/// Whether `origin` is allowed: `*`, an exact origin, or a `scheme://*.suffix` wildcard.
fn allowed(c: &Cors, origin: &str) -> bool {
    c.allow_origins.iter().any(|o| {
        o == "*"
            || o.eq_ignore_ascii_case(origin)
            || o.split_once("://*.").is_some_and(|(scheme, suffix)| {
                origin
                    .strip_prefix(&format!("{scheme}://"))
                    .is_some_and(|host| host.ends_with(&format!(".{suffix}")))
            })
    })
}

/// The value of Access-Control-Allow-Origin: the origin itself when credentials are allowed
/// (browsers reject `*` with credentials), else `*` or the origin.
fn allow_origin_value(c: &Cors, origin: &str) -> String {
    if c.allow_origins.iter().any(|o| o == "*") && !c.allow_credentials {
        "*".into()
    } else {
        origin.to_string()
    }
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method).
pub fn preflight(c: &Cors, origin: &str) -> Response<Body> {
    let mut resp = Response::new(super::handler::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if !allowed(c, origin) {
        return resp;
    }
    let h = resp.headers_mut();
    set(
        h,
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        &allow_origin_value(c, origin),
    );
    if !c.allow_methods.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            &c.allow_methods.join(", "),
        );
    }
    if !c.allow_headers.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &c.allow_headers.join(", "),
        );
    }
    if c.allow_credentials {
        set(h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if let Some(age) = c.max_age {
        set(h, header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Adds the CORS response headers to an actual (non-preflight) response.
pub fn decorate(c: &Cors, origin: &str, headers: &mut HeaderMap) {
    if !allowed(c, origin) {
        return;
    }
    set(
        headers,
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        &allow_origin_value(c, origin),
    );
    if c.allow_credentials {
        set(headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if !c.expose_headers.is_empty() {
        set(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &c.expose_headers.join(", "),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-served-by".into()],
            allow_credentials: credentials,
            max_age: Some(600),
        }
    }

    #[test]
    fn origins_match_exactly_by_wildcard_or_star() {
        let c = policy(&["https://app.example.com", "https://*.example.org"], false);
        assert!(allowed(&c, "https://app.example.com"));
        assert!(allowed(&c, "https://a.b.example.org"));
        assert!(!allowed(&c, "https://example.org"));
        assert!(!allowed(&c, "http://app.example.com"));
        assert!(allowed(&policy(&["*"], false), "https://anything"));
    }

    #[test]
    fn preflight_answers_allowed_origins_only() {
        let c = policy(&["https://app.example.com"], true);
        let ok = preflight(&c, "https://app.example.com");
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST"
        );
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
            "true"
        );
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        let denied = preflight(&c, "https://evil.example.net");
        assert!(
            !denied
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }
}
