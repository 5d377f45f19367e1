//! The route table (pipeline step 2, `route`): which route serves a request,
//! by host, path, method and headers.
//!
//! Rules (CONTRACT.md, Route choice): among routes whose `host`, `methods` and
//! `headers` match, an exact `path` beats any prefix, the longest
//! `path_prefix` wins, and ties go to the route listed first.
//!
//! Prefixes match whole path segments: `/api/users` matches `/api/users` and
//! `/api/users/42`, never `/api/usersX`. So a lookup tries only the request
//! path's segment boundaries, longest first, each one hash lookup: the cost
//! grows with the path's depth, not with the number of routes.

pub mod split;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// What a route requires of a request besides its path.
#[derive(Debug)]
pub struct Conditions {
    /// Lower-case host; `*.example.com` is stored as `.example.com` with `wildcard`.
    pub host: Option<(String, bool)>,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Conditions {
    fn matches(&self, host: Option<&str>, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        if let Some((want, wildcard)) = &self.host {
            let Some(host) = host else { return false };
            let ok = if *wildcard {
                host.len() > want.len()
                    && host.as_bytes()[host.len() - want.len()..]
                        .eq_ignore_ascii_case(want.as_bytes())
            } else {
                host.eq_ignore_ascii_case(want)
            };
            if !ok {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// The compiled route table; `R` is the runtime route type.
#[derive(Debug)]
pub struct Router<R> {
    routes: Vec<(Conditions, Arc<R>)>,
    /// Exact paths → route indices in config order.
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Prefixes (no trailing `/`, except the root `/`) → route indices in config order.
    prefix: HashMap<Box<str>, Vec<usize>>,
}

/// How a route matches paths.
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl<R> Router<R> {
    pub fn new() -> Self {
        Router {
            routes: Vec::new(),
            exact: HashMap::new(),
            prefix: HashMap::new(),
        }
    }

    /// Adds a route; call in config order.
    pub fn add(&mut self, path: PathMatch, conditions: Conditions, route: Arc<R>) {
        let idx = self.routes.len();
        self.routes.push((conditions, route));
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.into()).or_default().push(idx),
            PathMatch::Prefix(p) => {
                let key = normalize_prefix(&p);
                self.prefix.entry(key.into()).or_default().push(idx)
            }
        }
    }

    /// The route for a request, if any. `path` excludes the query string.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Arc<R>> {
        let path = if path.is_empty() { "/" } else { path };
        let first_match = |list: &Vec<usize>| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|(c, _)| c.matches(host, method, headers))
                .map(|(_, r)| r)
        };
        if let Some(r) = self.exact.get(path).and_then(first_match) {
            return Some(r);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Candidate prefixes, longest first: the path itself (minus a
        // trailing slash), then each shorter segment boundary, then `/`.
        let mut candidate = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        loop {
            if let Some(r) = self.prefix.get(candidate).and_then(first_match) {
                return Some(r);
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &candidate[..i],
            };
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl<R> Default for Router<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// `/api/` → `/api`; `/` stays `/`.
fn normalize_prefix(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Removes `prefix` from `path` on a segment boundary; the result always
/// starts with `/`. Returns `None` when `path` does not start with `prefix`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(if rest.is_empty() { "/" } else { rest })
    } else {
        None
    }
}

/// The host a request is for, without port: `Host` header or `:authority`.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => h,
        None => uri.authority()?.as_str(),
    };
    // Strip the port, keeping IPv6 literals intact.
    if raw.starts_with('[') {
        return Some(
            raw.split_once(']')
                .map_or(raw, |(h, _)| &raw[..h.len() + 1]),
        );
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond() -> Conditions {
        Conditions {
            host: None,
            methods: None,
            headers: vec![],
        }
    }

    fn router() -> Router<&'static str> {
        let mut r = Router::new();
        r.add(PathMatch::Prefix("/".into()), cond(), Arc::new("root"));
        r.add(PathMatch::Prefix("/api".into()), cond(), Arc::new("api"));
        r.add(
            PathMatch::Prefix("/api/users/".into()),
            cond(),
            Arc::new("users"),
        );
        r.add(
            PathMatch::Exact("/api/users/me".into()),
            cond(),
            Arc::new("me"),
        );
        r.add(
            PathMatch::Prefix("/api/users".into()),
            Conditions {
                methods: Some(vec![Method::POST]),
                ..cond()
            },
            Arc::new("users-post-shadowed"),
        );
        r.add(
            PathMatch::Prefix("/api/orders".into()),
            Conditions {
                host: Some((".example.com".into(), true)),
                ..cond()
            },
            Arc::new("orders-wild"),
        );
        r.add(
            PathMatch::Prefix("/api/orders".into()),
            Conditions {
                headers: vec![(
                    HeaderName::from_static("x-beta"),
                    HeaderValue::from_static("on"),
                )],
                ..cond()
            },
            Arc::new("orders-beta"),
        );
        r
    }

    fn find(
        r: &Router<&'static str>,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> &'static str {
        r.find(host, path, &Method::GET, headers)
            .map_or("none", |x| **x)
    }

    #[test]
    fn longest_prefix_exact_and_segments() {
        let r = router();
        let h = HeaderMap::new();
        assert_eq!(find(&r, None, "/api/users/42", &h), "users");
        assert_eq!(find(&r, None, "/api/users", &h), "users");
        assert_eq!(find(&r, None, "/api/users/", &h), "users");
        assert_eq!(find(&r, None, "/api/usersX", &h), "api");
        assert_eq!(find(&r, None, "/api/users/me", &h), "me");
        assert_eq!(find(&r, None, "/apix", &h), "root");
        assert_eq!(find(&r, None, "/", &h), "root");
        assert_eq!(find(&r, None, "", &h), "root");
    }

    #[test]
    fn conditions_and_ties() {
        let r = router();
        let mut beta = HeaderMap::new();
        beta.insert("x-beta", HeaderValue::from_static("on"));
        assert_eq!(
            find(&r, Some("a.EXAMPLE.com"), "/api/orders/1", &beta),
            "orders-wild"
        );
        assert_eq!(
            find(&r, Some("example.com"), "/api/orders/1", &beta),
            "orders-beta"
        );
        assert_eq!(find(&r, None, "/api/orders", &HeaderMap::new()), "api");
        let post = r.find(None, "/api/users/1", &Method::POST, &HeaderMap::new());
        // Tie on the same prefix: the route listed first wins.
        assert_eq!(post.map(|x| **x), Some("users"));
    }

    #[test]
    fn strip_prefix_on_segments() {
        assert_eq!(strip_prefix("/api/users", "/api"), Some("/users"));
        assert_eq!(strip_prefix("/api", "/api"), Some("/"));
        assert_eq!(strip_prefix("/api/", "/api/"), Some("/"));
        assert_eq!(strip_prefix("/apix", "/api"), None);
    }

    #[test]
    fn host_without_port() {
        let mut h = HeaderMap::new();
        let uri: http::Uri = "/x".parse().unwrap();
        h.insert("host", HeaderValue::from_static("a.com:8080"));
        assert_eq!(request_host(&uri, &h), Some("a.com"));
        h.insert("host", HeaderValue::from_static("[::1]:8080"));
        assert_eq!(request_host(&uri, &h), Some("[::1]"));
        let uri: http::Uri = "http://b.com:1/x".parse().unwrap();
        assert_eq!(request_host(&uri, &HeaderMap::new()), Some("b.com"));
    }
}
