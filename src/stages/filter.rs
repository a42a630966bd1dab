//! `kind: filter`: keep the rows that satisfy a condition. Removed rows are counted in
//! the run summary; a row whose condition is NULL is removed (SQL's WHERE).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{DataFrame, lit};
use marked_yaml::Node;

use super::settings::{existing, plan_err, sql_expr};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::side::remove_rows;

/// The settings of `kind: filter`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["condition"],
        ty: "SQL predicate",
        required: "one of `condition` / `column`",
        default: "",
        doc: "keep the rows where it is true; when given, column tests are not read",
    },
    Setting {
        keys: &["column"],
        ty: "column name",
        required: "one of `condition` / `column`",
        default: "",
        doc: "the column tested; needs exactly one test below",
    },
    Setting {
        keys: &["equals", "not_equals"],
        ty: "value",
        required: "one test",
        default: "",
        doc: "`column = value`, `column <> value`",
    },
    Setting {
        keys: &["in", "not_in"],
        ty: "list of values",
        required: "one test",
        default: "",
        doc: "`column IN (...)`, `column NOT IN (...)`",
    },
    Setting {
        keys: &["gt", "gte", "lt", "lte"],
        ty: "value",
        required: "one test",
        default: "",
        doc: "`>`, `>=`, `<`, `<=`",
    },
];

pub struct FilterKind;

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Compare(&'static str, String),
}

#[derive(Debug)]
enum Condition {
    Sql(Text),
    Column { column: Text, test: Test },
}

#[derive(Debug)]
pub struct FilterStage {
    condition: Condition,
}

const COMPARE: &[(&str, &str)] = &[
    ("gt", ">"),
    ("gte", ">="),
    ("lt", "<"),
    ("lte", "<="),
    ("not_equals", "<>"),
];

fn scalar_text(r: &mut Reader, node: &Node, what: &str) -> Option<String> {
    r.text(node, what).map(|t| t.value)
}

impl StageKind for FilterKind {
    fn name(&self) -> &'static str {
        "filter"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        if let Some(c) = f.text(r, "condition") {
            return Some(Arc::new(FilterStage {
                condition: Condition::Sql(c),
            }));
        }
        let Some(column) = f.text(r, "column") else {
            let at = f.location.clone();
            let d = r.error("filter stage has no condition", at);
            d.expected = Some("`condition: <SQL predicate>`, or `column:` with `equals`, `in`, `not_in`, `gt`, `gte`, `lt`, `lte` or `not_equals`".into());
            return None;
        };
        let mut tests = Vec::new();
        if let Some(n) = f.get("equals") {
            tests.push(Test::Equals(scalar_text(r, n, "`equals`")?));
        }
        if let Some(n) = f.get("in") {
            tests.push(Test::In(
                r.string_list(n, "`in` values")?.into_iter().map(|t| t.value).collect(),
            ));
        }
        if let Some(n) = f.get("not_in") {
            tests.push(Test::NotIn(
                r.string_list(n, "`not_in` values")?
                    .into_iter()
                    .map(|t| t.value)
                    .collect(),
            ));
        }
        for (key, op) in COMPARE {
            if let Some(n) = f.get(key) {
                tests.push(Test::Compare(op, scalar_text(r, n, key)?));
            }
        }
        match tests.len() {
            1 => Some(Arc::new(FilterStage {
                condition: Condition::Column {
                    column,
                    test: tests.remove(0),
                },
            })),
            0 => {
                let d = r.error(
                    format!("filter on `{}` says nothing to compare it with", column.value),
                    column.location.clone(),
                );
                d.expected = Some("one of `equals`, `in`, `not_in`, `gt`, `gte`, `lt`, `lte`, `not_equals`".into());
                None
            }
            _ => {
                let d = r.error("a filter stage takes one test", column.location.clone());
                d.hint = Some("combine tests with `condition: <SQL predicate>`, or use two filter stages".into());
                None
            }
        }
    }
}

/// A literal compared with a column: typed like the column (so `equals: 10` works on
/// integers, decimals and strings alike).
fn typed(df: &DataFrame, column: &Text, value: &str, env: &StageEnv<'_>) -> Result<Expr, StageError> {
    let field = df
        .schema()
        .field_with_unqualified_name(&column.value)
        .map_err(|_| StageError::new("unknown column"))?;
    // Values may name the stream's context, e.g. `equals: "{{ owner }}"`.
    let value = env
        .vars
        .expand(value)
        .map_err(|e| StageError::new(e.to_string()).at(Some(column.location.clone())))?;
    Ok(datafusion::logical_expr::cast(lit(value), field.data_type().clone()))
}

#[async_trait]
impl Stage for FilterStage {
    fn describe(&self) -> String {
        match &self.condition {
            Condition::Sql(t) => format!("filter {}", t.value),
            Condition::Column { column, test } => match test {
                Test::Equals(v) => format!("filter {} = {v}", column.value),
                Test::In(v) => format!("filter {} in [{}]", column.value, v.join(", ")),
                Test::NotIn(v) => format!("filter {} not in [{}]", column.value, v.join(", ")),
                Test::Compare(op, v) => format!("filter {} {op} {v}", column.value),
            },
        }
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let keep = match &self.condition {
            Condition::Sql(t) => {
                let expanded = env
                    .vars
                    .expand_sql(&t.value)
                    .map_err(|e| StageError::new(e.to_string()).at(Some(t.location.clone())))?;
                sql_expr(
                    &input,
                    &Text {
                        value: expanded,
                        location: t.location.clone(),
                    },
                )?
            }
            Condition::Column { column, test } => {
                let c = existing(&input, column)?;
                match test {
                    Test::Equals(v) => c.eq(typed(&input, column, v, env)?),
                    Test::In(vs) => c.in_list(
                        vs.iter()
                            .map(|v| typed(&input, column, v, env))
                            .collect::<Result<_, _>>()?,
                        false,
                    ),
                    Test::NotIn(vs) => c.in_list(
                        vs.iter()
                            .map(|v| typed(&input, column, v, env))
                            .collect::<Result<_, _>>()?,
                        true,
                    ),
                    Test::Compare(op, v) => {
                        let v = typed(&input, column, v, env)?;
                        match *op {
                            ">" => c.gt(v),
                            ">=" => c.gt_eq(v),
                            "<" => c.lt(v),
                            "<=" => c.lt_eq(v),
                            _ => c.not_eq(v),
                        }
                    }
                }
            }
        };
        let remove = keep.is_not_true();
        remove_rows(
            input,
            remove,
            &env.vars.expand(&self.describe()).unwrap_or_else(|_| self.describe()),
            env.stage,
            env.side,
        )
        .map_err(plan_err)
    }
}
