//! Stages: the steps a stream applies to its table, in order. Every stage kind implements
//! [`StageKind`] (reads its settings from the pipeline file) and builds a [`Stage`]
//! (transforms a DataFusion `DataFrame`). Adding a kind is one new file plus one line in
//! [`KINDS`].

pub mod aggregate;
pub mod convert_currency;
pub mod copy_columns;
pub mod filter;
pub mod focus;
pub mod formula;
pub mod lookup;
pub mod manual;
pub mod map_values;
pub mod markup;
pub mod polars;
pub mod prorate;
pub mod rate;
pub mod reference;
pub mod round;
pub mod settings;
pub mod split_column;
pub mod sql;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::definition::{Fields, Location, Reader};

/// Every stage kind billflow knows. One line per kind.
pub static KINDS: &[&dyn StageKind] = &[
    &sql::SqlKind,
    &polars::PolarsKind,
    &copy_columns::CopyColumnsKind,
    &convert_currency::ConvertCurrencyKind,
    &filter::FilterKind,
    &formula::FormulaKind,
    &lookup::LookupKind,
    &map_values::MapValuesKind,
    &markup::MarkupKind,
    &markup::DiscountKind,
    &markup::MarginKind,
    &aggregate::AggregateKind,
    &rate::RateKind,
    &prorate::ProrateKind,
    &manual::ManualKind,
    &focus::FocusKind,
    &round::RoundKind,
    &split_column::SplitColumnKind,
];

pub fn kind(name: &str) -> Option<&'static dyn StageKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// Keys every stage accepts, whatever its kind.
pub const COMMON_KEYS: &[&str] = &["kind", "name", "description"];

/// One setting of a stage kind, declared once: the keys it names (keys that share a row
/// of the docs, such as `gt`, `gte`, `lt`, `lte`), their type, whether they are required,
/// the default and the meaning. The pipeline reader accepts exactly the declared keys
/// (plus [`COMMON_KEYS`]); the kind's table in the docs is rendered from the declaration
/// ([`settings_table`]) and a test keeps the two equal. A key written as a path, such as
/// `outputs[].name` or `reconcile.group_by`, documents a key inside another setting's value:
/// it is shown in the table but is not a key of the stage ([`StageKind::keys`] leaves it out).
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub keys: &'static [&'static str],
    pub ty: &'static str,
    /// `yes`, empty, or a condition such as ``one of `query` / `file` ``.
    pub required: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// A kind's settings as the Markdown table its docs section shows.
pub fn settings_table(settings: &[Setting]) -> String {
    let mut out = String::from("| key | type | required | default | meaning |\n|---|---|---|---|---|\n");
    for s in settings {
        let keys: Vec<String> = s.keys.iter().map(|k| format!("`{k}`")).collect();
        let keys = keys.join(", ");
        for cell in [keys.as_str(), s.ty, s.required, s.default, s.doc] {
            // `| text ` per cell; an empty one is `| ` (so `| |`), as the docs write it.
            out.push_str("| ");
            if !cell.is_empty() {
                out.push_str(cell);
                out.push(' ');
            }
        }
        out.push_str("|\n");
    }
    out
}

/// A kind of stage: declares its settings, reads them and builds the stage.
pub trait StageKind: Send + Sync {
    /// The `kind:` value in the pipeline file.
    fn name(&self) -> &'static str;
    /// The kind's own settings (besides [`COMMON_KEYS`]): the one declaration of its keys.
    fn settings(&self) -> &'static [Setting];
    /// The keys the settings name (not the keys inside a setting's value, such as
    /// `reconcile.group_by`).
    fn keys(&self) -> Vec<&'static str> {
        self.settings()
            .iter()
            .flat_map(|s| s.keys.iter().copied())
            .filter(|k| !k.contains(['.', '[']))
            .collect()
    }
    /// Read the settings; report problems through `r` (with locations) and return None.
    fn build(&self, settings: &mut Fields, r: &mut Reader, ctx: &BuildContext) -> Option<Arc<dyn Stage>>;
}

/// What a stage kind may need while building: where relative paths resolve.
pub struct BuildContext<'a> {
    pub pipeline_dir: &'a Path,
    /// With `--sandbox DIR`: the folder every file a stage names must lie under.
    pub sandbox: Option<&'a crate::definition::Sandbox>,
}

impl BuildContext<'_> {
    /// A file a stage's settings name: relative to the pipeline's folder and, with a
    /// sandbox, under it.
    pub fn file(&self, relative: &str) -> Result<PathBuf, crate::definition::OutsideSandbox> {
        let full = self.pipeline_dir.join(relative);
        match self.sandbox {
            Some(s) => s.admit(&full, relative),
            None => Ok(full),
        }
    }
}

