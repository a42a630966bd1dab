//! YAML text -> [`Pipeline`]. Structural problems (wrong shapes, unknown keys, bad types)
//! are collected here; cross-references are checked in `validate`.

use std::path::Path;
use std::sync::Arc;

use marked_yaml::{LoaderOptions, Node};

use super::diagnostics::{Diagnostics, Location, SourceFile, did_you_mean};
use super::model::*;
use super::reader::{Reader, Text};

const TOP_KEYS: &[&str] = &[
    "pipeline",
    "description",
    "warehouse",
    "organizations",
    "sources",
    "references",
    "streams",
];
const ORG_KEYS: &[&str] = &["id", "name", "tier", "upstream", "currency"];
const ORG_FILE_KEYS: &[&str] = &["url", "format", "delimiter"];
const TABLE_KEYS: &[&str] = &["url", "format", "schema", "delimiter", "has_header"];
const COLUMN_KEYS: &[&str] = &["name", "type", "nullable", "output", "description"];
const STREAM_KEYS: &[&str] = &[
    "id",
    "kind",
    "owner",
    "input",
    "period",
    "stages",
    "columns",
    "sample",
    "extends",
    "description",
    "order_by",
    "for_each",
    "review",
];

/// Parse a pipeline file's text. Returns the pipeline if it could be built at all, with
/// every problem found on the way.
pub fn parse(file: Arc<SourceFile>) -> (Option<Pipeline>, Diagnostics) {
    let mut diags = Diagnostics::default();
    // The YAML parser recurses per level of nesting: a hostile file 25,000 levels deep
    // would overflow the stack, so the depth is checked on the text first.
    if let Some((line, column, message, hint)) = not_one_text_document(&file.text) {
        let d = diags.error(message, Some(Location::at_line_column(&file, line, column)));
        d.hint = Some(hint.into());
        return (None, diags);
    }
    if let Some((line, column)) = nesting_beyond(&file.text, MAX_NESTING) {
        let d = diags.error(
            format!("the file nests deeper than {MAX_NESTING} levels"),
            Some(Location::at_line_column(&file, line, column)),
        );
        d.expected = Some("a pipeline nests a few levels deep (streams, stages, their settings)".into());
        d.hint = Some("this is not a pipeline file, or it was generated wrongly".into());
        return (None, diags);
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, &file.text, options) {
        Ok(root) => root,
        Err(e) => {
            diags.push(load_error(&file, e));
            return (None, diags);
        }
    };
    let p = {
        let mut r = Reader::new(file.clone(), &mut diags);
        parse_root(&mut r, &root)
    };
    (p, diags)
}

/// A pipeline file is one YAML document of text: a NUL byte (the parser would stop there)
/// or a second document (it would be ignored) is an error where it starts.
fn not_one_text_document(text: &str) -> Option<(usize, usize, String, &'static str)> {
    let mut content = false;
    let mut ended = false;
    for (i, line) in text.split('\n').enumerate() {
        if let Some(at) = line.find('\0') {
            return Some((
                i + 1,
                line[..at].chars().count() + 1,
                "the file holds a NUL byte: it is not a text file".into(),
                "a pipeline file is YAML text (UTF-8)",
            ));
        }
        let line = line.trim_end();
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if (marker && content) || (ended && !line.is_empty() && !line.starts_with('#')) {
            return Some((
                i + 1,
                1,
                "a second YAML document starts here; a pipeline file holds one".into(),
                "put everything in one document, or split the pipelines into files of their own",
            ));
        }
        if line == "..." {
            ended = true;
        } else if !marker && !line.is_empty() && !line.starts_with('#') {
            content = true;
        }
    }
    None
}

/// How deep a pipeline file may nest: far more than any pipeline needs, far less than
/// what overflows the parser's stack.
const MAX_NESTING: usize = 100;

