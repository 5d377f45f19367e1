//! Checks a typed [`Config`] beyond what its types say: names unique,
//! references resolve, addresses parse, weights make sense. Every problem is
//! reported (never just the first) with the YAML path of the node at fault.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{
    limits, resilience, versions, Config, JwtProviderConfig, ListenerTlsConfig, MatchConfig,
    RouteAuthConfig, RouteConfig,
};

/// `report(path, at_key, message)`; `at_key` points the position at the key
/// rather than the value.
pub type Report<'a> = dyn FnMut(&str, bool, String) + 'a;

pub fn validate(config: &Config, report: &mut Report<'_>) {
    if config.listeners.is_empty() {
        report(
            "listeners",
            false,
            "at least one listener is required".into(),
        );
    }
    let mut binds: HashMap<SocketAddr, usize> = HashMap::new();
    unique_names(
        config.listeners.iter().map(|l| l.name.as_str()),
        "listeners",
        report,
    );
    for (i, l) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}].bind");
        match parse_bind(&l.bind) {
            Ok(addr) => {
                if let Some(first) = binds.insert(addr, i) {
                    report(
                        &path,
                        false,
                        format!("address {addr} is already used by listeners[{first}]"),
                    );
                }
            }
            Err(msg) => report(&path, false, msg),
        }
        if let Some(tls) = &l.tls {
            validate_listener_tls(tls, &format!("listeners[{i}].tls"), report);
        }
    }
    if let Err(msg) = parse_bind(&config.admin.bind) {
        report("admin.bind", false, msg);
    }

    let s = &config.server;
    if s.max_connections == 0 {
        report("server.max_connections", false, "must be at least 1".into());
    }
    if s.header_read_timeout.0.is_zero() {
        report(
            "server.header_read_timeout",
            false,
            "must be more than 0".into(),
        );
    }
    for (key, d) in [
        ("idle_timeout", s.idle_timeout),
        ("body_read_timeout", s.body_read_timeout),
        ("send_timeout", s.send_timeout),
    ] {
        if d.0.is_zero() {
            report(
                &format!("server.{key}"),
                false,
                "must be more than 0".into(),
            );
        }
    }
    if s.max_connections_per_ip == Some(0) {
        report(
            "server.max_connections_per_ip",
            false,
            "must be at least 1 (leave it out for no per-address cap)".into(),
        );
    }
    let h2 = &s.http2;
    if h2.max_concurrent_streams == 0 {
        report(
            "server.http2.max_concurrent_streams",
            false,
            "must be at least 1".into(),
        );
    }
    // HTTP/2 flow-control windows are 2^31-1 at most; under 64KiB stalls
    // uploads for no gain.
    for (key, size) in [
        ("initial_stream_window", h2.initial_stream_window),
        ("initial_connection_window", h2.initial_connection_window),
    ] {
        if size.0 < (64 << 10) || size.0 > (1 << 31) - 1 {
            report(
                &format!("server.http2.{key}"),
                false,
                "must be between 64KiB and 2GiB - 1".into(),
            );
        }
    }
    if h2.max_send_buffer.0 < (16 << 10) || h2.max_send_buffer.0 > (64 << 20) {
        report(
            "server.http2.max_send_buffer",
            false,
            "must be between 16KiB and 64MiB".into(),
        );
    }
    if h2.max_cancelled_streams == 0 {
        report(
            "server.http2.max_cancelled_streams",
            false,
            "must be at least 1".into(),
        );
    }
    if s.max_header_bytes.0 < 1024 || s.max_header_bytes.0 > (1 << 20) {
        report(
            "server.max_header_bytes",
            false,
            "must be between 1KiB and 1MiB".into(),
        );
    }

    unique_names(
        config.upstreams.iter().map(|u| u.name.as_str()),
        "upstreams",
        report,
    );
    for (i, u) in config.upstreams.iter().enumerate() {
        if u.endpoints.is_empty() {
            report(
                &format!("upstreams[{i}].endpoints"),
                false,
                "an upstream needs at least one endpoint".into(),
            );
        }
        for (j, e) in u.endpoints.iter().enumerate() {
            if let Err(msg) = check_endpoint(e) {
                report(&format!("upstreams[{i}].endpoints[{j}]"), false, msg);
            }
        }
        if u.connect_timeout.0.is_zero() {
            report(
                &format!("upstreams[{i}].connect_timeout"),
                false,
                "must be more than 0".into(),
            );
        }
        if u.request_timeout.0.is_zero() {
            report(
                &format!("upstreams[{i}].request_timeout"),
                false,
                "must be more than 0".into(),
            );
        }
        let at = |key: &str| format!("upstreams[{i}].{key}");
        if let Some(h) = &u.health_check {
            resilience::validate_health_check(h, &at("health_check"), report);
        }
        if let Some(o) = &u.outlier_detection {
            resilience::validate_outlier(o, &at("outlier_detection"), report);
        }
        if let Some(b) = &u.circuit_breaker {
            resilience::validate_breaker(b, &at("circuit_breaker"), report);
        }
        if let Some(r) = &u.retry {
            resilience::validate_retry(r, &at("retry"), report);
        }
        if u.max_in_flight == Some(0) {
            report(&at("max_in_flight"), false, "must be at least 1".into());
        }
        if let Some(sni) = u.tls.as_ref().and_then(|t| t.sni.as_deref()) {
            if rustls::pki_types::ServerName::try_from(sni).is_err() {
                report(
                    &format!("upstreams[{i}].tls.sni"),
                    false,
                    format!("`{sni}` is not a valid DNS name or IP address"),
                );
            }
        }
    }

    unique_names(config.jwt.iter().map(|j| j.name.as_str()), "jwt", report);
    for (i, j) in config.jwt.iter().enumerate() {
        validate_jwt(j, &format!("jwt[{i}]"), report);
    }
    let providers: Vec<&str> = config.jwt.iter().map(|j| j.name.as_str()).collect();
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(RouteAuthConfig::Jwt { jwt, scopes }) = &r.auth {
            if !providers.contains(&jwt.as_str()) {
                report(
                    &format!("routes[{i}].auth.jwt"),
                    false,
                    format!("unknown JWT provider `{jwt}`{}", suggest(jwt, &providers)),
                );
            }
            for (k, scope) in scopes.iter().enumerate() {
                if scope.is_empty() || scope.contains(char::is_whitespace) {
                    report(
                        &format!("routes[{i}].auth.scopes[{k}]"),
                        false,
                        "a scope is one non-empty word".into(),
                    );
                }
            }
        }
    }

    if let Some(sh) = &config.shedding {
        limits::validate_shedding(sh, report);
    }
    unique_names(
        config.rate_limits.iter().map(|r| r.name.as_str()),
        "rate_limits",
        report,
    );
    for (i, r) in config.rate_limits.iter().enumerate() {
        limits::validate_rate_limit(r, &format!("rate_limits[{i}]"), report);
    }
    let policies: Vec<&str> = config.rate_limits.iter().map(|r| r.name.as_str()).collect();
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(name) = &r.rate_limit {
            if !policies.contains(&name.as_str()) {
                report(
                    &format!("routes[{i}].rate_limit"),
                    false,
                    format!("unknown rate limit `{name}`{}", suggest(name, &policies)),
                );
            }
        }
    }

    let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    unique_names(
        config.routes.iter().map(|r| r.name.as_str()),
        "routes",
        report,
    );
    for (i, r) in config.routes.iter().enumerate() {
        validate_route(r, &format!("routes[{i}]"), &upstream_names, report);
    }

    if let Some(v) = &config.versioning {
        versions::validate_versioning(v, report);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if r.matcher.version.is_some() && config.versioning.is_none() {
            report(
                &format!("routes[{i}].match.version"),
                true,
                "`version` needs a top-level `versioning` block saying where versions are read from"
                    .into(),
            );
        }
    }
    identical_matches(&config.routes, report);
}

