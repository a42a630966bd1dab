//! Phase 4 of rating: each group joins the bands of its plan (and version); each band
//! contributes to the group's charge by the plan's model; the contributions add up to the
//! charge, clamped to the plan's minimum and maximum and rounded once.

use arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::functions::expr_fn::{coalesce, concat_ws, greatest, least};
use datafusion::functions_aggregate::expr_fn::{max, sum};
use datafusion::logical_expr::{Expr, case, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::{Grouping, MODELS, ROLES, RateStage, dec, has_column, same};
use crate::engine::materialize;
use crate::engine::money::{RoundingMode, round};
use crate::engine::side::fail_on_each;
use crate::stages::settings::plan_err;
use crate::stages::{StageEnv, StageError};

impl RateStage {
    /// One row per group: its keys (the group names suffixed `c`), `__bf_charge`,
    /// `__bf_commit`, `__bf_w`, `__bf_n` and its top line's sort keys. Held in memory:
    /// both places that join it back would otherwise each aggregate the whole input again.
    pub(super) async fn charges(
        &self,
        groups: DataFrame,
        plans: &DataFrame,
        g: &Grouping,
        env: &StageEnv<'_>,
    ) -> Result<DataFrame, StageError> {
        let priced = self.join_bands(groups, plans, g, env.stage)?;
        let band = |role: &str| self.band(plans, role);
        let priced = priced
            .select({
                let mut c: Vec<Expr> = g.names.iter().map(ident).collect();
                c.push(contribution(g.has_base, self.model.as_deref(), &band)?.alias("__bf_contribution"));
                c.extend(
                    LIMITS
                        .iter()
                        .filter(|role| self.has(plans, role))
                        .map(|role| ident(format!("__bf_{role}"))),
                );
                c.extend(["__bf_w", "__bf_n"].map(ident));
                c.extend(g.tops.iter().map(ident));
                c
            })
            .map_err(plan_err)?;
        let charges = self.sum_contributions(priced, plans, g)?;
        // A check has no rows to hold: computing the plan would only cost its planning
        // (a third of `validate`'s time for a rated job), and the optimiser still checks it.
        if !env.executing {
            return Ok(charges);
        }
        // Within the run's memory limit, spilled past it (one row per group can be as
        // many as the lines). This read of the input is a complete one: the checkpoints
        // in it count exactly.
        let what = format!("the charges per group of stage `{}`", env.stage);
        materialize::once(env.ctx, charges, &what).await.map_err(plan_err)
    }

    /// Whether the price list has a column for `role`.
    fn has(&self, plans: &DataFrame, role: &str) -> bool {
        has_column(plans, self.col(role))
    }

    /// A band's value for `role` once the bands are joined: its column, or NULL where the
    /// price list has none. A NULL literal, not a NULL column, so the optimiser folds
    /// what it feeds (`coalesce(NULL, 0)` is 0) instead of computing it on every row.
    fn band(&self, plans: &DataFrame, role: &str) -> Expr {
        if self.has(plans, role) {
            ident(format!("__bf_{role}"))
        } else {
            lit(ScalarValue::Null)
        }
    }

    /// Each group with every band of its plan and version, under `__bf_<role>` names
    /// (the roles the price list has; the model too when the stage does not name one).
    fn join_bands(
        &self,
        groups: DataFrame,
        plans: &DataFrame,
        g: &Grouping,
        stage: &str,
    ) -> Result<DataFrame, StageError> {
        let dated = self.dated();
        let mut band_cols: Vec<Expr> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (_, k))| ident(k).alias(format!("__bf_pk{i}")))
            .collect();
        let version = if dated {
            ident(self.col("valid_from"))
        } else {
            lit(ScalarValue::Null)
        };
        band_cols.push(version.alias("__bf_pv"));
        if self.model.is_none() {
            let model = match self.has(plans, "model") {
                true => ident(self.col("model")),
                false => lit(ScalarValue::Null),
            };
            band_cols.push(cast(model, DataType::Utf8).alias("__bf_model"));
        }
        for role in ROLES
            .iter()
            .copied()
            .filter(|r| !matches!(*r, "model" | "valid_from" | "valid_to") && self.has(plans, r))
        {
            band_cols.push(ident(self.col(role)).alias(format!("__bf_{role}")));
        }
        let bands = plans.clone().select(band_cols).map_err(plan_err)?;
        let bands = self.known_models(bands, stage)?;
        let nk = self.group_by.len();
        let mut on: Vec<Expr> = (0..self.keys.len())
            .map(|i| ident(&g.names[nk + i]).eq(ident(format!("__bf_pk{i}"))))
            .collect();
        if dated {
            on.push(same(ident(&g.names[g.names.len() - 1]), ident("__bf_pv")));
        }
        groups.join_on(bands, JoinType::Inner, on).map_err(plan_err)
    }

    /// The price rows, or an execution error at the first whose model billflow does not
    /// know, counted as price rows (not as the usage rows being rated). A model the stage
    /// names was checked with its settings.
    fn known_models(&self, bands: DataFrame, stage: &str) -> Result<DataFrame, StageError> {
        if self.model.is_some() {
            return Ok(bands);
        }
        let unknown_model = ident("__bf_model")
            .is_null()
            .or(ident("__bf_model").in_list(MODELS.iter().map(|m| lit(*m)).collect(), true));
        let model_reason = concat_ws(
            lit(""),
            vec![
                lit("unknown pricing model '"),
                coalesce(vec![ident("__bf_model"), lit("NULL")]),
                lit(format!(
                    "' in `{}` (known: {})",
                    self.price_list.value,
                    MODELS.join(", ")
                )),
            ],
        );
        let unit = format!("a price row of `{}`", self.price_list.value);
        bands
            .filter(fail_on_each(unknown_model, model_reason, stage, Some(&unit)))
            .map_err(plan_err)
    }

    /// The groups' charges: contributions summed, clamped and rounded. A limit the price
    /// list has no column for is not aggregated (a `max` over a NULL column has no
    /// vectorised accumulator: one boxed accumulator per group).
    fn sum_contributions(&self, priced: DataFrame, plans: &DataFrame, g: &Grouping) -> Result<DataFrame, StageError> {
        let limit = |role: &str| match self.has(plans, role) {
            true => ident(format!("__bf_{role}_per_group")),
            false => lit(ScalarValue::Null),
        };
        let charges = priced
            .aggregate(
                g.names.iter().map(ident).collect(),
                [sum(ident("__bf_contribution")).alias("__bf_raw")]
                    .into_iter()
                    .chain(
                        LIMITS
                            .iter()
                            .filter(|role| self.has(plans, role))
                            .map(|role| max(ident(format!("__bf_{role}"))).alias(format!("__bf_{role}_per_group"))),
                    )
                    .chain([
                        // Constant within the group: its weight and line count, for allocation.
                        max(ident("__bf_w")).alias("__bf_gw"),
                        max(ident("__bf_n")).alias("__bf_gn"),
                    ])
                    // Aliased apart from the input's name (DataFusion refuses `max(x) AS x`
                    // here as a duplicate field), and named back below.
                    .chain(g.tops.iter().map(|t| max(ident(t)).alias(format!("{t}m"))))
                    .collect(),
            )
            .map_err(plan_err)?;
        let low = greatest(vec![
            ident("__bf_raw"),
            coalesce(vec![limit("min_charge"), ident("__bf_raw")]),
        ]);
        let clamped = least(vec![low.clone(), coalesce(vec![limit("max_charge"), low])]);
        charges
            .select({
                let mut c: Vec<Expr> = g.names.iter().map(|n| ident(n).alias(format!("{n}c"))).collect();
                c.push(round(clamped, self.scale, self.mode).alias("__bf_charge"));
                c.push(limit("commitment").alias("__bf_commit"));
                c.push(ident("__bf_gw").alias("__bf_w"));
                c.push(ident("__bf_gn").alias("__bf_n"));
                c.extend(g.tops.iter().map(|t| ident(format!("{t}m")).alias(t)));
                c
            })
            .map_err(plan_err)
    }
}