/// What a stage sees while it runs: the stream's session (with every reference
/// registered by name) and the values `{{ ... }}` templates may use.
pub struct StageEnv<'a> {
    pub ctx: &'a SessionContext,
    pub vars: &'a TemplateVars,
    /// The running stage's name (for rejects and error messages).
    pub stage: &'a str,
    /// Where stages leave refused rows and counts of removed rows.
    pub side: &'a crate::engine::side::SideOutputs,
    /// True when the plan will run (not just be checked or explained): a stage may then
    /// act outside the plan (e.g. `manual` exports its input).
    pub executing: bool,
}

/// Values substituted for `{{ name }}` in stage text.
#[derive(Clone, Debug, Default)]
pub struct TemplateVars {
    pub values: Vec<(String, String)>,
}

impl TemplateVars {
    pub const NAMES: &'static [&'static str] = &[
        "pipeline",
        "stream",
        "owner_name",
        "owner_currency",
        "vendor_name",
        "owner",
        "tier",
        "period",
        "period_start",
        "period_end",
    ];

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or why it has none.
    fn value_of(&self, name: &str) -> Result<&str, TemplateError> {
        match self.get(name) {
            Some(v) => Ok(v),
            None if Self::NAMES.contains(&name) => Err(TemplateError::NoSingleValue(name.to_string())),
            None => Err(TemplateError::Unknown { name: name.to_string() }),
        }
    }

    /// Replace every `{{ name }}` by its value as plain text (file paths, filter values,
    /// messages); unknown names are an error naming them.
    pub fn expand(&self, text: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
            out.push_str(self.value_of(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Replace every `{{ name }}` in SQL text by its value as SQL data, never as SQL code:
    /// outside quotes, a quoted string literal (`{{ owner }}` -> `'alpha-it'`); inside a
    /// string literal (`'{{ owner_name }}'`), the value with its quotes doubled; inside a
    /// quoted identifier, the value with its double quotes doubled; inside a comment, the
    /// value on one line. An organisation named `nobody' OR '1'='1` stays a name.
    pub fn expand_sql(&self, text: &str) -> Result<String, TemplateError> {
        #[derive(Clone, Copy, PartialEq)]
        enum At {
            Code,
            Text,
            Identifier,
            LineComment,
            BlockComment,
        }
        let mut out = String::with_capacity(text.len());
        let mut at = At::Code;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
                let value = self.value_of(after[..end].trim())?;
                match at {
                    At::Code => out.push_str(&format!("'{}'", value.replace('\'', "''"))),
                    At::Text => out.push_str(&value.replace('\'', "''")),
                    At::Identifier => out.push_str(&value.replace('"', "\"\"")),
                    At::LineComment | At::BlockComment => {
                        out.push_str(&value.replace(['\n', '\r'], " ").replace("*/", "* /"))
                    }
                }
                rest = &after[end + 2..];
                continue;
            }
            let two = |s: &str| rest.starts_with(s);
            at = match (at, c) {
                (At::Code, '\'') => At::Text,
                (At::Text, '\'') => At::Code,
                (At::Code, '"') => At::Identifier,
                (At::Identifier, '"') => At::Code,
                (At::Code, '-') if two("--") => At::LineComment,
                (At::LineComment, '\n') => At::Code,
                (At::Code, '/') if two("/*") => At::BlockComment,
                (At::BlockComment, '*') if two("*/") => {
                    out.push_str("*/");
                    rest = &rest[2..];
                    at = At::Code;
                    continue;
                }
                (at, _) => at,
            };
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    /// Check names only (at build time, before values exist); gives the text with every
    /// variable replaced by a placeholder.
    pub fn check(text: &str) -> Result<String, TemplateError> {
        Self::probe().expand(text)
    }

    /// [`check`](Self::check) for SQL text: placeholders go in as [`expand_sql`](Self::expand_sql) puts values.
    pub fn check_sql(text: &str) -> Result<String, TemplateError> {
        Self::probe().expand_sql(text)
    }

    fn probe() -> TemplateVars {
        TemplateVars {
            values: Self::NAMES.iter().map(|n| (n.to_string(), format!("_{n}_"))).collect(),
        }
    }
}

/// Why a `{{ ... }}` template does not expand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` without a closing `}}}}`")]
    Unclosed,
    #[error(
        "`{{{{ {0} }}}}` has no single value in a `for_each` stream, which runs for every organisation of its \
         tier; read the organisation from its column instead (e.g. a lookup keyed by it)"
    )]
    NoSingleValue(String),
    #[error("unknown template variable `{{{{ {name} }}}}`; known: {known}", known = TemplateVars::NAMES.join(", "))]
    Unknown { name: String },
}

