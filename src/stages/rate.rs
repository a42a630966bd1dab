//! `kind: rate`: price usage against a price list (a reference of plans and bands).
//!
//! Each usage line gets the price version valid on its date (when `date` is set). Lines
//! are grouped per `group_by` (e.g. subscription) + price keys (e.g. SKU and any price
//! dimensions) + version, and the group's quantity is aggregated (sum, count, count
//! distinct, max, latest or time-weighted sum). The group's charge follows its model:
//!
//! - `flat`: the band's flat fee, once per group and period;
//! - `per_unit`: quantity x unit price;
//! - `tiered` (graduated): each unit priced in its band, plus each reached band's flat fee;
//! - `volume`: every unit at the price of the band the quantity reaches (plus its fee);
//! - `package`: per started block of `block_size` units;
//! - `percentage`: `percent` of a base amount, graduated through bands on that amount;
//!
//! after the free allowance (`free_units`) and clamped to `min_charge`/`max_charge`. The
//! charge is rounded, then allocated back to the group's lines (in proportion to their
//! quantity, or equally) and reconciled so the lines add up to the charge exactly.
//! Everything is joins, aggregates and windows: no loop over rows.

use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::JoinType;
use datafusion::functions::expr_fn::{coalesce, concat_ws, greatest, least};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, last_value, max, sum};
use datafusion::logical_expr::{Expr, SortExpr, case, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::args::{all_but, existing, plan_err};
use super::convert_currency::{read_rounding, read_scale};
use super::lookup::{Join, MATCHES, join_frame, reference_table};
use super::money::{RoundingMode, div_round, round, top_line};
use super::side::{OnError, apply_policy};
use super::{BuildContext, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};

pub struct RateKind;

const AGGREGATIONS: &[&str] = &["sum", "count", "count_distinct", "max", "latest", "time_weighted"];
pub const MODELS: &[&str] = &["flat", "per_unit", "tiered", "volume", "package", "percentage"];
/// Price list columns the stage reads, by role; each may be renamed under `columns`.
const ROLES: &[&str] = &[
    "model",
    "band_from",
    "band_to",
    "unit_price",
    "flat_fee",
    "block_size",
    "percent",
    "min_charge",
    "max_charge",
    "free_units",
    "commitment",
    "valid_from",
    "valid_to",
];

#[derive(Debug)]
pub struct RateStage {
    price_list: Text,
    keys: Vec<(Text, String)>,
    quantity: Text,
    date: Option<Text>,
    group_by: Vec<Text>,
    aggregation: String,
    duration: Option<Text>,
    latest_by: Option<Text>,
    base_amount: Option<Text>,
    model: Option<String>,
    output: String,
    scale: i8,
    mode: RoundingMode,
    allocation: String,
    order_by: Vec<Text>,
    columns: Vec<(String, String)>,
    on_missing: OnError,
    /// The column telling usage lines from true-up lines (when plans have commitments).
    line_type: String,
}

impl StageKind for RateKind {
    fn name(&self) -> &'static str {
        "rate"
    }
    fn summary(&self) -> &'static str {
        "price usage against a price list: flat, per_unit, tiered, volume, package, percentage"
    }
    fn keys(&self) -> &'static [&'static str] {
        &[
            "price_list",
            "line_type",
            "keys",
            "latest_by",
            "quantity",
            "date",
            "group_by",
            "aggregation",
            "duration",
            "base_amount",
            "model",
            "output",
            "scale",
            "rounding",
            "allocation",
            "order_by",
            "columns",
            "on_missing_price",
        ]
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let price_list = f.required_text(r, "price_list", "the price list reference");
        let keys = f
            .require(
                r,
                "keys",
                "the columns that pick a plan, e.g. `[sku]` or `[sku, region]`",
            )
            .and_then(|n| {
                let items = r.string_list(n, "keys")?;
                Some(
                    items
                        .into_iter()
                        .map(|t| {
                            let k = t.value.clone();
                            (t, k)
                        })
                        .collect::<Vec<_>>(),
                )
            });
        let quantity = f.required_text(r, "quantity", "the usage quantity column");
        let date = f.text(r, "date");
        let group_by = f
            .get("group_by")
            .map(|n| r.string_list(n, "group_by"))
            .unwrap_or(Some(vec![]));
        let aggregation = match f.get("aggregation") {
            None => Some("sum".to_string()),
            Some(n) => r.choice(n, "quantity aggregation", AGGREGATIONS).map(|t| t.value),
        };
        let duration = f.text(r, "duration");
        let latest_by = f.text(r, "latest_by");
        let line_type = f
            .text(r, "line_type")
            .map(|t| t.value)
            .unwrap_or_else(|| "line_type".into());
        let base_amount = f.text(r, "base_amount");
        let model = match f.get("model") {
            None => Some(None),
            Some(n) => r.choice(n, "pricing model", MODELS).map(|t| Some(t.value)),
        };
        let output = f.text(r, "output").map(|t| t.value).unwrap_or_else(|| "amount".into());
        let scale = read_scale(f, r, "scale", 4);
        let mode = read_rounding(f, r, "rounding");
        let allocation = match f.get("allocation") {
            None => Some("proportional".to_string()),
            Some(n) => r.choice(n, "allocation", &["proportional", "equal"]).map(|t| t.value),
        };
        let order_by = f
            .get("order_by")
            .map(|n| r.string_list(n, "order_by"))
            .unwrap_or(Some(vec![]));
        let mut columns: Vec<(String, String)> = ROLES.iter().map(|c| (c.to_string(), c.to_string())).collect();
        if let Some(n) = f.get("columns") {
            let mut m = r.mapping(n, "columns")?;
            for (role, name) in columns.iter_mut() {
                if let Some(t) = m.text(r, role) {
                    *name = t.value;
                }
            }
            m.finish(r, &[]);
        }
        let on_missing = OnError::read(
            f,
            r,
            "on_missing_price",
            &[OnError::Fail, OnError::Reject],
            OnError::Fail,
        );
        let aggregation = aggregation?;
        if aggregation == "time_weighted" && duration.is_none() {
            let at = f.location.clone();
            r.error("`aggregation: time_weighted` needs `duration`", at).hint = Some(
                "the column holding each line's duration, e.g. hours: quantity x duration is summed (GB-hours)".into(),
            );
            return None;
        }
        if aggregation == "latest" && latest_by.is_none() && date.is_none() {
            let at = f.location.clone();
            r.error(
                "`aggregation: latest` needs `latest_by` (or `date`) to know which line is the latest",
                at,
            );
            return None;
        }
        Some(Arc::new(RateStage {
            price_list: price_list?,
            keys: keys?,
            quantity: quantity?,
            date,
            group_by: group_by?,
            aggregation,
            duration,
            latest_by,
            line_type,
            base_amount,
            model: model?,
            output,
            scale: scale?,
            mode: mode?,
            allocation: allocation?,
            order_by: order_by?,
            columns,
            on_missing: on_missing?,
        }))
    }
}

