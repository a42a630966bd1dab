//! `kind: split_column`: a regular expression applied from the start of a column; its
//! capture groups (numbered, or named) fill output columns. No match, NULL or an empty
//! value gives NULLs.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::functions::expr_fn::regexp_match;
use datafusion::functions_nested::expr_fn::array_element;
use datafusion::logical_expr::{cast, when};
use datafusion::prelude::{DataFrame, lit};

use super::settings::{all_but, existing, plan_err};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};

/// The settings of `kind: split_column`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["column"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the column to split (cast to text)",
    },
    Setting {
        keys: &["pattern"],
        ty: "regular expression",
        required: "yes",
        default: "",
        doc: "with capture groups, numbered or named `(?P<name>...)`",
    },
    Setting {
        keys: &["outputs"],
        ty: "list of column names",
        required: "no",
        default: "the named groups, each into a column of its name",
        doc: "the n-th name takes capture group n; more names than groups is an error",
    },
];

pub struct SplitColumnKind;

#[derive(Debug)]
pub struct SplitColumnStage {
    column: Text,
    pattern: String,
    /// (capture group number, output column)
    outputs: Vec<(usize, String)>,
}

impl StageKind for SplitColumnKind {
    fn name(&self) -> &'static str {
        "split_column"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let column = f.required_text(r, "column", "the column to split");
        let pattern = f.required_text(r, "pattern", "a regular expression with capture groups")?;
        // Anchored at the start, as the reference implementation applies it.
        let anchored = if pattern.value.starts_with('^') {
            pattern.value.clone()
        } else {
            format!("^(?:{})", pattern.value)
        };
        let re = match regex::Regex::new(&anchored) {
            Ok(re) => re,
            Err(e) => {
                let d = r.error(format!("invalid regular expression: {e}"), pattern.location.clone());
                d.expected = Some("a Rust/RE2-style regular expression, e.g. `(?P<plan>[A-Z]+)-(?P<size>\\d+)`".into());
                return None;
            }
        };
        let groups = re.captures_len() - 1;
        let outputs = match f.get("outputs") {
            Some(n) => {
                let names = r.string_list(n, "output column names")?;
                if names.len() > groups {
                    let d = r.error(
                        format!("{} outputs for {groups} capture group(s)", names.len()),
                        names[groups].location.clone(),
                    );
                    d.hint = Some("each output takes one capture group, in order".into());
                    return None;
                }
                names
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (i + 1, t.value))
                    .collect::<Vec<_>>()
            }
            None => {
                let named: Vec<(usize, String)> = re
                    .capture_names()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (i, n.to_string())))
                    .collect();
                if named.is_empty() {
                    let d = r.error(
                        "the pattern has no named groups and the stage lists no `outputs`",
                        pattern.location.clone(),
                    );
                    d.hint =
                        Some("name the groups, `(?P<name>...)`, or list `outputs: [a, b]` for groups 1, 2, ...".into());
                    return None;
                }
                named
            }
        };
        Some(Arc::new(SplitColumnStage {
            column: column?,
            pattern: anchored,
            outputs,
        }))
    }
}

#[async_trait]
impl Stage for SplitColumnStage {
    fn describe(&self) -> String {
        let outs: Vec<&str> = self.outputs.iter().map(|(_, n)| n.as_str()).collect();
        format!(
            "split_column {} by /{}/ into {}",
            self.column.value,
            self.pattern,
            outs.join(", ")
        )
    }
    async fn apply(&self, input: DataFrame, _env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let column = cast(existing(&input, &self.column)?, arrow::datatypes::DataType::Utf8);
        // regexp_match gives the capture groups as a list; NULL when nothing matches.
        let groups = regexp_match(column, lit(self.pattern.clone()), None);
        let names: Vec<&str> = self.outputs.iter().map(|(_, n)| n.as_str()).collect();
        let mut select = all_but(&input, &names);
        for (i, name) in &self.outputs {
            let value = array_element(groups.clone(), lit(*i as i64));
            // An optional group that did not take part comes back as an empty string.
            let value = when(
                value.clone().eq(lit("")),
                lit(datafusion::scalar::ScalarValue::Utf8(None)),
            )
            .otherwise(value)
            .map_err(plan_err)?;
            select.push(value.alias(name));
        }
        input.select(select).map_err(plan_err)
    }
}
