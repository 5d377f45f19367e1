//! The config loader: arbitrary bytes → UTF-8 text → `config::load_str`
//! (YAML parse, `${ENV}` expansion, typed deserialization, validation, then
//! the certificate and JWKS files a sound config names). It must never
//! panic: a config is refused with errors, never with a crash.
//!
//! On top of `load_str` it does what `portcullis check [--diff OLD]` does
//! (`src/main.rs`: error and warning display, `config::yaml::parse` of the
//! old file, `config::diff::diff`), and for a config that loads, what
//! `run` and every reload do next: `Snapshot::compile` (which may refuse
//! only what validation cannot know, and must not panic either).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{self, diff, yaml};
use portcullis::snapshot::Snapshot;
use portcullis::state::State;
use portcullis::telemetry::Metrics;
use serde_json::Value;

/// Relative file names in configs resolve against the repository root (so
/// the demo's `certs/...` load when `portcullis demo` made them).
fn base_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `${NAME}` lookups: a few set names, everything else unset.
fn env(name: &str) -> Option<String> {
    match name {
        "FUZZ" => Some("x".into()),
        "FUZZ_EMPTY" => Some(String::new()),
        "FUZZ_SECRET" => Some("0123456789abcdef0123456789abcdef-fuzz".into()),
        "FUZZ_PORT" => Some("8080".into()),
        "FUZZ_YAML" => Some("[a, {b: c}]: ${FUZZ}\n".into()),
        "FUZZ_DOLLAR" => Some("${FUZZ}".into()),
        _ => None,
    }
}

/// The demo config as `check --diff` would read it as the old file.
fn demo_raw() -> &'static Value {
    static RAW: OnceLock<Value> = OnceLock::new();
    RAW.get_or_init(|| {
        let text = include_str!("../../gateway.yaml");
        yaml::parse(text).map(|(v, _)| v).unwrap_or(Value::Null)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn show_diff(old: &Value, new: &Value) {
    for c in diff::diff(old, new) {
        let _ = c.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The value parsers config fields go through, on the raw text too.
    if text.len() < 256 {
        let _ = config::values::parse_duration(text);
        let _ = config::values::parse_size(text);
        let _ = config::values::expand_env(text, &env);
    }

    // `check --diff OLD`: the old file only needs to be YAML.
    let parsed = yaml::parse(text);
    if let Ok((old, _)) = &parsed {
        assert!(
            diff::diff(old, old).is_empty(),
            "a file differs from itself"
        );
        show_diff(old, demo_raw());
        show_diff(demo_raw(), old);
    }

    match config::load_str(text, "fuzz.yaml", base_dir(), &env) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused with no error");
            if parsed.is_err() {
                // A syntax error is reported as such (and alone).
                assert_eq!(errors.0.len(), 1, "a YAML syntax error and more: {errors}");
            }
            let shown = errors.to_string();
            assert!(
                shown.contains("fuzz.yaml:"),
                "error without its file: {shown}"
            );
        }
        Ok(loaded) => {
            assert!(parsed.is_ok(), "text that is not YAML loaded");
            assert_eq!(loaded.hash, config::sha256_hex(text.as_bytes()));
            for w in &loaded.warnings {
                let _ = w.to_string();
            }
            let c = &loaded.config;
            let _ = (
                c.listeners.len(),
                c.upstreams.len(),
                c.routes.len(),
                &loaded.hash[..12],
            );
            assert!(diff::diff(&loaded.raw, &loaded.raw).is_empty());
            show_diff(demo_raw(), &loaded.raw);

            // What `run` and a reload do with a config that passed `check`.
            let _rt = runtime().enter();
            let metrics = Metrics::new();
            let state = State::new(metrics);
            let _ = Snapshot::compile(&loaded, &state, 1);
        }
    }
});
