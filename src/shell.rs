//! `billflow query` with no statement: an interactive SQL shell over the warehouse, in
//! the manner of psql and datafusion-cli. Line editing and history (rustyline), statements
//! over several lines ending in `;`, `\d` to list the tables, `\d NAME` to describe one,
//! `\q` to quit. Every statement sees what is committed at that moment; an error is
//! printed and the shell goes on.

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::query::output::{self, Format};
use crate::query::{QueryError, Warehouse};

const HELP: &str = "\\d          list the tables
\\d NAME     describe table NAME (e.g. \\d billflow.batches)
\\q          quit
SQL ends with `;` and may span lines; Ctrl-C drops the statement being typed.
";

/// What the user typed, once it is whole.
#[derive(Debug, PartialEq)]
enum Input {
    Statement(String),
    Tables,
    Describe(String),
    Help,
    Quit,
    Unknown(String),
}

/// A meta command (a line starting with `\`), or `None` for SQL.
fn meta(line: &str) -> Option<Input> {
    let rest = line.trim().strip_prefix('\\')?;
    let (cmd, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let arg = arg.trim().trim_end_matches(';').trim();
    Some(match (cmd, arg) {
        ("q" | "quit", _) => Input::Quit,
        ("d", "") => Input::Tables,
        ("d", name) => Input::Describe(name.to_string()),
        ("?" | "h" | "help", _) => Input::Help,
        _ => Input::Unknown(line.trim().to_string()),
    })
}

/// The SQL of each meta command that runs a query.
fn sql_of(input: &Input) -> Option<String> {
    match input {
        Input::Statement(s) => Some(s.clone()),
        Input::Tables => Some(
            "SELECT table_schema AS schema, table_name AS name, table_type AS type \
             FROM information_schema.tables \
             WHERE table_schema NOT IN ('information_schema') ORDER BY 1, 2"
                .into(),
        ),
        Input::Describe(name) => Some(format!("DESCRIBE {name}")),
        _ => None,
    }
}

/// A one-off statement as the SQL to run: a meta command (`\\d`, `\\d NAME`) becomes the
/// query behind it, as in the shell; anything else is SQL as written.
pub fn statement_sql(text: &str) -> Result<String, String> {
    match meta(text) {
        None => Ok(text.to_string()),
        Some(input) => {
            sql_of(&input).ok_or_else(|| format!("`{}` is a shell command; run it in the shell", text.trim()))
        }
    }
}

/// Run the shell until `\q` or end of input. `format`: how results print.
pub async fn run(warehouse: &Warehouse, format: Format) -> Result<(), ReadlineError> {
    let mut editor = DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".billflow_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("billflow SQL shell: statements end with `;`, \\d lists the tables, \\? helps, \\q quits");
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "billflow> " } else { "      ... " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        };
        let input = if pending.is_empty()
            && let Some(m) = meta(&line)
        {
            m
        } else {
            pending.push_str(&line);
            pending.push('\n');
            if !line.trim_end().ends_with(';') {
                continue;
            }
            Input::Statement(std::mem::take(&mut pending))
        };
        let entry = match &input {
            Input::Statement(s) => s.trim_end().to_string(),
            _ => line.trim().to_string(),
        };
        let _ = editor.add_history_entry(entry);
        match input {
            Input::Quit => break,
            Input::Help => print!("{HELP}"),
            Input::Unknown(what) => eprintln!("error: unknown command `{what}`; \\? lists the commands"),
            other => {
                let Some(sql) = sql_of(&other) else { continue };
                if let Err(e) = answer(warehouse, &sql, format).await {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

async fn answer(warehouse: &Warehouse, sql: &str, format: Format) -> Result<(), QueryError> {
    let answer = warehouse.query(sql).await?;
    output::write(&answer, format, std::io::stdout())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_commands_are_read_from_a_backslash_line() {
        assert_eq!(meta("\\q"), Some(Input::Quit));
        assert_eq!(meta("  \\d  "), Some(Input::Tables));
        assert_eq!(
            meta("\\d billflow.batches;"),
            Some(Input::Describe("billflow.batches".into()))
        );
        assert_eq!(meta("\\x"), Some(Input::Unknown("\\x".into())));
        assert_eq!(meta("SELECT 1;"), None);
        assert_eq!(sql_of(&Input::Describe("a.b".into())).as_deref(), Some("DESCRIBE a.b"));
        assert_eq!(statement_sql("\\d a.b").unwrap(), "DESCRIBE a.b");
        assert_eq!(statement_sql("-- c\nSELECT 1;").unwrap(), "-- c\nSELECT 1;");
        assert!(statement_sql("\\q").unwrap_err().contains("`\\q` is a shell command"));
    }
}