/// Where the text first nests deeper than `limit` (1-based line and column), counting
/// block levels by indentation, each `- ` or `? ` that opens a collection on a line, and
/// open flow brackets. An over-estimate is fine: it only has to stay below the parser's
/// real depth for files that are pipelines, and above it for none.
fn nesting_beyond(text: &str, limit: usize) -> Option<(usize, usize)> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        if flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut depth = indents.len() + flow;
        let mut quote: Option<char> = None;
        let mut chars = rest.char_indices().peekable();
        let mut leading = true;
        while let Some((at, c)) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if at == 0 || rest[..at].ends_with(' ') => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                (None, '-' | '?') if leading && chars.peek().is_none_or(|(_, n)| *n == ' ') => depth += 1,
                (None, ' ') => {}
                _ => leading = false,
            }
            if c != ' ' && !matches!(c, '-' | '?') {
                leading = false;
            }
            if depth + flow > limit {
                let column = line[..indent + at].chars().count() + 1;
                return Some((i + 1, column));
            }
        }
    }
    None
}

fn load_error(file: &Arc<SourceFile>, e: marked_yaml::LoadError) -> super::diagnostics::Diagnostic {
    use super::diagnostics::Diagnostic;
    use marked_yaml::LoadError as E;
    let (marker, message, expected, hint): (marked_yaml::Marker, String, Option<&str>, Option<&str>) = match &e {
        E::TopLevelMustBeMapping(m) => (
            *m,
            "a pipeline file must be a mapping at the top level".into(),
            Some("keys such as `pipeline:`, `sources:`, `streams:`"),
            None,
        ),
        E::TopLevelMustBeSequence(m) => (*m, "expected a list at the top level".into(), None, None),
        E::UnexpectedAnchor(m) => (
            *m,
            "YAML anchors and aliases (`&name`, `*name`) are not supported".into(),
            None,
            Some("to reuse a stream's stages and columns, write `extends: <stream-id>` in the new stream"),
        ),
        E::MappingKeyMustBeScalar(m) => (*m, "a mapping key must be a plain value".into(), None, None),
        E::UnexpectedTag(m) => (*m, "YAML tags (`!tag`) are not supported".into(), None, None),
        E::ScanError(m, s) => (
            *m,
            format!("invalid YAML: {}", s.info()),
            None,
            Some("check the indentation and that strings with `:` or `#` are quoted"),
        ),
        E::DuplicateKey(inner) => {
            let key = inner.key.as_str().to_string();
            let m = inner
                .key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
            (
                m,
                format!("key `{key}` appears twice in the same mapping"),
                None,
                Some("remove one of them; the second would silently win"),
            )
        }
    };
    let mut d = Diagnostic::new(message, Some(Location::from_marker(file, &marker)));
    d.expected = expected.map(str::to_string);
    d.hint = hint.map(str::to_string);
    d
}

