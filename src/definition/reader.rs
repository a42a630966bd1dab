//! Reads typed values out of a located YAML tree, collecting every problem instead of
//! stopping at the first. Stage kinds use the same reader for their own settings.

use std::sync::Arc;

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::diagnostics::{Diagnostic, Diagnostics, Location, SourceFile, did_you_mean, one_of};

/// A string from the file together with where it was written.
#[derive(Clone, Debug)]
pub struct Text {
    pub value: String,
    pub location: Location,
}

impl Text {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

/// Everything a reader needs: the file (for locations) and the sink for problems.
/// Letters, digits, `-` and `_`, starting with a letter: safe as a directory's name.
pub fn is_identifier(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The error for `text`, which should have been an identifier (a `what`).
pub fn not_an_identifier(diags: &mut Diagnostics, text: &Text, what: &str) {
    let d = diags.error(
        format!("`{}` is not a valid {what}", text.value),
        Some(text.location.clone()),
    );
    d.expected = Some("an identifier: letters, digits, `-` or `_`, starting with a letter".into());
    d.hint = Some("identifiers name directories in the warehouse, so they stay simple".into());
}

pub struct Reader<'d> {
    pub file: Arc<SourceFile>,
    pub diags: &'d mut Diagnostics,
}

impl<'d> Reader<'d> {
    pub fn new(file: Arc<SourceFile>, diags: &'d mut Diagnostics) -> Self {
        Self { file, diags }
    }

    pub fn loc(&self, node: &Node) -> Location {
        match node {
            Node::Scalar(s) => self.scalar_loc(s),
            // The parser marks a block mapping where it recognised it (after the first
            // key); users think of a mapping as starting at its first key.
            Node::Mapping(m) => match m.keys().next() {
                Some(k) => self.scalar_loc(k),
                None => Location::from_span(&self.file, node.span(), 1),
            },
            Node::Sequence(_) => Location::from_span(&self.file, node.span(), 1),
        }
    }

    pub fn scalar_loc(&self, node: &MarkedScalarNode) -> Location {
        Location::from_span(&self.file, node.span(), node.as_str().chars().count())
    }

    pub fn error(&mut self, message: impl Into<String>, at: Location) -> &mut Diagnostic {
        self.diags.error(message, Some(at))
    }

    fn kind_of(node: &Node) -> &'static str {
        match node {
            Node::Scalar(_) => "a single value",
            Node::Mapping(_) => "a mapping (key: value pairs)",
            Node::Sequence(_) => "a list",
        }
    }

    /// The node as a string scalar, or an error saying what `what` should be.
    pub fn text(&mut self, node: &Node, what: &str) -> Option<Text> {
        match node {
            Node::Scalar(s) => {
                let value = s.as_str().to_string();
                Some(Text {
                    value,
                    location: self.scalar_loc(s),
                })
            }
            other => {
                let at = self.loc(other);
                let found = Self::kind_of(other);
                self.error(format!("{what} must be a single value, found {found}"), at)
                    .expected = Some(format!("a string for {what}"));
                None
            }
        }
    }

    /// A non-empty identifier: letters, digits, `-` and `_`, starting with a letter.
    pub fn identifier(&mut self, node: &Node, what: &str) -> Option<Text> {
        let t = self.text(node, what)?;
        if !is_identifier(&t.value) {
            not_an_identifier(self.diags, &t, what);
            return None;
        }
        Some(t)
    }