/// Two routes that match exactly the same requests: the later one can never
/// be chosen (ties go to the route listed first), which is always a mistake.
fn identical_matches(routes: &[RouteConfig], report: &mut Report<'_>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let m = &r.matcher;
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), _) => format!("={p}"),
            (None, Some(p)) => {
                let p = p.trim_end_matches('/');
                format!("^{}", if p.is_empty() { "/" } else { p })
            }
            (None, None) => continue,
        };
        let mut methods: Vec<String> = m
            .methods
            .iter()
            .flatten()
            .map(|x| x.to_ascii_uppercase())
            .collect();
        methods.sort();
        methods.dedup();
        let headers: Vec<String> = m
            .headers
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_ascii_lowercase(), v.0))
            .collect();
        let key = format!(
            "{path}|{}|{:?}|{}|{:?}",
            m.host.as_deref().unwrap_or("").to_ascii_lowercase(),
            m.methods.as_ref().map(|_| methods),
            headers.join("\n"),
            m.version
        );
        if let Some(&first) = seen.get(&key) {
            report(
                &format!("routes[{i}].match"),
                true,
                format!(
                    "matches exactly what routes[{first}] (`{}`) matches, which is listed first: this route can never be chosen",
                    routes[first].name
                ),
            );
        } else {
            seen.insert(key, i);
        }
    }
}

