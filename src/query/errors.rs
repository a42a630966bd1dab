//! What went wrong with a statement, in the terms of what the user wrote: a syntax error
//! shows the statement with a caret under the position, an unknown table lists the
//! tables that exist (closest first), a statement that would change something says that
//! SQL here only reads.

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::parser::ParserError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// An error at a place in the statement (a syntax error, an unknown column).
    #[error("{message}\n{}", caret(.statement, *.line, *.column))]
    At {
        message: String,
        statement: String,
        /// 1-based.
        line: u64,
        column: u64,
    },
    #[error("no table `{name}`; {}", known(.tables))]
    UnknownTable { name: String, tables: Vec<String> },
    #[error("only reading is allowed here: {what} is refused")]
    ReadOnly { what: String },
    #[error("{0}")]
    Sql(String),
    #[error("reading the warehouse: {0}")]
    Warehouse(String),
    #[error("reading the lifecycle log: {0}")]
    Lifecycle(#[from] crate::batches::lifecycle::LifecycleError),
    #[error("{0}")]
    Storage(#[from] crate::batches::storage::StorageError),
    #[error("{0}")]
    Internal(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::Internal(e.strip_backtrace())
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        QueryError::Internal(e.to_string())
    }
}

fn known(tables: &[String]) -> String {
    match tables {
        [] => "there are no tables: nothing visible is committed".into(),
        _ => format!("tables (closest first): {}", tables.join(", ")),
    }
}

/// The statement's line `line` with a caret under column `column`.
fn caret(statement: &str, line: u64, column: u64) -> String {
    let text = statement.lines().nth(line.saturating_sub(1) as usize).unwrap_or("");
    let pad = " ".repeat(column.saturating_sub(1) as usize);
    format!("  {text}\n  {pad}^")
}

impl QueryError {
    /// `e`, from planning or running `sql` on `ctx`, as what the user should read.
    pub fn from_datafusion(ctx: &SessionContext, sql: &str, e: DataFusionError) -> Self {
        if let Some(missing) = missing_table(&e) {
            return QueryError::UnknownTable {
                tables: tables_closest_to(ctx, &missing),
                name: missing,
            };
        }
        if let DataFusionError::Plan(m) = e.find_root() {
            for kind in ["DDL", "DML", "Statement"] {
                if let Some(what) = m.strip_prefix(&format!("{kind} not supported: ")) {
                    return QueryError::ReadOnly {
                        what: format!("{what} ({})", kind.to_lowercase()),
                    };
                }
            }
        }
        if let Some((line, column, message)) = position(&e).or_else(|| at_the_end(sql, &e)) {
            return QueryError::At {
                message,
                statement: sql.to_string(),
                line,
                column,
            };
        }
        QueryError::Sql(e.strip_backtrace())
    }
}

/// The table a "table '...' not found" error names, without the default catalog.
fn missing_table(e: &DataFusionError) -> Option<String> {
    let DataFusionError::Plan(m) = e.find_root() else {
        return None;
    };
    let name = m.strip_prefix("table '")?.strip_suffix("' not found")?;
    Some(name.strip_prefix("datafusion.").unwrap_or(name).to_string())
}

/// Every table of the session as `schema.table`, the closest to `name` first.
fn tables_closest_to(ctx: &SessionContext, name: &str) -> Vec<String> {
    let Some(catalog) = ctx.catalog("datafusion") else {
        return Vec::new();
    };
    let mut tables: Vec<String> = catalog
        .schema_names()
        .into_iter()
        .filter(|s| s != "information_schema" && s != "pg_catalog")
        .filter_map(|s| catalog.schema(&s).map(|schema| (s, schema)))
        .flat_map(|(s, schema)| schema.table_names().into_iter().map(move |t| format!("{s}.{t}")))
        .collect();
    let distance = |t: &String| {
        let table = t.split_once('.').map_or(t.as_str(), |(_, t)| t);
        let asked = name.rsplit('.').next().unwrap_or(name);
        (
            strsim::levenshtein(t, name).min(strsim::levenshtein(table, asked)),
            t.clone(),
        )
    };
    tables.sort_by_key(distance);
    tables
}

/// A parser error that ran out of statement (it carries no position): the caret goes
/// just past the statement's last character.
fn at_the_end(sql: &str, e: &DataFusionError) -> Option<(u64, u64, String)> {
    let DataFusionError::SQL(parse, _) = e.find_root() else {
        return None;
    };
    let ParserError::ParserError(message) = parse.as_ref() else {
        return None;
    };
    if !message.ends_with("found: EOF") {
        return None;
    }
    let text = sql.trim_end();
    let line = text.lines().count().max(1);
    let column = text.lines().last().map_or(0, |l| l.chars().count()) + 1;
    Some((line as u64, column as u64, format!("syntax error: {message}")))
}

/// A parser error's line, column and message without the position; else the place a
/// planning error's diagnostic points at.
fn position(e: &DataFusionError) -> Option<(u64, u64, String)> {
    if let DataFusionError::SQL(parse, _) = e.find_root() {
        let message = match parse.as_ref() {
            ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
            ParserError::RecursionLimitExceeded => return None,
        };
        let at = message.rfind(" at Line: ")?;
        let (line, column) = message[at + " at Line: ".len()..].split_once(", Column: ")?;
        let message = format!("syntax error: {}", &message[..at]);
        return Some((line.trim().parse().ok()?, column.trim().parse().ok()?, message));
    }
    let d = e.diagnostic()?;
    let span = d.span?;
    Some((span.start.line, span.start.column, d.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caret_points_at_the_column_of_the_line() {
        assert_eq!(caret("SELECT 1\nFROM  x y z", 2, 7), "  FROM  x y z\n        ^");
    }

    #[test]
    fn a_statement_that_ends_too_soon_gets_a_caret_past_its_end() {
        let parse = ParserError::ParserError("Expected: an expression, found: EOF".into());
        let e = DataFusionError::SQL(Box::new(parse), None);
        let ctx = SessionContext::new();
        let shown = QueryError::from_datafusion(&ctx, "SELECT 1\nFROM x WHERE \n", e).to_string();
        assert_eq!(
            shown,
            "syntax error: Expected: an expression, found: EOF\n  FROM x WHERE \n              ^"
        );
    }
}
