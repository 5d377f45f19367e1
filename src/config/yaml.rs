//! YAML text → a plain JSON-like value tree plus a map from every node's path
//! (`routes[2].match.path_prefix`) to where it stands in the file.
//!
//! serde's YAML deserializers report only the first error, and know nothing of
//! our semantic checks. Keeping our own position index lets every later stage
//! (env expansion, typed deserialization, cross-reference validation) report
//! `PATH:LINE:COL` for as many errors as it finds.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// 1-based line and column of a node in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// Where each node of the document is: the value's position and, for map
/// entries, the key's (unknown keys are reported at the key).
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Positions {
    /// Position of the value at `path`, or of its nearest ancestor that exists.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// Position of the key at `path` (falling back to the value's).
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a child key to a path: `a` + `b` → `a.b`.
pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins an index to a path: `a` + 3 → `a[3]`.
pub fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a value tree and its position index.
pub fn parse(text: &str) -> Result<(Value, Positions), SyntaxError> {
    let mut builder = Builder::default();
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        builder.event(event, span)?;
    }
    let root = builder.root.unwrap_or(Value::Object(Map::new()));
    Ok((root, builder.positions))
}

enum Frame {
    Seq {
        path: String,
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        path: String,
        entries: Map<String, Value>,
        pending_key: Option<String>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    anchors: HashMap<usize, Value>,
    positions: Positions,
    documents: usize,
}

impl Builder {
    /// The path the next value will have, or `None` when the next scalar is a key.
    fn next_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { path, items, .. }) => Some(join_index(path, items.len())),
            Some(Frame::Map {
                path, pending_key, ..
            }) => pending_key.as_ref().map(|k| join_key(path, k)),
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = Pos::from_span(&span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "only one YAML document is allowed".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                if self.next_path().is_none() {
                    // A mapping key.
                    if let Some(Frame::Map {
                        path,
                        entries,
                        pending_key,
                        ..
                    }) = self.stack.last_mut()
                    {
                        let key = text.into_owned();
                        if entries.contains_key(&key) {
                            return Err(SyntaxError {
                                pos,
                                message: format!("duplicate key `{key}`"),
                            });
                        }
                        self.positions.keys.insert(join_key(path, &key), pos);
                        *pending_key = Some(key);
                    }
                    return Ok(());
                }
                let value = scalar(&text, style);
                self.push(value, anchor, pos)?;
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path().unwrap_or_default();
                self.positions.values.insert(path.clone(), pos);
                self.stack.push(Frame::Seq {
                    path,
                    items: Vec::new(),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let Some(path) = self.next_path() else {
                    return Err(SyntaxError {
                        pos,
                        message: "complex mapping keys are not supported".into(),
                    });
                };
                self.positions.values.insert(path.clone(), pos);
                self.stack.push(Frame::Map {
                    path,
                    entries: Map::new(),
                    pending_key: None,
                    anchor,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
                    Some(Frame::Map {
                        entries, anchor, ..
                    }) => (Value::Object(entries), anchor),
                    None => return Ok(()),
                };
                self.attach(value, anchor);
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().ok_or(SyntaxError {
                    pos,
                    message: "alias to an unknown anchor".into(),
                })?;
                if self.next_path().is_none() {
                    return Err(SyntaxError {
                        pos,
                        message: "aliases cannot be mapping keys".into(),
                    });
                }
                self.push(value, 0, pos)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, value: Value, anchor: usize, pos: Pos) -> Result<(), SyntaxError> {
        if let Some(path) = self.next_path() {
            self.positions.values.insert(path, pos);
        }
        self.attach(value, anchor);
        Ok(())
    }

    fn attach(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => {
                if let Some(key) = pending_key.take() {
                    entries.insert(key, value);
                }
            }
        }
    }
}

/// Resolves a scalar per the YAML 1.2 core schema: quoted scalars are always
/// strings; plain ones may be null, booleans or numbers.
fn scalar(text: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    if text.bytes().any(|b| b.is_ascii_digit()) && !text.contains(':') {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_nodes() {
        let text = "a:\n  b: [1, 2]\n  c:\n    - x: \"s\"\n";
        let (v, pos) = parse(text).unwrap();
        assert_eq!(v["a"]["b"][1], 2);
        assert_eq!(v["a"]["c"][0]["x"], "s");
        assert_eq!(pos.value("a.b[1]"), Pos { line: 2, col: 10 });
        assert_eq!(pos.key("a.c[0].x"), Pos { line: 4, col: 7 });
        assert_eq!(pos.value("a.c[0].x"), Pos { line: 4, col: 10 });
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(pos.value("a.c[0].x.y"), Pos { line: 4, col: 10 });
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 1 });
        assert!(err.message.contains("duplicate key"));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let (v, _) = parse("a: 1\nb: \"1\"\nc: yes\nd: true\ne: 1.5\nf: 127.0.0.1:80\n").unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], "yes");
        assert_eq!(v["d"], true);
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], "127.0.0.1:80");
    }

    #[test]
    fn anchors_and_aliases() {
        let (v, _) = parse("a: &x [1]\nb: *x\n").unwrap();
        assert_eq!(v["b"][0], 1);
    }
}