/// The price limits per group, the largest of the group's bands.
const LIMITS: &[&str] = &["min_charge", "max_charge", "commitment"];

/// What one band adds to its group's charge, by the plan's model (`model` when the stage
/// names one, else each band's `__bf_model`), over the group's quantity `__bf_q` (or base
/// amount `__bf_a`, with `has_base`). `band` gives a role's value.
fn contribution(has_base: bool, model: Option<&str>, band: &dyn Fn(&str) -> Expr) -> Result<Expr, StageError> {
    let zero = dec(0, 0);
    let from = coalesce(vec![band("band_from"), zero.clone()]);
    let to = band("band_to");
    let free = coalesce(vec![band("free_units"), zero.clone()]);
    let price = coalesce(vec![band("unit_price"), zero.clone()]);
    let fee = coalesce(vec![band("flat_fee"), zero.clone()]);
    let qv = ident("__bf_q");
    // Free units come off the top; a net credit (negative quantity) keeps its sign.
    let billable = when(qv.clone().lt(zero.clone()), qv.clone())
        .when(qv.clone().gt(free.clone()), qv.clone() - free.clone())
        .otherwise(zero.clone())
        .map_err(plan_err)?;
    let in_band = |x: Expr| {
        least(vec![
            greatest(vec![x.clone() - from.clone(), zero.clone()]),
            // An open-ended top band holds everything above its start.
            coalesce(vec![
                to.clone() - from.clone(),
                greatest(vec![x - from.clone(), zero.clone()]),
            ]),
        ])
    };
    let reached = |x: Expr| {
        x.clone()
            .gt_eq(from.clone())
            .and(to.clone().is_null().or(x.lt(to.clone())))
    };
    let otherwise_zero = |cond: Expr, then: Expr| when(cond, then).otherwise(zero.clone()).map_err(plan_err);
    let block = band("block_size");
    // Started blocks of a positive quantity; a net credit buys no blocks.
    let blocks = {
        let billable = greatest(vec![billable.clone(), zero.clone()]);
        let whole = round(billable.clone() / block.clone(), 0, RoundingMode::Down);
        whole.clone() + otherwise_zero((whole * block).lt(billable), dec(1, 0))?
    };
    let amount = coalesce(vec![ident(if has_base { "__bf_a" } else { "__bf_q" }), zero.clone()]);
    let pct = coalesce(vec![band("percent"), zero.clone()]);
    // A negative base (a refund) is credited at the first band's percent.
    let percentage = when(
        amount.clone().lt(zero.clone()),
        otherwise_zero(from.clone().eq(zero.clone()), amount.clone() * pct.clone())?,
    )
    .otherwise(in_band(amount.clone()) * pct + otherwise_zero(amount.gt(from.clone()), fee.clone())?)
    .map_err(plan_err)?;
    let by_model = |m: &str| -> Result<Expr, StageError> {
        Ok(match m {
            "flat" => fee.clone(),
            "per_unit" => billable.clone() * price.clone() + fee.clone(),
            "tiered" => {
                in_band(billable.clone()) * price.clone()
                    + otherwise_zero(billable.clone().gt(from.clone()), fee.clone())?
            }
            "volume" => otherwise_zero(
                reached(billable.clone()),
                billable.clone() * price.clone() + fee.clone(),
            )?,
            "package" => blocks.clone() * price.clone() + fee.clone(),
            "percentage" => percentage.clone(),
            other => return Err(StageError::new(format!("no contribution for pricing model `{other}`"))),
        })
    };
    // A model the stage names is the same for every band: its formula alone, not a
    // CASE over all six on every band joined.
    if let Some(m) = model {
        return by_model(m);
    }
    let mut by_band = case(ident("__bf_model"));
    for m in MODELS {
        by_band = by_band.when(lit(*m), by_model(m)?);
    }
    by_band.end().map_err(plan_err)
}