fn parse_root(r: &mut Reader, root: &Node) -> Option<Pipeline> {
    let mut f = r.mapping(root, "the pipeline file")?;
    let id = f
        .require(r, "pipeline", "`pipeline: <id>`, the pipeline's name")
        .and_then(|n| r.identifier(n, "pipeline id"));
    let description = f.text(r, "description").map(|t| t.value);
    let warehouse = f.text(r, "warehouse").map(|t| t.value);

    let (organizations, organization_files) = match f.require(
        r,
        "organizations",
        "a list of organisations with `id`, `name`, `tier`, or `{ url: FILE }` listing them",
    ) {
        Some(n) => parse_organizations(r, n),
        None => Default::default(),
    };
    let sources = f
        .get("sources")
        .map(|n| parse_tables(r, n, "source"))
        .unwrap_or_default();
    let references = f
        .get("references")
        .map(|n| parse_tables(r, n, "reference"))
        .unwrap_or_default();
    let raw_streams: Vec<RawStream> = match f.require(r, "streams", "a list of streams") {
        Some(n) => r
            .sequence(n, "streams")
            .map(|items| items.iter().filter_map(|i| parse_stream(r, i)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    f.finish(r, TOP_KEYS);
    let streams = resolve_extends(r, raw_streams);

    let file = r.file.clone();
    let dir = file.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { ".".into() } else { dir };
    Some(Pipeline {
        id: id?,
        description,
        warehouse: warehouse.map(|w| {
            let p = Path::new(&w);
            if super::model::is_url(&w) || p.is_absolute() {
                w
            } else {
                dir.join(p).display().to_string()
            }
        }),
        file,
        dir,
        organizations,
        organization_files,
        sources,
        references,
        streams,
        sandbox: None,
        organization_index: Default::default(),
    })
}

/// `organizations:` is a list of organisations and of files listing them (an item with a
/// `url`), or one such file alone. Files are read after parsing (see
/// `super::organizations_file`), into the place their item holds in the list.
fn parse_organizations(r: &mut Reader, node: &Node) -> (Vec<Organization>, Vec<OrganizationFile>) {
    let mut organizations = Vec::new();
    let mut files = Vec::new();
    if let Node::Mapping(m) = node
        && m.get_node("url").is_some()
    {
        files.extend(parse_org_file(r, node, 0));
        return (organizations, files);
    }
    for item in r.sequence(node, "organizations").unwrap_or_default() {
        match item {
            Node::Mapping(m) if m.get_node("url").is_some() => {
                files.extend(parse_org_file(r, item, organizations.len()));
            }
            _ => organizations.extend(parse_org(r, item)),
        }
    }
    (organizations, files)
}

fn parse_org_file(r: &mut Reader, node: &Node, position: usize) -> Option<OrganizationFile> {
    let mut f = r.mapping(node, "organisations file")?;
    let url = f.required_text(r, "url", "the path of a CSV or NDJSON file of organisations")?;
    let format = match f.get("format") {
        Some(n) => Some(r.choice(n, "`format`", &["csv", "ndjson", "json"])?),
        None => None,
    };
    let delimiter = f.text(r, "delimiter");
    f.finish(r, ORG_FILE_KEYS);
    Some(OrganizationFile {
        url,
        format,
        delimiter,
        position,
    })
}

fn parse_org(r: &mut Reader, node: &Node) -> Option<Organization> {
    let mut f = r.mapping(node, "organization")?;
    let id = f
        .require(r, "id", "a unique organisation id")
        .and_then(|n| r.identifier(n, "organisation id"));
    let name = f.text(r, "name");
    // A tier names the first directory of its organisations' batches: an identifier.
    let tier = f
        .require(r, "tier", "`vendor`, `distributor`, `reseller` or a deeper tier's name")
        .and_then(|n| r.identifier(n, "tier name"));
    let upstream = f.text(r, "upstream");
    let currency = f.text(r, "currency");
    f.finish(r, ORG_KEYS);
    let id = id?;
    Some(Organization {
        name: name.map(|n| n.value).unwrap_or_else(|| id.value.clone()),
        id,
        tier: tier?,
        upstream,
        currency,
        level: 0,
    })
}

fn parse_tables(r: &mut Reader, node: &Node, what: &str) -> Vec<TableDef> {
    let Some(map) = r.mapping(node, &format!("{what}s")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in map.node().iter() {
        let name_node = Node::Scalar(key.clone());
        let Some(name) = r.identifier(&name_node, &format!("{what} name")) else {
            continue;
        };
        if let Some(t) = parse_table(r, name, value, what) {
            out.push(t);
        }
    }
    out
}

fn parse_table(r: &mut Reader, name: Text, node: &Node, what: &str) -> Option<TableDef> {
    let location = r.loc(node);
    let mut f = r.mapping(node, &format!("{what} `{}`", name.value))?;
    let url = f.required_text(r, "url", "a file path or glob, relative to the pipeline file");
    let format_text = f
        .get("format")
        .and_then(|n| r.choice(n, "format", &["csv", "parquet", "ndjson", "json"]));
    let delimiter = f.text(r, "delimiter");
    let has_header = f.bool_or(r, "has_header", true);
    let schema = f
        .get("schema")
        .and_then(|n| parse_columns(r, n, "schema column", false));
    f.finish(r, TABLE_KEYS);
    let url = url?;
    // Without `format`, the file extension decides.
    let format_name = match &format_text {
        Some(t) => t.value.clone(),
        None => {
            let lower = url.value.to_ascii_lowercase();
            if lower.ends_with(".parquet") {
                "parquet".into()
            } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
                "ndjson".into()
            } else if lower.ends_with(".csv") || lower.ends_with(".tsv") {
                "csv".into()
            } else {
                let d = r.error(
                    format!("cannot tell the format of {what} `{}` from its url", name.value),
                    url.location.clone(),
                );
                d.expected = Some("`format: csv`, `format: parquet` or `format: ndjson`".into());
                return None;
            }
        }
    };
    let format = match format_name.as_str() {
        "parquet" => TableFormat::Parquet,
        "ndjson" | "json" => TableFormat::Ndjson,
        _ => {
            let delim = match &delimiter {
                None if url.value.to_ascii_lowercase().ends_with(".tsv") => b'\t',
                None => b',',
                Some(d) if d.value == "\\t" || d.value == "\t" => b'\t',
                Some(d) if d.value.len() == 1 => d.value.as_bytes()[0],
                Some(d) => {
                    let dd = r.error(
                        format!("`{}` is not a single-character delimiter", d.value),
                        d.location.clone(),
                    );
                    dd.expected = Some("one character such as `,`, `;`, `|` or `\\t`".into());
                    b','
                }
            };
            TableFormat::Csv {
                delimiter: delim,
                has_header,
            }
        }
    };
    Some(TableDef {
        name,
        url,
        format,
        schema,
        location,
    })
}

/// A list of columns, each `{ name, type, nullable, output, description }`.
pub(crate) fn parse_columns(r: &mut Reader, node: &Node, what: &str, allow_output: bool) -> Option<Vec<ColumnDef>> {
    let items = r.sequence(node, &format!("{what}s"))?;
    let mut out: Vec<ColumnDef> = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        let Some(mut f) = r.mapping(item, what) else {
            ok = false;
            continue;
        };
        let name = f.required_text(r, "name", "the column's name");
        let ty = f.required_text(r, "type", "a column type");
        let nullable = f.bool_or(r, "nullable", true);
        let output = if allow_output {
            f.bool_or(r, "output", true)
        } else {
            true
        };
        let description = f.text(r, "description").map(|t| t.value);
        let allowed: Vec<&str> = COLUMN_KEYS
            .iter()
            .copied()
            .filter(|k| allow_output || *k != "output")
            .collect();
        f.finish(r, &allowed);
        let (Some(name), Some(ty_text)) = (name, ty) else {
            ok = false;
            continue;
        };
        let ty = match ColumnType::parse(&ty_text.value) {
            Ok(t) => t,
            Err(msg) => {
                let hint = did_you_mean(&ty_text.value, ColumnType::NAMES.iter().copied());
                let d = r.error(msg.to_string(), ty_text.location.clone());
                d.expected = Some(super::diagnostics::one_of(ColumnType::NAMES));
                d.hint = hint;
                ok = false;
                continue;
            }
        };
        if let Some(prev) = out.iter().find(|c| c.name.value == name.value) {
            let d = r.error(
                format!("column `{}` is declared twice", name.value),
                name.location.clone(),
            );
            d.hint = Some(format!("the first declaration is at line {}", prev.name.location.line));
            ok = false;
            continue;
        }
        out.push(ColumnDef {
            name,
            ty,
            nullable,
            output,
            description,
        });
    }
    ok.then_some(out)
}

/// A stream as written, before `extends` fills in what it leaves out.
struct RawStream {
    id: Text,
    kind: Option<StreamKind>,
    owner: Option<Text>,
    for_each: Option<ForEach>,
    input: Option<InputRef>,
    period: Option<Text>,
    order_by: Option<Vec<Text>>,
    stages: Option<Vec<StageDef>>,
    columns: Option<Vec<ColumnDef>>,
    sample: Option<SampleDef>,
    review: Option<Review>,
    extends: Option<Text>,
    location: Location,
}

/// `review: manual`, `review: auto`, or `review: { policy: auto, max_rejected_percent: N }`.
fn parse_review(r: &mut Reader, node: &Node) -> Option<Review> {
    const POLICIES: &[&str] = &["manual", "auto"];
    let (policy, max) = if node.as_mapping().is_some() {
        let mut m = r.mapping(node, "review")?;
        let policy = m
            .require(r, "policy", "`manual` or `auto`")
            .and_then(|n| r.choice(n, "review policy", POLICIES));
        let max = m.text(r, "max_rejected_percent");
        m.finish(r, &["policy", "max_rejected_percent"]);
        (policy?, max)
    } else {
        (r.choice(node, "review policy", POLICIES)?, None)
    };
    let max_rejected_percent = match &max {
        None => 0.0,
        Some(t) => match t.value.parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => v,
            _ => {
                let d = r.error(format!("`{}` is not a percentage", t.value), t.location.clone());
                d.expected = Some("a number from 0 to 100, e.g. `max_rejected_percent: 2`".into());
                return None;
            }
        },
    };
    match policy.value.as_str() {
        "auto" => Some(Review::Auto { max_rejected_percent }),
        _ => {
            if let Some(t) = max {
                let d = r.error("`max_rejected_percent` applies to `policy: auto` only", t.location);
                d.hint = Some("a manual review has no conditions: a person decides".into());
            }
            Some(Review::Manual)
        }
    }
}

fn parse_stream(r: &mut Reader, node: &Node) -> Option<RawStream> {
    let location = r.loc(node);
    let mut f = r.mapping(node, "stream")?;
    let id = f
        .require(r, "id", "a unique stream id")
        .and_then(|n| r.identifier(n, "stream id"));
    let what = format!("stream `{}`", id.as_ref().map(|t| t.value.as_str()).unwrap_or("?"));
    let kind = f
        .get("kind")
        .and_then(|n| r.choice(n, "stream kind", StreamKind::NAMES))
        .map(|t| match t.value.as_str() {
            "usage" => StreamKind::Usage,
            "pricing" => StreamKind::Pricing,
            _ => StreamKind::Billing,
        });
    let owner = f.text(r, "owner");
    let for_each = f.get("for_each").and_then(|n| {
        let mut e = r.mapping(n, "for_each")?;
        let tier = e
            .require(
                r,
                "tier",
                "the tier whose organisations each get a partition, e.g. `reseller`",
            )
            .and_then(|n| r.identifier(n, "tier name"));
        let column = e.required_text(r, "column", "the column naming each row's organisation");
        e.finish(r, &["tier", "column"]);
        Some(ForEach {
            tier: tier?,
            column: column?,
        })
    });
    if has_key(node, "owner") && has_key(node, "for_each") {
        let d = r.error(format!("{what} has both `owner` and `for_each`"), f.location.clone());
        d.expected = Some("`owner: <organisation>` for one organisation's stream, or `for_each: {tier, column}` for every organisation of a tier".into());
    }
    let input = f.get("input").and_then(|n| parse_input(r, n));
    let period = f.text(r, "period");
    let order_by = f.get("order_by").and_then(|n| r.string_list(n, "order_by columns"));
    let stages = f.get("stages").and_then(|n| parse_stages(r, n));
    let columns = f.get("columns").and_then(|n| parse_columns(r, n, "column", true));
    let sample = f.get("sample").and_then(|n| {
        let mut s = r.mapping(n, "sample")?;
        let input = s.required_text(r, "input", "a file with sample input rows");
        let expected = s.required_text(r, "expected", "a file with the expected output rows");
        s.finish(r, &["input", "expected"]);
        Some(SampleDef {
            input: input?,
            expected: expected?,
        })
    });
    let review = f.get("review").and_then(|n| parse_review(r, n));
    let extends = f.text(r, "extends");
    let _ = f.text(r, "description");
    f.finish(r, STREAM_KEYS);
    let id = id?;
    // Without `extends`, these keys must be written (a key written but invalid has
    // already been reported where it stands).
    if extends.is_none() {
        for key in ["kind", "owner", "input", "columns"] {
            let owned_by_tier = key == "owner" && has_key(node, "for_each");
            if !owned_by_tier && !has_key(node, key) {
                let d = r.error(format!("{what} is missing required key `{key}`"), location.clone());
                d.expected = Some(match key {
                    "kind" => "`kind: usage`, `billing` or `pricing`".into(),
                    "owner" => "the id of the organisation that owns the stream (or `for_each: {tier, column}`)".into(),
                    "input" => "`input: { source: <name> }` or `input: { stream: <id> }`".into(),
                    _ => "the stream's output columns (its contract)".into(),
                });
                d.hint = Some("or `extends: <stream-id>` to take it from another stream".into());
            }
        }
    }
    Some(RawStream {
        id,
        kind,
        owner,
        for_each,
        input,
        period,
        order_by,
        stages,
        columns,
        sample,
        review,
        extends,
        location,
    })
}

fn has_key(node: &Node, key: &str) -> bool {
    node.as_mapping().is_some_and(|m| m.get_node(key).is_some())
}

fn parse_input(r: &mut Reader, node: &Node) -> Option<InputRef> {
    let mut f = r.mapping(node, "input")?;
    let source = f.text(r, "source");
    let stream = f.text(r, "stream");
    let at = f.location.clone();
    f.finish(r, &["source", "stream"]);
    match (source, stream) {
        (Some(s), None) => Some(InputRef::Source(s)),
        (None, Some(s)) => Some(InputRef::Stream(s)),
        (Some(_), Some(_)) => {
            let d = r.error("a stream has one input: `source` or `stream`, not both", at);
            d.hint = Some("to combine tables, join a reference in a sql stage".into());
            None
        }
        (None, None) => {
            let d = r.error("input names nothing", at);
            d.expected = Some("`{ source: <name> }` or `{ stream: <id> }`".into());
            None
        }
    }
}

fn parse_stages(r: &mut Reader, node: &Node) -> Option<Vec<StageDef>> {
    let items = r.sequence(node, "stages")?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let location = r.loc(item);
        let Some(mut f) = r.mapping(item, "stage") else {
            continue;
        };
        let Some(kind) = f.required_text(r, "kind", "the stage kind, e.g. `sql` or `polars`") else {
            continue;
        };
        let named = f.text(r, "name");
        let name = named
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_else(|| format!("{}-{}", kind.value, i + 1));
        // A stage's name names its rejects file: two stages whose names are equal, or
        // equal once made a file name, would write the same file.
        if let Some(other) = out
            .iter()
            .find(|o: &&StageDef| stage_file_name(&o.name) == stage_file_name(&name))
        {
            let at = named
                .as_ref()
                .map(|t| t.location.clone())
                .unwrap_or_else(|| location.clone());
            let what = if other.name == name {
                format!("stage name `{name}` is used twice in this stream")
            } else {
                format!(
                    "stage names `{}` and `{name}` are the same once made a file name (`stage-{}.parquet`)",
                    other.name,
                    stage_file_name(&name)
                )
            };
            let d = r.error(what, at);
            d.expected = Some("a name of its own for each stage of the stream".into());
            d.hint = Some(format!(
                "rename one of them, e.g. `{name}-2`; a stage's refused rows go to `rejects/stage-<name>.parquet`"
            ));
        }
        // The stage kind reads (and checks) its own keys when the plan is built.
        out.push(StageDef {
            name,
            kind,
            node: item.clone(),
            location,
        });
    }
    Some(out)
}

