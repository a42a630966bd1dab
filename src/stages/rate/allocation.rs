//! Phases 5 and 6 of rating: each group's charge shared back over its lines (in
//! proportion to their weight, or equally) and reconciled so the lines add up to the
//! charge exactly; then, for a plan with a minimum commitment the charge falls short of,
//! an explicit true-up line for the difference.

use arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::{Grouping, RateStage, dec};
use crate::engine::money::{div_round, round};
use crate::stages::StageError;
use crate::stages::settings::{all_but, plan_err};

/// Internal columns of the lines that the published lines leave out.
const LINE_INTERNALS: &[&str] = &[
    "__bf_measure",
    "__bf_weight",
    "__bf_base",
    "__bf_w",
    "__bf_n",
    "__bf_version",
    "__bf_charge",
    "__bf_commit",
];

impl RateStage {
    /// The lines with their share of the group's charge in the output column.
    pub(super) fn allocate(
        &self,
        lines: DataFrame,
        charges: &DataFrame,
        g: &Grouping,
    ) -> Result<DataFrame, StageError> {
        let lines = {
            let mut c = all_but(&lines, &[]);
            c.extend(g.exprs.iter().zip(&g.names).map(|(e, n)| e.clone().alias(n)));
            lines.select(c).map_err(plan_err)?
        };
        // The group's charge, weight and line count, looked up per line (the lines are not
        // copied; NULL group keys match, as in a grouping).
        let on: Vec<(Expr, Expr)> = g.names.iter().map(|n| (ident(n), ident(format!("{n}c")))).collect();
        let joined = crate::engine::lookup::lookup(lines, charges.clone(), on, true).map_err(plan_err)?;
        let w_zero = ident("__bf_w").eq(dec(0, 0)).or(ident("__bf_w").is_null());
        let share = when(
            w_zero,
            div_round(ident("__bf_charge"), ident("__bf_n"), self.scale, self.mode),
        )
        .otherwise(div_round(
            ident("__bf_charge") * ident("__bf_weight"),
            ident("__bf_w"),
            self.scale,
            self.mode,
        ))
        .map_err(plan_err)?;
        let mut internal: Vec<String> = LINE_INTERNALS.iter().map(|c| c.to_string()).collect();
        internal.extend(g.names.iter().cloned());
        internal.extend(g.names.iter().map(|n| format!("{n}c")));
        internal.extend(g.tops.iter().cloned());
        internal.push(self.output.clone());
        let internal_refs: Vec<&str> = internal.iter().map(String::as_str).collect();
        let out_type = DataType::Decimal128(38, self.scale);
        let mut select = all_but(&joined, &internal_refs);
        select.push(share.alias(&self.output));
        select.push(g.candidate.clone().alias("__bf_candidate"));
        select.push(cast(ident("__bf_charge"), out_type).alias("__bf_target"));
        select.push(ident("__bf_n").alias("__bf_lines"));
        select.extend(g.names.iter().map(ident));
        let allocated = joined.select(select).map_err(plan_err)?;
        // Penny reconciliation in the same pass: the lines go on as they come, but each
        // group's first top line is held until all lines are read, when the group's sum of
        // rounded shares is known; it then takes the residue (charge - that sum).
        let reconciled = crate::engine::residue::hold(
            allocated,
            &self.output,
            g.names.iter().map(ident).collect(),
            ident("__bf_candidate"),
            ident("__bf_target"),
            Some(ident("__bf_lines")),
        )
        .map_err(plan_err)?;
        let mut drop: Vec<&str> = vec!["__bf_candidate", "__bf_target", "__bf_lines"];
        drop.extend(g.names.iter().map(String::as_str));
        let keep = all_but(&reconciled, &drop);
        reconciled.select(keep).map_err(plan_err)
    }

    /// The usage lines marked `usage`, and one `true_up` line per group whose charge falls
    /// short of its plan's minimum commitment, for the difference, carrying the group's
    /// columns.
    pub(super) fn true_up(&self, usage: DataFrame, charges: DataFrame, g: &Grouping) -> Result<DataFrame, StageError> {
        let line_type = self.line_type.clone();
        let schema = usage.schema().clone();
        let mut group_names: Vec<String> = self.group_by.iter().map(|c| c.value.clone()).collect();
        group_names.extend(self.keys.iter().map(|(c, _)| c.value.clone()));
        let mut trueup_cols = Vec::new();
        for f in schema.fields() {
            let e = if f.name() == &self.output {
                round(ident("__bf_commit") - ident("__bf_charge"), self.scale, self.mode)
            } else if let Some(i) = group_names.iter().position(|c| c == f.name()) {
                ident(format!("{}c", g.names[i]))
            } else {
                lit(ScalarValue::Null)
            };
            trueup_cols.push(cast(e, f.data_type().clone()).alias(f.name()));
        }
        trueup_cols.push(lit("true_up").alias(&line_type));
        let trueups = charges
            .filter(
                ident("__bf_commit")
                    .is_not_null()
                    .and(ident("__bf_commit").gt(ident("__bf_charge"))),
            )
            .and_then(|d| d.select(trueup_cols))
            .map_err(plan_err)?;
        let mut usage_cols = all_but(&usage, &[]);
        usage_cols.push(lit("usage").alias(&line_type));
        usage
            .select(usage_cols)
            .and_then(|u| u.union(trueups))
            .map_err(plan_err)
    }
}