/// What can be said of a `tls` block without reading its files (those are
/// read and checked by [`crate::tls::files`]).
fn validate_listener_tls(tls: &ListenerTlsConfig, path: &str, report: &mut Report<'_>) {
    if tls.certificates.is_empty() {
        report(
            &format!("{path}.certificates"),
            false,
            "a TLS listener needs at least one certificate".into(),
        );
    }
    if tls.client_auth.is_some() && tls.client_ca.is_none() {
        report(
            &format!("{path}.client_auth"),
            true,
            "`client_auth` needs `client_ca`: the CA bundle client certificates are checked against"
                .into(),
        );
    }
    if tls.handshake_timeout.0.is_zero() {
        report(
            &format!("{path}.handshake_timeout"),
            false,
            "must be more than 0".into(),
        );
    }
}

fn validate_jwt(j: &JwtProviderConfig, path: &str, report: &mut Report<'_>) {
    if j.algorithms.is_empty() {
        report(
            &format!("{path}.algorithms"),
            false,
            "list the algorithms tokens may use, e.g. [RS256, ES256]".into(),
        );
    }
    let mut any_hmac = false;
    for (k, name) in j.algorithms.iter().enumerate() {
        let at = format!("{path}.algorithms[{k}]");
        if name.eq_ignore_ascii_case("none") {
            report(
                &at,
                false,
                "`none` is never accepted: unsigned tokens prove nothing".into(),
            );
            continue;
        }
        let Some(alg) = crate::auth::parse_algorithm(name) else {
            report(
                &at,
                false,
                format!(
                    "unknown algorithm `{name}`; expected one of HS256, HS384, HS512, RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                ),
            );
            continue;
        };
        if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            any_hmac = true;
            if j.secret.is_none() {
                report(
                    &at,
                    false,
                    format!("{name} needs `secret` (the shared HMAC key)"),
                );
            }
        } else if j.jwks_file.is_none() && j.jwks_url.is_none() {
            report(
                &at,
                false,
                format!("{name} needs public keys: set `jwks_file` or `jwks_url`"),
            );
        }
    }
    if j.secret.is_some() && !any_hmac && !j.algorithms.is_empty() {
        report(
            &format!("{path}.secret"),
            true,
            "`secret` is only used by HS256/384/512, and `algorithms` lists none of them".into(),
        );
    }
    if j.secret.as_deref().is_some_and(|s| s.len() < 32) {
        report(
            &format!("{path}.secret"),
            false,
            "an HMAC secret must be at least 32 bytes (RFC 7518 §3.2 asks for the hash size)"
                .into(),
        );
    }
    if let Some(url) = &j.jwks_url {
        match url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => report(
                &format!("{path}.jwks_url"),
                false,
                format!("`{url}` is not an http:// or https:// URL"),
            ),
        }
    }
    if j.max_key_age.0 < j.refresh.0 {
        report(
            &format!("{path}.max_key_age"),
            false,
            "must be at least `refresh`".into(),
        );
    }
    if j.jwks_file.is_some() && j.jwks_url.is_some() {
        report(
            &format!("{path}.jwks_url"),
            true,
            "use either `jwks_file` or `jwks_url`, not both".into(),
        );
    }
    if j.refresh.0.is_zero() {
        report(
            &format!("{path}.refresh"),
            false,
            "must be more than 0".into(),
        );
    }
    if j.leeway.0 > std::time::Duration::from_secs(600) {
        report(&format!("{path}.leeway"), false, "at most 10m".into());
    }
    for (claim, header) in &j.forward_claims {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            report(
                &format!("{path}.forward_claims.{claim}"),
                false,
                format!("`{header}` is not a valid header name"),
            );
        }
    }
}

