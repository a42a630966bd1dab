//! `kind: sql`: a DataFusion SQL query over `input` (the stream's current table) and the
//! pipeline's references. Consecutive SQL stages fuse: each query sees the previous one as
//! a view, so DataFusion optimises the chain as one plan.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::DataFrame;

use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Location, Reader, SourceFile};

/// The settings of `kind: sql`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["query"],
        ty: "string",
        required: "one of `query`/`file`",
        default: "",
        doc: r#"the SQL text, inline (block scalars `query: \|` are fine)"#,
    },
    Setting {
        keys: &["file"],
        ty: "path",
        required: "one of `query`/`file`",
        default: "",
        doc: "a file holding the SQL, relative to the pipeline file",
    },
];

pub struct SqlKind;

impl StageKind for SqlKind {
    fn name(&self) -> &'static str {
        "sql"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let query = f.text(r, "query");
        let file = f.text(r, "file");
        let (text, origin) = match (query, file) {
            (Some(q), None) => {
                // Block scalars (`query: |`) start on the line after the key.
                let block = r.file.text[q.location.offset..].starts_with(['|', '>']);
                let origin = QueryOrigin::Inline {
                    file: r.file.clone(),
                    first_line: q.location.line + usize::from(block),
                    column: if block { 1 } else { q.location.column },
                };
                (q.value, origin)
            }
            (None, Some(path)) => {
                let full = match ctx.file(&path.value) {
                    Ok(full) => full,
                    Err(e) => {
                        r.error(e.to_string(), path.location.clone());
                        return None;
                    }
                };
                match std::fs::read_to_string(&full) {
                    Ok(text) => (
                        text.clone(),
                        QueryOrigin::File(SourceFile::new(display_path(&full), text)),
                    ),
                    Err(e) => {
                        let d = r.error(
                            format!("cannot read query file `{}`: {e}", path.value),
                            path.location.clone(),
                        );
                        d.hint = Some(format!(
                            "paths are relative to the pipeline file's directory ({})",
                            ctx.pipeline_dir.display()
                        ));
                        return None;
                    }
                }
            }
            (Some(q), Some(_)) => {
                let d = r.error("a sql stage takes `query` or `file`, not both", q.location);
                d.hint = Some("keep the SQL inline under `query:` or move it to a file under queries/".into());
                return None;
            }
            (None, None) => {
                let at = f.location.clone();
                let d = r.error("sql stage has no query", at);
                d.expected = Some("`query: SELECT ... FROM input` or `file: queries/<name>.sql`".into());
                return None;
            }
        };
        if text.trim().is_empty() {
            let at = f.location.clone();
            r.error("sql stage has an empty query", at).expected = Some("a SELECT statement".into());
            return None;
        }
        let probe = match super::TemplateVars::check_sql(&text) {
            Ok(probe) => probe,
            Err(msg) => {
                let line = text.lines().position(|l| l.contains("{{")).map(|i| i + 1).unwrap_or(1);
                let at = origin.location(line, 1);
                r.error(msg.to_string(), at);
                return None;
            }
        };
        let tables = tables_read(&probe);
        Some(Arc::new(SqlStage { text, origin, tables }))
    }
}

fn display_path(p: &std::path::Path) -> PathBuf {
    // Keep paths as the user sees them, without `dir/../` noise where possible.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir
                if out.file_name().is_some()
                    && out
                        .components()
                        .next_back()
                        .is_some_and(|l| !matches!(l, std::path::Component::ParentDir)) =>
            {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[derive(Debug)]
enum QueryOrigin {
    Inline {
        file: Arc<SourceFile>,
        first_line: usize,
        column: usize,
    },
    File(Arc<SourceFile>),
}

impl QueryOrigin {
    /// Where line/column (1-based, within the query text) is in the user's files.
    fn location(&self, line: usize, column: usize) -> Location {
        match self {
            QueryOrigin::File(f) => Location::at_line_column(f, line, column),
            QueryOrigin::Inline {
                file,
                first_line,
                column: c0,
            } => {
                let col = if line == 1 { c0 + column - 1 } else { column };
                Location::at_line_column(file, first_line + line - 1, col)
            }
        }
    }
}

#[derive(Debug)]
pub struct SqlStage {
    text: String,
    origin: QueryOrigin,
    tables: Vec<String>,
}

/// The tables a query names, besides `input` (and its own CTEs). A query that does not
/// parse names none here; checking the stage reports the syntax error with its location.
fn tables_read(sql: &str) -> Vec<String> {
    let Ok(statements) = datafusion::sql::parser::DFParser::parse_sql(sql) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for st in &statements {
        if let Ok((refs, _ctes)) = datafusion::sql::resolve::resolve_table_references(st, true) {
            for t in refs {
                let name = t.table().to_string();
                if name != "input" && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

impl SqlStage {
    pub fn query(&self) -> &str {
        &self.text
    }

    fn error(&self, e: DataFusionError) -> StageError {
        // DataFusion attaches a span to some planning errors (unknown column, ...).
        let location = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| self.origin.location(s.start.line as usize, s.start.column as usize))
            .or_else(|| Some(self.origin.location(1, 1)));
        let message = e.strip_backtrace().to_string();
        let hint = if message.contains("not found") && message.contains("table") {
            Some("sql stages see `input` (the stream's current table) and the references by name".to_string())
        } else {
            None
        };
        StageError {
            message,
            location,
            hint,
            waiting: false,
        }
    }
}

#[async_trait]
impl Stage for SqlStage {
    fn describe(&self) -> String {
        match &self.origin {
            QueryOrigin::File(f) => format!("sql {}", f.path.display()),
            QueryOrigin::Inline { .. } => {
                let first = self
                    .text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("--"))
                    .unwrap_or("");
                let short: String = first.chars().take(60).collect();
                format!("sql `{short}{}`", if first.chars().count() > 60 { "..." } else { "" })
            }
        }
    }
    fn tables(&self) -> Vec<String> {
        self.tables.clone()
    }
    fn fingerprint(&self, _vars: &super::TemplateVars) -> String {
        self.text.clone()
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let sql = env
            .vars
            .expand_sql(&self.text)
            .map_err(|e| StageError::new(e.to_string()))?;
        let ctx = env.ctx;
        ctx.deregister_table("input").map_err(|e| self.error(e))?;
        ctx.register_table("input", input.into_view())
            .map_err(|e| self.error(e))?;
        // Queries only: a pipeline must not create, drop or write tables behind our back.
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        ctx.sql_with_options(&sql, options).await.map_err(|e| self.error(e))
    }
}
