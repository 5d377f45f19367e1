use super::*;

fn load(text: &str) -> Result<Loaded, ConfigErrors> {
    let env = |n: &str| (n == "SET").then(|| "9101".to_string());
    load_str(text, "gw.yaml", PathBuf::from("."), &env)
}

fn errors(text: &str) -> Vec<String> {
    load(text)
        .expect_err("config should be invalid")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

const GOOD: &str = "\
listeners:
  - name: http
    bind: 127.0.0.1:0
upstreams:
  - name: a
    endpoints: ['127.0.0.1:${SET}']
    connect_timeout: 250ms
routes:
  - name: r
    match: { path_prefix: /api, methods: [get] }
    upstream: a
";

#[test]
fn good_config_loads_with_defaults() {
    let loaded = load(GOOD).unwrap();
    let c = &loaded.config;
    assert_eq!(c.upstreams[0].endpoints[0], "127.0.0.1:9101");
    assert_eq!(c.upstreams[0].connect_timeout, Dur::millis(250));
    assert_eq!(c.upstreams[0].request_timeout, Dur::secs(15));
    assert_eq!(c.server.max_body_bytes, Size(10 << 20));
    assert_eq!(c.admin.bind, "127.0.0.1:9901");
    assert_eq!(loaded.hash.len(), 64);
}

#[test]
fn every_unknown_key_is_reported_with_its_position() {
    let text = GOOD.replace("    connect_timeout", "    conect_timeout")
        + "  - name: r2\n    match: { path: /x }\n    upstrem: a\n";
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("gw.yaml:7:5: unknown key `conect_timeout`")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("gw.yaml:14:5: unknown key `upstrem`")),
        "{errs:#?}"
    );
}

#[test]
fn bad_values_are_all_reported() {
    let text = GOOD.replace("250ms", "250 msec").replace(
        "listeners:\n",
        "server:\n  max_body_bytes: 10XB\nlisteners:\n",
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("gw.yaml:2:19: invalid size `10XB`")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("gw.yaml:9:22: invalid duration `250 msec`")),
        "{errs:#?}"
    );
}

#[test]
fn unset_env_is_an_error_at_its_value() {
    let errs = errors(&GOOD.replace("${SET}", "${UNSET_VAR}"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("gw.yaml:6:17: environment variable `UNSET_VAR` is not set"),
        "{errs:#?}"
    );
}

#[test]
fn cross_references_duplicates_and_weights() {
    let text = "\
listeners:
  - { name: http, bind: 127.0.0.1:0 }
  - { name: http, bind: 127.0.0.1:1 }
upstreams:
  - { name: a, endpoints: [127.0.0.1:1] }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: b
  - name: s
    match: { path: /s }
    split:
      - { upstream: a, weight: 0 }
      - { upstream: aa, weight: 0 }
";
    let errs = errors(text);
    let expect = [
        "gw.yaml:3:13: duplicate name `http`",
        "gw.yaml:9:15: unknown upstream `b`, did you mean `a`?",
        "gw.yaml:13:7: split weights sum to 0",
        "gw.yaml:14:21: unknown upstream `aa`, did you mean `a`?",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e}: {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let errs = errors("listeners:\n  - name: [http\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("gw.yaml:3:"), "{errs:#?}");
    assert!(errs[0].contains("YAML syntax"), "{errs:#?}");
}

#[test]
fn bad_addresses_and_match() {
    let text = "\
listeners:
  - { name: http, bind: 'localhost:80' }
upstreams:
  - { name: a, endpoints: ['127.0.0.1', 'h:0'] }
routes:
  - name: r
    match: { methods: [GET], host: 'a b' }
    upstream: a
";
    let errs = errors(text);
    for e in [
        "gw.yaml:2:25: `localhost:80` is not an address to bind",
        "gw.yaml:4:28: `127.0.0.1` is not an endpoint",
        "gw.yaml:4:41: `h:0` is not an endpoint",
        "gw.yaml:7:12: a match needs `path` or `path_prefix`",
        "gw.yaml:7:36: `a b` is not a host name",
    ] {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e}: {errs:#?}"
        );
    }
}
