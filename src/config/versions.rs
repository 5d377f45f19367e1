//! The version and release keys (issue 6): top-level `versioning`, route
//! `match.version`, `keep_version_segment`, `deprecation` and `guard`; their
//! value syntaxes (versions, dates) and the checks `portcullis check` runs.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::validate::Report;
use super::values::Dur;

/// `versioning`: where a request's API version is read from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersioningConfig {
    /// The sources consulted; when absent, `path` and `header`, and
    /// `accept` too when `accept_vendor` is set.
    #[serde(default)]
    pub from: Option<Vec<VersionSource>>,
    #[serde(default = "default_version_header")]
    pub header: String,
    /// `vnd.example` reads `Accept: application/vnd.example.v2+json`.
    #[serde(default)]
    pub accept_vendor: Option<String>,
    /// The version of a request that names none.
    #[serde(default)]
    pub default: Option<ApiVersion>,
}

fn default_version_header() -> String {
    "API-Version".into()
}

impl VersioningConfig {
    /// The sources in the order they are consulted.
    pub fn sources(&self) -> Vec<VersionSource> {
        match &self.from {
            Some(list) => list.clone(),
            None if self.accept_vendor.is_some() => vec![
                VersionSource::Path,
                VersionSource::Header,
                VersionSource::Accept,
            ],
            None => vec![VersionSource::Path, VersionSource::Header],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// The first path segment of the form `v<N>`.
    Path,
    /// `versioning.header`.
    Header,
    /// The `Accept` vendor media type.
    Accept,
}

impl VersionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Path => "path",
            VersionSource::Header => "header",
            VersionSource::Accept => "accept",
        }
    }
}

/// An API version: a whole number, written `2` or `"2"` in the config
/// and `v2`, `2` or `.v2+` on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion(pub u32);

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::values::string_or_number(d)?;
        parse_version_number(text.as_bytes())
            .map(ApiVersion)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "`{text}` is not a version: a version is a whole number, like \"2\""
                ))
            })
    }
}

/// `2` → 2; at most 9 digits, no sign, no leading `v`.
pub fn parse_version_number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0')),
    )
}

/// `routes[].deprecation`: the route serves a version on its way out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecationConfig {
    /// When the version was deprecated: `Deprecation: @<epoch>` (RFC 9745);
    /// without it, `Deprecation: true`.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// When it stops being served: `Sunset` (RFC 8594).
    #[serde(default)]
    pub sunset: Option<Timestamp>,
    /// The successor: `Link: <…>; rel="successor-version"`.
    #[serde(default)]
    pub link: Option<String>,
}

/// A point in time written `2027-06-30` (midnight UTC) or RFC 3339
/// (`2027-06-30T12:00:00Z`); seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::values::string_or_number(d)?;
        parse_timestamp(&text)
            .map(Timestamp)
            .map_err(de::Error::custom)
    }
}

pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let t = text.trim();
    if let Ok(date) = time::Date::parse(t, format_description!("[year]-[month]-[day]")) {
        return Ok(date.midnight().assume_utc().unix_timestamp());
    }
    time::OffsetDateTime::parse(t, &Rfc3339)
        .map(|dt| dt.unix_timestamp())
        .map_err(|_| {
            format!("`{text}` is not a date: use YYYY-MM-DD or an RFC 3339 time like 2027-06-30T00:00:00Z")
        })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (the IMF-fixdate of RFC 9110 §5.6.7).
pub fn http_date(unix: i64) -> String {
    use time::macros::format_description;
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// `routes[].guard`: the canary guardrail.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// A non-first split target whose 5xx share over `window` exceeds this
    /// (and is worse than the first target's beyond chance) is drained.
    pub max_error_rate: f64,
    #[serde(default = "default_guard_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_guard_window")]
    pub window: Dur,
}

fn default_guard_min_requests() -> u32 {
    100
}

fn default_guard_window() -> Dur {
    Dur::secs(60)
}

pub fn validate_versioning(v: &VersioningConfig, report: &mut Report<'_>) {
    if let Some(from) = &v.from {
        if from.is_empty() {
            report(
                "versioning.from",
                false,
                "name at least one source: path, header or accept".into(),
            );
        }
        for (i, s) in from.iter().enumerate() {
            if from[..i].contains(s) {
                report(
                    &format!("versioning.from[{i}]"),
                    false,
                    format!("`{}` is listed twice", s.as_str()),
                );
            }
        }
        if from.contains(&VersionSource::Accept) && v.accept_vendor.is_none() {
            report(
                "versioning.from",
                false,
                "`accept` needs `accept_vendor` (e.g. `vnd.example` for application/vnd.example.v2+json)"
                    .into(),
            );
        }
    }
    if http::HeaderName::from_bytes(v.header.as_bytes()).is_err() {
        report(
            "versioning.header",
            false,
            format!("`{}` is not a valid header name", v.header),
        );
    }
    if let Some(vendor) = &v.accept_vendor {
        let ok = !vendor.is_empty()
            && vendor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            report(
                "versioning.accept_vendor",
                false,
                format!("`{vendor}` is not a media subtype prefix like `vnd.example`"),
            );
        }
    }
}

pub fn validate_deprecation(d: &DeprecationConfig, path: &str, report: &mut Report<'_>) {
    if let Some(link) = &d.link {
        let ok = !link.is_empty()
            && link
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
        if !ok {
            report(
                &format!("{path}.link"),
                false,
                format!("`{link}` is not a URI reference (no spaces, `<` or `>`)"),
            );
        }
    }
    if let (Some(since), Some(sunset)) = (d.since, d.sunset) {
        if sunset.0 < since.0 {
            report(
                &format!("{path}.sunset"),
                false,
                "the sunset is before the deprecation date (`since`)".into(),
            );
        }
    }
}

pub fn validate_guard(g: &GuardConfig, path: &str, report: &mut Report<'_>) {
    if !(g.max_error_rate > 0.0 && g.max_error_rate < 1.0) {
        report(
            &format!("{path}.max_error_rate"),
            false,
            "must be a share between 0 and 1, like 0.05".into(),
        );
    }
    if g.min_requests == 0 {
        report(
            &format!("{path}.min_requests"),
            false,
            "must be at least 1".into(),
        );
    }
    if g.window.0.as_millis() < 100 {
        report(
            &format!("{path}.window"),
            false,
            "must be at least 100ms".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_http_dates() {
        assert_eq!(parse_timestamp("2027-06-30"), Ok(1_814_313_600));
        assert_eq!(http_date(1_814_313_600), "Wed, 30 Jun 2027 00:00:00 GMT");
        assert_eq!(
            parse_timestamp("2027-06-30T12:00:00+02:00"),
            Ok(1_814_313_600 + 10 * 3600)
        );
        for bad in ["2027-13-01", "2027-02-30", "30/06/2027", "soon", ""] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_numbers() {
        assert_eq!(parse_version_number(b"2"), Some(2));
        assert_eq!(parse_version_number(b"010"), Some(10));
        for bad in [&b""[..], b"v2", b"2.1", b"-1", b"1234567890"] {
            assert_eq!(parse_version_number(bad), None, "{bad:?}");
        }
    }
}
