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
//!
//! The phases, in order, one file each: `versions.rs` (each line's price version, and the
//! lines refused for having none), `groups.rs` (each line's measure and weight, and the
//! groups' quantities), `charges.rs` (the bands of each group's plan and the charge they
//! add up to), `allocation.rs` (the charge shared back over the lines and reconciled, and
//! the true-up lines of unmet commitments).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{DataFrame, lit};
use datafusion::scalar::ScalarValue;

mod allocation;
mod bands;
mod charges;
mod groups;
mod versions;

use super::reference::{ValidTo, reference_table};
use super::settings::{ROUNDING, existing, plan_err, read_rounding, read_scale};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::materialize;
use crate::engine::money::RoundingMode;
use crate::engine::side::OnError;

/// The settings of `kind: rate`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["price_list"],
        ty: "reference name",
        required: "yes",
        default: "",
        doc: "the price list",
    },
    Setting {
        keys: &["keys"],
        ty: "list of column names",
        required: "yes",
        default: "",
        doc: "the columns that pick a plan, e.g. `[sku]` or `[sku, region]`; present under the same names in the stream and the price list",
    },
    Setting {
        keys: &["quantity"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the usage quantity (for `count_distinct`: the column whose distinct values are counted)",
    },
    Setting {
        keys: &["date"],
        ty: "column name",
        required: "no",
        default: "none: not dated",
        doc: "the line's date; picks the price version valid on it. Needs the price list's `valid_from` column, and `valid_to` when it has one; without it, each version lasts until the next one of its keys starts",
    },
    Setting {
        keys: &["group_by"],
        ty: "list of column names",
        required: "no",
        default: "`[]`",
        doc: "what a charge is per, besides the keys and the version, e.g. `[subscription_id]`",
    },
    Setting {
        keys: &["aggregation"],
        ty: "`sum`, `count`, `count_distinct`, `max`, `latest`, `time_weighted`",
        required: "no",
        default: "`sum`",
        doc: "how a group's quantity is measured, see below",
    },
    Setting {
        keys: &["duration"],
        ty: "column name",
        required: "with `time_weighted`",
        default: "",
        doc: "each line's duration (e.g. hours): quantity × duration is summed",
    },
    Setting {
        keys: &["latest_by"],
        ty: "column name",
        required: "no",
        default: "`date`",
        doc: "with `aggregation: latest`: the column that orders a group's lines; the group's quantity is the last line's. `latest` needs `latest_by` or `date`",
    },
    Setting {
        keys: &["base_amount"],
        ty: "column name",
        required: "no",
        default: "none",
        doc: "the amount `percentage` pricing applies to (summed per group); also the allocation weight",
    },
    Setting {
        keys: &["model"],
        ty: "`flat`, `per_unit`, `tiered`, `volume`, `package`, `percentage`",
        required: "no",
        default: "the price list's `model` column",
        doc: "one model for every plan; without it each band row says its model",
    },
    Setting {
        keys: &["output"],
        ty: "column name",
        required: "no",
        default: "`amount`",
        doc: "the line's share of the charge; replaces a column of the same name",
    },
    Setting {
        keys: &["scale"],
        ty: "0-38",
        required: "no",
        default: "`4`",
        doc: "decimal places of the charge and of the shares",
    },
    ROUNDING,
    Setting {
        keys: &["allocation"],
        ty: "`proportional`, `equal`",
        required: "no",
        default: "`proportional`",
        doc: "how a group's charge is shared between its lines",
    },
    Setting {
        keys: &["order_by"],
        ty: "list of column names",
        required: "no",
        default: "`[]`",
        doc: "tie-break (ascending) for the line that takes the rounding residue",
    },
    Setting {
        keys: &["line_type"],
        ty: "column name",
        required: "no",
        default: "`line_type`",
        doc: "the column added when the price list has a `commitment` column: `usage` on the rated lines, `true_up` on the true-up lines",
    },
    Setting {
        keys: &["columns"],
        ty: "mapping role -> column name",
        required: "no",
        default: "each role's own name",
        doc: "the price list's column names, for the roles `model`, `band_from`, `band_to`, `unit_price`, `flat_fee`, `block_size`, `percent`, `min_charge`, `max_charge`, `free_units`, `commitment`, `valid_from`, `valid_to`",
    },
    Setting {
        keys: &["bands"],
        ty: "list of mappings: `from`, `to`, `unit_price`, `flat_fee`, `percent` -> column name",
        required: "no",
        default: "none: one row per band",
        doc: "a price list with its bands in columns (one row per plan): each band's limit and price columns, in order; see below",
    },
    Setting {
        keys: &["on_missing_price"],
        ty: "`fail`, `reject`",
        required: "no",
        default: "`fail`",
        doc: "a line whose keys have no price version valid on its date",
    },
];

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
    /// Whether `columns` names the versions' end (then the price list must have it).
    valid_to_named: bool,
    on_missing: OnError,
    /// The column telling usage lines from true-up lines (when plans have commitments).
    line_type: String,
    /// The bands' columns, when the price list has its bands in columns.
    bands: Option<Vec<bands::BandColumns>>,
}

