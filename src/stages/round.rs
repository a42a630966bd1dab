//! `kind: round`: money rounding with an explicit scale and mode, and optional penny
//! reconciliation: per group, the rounded lines add up to the rounded total of the exact
//! lines; the residue goes to one deterministic line (the largest absolute amount, ties
//! broken by `order_by`).

use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::functions::math::expr_fn::abs;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{DataFrame, ident};

use super::settings::{all_but, existing, plan_err};
use super::settings::{read_rounding, read_scale};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::money::{RoundingMode, distribute_residue, round};

/// The settings of `kind: round`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["columns"],
        ty: "list of column names",
        required: "yes",
        default: "",
        doc: "`Decimal128` or integer columns; any other type is an error at `validate`",
    },
    Setting {
        keys: &["scale"],
        ty: "0-38",
        required: "yes",
        default: "",
        doc: "decimal places; no default, since money rounding is a contract decision",
    },
    Setting {
        keys: &["mode"],
        ty: "rounding mode",
        required: "no",
        default: "`half_even`",
        doc: "see [Money and rounding](#money-and-rounding)",
    },
    Setting {
        keys: &["reconcile"],
        ty: "mapping",
        required: "no",
        default: "none: each value rounded alone",
        doc: "penny reconciliation",
    },
    Setting {
        keys: &["reconcile.group_by"],
        ty: "list of column names",
        required: "no",
        default: "`[]`: the whole table is one group",
        doc: "the groups whose totals are kept",
    },
    Setting {
        keys: &["reconcile.order_by"],
        ty: "list of column names",
        required: "no",
        default: "`[]`",
        doc: "tie-break between lines of equal absolute amount",
    },
];

pub struct RoundKind;

#[derive(Debug)]
struct Reconcile {
    group_by: Vec<Text>,
    order_by: Vec<Text>,
}

#[derive(Debug)]
pub struct RoundStage {
    columns: Vec<Text>,
    scale: i8,
    mode: RoundingMode,
    reconcile: Option<Reconcile>,
}

impl StageKind for RoundKind {
    fn name(&self) -> &'static str {
        "round"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let columns = f
            .require(r, "columns", "the decimal columns to round")
            .and_then(|n| r.string_list(n, "columns"));
        let scale = if f.has("scale") {
            read_scale(f, r, "scale", 2)
        } else {
            let at = f.location.clone();
            let d = r.error("round needs an explicit `scale`", at);
            d.hint = Some("money rounding is a contract decision: write e.g. `scale: 2`".into());
            None
        };
        let mode = read_rounding(f, r, "mode");
        let reconcile = match f.get("reconcile") {
            None => Some(None),
            Some(n) => {
                let mut m = r.mapping(n, "reconcile")?;
                let group_by = m
                    .get("group_by")
                    .map(|n| r.string_list(n, "group_by"))
                    .unwrap_or(Some(vec![]));
                let order_by = m
                    .get("order_by")
                    .map(|n| r.string_list(n, "order_by"))
                    .unwrap_or(Some(vec![]));
                m.finish(r, &[]);
                Some(Some(Reconcile {
                    group_by: group_by?,
                    order_by: order_by?,
                }))
            }
        };
        Some(Arc::new(RoundStage {
            columns: columns?,
            scale: scale?,
            mode: mode?,
            reconcile: reconcile?,
        }))
    }
}

#[async_trait]
impl Stage for RoundStage {
    fn describe(&self) -> String {
        let cols: Vec<&str> = self.columns.iter().map(|c| c.value.as_str()).collect();
        let rec = match &self.reconcile {
            None => String::new(),
            Some(r) if r.group_by.is_empty() => ", reconciled over the batch".into(),
            Some(r) => format!(
                ", reconciled per {}",
                r.group_by
                    .iter()
                    .map(|g| g.value.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "round {} to {} places {}{rec}",
            cols.join(", "),
            self.scale,
            self.mode.name()
        )
    }
    async fn apply(&self, input: DataFrame, _env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let mut df = input;
        for c in &self.columns {
            let column = existing(&df, c)?;
            let ty = df
                .schema()
                .field_with_unqualified_name(&c.value)
                .map_err(plan_err)?
                .data_type()
                .clone();
            if !matches!(ty, DataType::Decimal128(_, _) | DataType::Int64 | DataType::Int32) {
                let mut e = StageError::new(format!(
                    "`{}` is {ty}, not a decimal: round works on exact money",
                    c.value
                ))
                .at(Some(c.location.clone()));
                e.hint = Some("cast it to a decimal first (formula or copy_columns with a `decimal(p,s)` type)".into());
                return Err(e);
            }
            let rounded = round(column.clone(), self.scale, self.mode);
            let Some(rec) = &self.reconcile else {
                let mut select = all_but(&df, &[c.value.as_str()]);
                select.push(rounded.alias(&c.value));
                df = df.select(select).map_err(plan_err)?;
                continue;
            };
            let group: Vec<Expr> = rec
                .group_by
                .iter()
                .map(|g| existing(&df, g))
                .collect::<Result<_, _>>()?;
            let mut order = vec![abs(column.clone()).sort(false, false)];
            for o in &rec.order_by {
                order.push(existing(&df, o)?.sort(true, false));
            }
            // The rounded lines, reconciled to the rounded total of the exact ones.
            let mut select = all_but(&df, &[c.value.as_str()]);
            select.push(rounded.alias(&c.value));
            select.push(column.clone().alias("__bf_exact"));
            df = df.select(select).map_err(plan_err)?;
            df = distribute_residue(df, &c.value, ident("__bf_exact"), self.scale, self.mode, group, order)
                .map_err(plan_err)?;
            let keep = all_but(&df, &["__bf_exact"]);
            df = df.select(keep).map_err(plan_err)?;
        }
        Ok(df)
    }
}
