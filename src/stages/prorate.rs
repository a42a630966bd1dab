//! `kind: prorate`: the share of a full-period charge for the part of the period a row
//! was active (a subscription starting or ending mid-period, an upgrade or downgrade on a
//! given day), by days or by seconds of the period's own calendar. A row with no start is
//! active from the period's start; with no end, until its end. Computed exactly:
//! amount x active / period length, rounded once.

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use datafusion::functions::expr_fn::{coalesce, greatest, least};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, lit};

use super::settings::{ROUNDING, all_but, existing, plan_err};
use super::settings::{read_rounding, read_scale};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::money::{RoundingMode, div_round};

/// The settings of `kind: prorate`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["amount"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the full-period charge (a decimal column)",
    },
    Setting {
        keys: &["start"],
        ty: "column name",
        required: "one of `start` / `end` (or both)",
        default: "none: the period's start",
        doc: "when the row became active, inclusive; NULL = the period's start",
    },
    Setting {
        keys: &["end"],
        ty: "column name",
        required: "one of `start` / `end`",
        default: "none: the period's end",
        doc: "when it stopped, exclusive; NULL = the period's end",
    },
    Setting {
        keys: &["by"],
        ty: "`days`, `seconds`",
        required: "no",
        default: "`days`",
        doc: "the unit of `active` and `length`",
    },
    Setting {
        keys: &["output"],
        ty: "column name",
        required: "no",
        default: "`amount` (replaced)",
        doc: "the prorated charge",
    },
    Setting {
        keys: &["active_output"],
        ty: "column name",
        required: "no",
        default: "none",
        doc: "also write the active days (or seconds)",
    },
    Setting {
        keys: &["scale"],
        ty: "0-38",
        required: "no",
        default: "`4`",
        doc: "decimal places of the result",
    },
    ROUNDING,
];

pub struct ProrateKind;

#[derive(Debug)]
pub struct ProrateStage {
    amount: Text,
    start: Option<Text>,
    end: Option<Text>,
    by_seconds: bool,
    output: String,
    active_output: Option<String>,
    scale: i8,
    mode: RoundingMode,
}

impl StageKind for ProrateKind {
    fn name(&self) -> &'static str {
        "prorate"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let amount = f.required_text(r, "amount", "the full-period charge column");
        let start = f.text(r, "start");
        let end = f.text(r, "end");
        let by = match f.get("by") {
            None => Some("days".to_string()),
            Some(n) => r.choice(n, "`by`", &["days", "seconds"]).map(|t| t.value),
        };
        let output = f.text(r, "output").map(|t| t.value);
        let active_output = f.text(r, "active_output").map(|t| t.value);
        let scale = read_scale(f, r, "scale", 4);
        let mode = read_rounding(f, r, "rounding");
        if start.is_none() && end.is_none() {
            let at = f.location.clone();
            r.error(
                "prorate needs `start` and/or `end`: the columns bounding when the row was active",
                at,
            );
            return None;
        }
        let amount = amount?;
        Some(Arc::new(ProrateStage {
            output: output.unwrap_or_else(|| amount.value.clone()),
            amount,
            start,
            end,
            by_seconds: by? == "seconds",
            active_output,
            scale: scale?,
            mode: mode?,
        }))
    }
}

#[async_trait]
impl Stage for ProrateStage {
    fn describe(&self) -> String {
        format!(
            "prorate {} by {} active in [{}, {}) -> {} ({} places {})",
            self.amount.value,
            if self.by_seconds { "seconds" } else { "days" },
            self.start.as_ref().map(|t| t.value.as_str()).unwrap_or("period start"),
            self.end.as_ref().map(|t| t.value.as_str()).unwrap_or("period end"),
            self.output,
            self.scale,
            self.mode.name()
        )
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let day = |name: &str| -> Result<i64, StageError> {
            let d = env
                .vars
                .get(name)
                .and_then(|v| chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
                .ok_or_else(|| StageError::new("no period to prorate over"))?;
            Ok((d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days())
        };
        let (p0, p1) = (day("period_start")?, day("period_end")?);
        let unit = if self.by_seconds { 86_400 } else { 1 };
        // Positions on one integer axis: days (or seconds) since 1970-01-01.
        let position = |e: Expr| -> Expr {
            if self.by_seconds {
                cast(cast(e, DataType::Timestamp(TimeUnit::Second, None)), DataType::Int64)
            } else {
                cast(cast(cast(e, DataType::Date32), DataType::Int32), DataType::Int64)
            }
        };
        let start = match &self.start {
            Some(s) => coalesce(vec![position(existing(&input, s)?), lit(p0 * unit)]),
            None => lit(p0 * unit),
        };
        let end = match &self.end {
            Some(e) => coalesce(vec![position(existing(&input, e)?), lit(p1 * unit)]),
            None => lit(p1 * unit),
        };
        let active = greatest(vec![
            least(vec![end, lit(p1 * unit)]) - greatest(vec![start, lit(p0 * unit)]),
            lit(0i64),
        ]);
        let length = (p1 - p0) * unit;
        let amount = existing(&input, &self.amount)?;
        let prorated = div_round(
            amount * cast(active.clone(), DataType::Decimal128(20, 0)),
            lit(length),
            self.scale,
            self.mode,
        );
        let mut drop = vec![self.output.as_str()];
        if let Some(a) = &self.active_output {
            drop.push(a.as_str());
        }
        let mut select = all_but(&input, &drop);
        select.push(prorated.alias(&self.output));
        if let Some(a) = &self.active_output {
            select.push(active.alias(a));
        }
        input.select(select).map_err(plan_err)
    }
}