impl StageKind for RateKind {
    fn name(&self) -> &'static str {
        "rate"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
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
        let mut valid_to_named = false;
        if let Some(n) = f.get("columns") {
            let mut m = r.mapping(n, "columns")?;
            for (role, name) in columns.iter_mut() {
                if let Some(t) = m.text(r, role) {
                    *name = t.value;
                    valid_to_named |= role == "valid_to";
                }
            }
            m.finish(r, &[]);
        }
        let bands = bands::read_bands(f, r);
        let on_missing = super::settings::on_error(
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
            valid_to_named,
            on_missing: on_missing?,
            bands: bands?,
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
    fn tables(&self) -> Vec<String> {
        vec![self.price_list.value.clone()]
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let plans = reference_table(env.ctx, &self.price_list).await?;
        let plans = match &self.bands {
            Some(bands) => self.bands_in_rows(plans, bands)?,
            None => plans,
        };
        self.check_price_list(&plans)?;
        let usage = self.usage_columns(&input)?;
        // The lines are read twice (their groups are charged, then the charges are shared
        // back over them): what comes before this stage, when it is costly (an aggregate
        // of the usage, say), runs once.
        let costly_input = env.executing && materialize::worth_it(input.logical_plan());
        let lines = self.price_versions(input, &plans, &usage, env).await?;
        let lines = match costly_input {
            true => materialize::once(env.ctx, lines, &format!("the input of stage `{}`", env.stage))
                .await
                .map_err(plan_err)?,
            false => lines,
        };
        let (lines, grouping) = self.measure_and_group(lines, &usage)?;
        let groups = self.groups(&lines, &usage, &grouping)?;
        let charges = self.charges(groups, &plans, &grouping, env).await?;
        let lines = self.allocate(lines, &charges, &grouping)?;
        if !has_column(&plans, self.col("commitment")) {
            return Ok(lines);
        }
        self.true_up(lines, charges, &grouping)
    }
}

/// The usage columns the stage reads, resolved against its input.
struct Usage {
    quantity: Expr,
    date: Option<Expr>,
    /// (the usage column, the price list's key column)
    keys: Vec<(Expr, String)>,
    group_by: Vec<Expr>,
}

/// How lines are grouped for rating: the group expressions (group_by, the price keys, the
/// version) under internal names, and the sort keys of each group's top line, which takes
/// the rounding residue.
struct Grouping {
    exprs: Vec<Expr>,
    names: Vec<String>,
    /// The aggregates that find the top line's sort keys (named `tops`), and the test
    /// that a line is a candidate for the residue.
    top_aggregates: Vec<Expr>,
    tops: Vec<String>,
    candidate: Expr,
    /// Whether a base amount (percentage pricing) is summed per group.
    has_base: bool,
}

fn has_column(df: &DataFrame, name: &str) -> bool {
    df.schema().field_with_unqualified_name(name).is_ok()
}

impl RateStage {
    fn dated(&self) -> bool {
        self.date.is_some()
    }

    /// The price list's end of validity: the column `columns` names, else `valid_to`
    /// when the list has it, else each version lasts until the next one starts.
    fn valid_to(&self) -> ValidTo {
        let column = self.col("valid_to").to_string();
        if self.valid_to_named {
            ValidTo::Named(column)
        } else {
            ValidTo::Default(column)
        }
    }

    /// The price list must have the columns the settings name.
    fn check_price_list(&self, plans: &DataFrame) -> Result<(), StageError> {
        let at = Some(self.price_list.location.clone());
        let list = &self.price_list.value;
        if self.model.is_none() && !has_column(plans, self.col("model")) {
            let mut e = StageError::new(format!(
                "price list `{list}` has no `{}` column and the stage sets no `model`",
                self.col("model")
            ))
            .at(at);
            e.hint = Some(format!(
                "add `model: per_unit` (or another of {}) to the stage, or a model column to the price list",
                MODELS.join(", ")
            ));
            return Err(e);
        }
        if let Some((_, k)) = self.keys.iter().find(|(_, k)| !has_column(plans, k)) {
            return Err(StageError::new(format!("price list `{list}` has no key column `{k}`")).at(at));
        }
        // The end may be missing unless `columns` names it: versions then last until the
        // next one starts.
        let named_end_missing = matches!(self.valid_to(), ValidTo::Named(c) if !has_column(plans, &c));
        if self.dated() && (!has_column(plans, self.col("valid_from")) || named_end_missing) {
            let missing = if has_column(plans, self.col("valid_from")) {
                format!("`{}`", self.col("valid_to"))
            } else {
                format!("`{}`", self.col("valid_from"))
            };
            return Err(StageError::new(format!(
                "`date` is set but price list `{list}` has no {missing} column for its versions"
            ))
            .at(at));
        }
        Ok(())
    }

    fn usage_columns(&self, input: &DataFrame) -> Result<Usage, StageError> {
        Ok(Usage {
            quantity: existing(input, &self.quantity)?,
            date: self.date.as_ref().map(|d| existing(input, d)).transpose()?,
            keys: self
                .keys
                .iter()
                .map(|(c, k)| Ok((existing(input, c)?, k.clone())))
                .collect::<Result<_, StageError>>()?,
            group_by: self
                .group_by
                .iter()
                .map(|g| existing(input, g))
                .collect::<Result<_, _>>()?,
        })
    }
}
