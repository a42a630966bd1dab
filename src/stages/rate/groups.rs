//! Phases 2 and 3 of rating: each line's measure and allocation weight, then one row per
//! group (group_by, the price keys, the version) with its aggregated quantity, weight,
//! line count, base amount and the sort keys of its top line.

use arrow::datatypes::DataType;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, last_value, max, sum};
use datafusion::logical_expr::{Expr, SortExpr, cast};
use datafusion::prelude::{DataFrame, ident, lit};

use super::{Grouping, RateStage, Usage, dec};
use crate::engine::money::top_line;
use crate::stages::StageError;
use crate::stages::reference::MATCHES;
use crate::stages::settings::{all_but, existing, plan_err};

impl RateStage {
    /// The lines with `__bf_measure`, `__bf_weight` (and `__bf_base`), and how they group.
    pub(super) fn measure_and_group(
        &self,
        lines: DataFrame,
        usage: &Usage,
    ) -> Result<(DataFrame, Grouping), StageError> {
        let measure = match self.aggregation.as_str() {
            "time_weighted" => {
                let duration = self.duration.as_ref().ok_or_else(|| StageError::new("duration"))?;
                usage.quantity.clone() * existing(&lines, duration)?
            }
            _ => usage.quantity.clone(),
        };
        let base = self.base_amount.as_ref().map(|b| existing(&lines, b)).transpose()?;
        // Lines share their group's charge in proportion to what was charged for: the base
        // amount (percentage pricing) or the quantity (summed aggregations); else equally.
        let weight = match (self.allocation.as_str(), &base, self.aggregation.as_str()) {
            ("proportional", Some(b), _) => coalesce(vec![b.clone(), measure.clone()]),
            ("proportional", None, "sum" | "time_weighted") => measure.clone(),
            _ => dec(1, 0),
        };
        let mut cols = all_but(&lines, &[MATCHES]);
        cols.push(measure.alias("__bf_measure"));
        cols.push(cast(weight, DataType::Decimal128(38, 10)).alias("__bf_weight"));
        if let Some(b) = &base {
            cols.push(b.clone().alias("__bf_base"));
        }
        let lines = lines.select(cols).map_err(plan_err)?;

        let mut exprs: Vec<Expr> = usage.group_by.clone();
        exprs.extend(usage.keys.iter().map(|(e, _)| e.clone()));
        // Undated plans have one version per key: no version column to group and join on.
        if self.dated() {
            exprs.push(ident("__bf_version"));
        }
        let names: Vec<String> = (0..exprs.len()).map(|i| format!("__bf_g{i}")).collect();
        // The line that takes the group's rounding residue: the largest |weight|, then
        // `order_by`. Its sort keys depend on the lines alone, so they are found in the
        // same pass as the quantity.
        let mut order: Vec<SortExpr> =
            vec![datafusion::functions::math::expr_fn::abs(ident("__bf_weight")).sort(false, false)];
        for o in &self.order_by {
            order.push(existing(&lines, o)?.sort(true, false));
        }
        let tops: Vec<String> = (0..order.len()).map(|i| format!("__bf_top{i}")).collect();
        let (top_aggregates, candidate) = top_line(&order, &tops);
        let grouping = Grouping {
            exprs,
            names,
            top_aggregates,
            tops,
            candidate,
            has_base: base.is_some(),
        };
        Ok((lines, grouping))
    }

    /// One row per group: `__bf_q` (its quantity), `__bf_w` (weight), `__bf_n` (lines),
    /// `__bf_a` (base amount), and its top line's sort keys.
    pub(super) fn groups(&self, lines: &DataFrame, usage: &Usage, g: &Grouping) -> Result<DataFrame, StageError> {
        let quantity = usage.quantity.clone();
        let q = match self.aggregation.as_str() {
            "count" => count(lit(1i64)),
            "count_distinct" => count_distinct(quantity),
            "max" => max(quantity),
            "latest" => {
                // Undated lines sort first, so a dated line is always the latest.
                let by = match &self.latest_by {
                    Some(t) => existing(lines, t)?,
                    None => usage.date.clone().unwrap_or(lit(0)),
                };
                last_value(quantity, vec![by.sort(true, true)])
            }
            _ => sum(ident("__bf_measure")),
        };
        let mut aggs = vec![
            cast(q, DataType::Decimal128(38, 10)).alias("__bf_q"),
            sum(ident("__bf_weight")).alias("__bf_w"),
            count(lit(1i64)).alias("__bf_n"),
        ];
        if g.has_base {
            aggs.push(sum(ident("__bf_base")).alias("__bf_a"));
        }
        aggs.extend(g.top_aggregates.iter().cloned());
        lines
            .clone()
            .aggregate(
                g.exprs.iter().zip(&g.names).map(|(e, n)| e.clone().alias(n)).collect(),
                aggs,
            )
            .map_err(plan_err)
    }
}
