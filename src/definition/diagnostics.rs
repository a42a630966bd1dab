//! Located diagnostics for pipeline files: every problem names the file, line and column,
//! what was expected and, where we can guess it, a hint. Rendered with miette.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, SourceSpan};

/// One pipeline file (or SQL file) whose text diagnostics point into.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of each character, for non-ASCII text (ASCII: the character index is
    /// the byte offset). A generated pipeline has thousands of locations: no rescans.
    char_offsets: Option<Vec<usize>>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<Self> {
        let text: String = text.into();
        let char_offsets = (!text.is_ascii()).then(|| text.char_indices().map(|(i, _)| i).collect());
        Arc::new(Self {
            path: path.into(),
            text,
            char_offsets,
        })
    }

    /// Byte offset of a 0-based character index (YAML markers count characters).
    fn byte_offset(&self, character: usize) -> usize {
        match &self.char_offsets {
            None => character.min(self.text.len()),
            Some(offsets) => offsets.get(character).copied().unwrap_or(self.text.len()),
        }
    }
}

/// A position in a source file: 1-based line and column, plus the byte range it covers.
#[derive(Clone, Debug)]
pub struct Location {
    pub file: Arc<SourceFile>,
    pub line: usize,
    pub column: usize,
    pub offset: usize,
    pub len: usize,
}

impl Location {
    /// From a marked-yaml span; `len_chars` is how many characters to underline.
    pub fn from_span(file: &Arc<SourceFile>, span: &marked_yaml::Span, len_chars: usize) -> Self {
        match span.start() {
            Some(m) => {
                let offset = file.byte_offset(m.character());
                let end = file.byte_offset(m.character() + len_chars.max(1));
                Location {
                    file: file.clone(),
                    line: m.line(),
                    column: m.column(),
                    offset,
                    len: end.saturating_sub(offset).max(1),
                }
            }
            None => Location::start_of(file),
        }
    }

    pub fn from_marker(file: &Arc<SourceFile>, m: &marked_yaml::Marker) -> Self {
        Self::from_span(file, &marked_yaml::Span::new_start(*m), 1)
    }

    pub fn start_of(file: &Arc<SourceFile>) -> Self {
        Location {
            file: file.clone(),
            line: 1,
            column: 1,
            offset: 0,
            len: 0,
        }
    }

    /// A 1-based line and column inside another file (e.g. a SQL query file).
    pub fn at_line_column(file: &Arc<SourceFile>, line: usize, column: usize) -> Self {
        let mut offset = 0;
        for (i, l) in file.text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                offset += l
                    .char_indices()
                    .nth(column.saturating_sub(1))
                    .map(|(b, _)| b)
                    .unwrap_or(0);
                break;
            }
            offset += l.len();
        }
        Location {
            file: file.clone(),
            line,
            column,
            offset: offset.min(file.text.len()),
            len: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.path.display(), self.line, self.column)
    }
}

/// One problem found in a pipeline definition.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    /// What would have been valid here.
    pub expected: Option<String>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, location: Option<Location>) -> Self {
        Self {
            message: message.into(),
            location,
            expected: None,
            hint: None,
        }
    }
    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    /// Render with the source line underlined, for a terminal.
    pub fn render(&self) -> String {
        let report = Rendered(self);
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_context_lines(1)
            .with_width(100);
        if handler.render_report(&mut out, &report).is_err() {
            out = self.to_string();
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(e) = &self.expected {
            write!(f, " (expected {e})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// Adapter giving miette what it needs to draw the snippet.
struct Rendered<'a>(&'a Diagnostic);

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.location {
            Some(loc) => write!(f, "{} ({loc})", self.0.message),
            None => f.write_str(&self.0.message),
        }
    }
}
impl std::error::Error for Rendered<'_> {}

/// Lines longer than this are not drawn as a snippet (the message still names the file,
/// line and column): a machine-written one-line file would fill the screen, and miette
/// cannot draw past column 65,535.
const SNIPPET_LINE_LIMIT: usize = 1_000;

impl Rendered<'_> {
    /// The location, when its line is short enough to draw.
    fn snippet(&self) -> Option<&Location> {
        let loc = self.0.location.as_ref()?;
        let text = &loc.file.text;
        let start = text[..loc.offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        (end - start <= SNIPPET_LINE_LIMIT).then_some(loc)
    }
}

impl miette::Diagnostic for Rendered<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let d = self.0;
        let text = match (&d.expected, &d.hint) {
            (Some(e), Some(h)) => format!("expected {e}\nhint: {h}"),
            (Some(e), None) => format!("expected {e}"),
            (None, Some(h)) => format!("hint: {h}"),
            (None, None) => return None,
        };
        Some(Box::new(text))
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.snippet().map(|l| &l.file.text as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let loc = self.snippet()?;
        let span = SourceSpan::new(loc.offset.into(), loc.len);
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_string()),
            span,
        ))))
    }
}