/// Fill in what a stream leaves out from the stream it `extends`, in dependency order.
fn resolve_extends(r: &mut Reader, raw: Vec<RawStream>) -> Vec<StreamDef> {
    let ids: Vec<String> = raw.iter().map(|s| s.id.value.clone()).collect();
    let mut out: Vec<StreamDef> = Vec::new();
    for s in &raw {
        // Walk the extends chain (with a cycle guard).
        let mut chain: Vec<&RawStream> = vec![s];
        let mut broken = false;
        while let Some(parent) = chain.last().and_then(|c| c.extends.as_ref()) {
            match raw.iter().find(|x| x.id.value == parent.value) {
                Some(p) if chain.iter().any(|c| std::ptr::eq(*c, p)) => {
                    let d = r.error(
                        format!("stream `{}` extends itself through `{}`", s.id.value, parent.value),
                        parent.location.clone(),
                    );
                    d.hint = Some("`extends` chains must end at a stream that extends nothing".into());
                    broken = true;
                    break;
                }
                Some(p) => chain.push(p),
                None => {
                    let hint = did_you_mean(&parent.value, ids.iter().map(String::as_str));
                    let d = r.error(
                        format!("stream `{}` extends unknown stream `{}`", s.id.value, parent.value),
                        parent.location.clone(),
                    );
                    d.expected = Some("the id of another stream in this file".into());
                    d.hint = hint;
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            continue;
        }
        macro_rules! inherit {
            ($field:ident) => {
                chain.iter().find_map(|c| c.$field.clone())
            };
        }
        // The nearest of `owner` / `for_each` in the chain decides who owns the stream.
        let for_each = chain
            .iter()
            .find(|c| c.owner.is_some() || c.for_each.is_some())
            .and_then(|c| c.for_each.clone());
        let owner = match &for_each {
            Some(e) => Some(Text {
                value: format!("each {}", e.tier.value),
                location: e.tier.location.clone(),
            }),
            None => inherit!(owner),
        };
        let (Some(kind), Some(owner), Some(input), Some(columns)) =
            (inherit!(kind), owner, inherit!(input), inherit!(columns))
        else {
            continue; // reported when parsed
        };
        let period = inherit!(period);
        let order_by = inherit!(order_by).unwrap_or_default();
        let stages = inherit!(stages).unwrap_or_default();
        let mut canonical = canonical_stream(&kind, &owner, &input, &period, &stages, &columns);
        for o in &order_by {
            canonical.push_str(&format!("order_by={};", o.value));
        }
        if let Some(e) = &for_each {
            canonical.push_str(&format!("for_each={}:{};", e.tier.value, e.column.value));
        }
        out.push(StreamDef {
            id: s.id.clone(),
            kind,
            owner,
            for_each,
            input,
            period,
            order_by,
            stages,
            columns,
            sample: s.sample.clone(),
            review: inherit!(review).unwrap_or_default(),
            extends: s.extends.clone(),
            location: s.location.clone(),
            canonical,
        });
    }
    out
}

fn canonical_stream(
    kind: &StreamKind,
    owner: &Text,
    input: &InputRef,
    period: &Option<Text>,
    stages: &[StageDef],
    columns: &[ColumnDef],
) -> String {
    let mut s = format!("kind={};owner={};", kind.name(), owner.value);
    match input {
        InputRef::Source(t) => s.push_str(&format!("input=source:{};", t.value)),
        InputRef::Stream(t) => s.push_str(&format!("input=stream:{};", t.value)),
    }
    if let Some(p) = period {
        s.push_str(&format!("period={};", p.value));
    }
    for st in stages {
        s.push_str("stage:");
        canonical_node(&st.node, &mut s);
        s.push(';');
    }
    for c in columns {
        s.push_str(&format!(
            "column={}:{}:{}:{};",
            c.name.value, c.ty, c.nullable, c.output
        ));
    }
    s
}

/// Stable text of a YAML tree without locations or comments.
pub(crate) fn canonical_node(node: &Node, out: &mut String) {
    match node {
        Node::Scalar(s) => {
            out.push_str(&format!("{:?}", s.as_str()));
        }
        Node::Sequence(items) => {
            out.push('[');
            for i in items.iter() {
                canonical_node(i, out);
                out.push(',');
            }
            out.push(']');
        }
        Node::Mapping(m) => {
            out.push('{');
            for (k, v) in m.iter() {
                out.push_str(&format!("{:?}:", k.as_str()));
                canonical_node(v, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}
