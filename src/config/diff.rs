//! The semantic difference between two configs, as a reload would apply it:
//! named items (listeners, upstreams, routes, and any later named list)
//! are matched by `name`, so reordering is not a change but a renamed item
//! is a removal plus an addition; everything else is compared key by key.
//! Values are compared as written (after `${ENV}` expansion), so removing
//! a key that had its default value still shows.
//!
//! Used by hot reload (log, `/status`, `POST /reload`) and by
//! `portcullis check --diff OLD NEW`.

use std::fmt;

use serde_json::Value;

/// What happened to one item or key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One change, e.g. `~ upstream `users`: endpoints: [a, b] → [a, c]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The section: `listener`, `upstream`, `route`, `server`, ...
    pub section: String,
    /// The item's name (for named lists) or key path.
    pub item: String,
    /// For changes: `key: old → new`, one per changed key.
    pub details: Vec<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed => '~',
        };
        write!(f, "{sign} {} `{}`", self.section, self.item)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details.join("; "))?;
        }
        Ok(())
    }
}

/// Section names for the top-level lists whose items have a `name`.
fn singular(section: &str) -> &str {
    match section {
        "listeners" => "listener",
        "upstreams" => "upstream",
        "routes" => "route",
        other => other.strip_suffix('s').unwrap_or(other),
    }
}

/// Every change from `old` to `new`: sections and keys in alphabetical
/// order, named items in the new file's order after the removed ones.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let empty = serde_json::Map::new();
    let old_top = old.as_object().unwrap_or(&empty);
    let new_top = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = new_top.keys().collect();
    keys.extend(old_top.keys().filter(|k| !new_top.contains_key(*k)));
    let mut changes = Vec::new();
    for key in keys {
        let (o, n) = (old_top.get(key), new_top.get(key));
        if o == n {
            continue;
        }
        match (named_list(o), named_list(n)) {
            (Some(o), Some(n)) => diff_named(singular(key), &o, &n, &mut changes),
            _ => {
                let mut details = Vec::new();
                diff_values("", o, n, &mut details);
                if !details.is_empty() {
                    changes.push(Change {
                        kind: ChangeKind::Changed,
                        section: "setting".into(),
                        item: key.clone(),
                        details,
                    });
                }
            }
        }
    }
    changes
}

/// `Some` if `v` is absent or a list of maps that all have a string `name`.
fn named_list(v: Option<&Value>) -> Option<Vec<(&str, &Value)>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| Some((item.get("name")?.as_str()?, item)))
            .collect(),
        Some(_) => None,
    }
}

fn find<'v>(list: &[(&str, &'v Value)], name: &str) -> Option<&'v Value> {
    list.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn diff_named(
    section: &str,
    old: &[(&str, &Value)],
    new: &[(&str, &Value)],
    out: &mut Vec<Change>,
) {
    for (name, _) in old {
        if find(new, name).is_none() {
            out.push(Change {
                kind: ChangeKind::Removed,
                section: section.into(),
                item: (*name).into(),
                details: Vec::new(),
            });
        }
    }
    let old_order: Vec<&str> = old
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| find(new, n).is_some())
        .collect();
    let new_order: Vec<&str> = new
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| find(old, n).is_some())
        .collect();
    for (name, value) in new {
        match find(old, name) {
            None => out.push(Change {
                kind: ChangeKind::Added,
                section: section.into(),
                item: (*name).into(),
                details: Vec::new(),
            }),
            Some(before) => {
                let mut details = Vec::new();
                diff_values("", Some(before), Some(value), &mut details);
                if !details.is_empty() {
                    out.push(Change {
                        kind: ChangeKind::Changed,
                        section: section.into(),
                        item: (*name).into(),
                        details,
                    });
                }
            }
        }
    }
    // Order matters for routes (ties go to the first listed).
    if old_order != new_order {
        out.push(Change {
            kind: ChangeKind::Changed,
            section: format!("{section} order"),
            item: new_order.join(", "),
            details: Vec::new(),
        });
    }
}

fn diff_values(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            for (k, nv) in n {
                diff_values(&super::yaml::join_key(path, k), o.get(k), Some(nv), out);
            }
            for (k, ov) in o {
                if !n.contains_key(k) {
                    diff_values(&super::yaml::join_key(path, k), Some(ov), None, out);
                }
            }
        }
        (o, n) if o == n => {}
        (o, n) => out.push(format!(
            "{}: {} → {}",
            if path.is_empty() { "value" } else { path },
            show(path, o),
            show(path, n)
        )),
    }
}

/// A value for a log line: secrets (after `${ENV}` expansion they are
/// plain text here) never are.
fn show(path: &str, v: Option<&Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(_) if path == "secret" || path.ends_with(".secret") => "(secret)".into(),
        Some(Value::String(s)) if s.starts_with("redis://") || s.starts_with("rediss://") => {
            super::limits::redact_url(s)
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            let text = other.to_string();
            // Keep log lines and `/status` readable.
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}…", &text[..cut])
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(old: Value, new: Value) -> Vec<String> {
        diff(&old, &new).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn named_items_are_matched_by_name_and_keys_compared() {
        let old = json!({
            "upstreams": [
                {"name": "a", "endpoints": ["1:1"]},
                {"name": "gone", "endpoints": ["2:2"]},
            ],
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "a"}],
            "server": {"idle_timeout": "60s"},
        });
        let new = json!({
            "upstreams": [
                {"name": "a", "endpoints": ["1:1", "3:3"], "balance": "least_requests"},
                {"name": "fresh", "endpoints": ["4:4"]},
            ],
            "routes": [{"name": "r", "match": {"path_prefix": "/v2"}, "upstream": "a"}],
            "server": {"idle_timeout": "30s"},
        });
        assert_eq!(
            lines(old, new),
            [
                "~ route `r`: match.path_prefix: / → /v2",
                "~ setting `server`: idle_timeout: 60s → 30s",
                "- upstream `gone`",
                "~ upstream `a`: balance: (unset) → least_requests; endpoints: [\"1:1\"] → [\"1:1\",\"3:3\"]",
                "+ upstream `fresh`",
            ]
        );
    }

    #[test]
    fn secrets_and_redis_passwords_never_reach_the_diff() {
        let old = json!({
            "jwt": [{"name": "j", "secret": "old-hmac-secret"}],
            "rate_limits": [{"name": "p", "store": "redis://:old-pw@10.0.0.1:6379/0"}],
        });
        let new = json!({
            "jwt": [{"name": "j", "secret": "new-hmac-secret"}],
            "rate_limits": [{"name": "p", "store": "rediss://app:new-pw@10.0.0.2:6380/1"}],
        });
        assert_eq!(
            lines(old, new),
            [
                "~ jwt `j`: secret: (secret) → (secret)",
                "~ rate_limit `p`: store: redis://:***@10.0.0.1:6379/0 → rediss://app:***@10.0.0.2:6380/1",
            ]
        );
    }

    #[test]
    fn reordering_routes_is_a_change_and_identical_configs_have_none() {
        let a = json!({"routes": [{"name": "x"}, {"name": "y"}]});
        let b = json!({"routes": [{"name": "y"}, {"name": "x"}]});
        assert_eq!(lines(a.clone(), b), ["~ route order `y, x`"]);
        assert!(lines(a.clone(), a).is_empty());
    }
}