/// How many problems a report draws; the rest are counted.
pub const SHOWN_AT_MOST: usize = 50;

/// Everything wrong with a definition, in file order. Parsing and validation collect into
/// one of these so a user sees all problems at once, not just the first.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }
    pub fn error(&mut self, message: impl Into<String>, location: Option<Location>) -> &mut Diagnostic {
        self.list.push(Diagnostic::new(message, location));
        let last = self.list.len() - 1;
        &mut self.list[last]
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.list.extend(other.list);
    }
    /// Sort by file and position so the report reads top to bottom.
    pub fn sorted(mut self) -> Self {
        self.list.sort_by_key(|d| {
            d.location
                .as_ref()
                .map(|l| (l.file.path.clone(), l.line, l.column))
                .unwrap_or_default()
        });
        self
    }
    /// The first [`SHOWN_AT_MOST`] problems drawn, the rest counted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in self.list.iter().take(SHOWN_AT_MOST) {
            out.push_str(&d.render());
            out.push('\n');
        }
        if self.list.len() > SHOWN_AT_MOST {
            out.push_str(&format!(
                "... and {} more, not shown (fix these first: later ones often follow from them)\n",
                self.list.len() - SHOWN_AT_MOST
            ));
        }
        out.push_str(&format!(
            "{} error{} found\n",
            self.list.len(),
            if self.list.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.list {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" for a misspelt name, if one candidate is close enough.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&wrong.to_lowercase(), &c.to_lowercase());
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A list like "`a`, `b` or `c`" for messages.
pub fn one_of(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_positions_map_to_byte_offsets_in_ascii_and_unicode_text() {
        let ascii = SourceFile::new("a.yaml", "ab\ncd");
        assert_eq!(ascii.byte_offset(3), 3);
        assert_eq!(ascii.byte_offset(99), 5);
        // `é` and `€` take 2 and 3 bytes.
        let text = SourceFile::new("u.yaml", "é: €x\ny");
        assert_eq!(text.byte_offset(0), 0);
        assert_eq!(text.byte_offset(1), 2);
        assert_eq!(text.byte_offset(3), 4);
        assert_eq!(text.byte_offset(4), 7);
        assert_eq!(text.byte_offset(6), 9);
        assert_eq!(text.byte_offset(7), text.text.len());
    }

    /// Found in review: a machine-written one-line pipeline over 64 KiB with an error past
    /// column 65,535 made the renderer panic, and 40k errors took 20 s to render.
    #[test]
    fn an_error_far_along_a_long_line_renders_and_long_reports_are_capped() {
        let text = format!("{}bad", "x".repeat(70_000));
        let file = SourceFile::new("long.yaml", text);
        let at = Location::at_line_column(&file, 1, 70_001);
        let one = Diagnostic::new("something is wrong here", Some(at.clone())).render();
        assert!(one.contains("something is wrong here"), "{one}");
        assert!(one.contains("long.yaml:1:70001"), "{one}");

        let mut many = Diagnostics::default();
        for i in 0..10_000 {
            many.push(Diagnostic::new(format!("problem {i}"), Some(at.clone())));
        }
        let report = many.render();
        assert_eq!(report.matches("problem ").count(), SHOWN_AT_MOST);
        assert!(
            report.contains(&format!("... and {} more", 10_000 - SHOWN_AT_MOST)),
            "{report}"
        );
        assert!(report.ends_with("10000 errors found\n"), "{report}");
    }
}
