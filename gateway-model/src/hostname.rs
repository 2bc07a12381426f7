//! Hostnames as the Gateway API uses them: exact names and `*.` wildcards, and the intersection of
//! a listener's hostname with a route's.

/// Whether `pattern` (exact or `*.suffix`) matches the concrete `host`. Per the spec a wildcard
/// matches one or more labels: `*.example.com` matches `a.example.com` and `a.b.example.com`
/// but not `example.com`.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The hostnames a route serves on a listener: the intersection of the listener's hostname (None =
/// any) with the route's hostnames (empty = any). `None` when they do not intersect at all; `Some`
/// of the effective patterns otherwise (a pattern `None` inside means "any host").
///
/// From the spec (HTTPRoute.spec.hostnames): "If both the Listener and HTTPRoute have specified
/// hostnames, any HTTPRoute hostnames that do not match the Listener hostname MUST be ignored. For
/// example, if a Listener specified `*.example.com`, and the HTTPRoute specified `test.example.com`
/// and `test.example.net`, `test.example.net` must not be considered for a match." and "If both
/// the Listener and HTTPRoute have specified hostnames, and none match with the criteria above,
/// then the HTTPRoute is not accepted."
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<Option<String>>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => Some(vec![None]),
        (None, false) => Some(route.into_iter().map(Some).collect()),
        (Some(l), true) => Some(vec![Some(l.to_ascii_lowercase())]),
        (Some(l), false) => {
            let l = l.to_ascii_lowercase();
            let mut out = Vec::new();
            for r in route {
                if let Some(h) = intersect_one(&l, &r)
                    && !out.contains(&Some(h.clone()))
                {
                    out.push(Some(h));
                }
            }
            (!out.is_empty()).then_some(out)
        }
    }
}

/// The more specific of two patterns if they overlap.
fn intersect_one(a: &str, b: &str) -> Option<String> {
    let a_wild = a.starts_with("*.");
    let b_wild = b.starts_with("*.");
    match (a_wild, b_wild) {
        (false, false) => (a == b).then(|| a.to_string()),
        (true, false) => matches(a, b).then(|| b.to_string()),
        (false, true) => matches(b, a).then(|| a.to_string()),
        (true, true) => {
            // The longer wildcard is the intersection when it falls under the shorter one.
            let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            (long == short || matches(short, &long[2..]) || long[2..] == short[2..])
                .then(|| long.to_string())
        }
    }
}

/// Whether two effective patterns (None = any host) can match one same host.
pub fn overlaps(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => intersect_one(a, b).is_some(),
    }
}

/// Orders hostname patterns for matching: exact names first, then wildcards by decreasing length,
/// then "any" (None). Ties by name, for determinism.
pub fn order_key(pattern: &Option<String>) -> (u8, std::cmp::Reverse<usize>, String) {
    match pattern {
        Some(h) if !h.starts_with("*.") => (0, std::cmp::Reverse(h.len()), h.clone()),
        Some(h) => (1, std::cmp::Reverse(h.len()), h.clone()),
        None => (2, std::cmp::Reverse(0), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching_follows_the_spec() {
        // "*.example.com" matches "test.example.com" and "foo.test.example.com", not "example.com".
        let table = [
            ("*.example.com", "test.example.com", true),
            ("*.example.com", "foo.test.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("example.com", "EXAMPLE.com", true),
            ("example.com", "www.example.com", false),
        ];
        for (pattern, host, want) in table {
            assert_eq!(matches(pattern, host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn intersection_follows_the_spec_examples() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // Listener *.example.com, route test.example.com + test.example.net: only the first counts.
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &s(&["test.example.com", "test.example.net"])
            ),
            Some(vec![Some("test.example.com".into())])
        );
        // No overlap: the route is not accepted.
        assert_eq!(intersect(Some("foo.com"), &s(&["bar.com"])), None);
        // Listener without hostname: the route's own.
        assert_eq!(
            intersect(None, &s(&["a.com"])),
            Some(vec![Some("a.com".into())])
        );
        // Route without hostnames: the listener's.
        assert_eq!(
            intersect(Some("a.com"), &[]),
            Some(vec![Some("a.com".into())])
        );
        assert_eq!(intersect(None, &[]), Some(vec![None]));
        // Wildcard route under an exact listener.
        assert_eq!(
            intersect(Some("a.example.com"), &s(&["*.example.com"])),
            Some(vec![Some("a.example.com".into())])
        );
        // Two wildcards: the more specific one.
        assert_eq!(
            intersect(Some("*.example.com"), &s(&["*.a.example.com"])),
            Some(vec![Some("*.a.example.com".into())])
        );
    }

    #[test]
    fn exact_before_wildcard_longest_wildcard_first() {
        let mut v = vec![
            None,
            Some("*.com".to_string()),
            Some("*.example.com".into()),
            Some("a.example.com".into()),
        ];
        v.sort_by_key(order_key);
        assert_eq!(
            v,
            vec![
                Some("a.example.com".into()),
                Some("*.example.com".into()),
                Some("*.com".into()),
                None
            ]
        );
    }
}