    pub fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let t = self.text(node, what)?;
        match t.value.as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            other => {
                let d = self.error(format!("`{other}` is not a boolean for {what}"), t.location);
                d.expected = Some("`true` or `false`".into());
                None
            }
        }
    }

    pub fn unsigned(&mut self, node: &Node, what: &str) -> Option<u64> {
        let t = self.text(node, what)?;
        match t.value.replace('_', "").parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                let d = self.error(format!("`{}` is not a whole number for {what}", t.value), t.location);
                d.expected = Some("a non-negative integer, e.g. 1000000".into());
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice(&mut self, node: &Node, what: &str, allowed: &[&str]) -> Option<Text> {
        let t = self.text(node, what)?;
        if allowed.contains(&t.value.as_str()) {
            return Some(t);
        }
        let hint = did_you_mean(&t.value, allowed.iter().copied());
        let d = self.error(format!("unknown {what} `{}`", t.value), t.location.clone());
        d.expected = Some(one_of(allowed));
        d.hint = hint;
        None
    }

    pub fn sequence<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match node {
            Node::Sequence(s) => Some(s.as_slice()),
            other => {
                let at = self.loc(other);
                let found = Self::kind_of(other);
                let d = self.error(format!("{what} must be a list, found {found}"), at);
                d.expected = Some(format!("a list of {what}, one `- item` per line"));
                None
            }
        }
    }

    /// A list of strings; a single string is accepted as a list of one.
    pub fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<Text>> {
        if let Node::Scalar(_) = node {
            return self.text(node, what).map(|t| vec![t]);
        }
        let items = self.sequence(node, what)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.text(item, what) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Open a mapping for reading by key; report it if the node is something else.
    pub fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<Fields<'n>> {
        match node {
            Node::Mapping(m) => Some(Fields::new(m, what, self.loc(node))),
            other => {
                let at = self.loc(other);
                let found = Self::kind_of(other);
                let d = self.error(format!("{what} must be a mapping, found {found}"), at);
                d.expected = Some(format!("`key: value` lines describing the {what}"));
                None
            }
        }
    }
}

/// The keys of one mapping. Every key read is remembered so `finish` can report unknown
/// keys (with a did-you-mean) instead of ignoring them.
pub struct Fields<'n> {
    map: &'n MarkedMappingNode,
    what: String,
    pub location: Location,
    used: Vec<String>,
}

impl<'n> Fields<'n> {
    fn new(map: &'n MarkedMappingNode, what: &str, location: Location) -> Self {
        Self {
            map,
            what: what.to_string(),
            location,
            used: Vec::new(),
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn node(&self) -> &'n MarkedMappingNode {
        self.map
    }

    /// The value under `key`, if present; marks the key as known.
    pub fn get(&mut self, key: &str) -> Option<&'n Node> {
        self.used.push(key.to_string());
        self.map.get_node(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get_node(key).is_some()
    }

    /// The value under `key`, or an error that it is missing.
    pub fn require(&mut self, r: &mut Reader, key: &str, expected: &str) -> Option<&'n Node> {
        let v = self.get(key);
        if v.is_none() {
            let at = self.location.clone();
            let d = r.error(format!("{} is missing required key `{key}`", self.what), at);
            d.expected = Some(expected.to_string());
        }
        v
    }

    pub fn text(&mut self, r: &mut Reader, key: &str) -> Option<Text> {
        let n = self.get(key)?;
        r.text(n, &format!("`{key}`"))
    }

    pub fn required_text(&mut self, r: &mut Reader, key: &str, expected: &str) -> Option<Text> {
        let n = self.require(r, key, expected)?;
        r.text(n, &format!("`{key}`"))
    }

    pub fn bool_or(&mut self, r: &mut Reader, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(n) => r.boolean(n, &format!("`{key}`")).unwrap_or(default),
            None => default,
        }
    }

    /// The keys read so far.
    pub fn used(&self) -> impl Iterator<Item = &str> {
        self.used.iter().map(String::as_str)
    }

    /// Report every key not read and not in `also_allowed`, suggesting the closest valid key.
    pub fn finish(self, r: &mut Reader, also_allowed: &[&str]) {
        let mut valid: Vec<&str> = self.used.iter().map(|s| s.as_str()).collect();
        valid.extend_from_slice(also_allowed);
        valid.sort_unstable();
        valid.dedup();
        for (key, _) in self.map.iter() {
            if valid.contains(&key.as_str()) {
                continue;
            }
            let at = r.scalar_loc(key);
            let hint = did_you_mean(key.as_str(), valid.iter().copied());
            let d = r.error(format!("unknown key `{}` in {}", key.as_str(), self.what), at);
            d.expected = Some(one_of(&valid));
            d.hint = hint;
        }
    }
}