/// Why a stage failed, with a location in the pipeline or query file when known.
#[derive(Clone, Debug)]
pub struct StageError {
    pub message: String,
    pub location: Option<Location>,
    pub hint: Option<String>,
    /// Not a failure: the stream waits for something outside billflow (a manual step).
    pub waiting: bool,
}

impl StageError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            location: None,
            hint: None,
            waiting: false,
        }
    }
    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }
}

impl std::error::Error for StageError {}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(l) = &self.location {
            write!(f, " (at {l})")?;
        }
        Ok(())
    }
}

/// One step of a stream.
#[async_trait]
pub trait Stage: Send + Sync + Debug {
    /// One line for `billflow explain`.
    fn describe(&self) -> String;
    /// True if the stage stays inside the DataFusion plan, fusing with its neighbours;
    /// false if it materialises its input (e.g. to hand it to Polars).
    fn fuses(&self) -> bool {
        true
    }
    /// What decides the stage's output besides its input and its settings (the stream's
    /// definition, settings included, is part of the batch id already): the text of a query
    /// file, a mapping file, a reviewed file. Part of the batch id, so editing such a file
    /// gives a new batch.
    fn fingerprint(&self, _vars: &TemplateVars) -> String {
        String::new()
    }
    /// Tables besides `input` the stage reads (reference names): edges of the DAG, and
    /// the references whose contents decide the stream's batch id.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }
    /// Transform the stream's current table. Stays lazy where the stage allows; the
    /// engine also calls this on an empty table to infer schemas before any data is read.
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError>;
    /// A stage that only groups rows (`aggregate`): what it groups by and reads.
    fn grouping(&self) -> Option<Grouping> {
        None
    }
    /// This grouping stage with the group keys `left_out` removed (see [`Stage::split_around`]).
    fn grouping_without(&self, _left_out: &[String]) -> Option<Arc<dyn Stage>> {
        None
    }
    /// Columns this stage adds that are a function of columns it keeps (a lookup's
    /// reference columns are a function of its keys), when the next stage, `grouping`,
    /// groups by all of them and reads none: the stage in two, one that adds none of them
    /// (refusing the same rows), to apply before the grouping, and one that adds them to
    /// the groups. The plan builder then groups fewer keys and joins fewer rows.
    fn split_around(&self, _grouping: &Grouping) -> Option<SplitAround> {
        None
    }
}

/// What a grouping stage groups by and reads, for the plan builder.
#[derive(Clone, Debug)]
pub struct Grouping {
    /// Its group keys.
    pub keys: Vec<String>,
    /// The columns its aggregates read.
    pub reads: Vec<String>,
    /// Its output columns, in order.
    pub outputs: Vec<String>,
}

/// A stage split around the grouping that follows it (see [`Stage::split_around`]).
pub struct SplitAround {
    /// Applied before the grouping: refuses what the stage refuses, adds nothing that
    /// `added` names.
    pub before: Arc<dyn Stage>,
    /// Applied to the groups: adds `added`, refuses nothing.
    pub after: Arc<dyn Stage>,
    /// The columns `after` adds, left out of the group keys.
    pub added: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::TemplateVars;

    #[test]
    fn template_values_in_sql_are_data_wherever_they_stand() {
        let vars = TemplateVars {
            values: vec![("owner_name".into(), "x' OR 1=1 --\n\"*/ y".into())],
        };
        let sql = vars
            .expand_sql("SELECT {{ owner_name }}, '{{ owner_name }}', \"{{owner_name}}\" -- {{ owner_name }}\n/* {{ owner_name }} */ FROM t")
            .unwrap();
        assert_eq!(
            sql,
            "SELECT 'x'' OR 1=1 --\n\"*/ y', 'x'' OR 1=1 --\n\"*/ y', \"x' OR 1=1 --\n\"\"*/ y\" -- x' OR 1=1 -- \"* / y\n/* x' OR 1=1 -- \"* / y */ FROM t"
        );
        // An escaped quote inside a literal does not end it.
        assert_eq!(
            vars.expand_sql("'it''s {{ owner_name }}'").unwrap(),
            "'it''s x'' OR 1=1 --\n\"*/ y'"
        );
    }
}
