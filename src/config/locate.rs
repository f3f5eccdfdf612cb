//! Where each value sits in a YAML file: a map from a dotted path
//! (`classes.circulation_history.retain`, `report.to[1]`) to line and column, so that
//! validation errors found after deserializing can still name the place. Also finds
//! duplicate keys, which serde would silently let the last one win.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A place in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Path → location of the value at that path, plus duplicate keys found.
#[derive(Debug, Default)]
pub struct LocationIndex {
    values: HashMap<String, Location>,
    /// `(path of the duplicate key, its location)`.
    pub duplicates: Vec<(String, Location)>,
}

impl LocationIndex {
    /// Indexes `text`. A text that does not parse gives an empty index (serde reports
    /// the syntax error with its own location).
    pub fn build(text: &str) -> LocationIndex {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return LocationIndex::default();
        }
        LocationIndex {
            values: b.values,
            duplicates: b.duplicates,
        }
    }

    /// The location of the value at `path`, or of its nearest indexed ancestor (at
    /// worst the start of the document).
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.values.get(p) {
                return Some(*l);
            }
            if p.is_empty() {
                return None;
            }
            // Fall back to the parent, and finally to the document itself ("").
            p = p.rfind(['.', '[']).map_or("", |cut| &p[..cut]);
        }
    }

    /// Whether the exact path is present in the file.
    pub fn contains(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: Vec<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    values: HashMap<String, Location>,
    duplicates: Vec<(String, Location)>,
}

fn loc(m: Marker) -> Location {
    Location {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the value about to start; `None` when the next scalar is a map key.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key, .. }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => match self.next_value_path() {
                Some(p) => {
                    self.values.insert(p, loc(mark));
                }
                None => {
                    if let Some(Frame::Map { path, key, seen }) = self.stack.last_mut() {
                        if seen.contains(&text) {
                            self.duplicates.push((join(path, &text), loc(mark)));
                        } else {
                            seen.push(text.clone());
                        }
                        *key = Some(text);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(p) = self.next_value_path() {
                    self.values.insert(p, loc(mark));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.values.insert(path.clone(), loc(mark));
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    seen: Vec::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.values.insert(path.clone(), loc(mark));
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_and_duplicates() {
        let text = "a:\n  b: 1\n  c:\n    - x\n    - y\na: 2\n";
        let idx = LocationIndex::build(text);
        assert_eq!(idx.find("a.b"), Some(Location { line: 2, column: 6 }));
        assert_eq!(idx.find("a.c[1]"), Some(Location { line: 5, column: 7 }));
        assert_eq!(
            idx.find("a.c[1].zzz"),
            Some(Location { line: 5, column: 7 })
        );
        assert_eq!(idx.duplicates.len(), 1);
        assert_eq!(idx.duplicates[0].0, "a");
        assert_eq!(idx.duplicates[0].1.line, 6);
    }
}
