//! `kind: aggregate`: group rows and aggregate them, to turn usage lines into billing
//! lines. Sums of decimals stay exact (Decimal128, precision + 10).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, min, sum};
use datafusion::logical_expr::Expr;
use datafusion::prelude::DataFrame;

use super::settings::{existing, plan_err};
use super::{BuildContext, Grouping, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};

/// The settings of `kind: aggregate`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["group_by"],
        ty: "list of column names",
        required: "yes",
        default: "",
        doc: "the columns that identify a billing line",
    },
    Setting {
        keys: &["sum"],
        ty: "list of column names",
        required: "one of `sum` / `aggregations` (or both)",
        default: "",
        doc: "sum each column into a column of the same name",
    },
    Setting {
        keys: &["aggregations"],
        ty: "list of `{ function, column, as }`",
        required: "one of `sum` / `aggregations`",
        default: "",
        doc: "`function`: `sum`, `count`, `count_distinct`, `min`, `max`; `as`: the output column",
    },
];

pub struct AggregateKind;

const FUNCTIONS: &[&str] = &["sum", "count", "count_distinct", "min", "max"];

#[derive(Clone, Debug)]
struct Agg {
    function: String,
    column: Text,
    name: String,
}

#[derive(Clone, Debug)]
pub struct AggregateStage {
    group_by: Vec<Text>,
    aggs: Vec<Agg>,
}

impl StageKind for AggregateKind {
    fn name(&self) -> &'static str {
        "aggregate"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let group_by = f
            .require(r, "group_by", "the columns that identify a billing line")
            .and_then(|n| r.string_list(n, "group_by"));
        let mut aggs = Vec::new();
        if let Some(n) = f.get("sum") {
            for t in r.string_list(n, "columns to sum")? {
                aggs.push(Agg {
                    function: "sum".into(),
                    name: t.value.clone(),
                    column: t,
                });
            }
        }
        if let Some(n) = f.get("aggregations") {
            for item in r.sequence(n, "aggregations")? {
                let mut a = r.mapping(item, "aggregation")?;
                let function = a
                    .require(r, "function", "sum, count, count_distinct, min or max")
                    .and_then(|n| r.choice(n, "aggregate function", FUNCTIONS));
                let column = a.required_text(r, "column", "the column aggregated");
                let name = a.required_text(r, "as", "the output column's name");
                a.finish(r, &[]);
                aggs.push(Agg {
                    function: function?.value,
                    column: column?,
                    name: name?.value,
                });
            }
        }
        if aggs.is_empty() {
            let at = f.location.clone();
            r.error("aggregate computes nothing", at).expected =
                Some("`sum: [columns]` and/or `aggregations: [{ function, column, as }]`".into());
            return None;
        }
        Some(Arc::new(AggregateStage {
            group_by: group_by?,
            aggs,
        }))
    }
}

#[async_trait]
impl Stage for AggregateStage {
    fn describe(&self) -> String {
        let g: Vec<&str> = self.group_by.iter().map(|t| t.value.as_str()).collect();
        let a: Vec<String> = self
            .aggs
            .iter()
            .map(|a| format!("{}({}) as {}", a.function, a.column.value, a.name))
            .collect();
        format!("aggregate by {}: {}", g.join(", "), a.join(", "))
    }
    async fn apply(&self, input: DataFrame, _env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let group: Vec<Expr> = self
            .group_by
            .iter()
            .map(|g| existing(&input, g))
            .collect::<Result<_, _>>()?;
        let mut aggs = Vec::new();
        for a in &self.aggs {
            let c = existing(&input, &a.column)?;
            let e = match a.function.as_str() {
                "sum" => sum(c),
                "count" => count(c),
                "count_distinct" => count_distinct(c),
                "min" => min(c),
                _ => max(c),
            };
            aggs.push(e.alias(&a.name));
        }
        input.aggregate(group, aggs).map_err(plan_err)
    }
    fn grouping(&self) -> Option<Grouping> {
        let keys: Vec<String> = self.group_by.iter().map(|g| g.value.clone()).collect();
        Some(Grouping {
            outputs: keys
                .iter()
                .cloned()
                .chain(self.aggs.iter().map(|a| a.name.clone()))
                .collect(),
            reads: self.aggs.iter().map(|a| a.column.value.clone()).collect(),
            keys,
        })
    }
    fn grouping_without(&self, left_out: &[String]) -> Option<Arc<dyn Stage>> {
        let mut fewer = self.clone();
        fewer.group_by.retain(|g| !left_out.contains(&g.value));
        Some(Arc::new(fewer))
    }
}