/// `a IS NOT DISTINCT FROM b`: join keys where NULL matches NULL (a group may have NULL
/// keys, e.g. usage without a region).
fn same(a: Expr, b: Expr) -> Expr {
    datafusion::logical_expr::binary_expr(a, datafusion::logical_expr::Operator::IsNotDistinctFrom, b)
}

fn dec(v: i128, scale: i8) -> Expr {
    lit(ScalarValue::Decimal128(Some(v), 38.min(20 + scale as u8), scale))
}

impl RateStage {
    fn col<'a>(&'a self, role: &'a str) -> &'a str {
        self.columns
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, c)| c.as_str())
            .unwrap_or(role)
    }
}

#[async_trait]
impl Stage for RateStage {
    fn describe(&self) -> String {
        let keys: Vec<&str> = self.keys.iter().map(|(c, _)| c.value.as_str()).collect();
        let mut groups: Vec<&str> = self.group_by.iter().map(|g| g.value.as_str()).collect();
        groups.extend(keys.iter());
        format!(
            "rate {} against {} by ({}){}, {} per {} -> {} ({} places {}, {} allocation)",
            self.quantity.value,
            self.price_list.value,
            keys.join(", "),
            self.date
                .as_ref()
                .map(|d| format!(" at {}", d.value))
                .unwrap_or_default(),
            self.aggregation,
            groups.join(", "),
            self.output,
            self.scale,
            self.mode.name(),
            self.allocation
        )
    }
    fn fingerprint(&self, _vars: &super::TemplateVars) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} {:?} {} {}",
            self.describe(),
            self.duration.as_ref().map(|t| &t.value),
            self.latest_by.as_ref().map(|t| &t.value),
            self.base_amount.as_ref().map(|t| &t.value),
            self.model,
            self.order_by.iter().map(|t| &t.value).collect::<Vec<_>>(),
            self.columns,
            self.line_type,
            self.on_missing.name()
        )
    }
    fn tables(&self) -> Vec<String> {
        vec![self.price_list.value.clone()]
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let plans = reference_table(env.ctx, &self.price_list).await?;
        let has = |c: &str| plans.schema().field_with_unqualified_name(c).is_ok();
        let pcol = |role: &str| -> Expr {
            let c = self.col(role);
            if has(c) { ident(c) } else { lit(ScalarValue::Null) }
        };
        if self.model.is_none() && !has(self.col("model")) {
            let mut e = StageError::new(format!(
                "price list `{}` has no `{}` column and the stage sets no `model`",
                self.price_list.value,
                self.col("model")
            ))
            .at(Some(self.price_list.location.clone()));
            e.hint = Some(format!(
                "add `model: per_unit` (or another of {}) to the stage, or a model column to the price list",
                MODELS.join(", ")
            ));
            return Err(e);
        }
        for (_, k) in &self.keys {
            if !has(k) {
                return Err(StageError::new(format!(
                    "price list `{}` has no key column `{k}`",
                    self.price_list.value
                ))
                .at(Some(self.price_list.location.clone())));
            }
        }
        let dated = self.date.is_some();
        if dated && !(has(self.col("valid_from")) && has(self.col("valid_to"))) {
            return Err(StageError::new(format!(
                "`date` is set but price list `{}` has no `{}`/`{}` columns for its versions",
                self.price_list.value,
                self.col("valid_from"),
                self.col("valid_to")
            ))
            .at(Some(self.price_list.location.clone())));
        }
        let quantity = existing(&input, &self.quantity)?;
        let date = match &self.date {
            Some(d) => Some(existing(&input, d)?),
            None => None,
        };
        let key_exprs: Vec<(Expr, String)> = self
            .keys
            .iter()
            .map(|(c, k)| Ok((existing(&input, c)?, k.clone())))
            .collect::<Result<_, StageError>>()?;
        let group_cols: Vec<Expr> = self
            .group_by
            .iter()
            .map(|g| existing(&input, g))
            .collect::<Result<_, _>>()?;

        // 1. The price version of each line: one row per (keys, valid_from) of the plans.
        let mut version_cols: Vec<Expr> = self.keys.iter().map(|(_, k)| ident(k)).collect();
        if dated {
            version_cols.push(ident(self.col("valid_from")));
            version_cols.push(ident(self.col("valid_to")));
        }
        let versions = plans.clone().aggregate(version_cols, vec![]).map_err(plan_err)?;
        let join = Join {
            reference: self.price_list.clone(),
            keys: key_exprs.clone(),
            pulled: if dated {
                vec![(self.col("valid_from").to_string(), "__bf_version".into())]
            } else {
                vec![]
            },
            dated: date
                .clone()
                .map(|d| (d, self.col("valid_from").to_string(), self.col("valid_to").to_string())),
            order: None,
        };
        let mut lines = join_frame(input, versions, &join).await?;
        let key_text = concat_ws(
            lit(", "),
            key_exprs
                .iter()
                .map(|(e, _)| coalesce(vec![cast(e.clone(), DataType::Utf8), lit("NULL")]))
                .collect(),
        );
        let at_date = match &date {
            Some(d) => concat_ws(
                lit(""),
                vec![
                    lit(" valid on "),
                    coalesce(vec![cast(d.clone(), DataType::Utf8), lit("NULL")]),
                ],
            ),
            None => lit(""),
        };
        let reason = concat_ws(
            lit(""),
            vec![
                lit(format!("several price versions in `{}` for (", self.price_list.value)),
                key_text.clone(),
                lit(")"),
                at_date.clone(),
            ],
        );
        lines = apply_policy(
            lines,
            OnError::Fail,
            ident(MATCHES).gt(lit(1i64)),
            reason,
            env.stage,
            env.side,
        )
        .map_err(StageError::new)?;
        let reason = concat_ws(
            lit(""),
            vec![
                lit(format!("no price in `{}` for (", self.price_list.value)),
                key_text,
                lit(")"),
                at_date,
            ],
        );
        lines = apply_policy(
            lines,
            self.on_missing,
            ident(MATCHES).eq(lit(0i64)),
            reason,
            env.stage,
            env.side,
        )
        .map_err(StageError::new)?;

        // 2. Each line's measure and allocation weight; 3. the groups.
        let measure = match self.aggregation.as_str() {
            "time_weighted" => {
                let d = existing(
                    &lines,
                    self.duration.as_ref().ok_or_else(|| StageError::new("duration"))?,
                )?;
                quantity.clone() * d
            }
            _ => quantity.clone(),
        };
        let base = match &self.base_amount {
            Some(b) => Some(existing(&lines, b)?),
            None => None,
        };
        // Lines share their group's charge in proportion to what was charged for: the base
        // amount (percentage pricing) or the quantity (summed aggregations); else equally.
        let weight = match (self.allocation.as_str(), &base, self.aggregation.as_str()) {
            ("proportional", Some(b), _) => coalesce(vec![b.clone(), measure.clone()]),
            ("proportional", None, "sum" | "time_weighted") => measure.clone(),
            _ => dec(1, 0),
        };
        let mut lines_cols = all_but(&lines, &[MATCHES]);
        lines_cols.push(measure.alias("__bf_measure"));
        lines_cols.push(cast(weight, DataType::Decimal128(38, 10)).alias("__bf_weight"));
        if let Some(b) = &base {
            lines_cols.push(b.clone().alias("__bf_base"));
        }
        let lines = lines.select(lines_cols).map_err(plan_err)?;
        let mut gkeys: Vec<Expr> = group_cols.clone();
        gkeys.extend(key_exprs.iter().map(|(e, _)| e.clone()));
        // Undated plans have one version per key: no version column to group and join on.
        if dated {
            gkeys.push(ident("__bf_version"));
        }
        let gnames: Vec<String> = (0..gkeys.len()).map(|i| format!("__bf_g{i}")).collect();
        let q = match self.aggregation.as_str() {
            "count" => count(lit(1i64)),
            "count_distinct" => count_distinct(quantity.clone()),
            "max" => max(quantity.clone()),
            "latest" => {
                // Undated lines sort first, so a dated line is always the latest.
                let by = match &self.latest_by {
                    Some(t) => existing(&lines, t)?,
                    None => date.clone().unwrap_or(lit(0)),
                };
                last_value(quantity.clone(), vec![by.sort(true, true)])
            }
            _ => sum(ident("__bf_measure")),
        };
        let mut aggs = vec![
            cast(q, DataType::Decimal128(38, 10)).alias("__bf_q"),
            sum(ident("__bf_weight")).alias("__bf_w"),
            count(lit(1i64)).alias("__bf_n"),
        ];
        if base.is_some() {
            aggs.push(sum(ident("__bf_base")).alias("__bf_a"));
        }
        // The line that takes the group's rounding residue: the largest |weight|, then
        // `order_by`. Its sort keys depend on the lines alone, so they are found here, in
        // the same pass as the quantity.
        let mut order: Vec<SortExpr> =
            vec![datafusion::functions::math::expr_fn::abs(ident("__bf_weight")).sort(false, false)];
        for o in &self.order_by {
            order.push(existing(&lines, o)?.sort(true, false));
        }
        let tops: Vec<String> = (0..order.len()).map(|i| format!("__bf_top{i}")).collect();
        let (top_aggregates, candidate) = top_line(&order, &tops);
        aggs.extend(top_aggregates);
        let groups = lines
            .clone()
            .aggregate(
                gkeys.iter().zip(&gnames).map(|(e, n)| e.clone().alias(n)).collect(),
                aggs,
            )
            .map_err(plan_err)?;

        // 4. Bands of the group's plan, and the charge they add up to.
        let nk = self.group_by.len();
        let mut band_cols: Vec<Expr> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (_, k))| ident(k).alias(format!("__bf_pk{i}")))
            .collect();
        band_cols.push(
            if dated {
                ident(self.col("valid_from"))
            } else {
                lit(ScalarValue::Null)
            }
            .alias("__bf_pv"),
        );
        band_cols.push(
            match &self.model {
                Some(m) => lit(m.clone()),
                None => cast(pcol("model"), DataType::Utf8),
            }
            .alias("__bf_model"),
        );
        for role in ROLES
            .iter()
            .copied()
            .filter(|r| !matches!(*r, "model" | "valid_from" | "valid_to"))
        {
            band_cols.push(pcol(role).alias(format!("__bf_{role}")));
        }
        let bands = plans.clone().select(band_cols).map_err(plan_err)?;
        let mut on: Vec<Expr> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, _)| ident(&gnames[nk + i]).eq(ident(format!("__bf_pk{i}"))))
            .collect();
        if dated {
            on.push(same(ident(&gnames[gnames.len() - 1]), ident("__bf_pv")));
        }
        let priced = groups.join_on(bands, JoinType::Inner, on).map_err(plan_err)?;

        let zero = dec(0, 0);
        let from = coalesce(vec![ident("__bf_band_from"), zero.clone()]);
        let to = ident("__bf_band_to");
        let free = coalesce(vec![ident("__bf_free_units"), zero.clone()]);
        let price = coalesce(vec![ident("__bf_unit_price"), zero.clone()]);
        let fee = coalesce(vec![ident("__bf_flat_fee"), zero.clone()]);
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
        let block = ident("__bf_block_size");
        // Started blocks of a positive quantity; a net credit buys no blocks.
        let blocks = {
            let billable = greatest(vec![billable.clone(), zero.clone()]);
            let whole = round(billable.clone() / block.clone(), 0, RoundingMode::Down);
            whole.clone()
                + when((whole * block.clone()).lt(billable.clone()), dec(1, 0))
                    .otherwise(zero.clone())
                    .map_err(plan_err)?
        };
        let amount = coalesce(vec![
            ident(if base.is_some() { "__bf_a" } else { "__bf_q" }),
            zero.clone(),
        ]);
        let pct = coalesce(vec![ident("__bf_percent"), zero.clone()]);
        let contribution = case(ident("__bf_model"))
            .when(lit("flat"), fee.clone())
            .when(lit("per_unit"), billable.clone() * price.clone() + fee.clone())
            .when(
                lit("tiered"),
                in_band(billable.clone()) * price.clone()
                    + when(billable.clone().gt(from.clone()), fee.clone())
                        .otherwise(zero.clone())
                        .map_err(plan_err)?,
            )
            .when(
                lit("volume"),
                when(
                    reached(billable.clone()),
                    billable.clone() * price.clone() + fee.clone(),
                )
                .otherwise(zero.clone())
                .map_err(plan_err)?,
            )
            .when(lit("package"), blocks * price.clone() + fee.clone())
            .when(
                lit("percentage"),
                // A negative base (a refund) is credited at the first band's percent.
                when(
                    amount.clone().lt(zero.clone()),
                    when(from.clone().eq(zero.clone()), amount.clone() * pct.clone())
                        .otherwise(zero.clone())
                        .map_err(plan_err)?,
                )
                .otherwise(
                    in_band(amount.clone()) * pct.clone()
                        + when(amount.gt(from.clone()), fee.clone())
                            .otherwise(zero.clone())
                            .map_err(plan_err)?,
                )
                .map_err(plan_err)?,
            )
            .end()
            .map_err(plan_err)?;
        let unknown_model = ident("__bf_model")
            .is_null()
            .or(ident("__bf_model").in_list(MODELS.iter().map(|m| lit(*m)).collect(), true));
        let priced = priced
            .select({
                let mut c: Vec<Expr> = gnames.iter().map(ident).collect();
                c.push(contribution.alias("__bf_contribution"));
                c.push(ident("__bf_min_charge"));
                c.push(ident("__bf_max_charge"));
                c.push(ident("__bf_commitment"));
                c.push(ident("__bf_model"));
                c.push(ident("__bf_w"));
                c.push(ident("__bf_n"));
                c.extend(tops.iter().map(ident));
                c
            })
            .map_err(plan_err)?;
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
        let priced = apply_policy(priced, OnError::Fail, unknown_model, model_reason, env.stage, env.side)
            .map_err(StageError::new)?;
        let charges = priced
            .aggregate(
                gnames.iter().map(ident).collect(),
                vec![
                    sum(ident("__bf_contribution")).alias("__bf_raw"),
                    max(ident("__bf_min_charge")).alias("__bf_min"),
                    max(ident("__bf_max_charge")).alias("__bf_max"),
                    max(ident("__bf_commitment")).alias("__bf_commit"),
                    // Constant within the group: its weight and line count, for allocation.
                    max(ident("__bf_w")).alias("__bf_gw"),
                    max(ident("__bf_n")).alias("__bf_gn"),
                ]
                .into_iter()
                // Aliased apart from the input's name (DataFusion refuses `max(x) AS x`
                // here as a duplicate field), and named back below.
                .chain(tops.iter().map(|t| max(ident(t)).alias(format!("{t}m"))))
                .collect(),
            )
            .map_err(plan_err)?;
        let low = greatest(vec![
            ident("__bf_raw"),
            coalesce(vec![ident("__bf_min"), ident("__bf_raw")]),
        ]);
        let clamped = least(vec![low.clone(), coalesce(vec![ident("__bf_max"), low])]);
        let charges = charges
            .select({
                let mut c: Vec<Expr> = gnames.iter().map(|n| ident(n).alias(format!("{n}c"))).collect();
                c.push(round(clamped, self.scale, self.mode).alias("__bf_charge"));
                c.push(ident("__bf_commit"));
                c.push(ident("__bf_gw").alias("__bf_w"));
                c.push(ident("__bf_gn").alias("__bf_n"));
                c.extend(tops.iter().map(|t| ident(format!("{t}m")).alias(t)));
                c
            })
            .map_err(plan_err)?;
        // One row per group, computed once here and held in memory: both places below that
        // join it back would otherwise each aggregate the whole input again. (This read of
        // the input is a complete one: the checkpoints in it count exactly.)
        let charges = charges.cache().await.map_err(plan_err)?;

        // 5. Back to the lines: each line's share of its group's charge, reconciled.
        let lines = {
            let mut c = all_but(&lines, &[]);
            c.extend(gkeys.iter().zip(&gnames).map(|(e, n)| e.clone().alias(n)));
            lines.select(c).map_err(plan_err)?
        };
        // The group's charge, weight and line count: the small side builds the join.
        let with_charges = |groups: DataFrame, lines: DataFrame| {
            let on: Vec<Expr> = gnames.iter().map(|n| same(ident(n), ident(format!("{n}c")))).collect();
            groups.join_on(lines, JoinType::Right, on)
        };
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
        // Penny reconciliation in the same pass: the lines go on as they come, but each
        // group's first top line is held until all lines are read, when the group's sum of
        // rounded shares is known; it then takes the residue (charge - that sum).
        let joined = with_charges(charges.clone(), lines).map_err(plan_err)?;
        let internal: Vec<String> = {
            let mut v: Vec<String> = vec![
                "__bf_measure",
                "__bf_weight",
                "__bf_base",
                "__bf_w",
                "__bf_n",
                "__bf_version",
                "__bf_charge",
                "__bf_commit",
            ]
            .into_iter()
            .map(String::from)
            .collect();
            v.extend(gnames.iter().cloned());
            v.extend(gnames.iter().map(|n| format!("{n}c")));
            v.extend(tops.iter().cloned());
            v.push(self.output.clone());
            v
        };
        let internal_refs: Vec<&str> = internal.iter().map(String::as_str).collect();
        let out_type = DataType::Decimal128(38, self.scale);
        let mut select = all_but(&joined, &internal_refs);
        select.push(share.alias(&self.output));
        select.push(candidate.alias("__bf_candidate"));
        select.push(cast(ident("__bf_charge"), out_type).alias("__bf_target"));
        select.extend(gnames.iter().map(ident));
        let allocated = joined.select(select).map_err(plan_err)?;
        let reconciled = super::residue::hold(
            allocated,
            &self.output,
            gnames.iter().map(ident).collect(),
            ident("__bf_candidate"),
            ident("__bf_target"),
        )
        .map_err(plan_err)?;
        let mut drop: Vec<&str> = vec!["__bf_candidate", "__bf_target"];
        drop.extend(gnames.iter().map(String::as_str));
        let keep = all_but(&reconciled, &drop);
        let usage = reconciled.select(keep).map_err(plan_err)?;
        if plans
            .schema()
            .field_with_unqualified_name(self.col("commitment"))
            .is_err()
        {
            return Ok(usage);
        }

        // 6. A minimum commitment the group's charge falls short of: an explicit true-up
        // line for the difference, carrying the group's columns; every line says which it is.
        let line_type = self.line_type.clone();
        let schema = usage.schema().clone();
        let mut group_names: Vec<String> = self.group_by.iter().map(|g| g.value.clone()).collect();
        group_names.extend(self.keys.iter().map(|(c, _)| c.value.clone()));
        let mut trueup_cols = Vec::new();
        for f in schema.fields() {
            let e = if f.name() == &self.output {
                round(ident("__bf_commit") - ident("__bf_charge"), self.scale, self.mode)
            } else if let Some(i) = group_names.iter().position(|g| g == f.name()) {
                ident(format!("{}c", gnames[i]))
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
