//! The route table (pipeline step 2, `route`): which route serves a request,
//! by host, path, method and headers.
//!
//! Rules (CONTRACT.md, Route choice): among routes whose `host`, `methods`,
//! `headers` and `version` match, an exact `path` beats any prefix, the
//! longest `path_prefix` wins, and ties go to the route listed first. A
//! route without `version` serves every version.
//!
//! Prefixes match whole path segments: `/api/users` matches `/api/users` and
//! `/api/users/42`, never `/api/usersX`. So a lookup tries only the request
//! path's segment boundaries, longest first, each one hash lookup: the cost
//! grows with the path's depth, not with the number of routes.

pub mod guard;
pub mod split;
pub mod version;

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
    /// Only this API version.
    pub version: Option<u32>,
}

impl Conditions {
    /// Everything but the version.
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

    /// The route for a request, if any. `path` excludes the query string
    /// (and the version segment).
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        version: Option<u32>,
    ) -> Option<&Arc<R>> {
        self.candidates(path).find_map(|list| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|(c, _)| {
                    c.version.is_none_or(|v| Some(v) == version) && c.matches(host, method, headers)
                })
                .map(|(_, r)| r)
        })
    }

    /// After [`find`](Self::find) found nothing: the versions routes serve
    /// for this request at other versions, ascending (empty: no route at all).
    pub fn served_versions(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Vec<u32> {
        let mut versions: Vec<u32> = self
            .candidates(path)
            .flatten()
            .map(|&i| &self.routes[i].0)
            .filter(|c| c.matches(host, method, headers))
            .filter_map(|c| c.version)
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    /// The route lists a path can match, best first: the exact path, then
    /// the prefixes at each segment boundary, longest first, then `/`.
    fn candidates<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Vec<usize>> + 'a {
        let path = if path.is_empty() { "/" } else { path };
        let exact = self.exact.get(path);
        let mut next = (!self.prefix.is_empty()).then(|| {
            path.strip_suffix('/')
                .filter(|p| !p.is_empty())
                .unwrap_or(path)
        });
        let prefixes = std::iter::from_fn(move || loop {
            let candidate = next?;
            next = match candidate.rfind('/') {
                _ if candidate == "/" => None,
                Some(0) | None => Some("/"),
                Some(i) => Some(&candidate[..i]),
            };
            if let Some(list) = self.prefix.get(candidate) {
                return Some(list);
            }
        });
        exact.into_iter().chain(prefixes)
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
            version: None,
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
        r.find(host, path, &Method::GET, headers, None)
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
        let post = r.find(None, "/api/users/1", &Method::POST, &HeaderMap::new(), None);
        // Tie on the same prefix: the route listed first wins.
        assert_eq!(post.map(|x| **x), Some("users"));
    }

    #[test]
    fn versions_filter_routes_and_say_what_is_served() {
        let mut r = Router::new();
        let at = |v| Conditions {
            version: v,
            ..cond()
        };
        r.add(
            PathMatch::Prefix("/users".into()),
            at(Some(1)),
            Arc::new("v1"),
        );
        r.add(
            PathMatch::Prefix("/users".into()),
            at(Some(2)),
            Arc::new("v2"),
        );
        r.add(
            PathMatch::Prefix("/users/me".into()),
            at(Some(3)),
            Arc::new("me3"),
        );
        r.add(PathMatch::Prefix("/any".into()), at(None), Arc::new("any"));
        let h = HeaderMap::new();
        let find = |path, v| r.find(None, path, &Method::GET, &h, v).map(|x| **x);
        assert_eq!(find("/users/1", Some(2)), Some("v2"));
        assert_eq!(find("/users/me", Some(1)), Some("v1"));
        assert_eq!(find("/users/me", Some(3)), Some("me3"));
        assert_eq!(find("/any/x", Some(7)), Some("any"));
        assert_eq!(find("/any/x", None), Some("any"));
        assert_eq!(find("/users/1", Some(4)), None);
        assert_eq!(find("/users/1", None), None);
        assert_eq!(
            r.served_versions(None, "/users/me", &Method::GET, &h),
            [1, 2, 3]
        );
        assert_eq!(
            r.served_versions(None, "/users/1", &Method::GET, &h),
            [1, 2]
        );
        assert!(r
            .served_versions(None, "/nothing", &Method::GET, &h)
            .is_empty());
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