fn validate_route(r: &RouteConfig, path: &str, upstreams: &[&str], report: &mut Report<'_>) {
    validate_match(&r.matcher, &format!("{path}.match"), report);
    let known = |name: &str| upstreams.contains(&name);
    match (&r.upstream, &r.split) {
        (Some(_), Some(_)) => report(
            &format!("{path}.split"),
            true,
            "a route has exactly one of `upstream` and `split`, not both".into(),
        ),
        (None, None) => report(path, false, "a route needs `upstream` or `split`".into()),
        (Some(u), None) => {
            if !known(u) {
                report(
                    &format!("{path}.upstream"),
                    false,
                    format!("unknown upstream `{u}`{}", suggest(u, upstreams)),
                );
            }
        }
        (None, Some(split)) => {
            if split.is_empty() {
                report(&format!("{path}.split"), false, "split is empty".into());
            }
            for (j, s) in split.iter().enumerate() {
                if !known(&s.upstream) {
                    report(
                        &format!("{path}.split[{j}].upstream"),
                        false,
                        format!(
                            "unknown upstream `{}`{}",
                            s.upstream,
                            suggest(&s.upstream, upstreams)
                        ),
                    );
                }
            }
            for (j, s) in split.iter().enumerate() {
                if let Some(first) = split[..j].iter().position(|t| t.upstream == s.upstream) {
                    report(
                        &format!("{path}.split[{j}].upstream"),
                        false,
                        format!(
                            "upstream `{}` is already in this split (split[{first}]); give it one entry",
                            s.upstream
                        ),
                    );
                }
            }
            let total: u64 = split.iter().map(|s| u64::from(s.weight)).sum();
            if !split.is_empty() && total == 0 {
                report(
                    &format!("{path}.split"),
                    false,
                    "split weights sum to 0: at least one weight must be more than 0".into(),
                );
            }
        }
    }
    if let Some(t) = r.timeout {
        if t.0.is_zero() {
            report(
                &format!("{path}.timeout"),
                false,
                "must be more than 0".into(),
            );
        }
    }
    if r.sticky.is_some() && r.split.is_none() {
        report(
            &format!("{path}.sticky"),
            true,
            "`sticky` chooses among a `split`'s upstreams; this route has none".into(),
        );
    }
    if r.allow_override && r.split.is_none() {
        report(
            &format!("{path}.allow_override"),
            true,
            "`allow_override` pins requests to one of a `split`'s upstreams; this route has none"
                .into(),
        );
    }
    if http::HeaderName::from_bytes(r.override_header.as_bytes()).is_err() {
        report(
            &format!("{path}.override_header"),
            false,
            format!("`{}` is not a valid header name", r.override_header),
        );
    }
    if let Some(d) = &r.deprecation {
        versions::validate_deprecation(d, &format!("{path}.deprecation"), report);
    }
    if let Some(g) = &r.guard {
        versions::validate_guard(g, &format!("{path}.guard"), report);
        if r.split.as_ref().is_none_or(|s| s.len() < 2) {
            report(
                &format!("{path}.guard"),
                true,
                "`guard` watches the canaries of a `split` of two or more upstreams; this route has none"
                    .into(),
            );
        }
    }
    if let Some(p) = &r.strip_prefix {
        if !p.starts_with('/') {
            report(
                &format!("{path}.strip_prefix"),
                false,
                "strip_prefix must start with `/`".into(),
            );
        }
    }
}

fn validate_match(m: &MatchConfig, path: &str, report: &mut Report<'_>) {
    match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => report(
            &format!("{path}.path"),
            true,
            "use either `path` (exact) or `path_prefix`, not both".into(),
        ),
        (None, None) => report(
            path,
            false,
            "a match needs `path` or `path_prefix` (use `path_prefix: /` to match every path)"
                .into(),
        ),
        (Some(p), None) | (None, Some(p)) => {
            let key = if m.path.is_some() {
                "path"
            } else {
                "path_prefix"
            };
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                report(
                    &format!("{path}.{key}"),
                    false,
                    format!("`{p}` is not a valid path: it must start with `/` and hold no `?`, `#` or spaces"),
                );
            }
        }
    }
    if let Some(methods) = &m.methods {
        if methods.is_empty() {
            report(&format!("{path}.methods"), false, "methods is empty".into());
        }
        for (i, meth) in methods.iter().enumerate() {
            if http::Method::from_bytes(meth.to_ascii_uppercase().as_bytes()).is_err() {
                report(
                    &format!("{path}.methods[{i}]"),
                    false,
                    format!("`{meth}` is not an HTTP method"),
                );
            }
        }
    }
    if let Some(h) = &m.host {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let ok = !bare.is_empty()
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            report(
                &format!("{path}.host"),
                false,
                format!("`{h}` is not a host name (a leading `*.` wildcard is allowed; no port)"),
            );
        }
    }
    for (name, value) in &m.headers {
        let p = format!("{path}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            report(&p, true, format!("`{name}` is not a valid header name"));
        }
        if http::HeaderValue::from_str(&value.0).is_err() {
            report(&p, false, "not a valid header value".into());
        }
    }
}

fn unique_names<'a>(names: impl Iterator<Item = &'a str>, section: &str, report: &mut Report<'_>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.enumerate() {
        let path = format!("{section}[{i}].name");
        if name.is_empty() {
            report(&path, false, "name is empty".into());
        } else if let Some(first) = seen.insert(name, i) {
            report(
                &path,
                false,
                format!("duplicate name `{name}` (first used by {section}[{first}])"),
            );
        }
    }
}

/// A listen address: `IP:PORT` (`0.0.0.0:8080`, `[::]:8443`, `127.0.0.1:0`).
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address to bind: expected IP:PORT, like `0.0.0.0:8080`")
    })
}

/// An upstream endpoint: `IP:PORT` or `HOST:PORT`.
fn check_endpoint(text: &str) -> Result<(), String> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("`{text}` is not an endpoint: expected HOST:PORT, like `127.0.0.1:9101`");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().map(|p| p > 0).unwrap_or(false);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// ", did you mean `x`?" when a known name is one or two edits away.
fn suggest(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .filter(|k| edit_distance(name, k) <= 2)
        .min_by_key(|k| edit_distance(name, k))
        .map(|k| format!(", did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
