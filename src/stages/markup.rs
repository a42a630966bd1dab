//! `kind: markup`, `kind: discount`, `kind: margin`: derive a price from a cost.
//! markup: price = cost x (1 + rate) (or cost + amount); discount: price = cost x (1 - rate)
//! (or cost - amount); margin: price = cost / (1 - rate), so that (price - cost) / price =
//! rate. The rate is a constant or comes per row from a rule table (a reference joined on
//! keys: per organisation, product, customer...). The result is rounded to `scale`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Decimal128Type};
use async_trait::async_trait;
use datafusion::functions::expr_fn::{coalesce, concat_ws};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::reference::{Join, MATCHES, join_reference, key_list};
use super::settings::{ROUNDING, all_but, existing, plan_err};
use super::settings::{read_rounding, read_scale};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::money::{RoundingMode, div_round, mul_round, round};
use crate::engine::side::{OnError, apply_policy};

/// The settings shared by `markup`, `discount` and `margin`, as their docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["column"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the cost (decimal or integer)",
    },
    Setting {
        keys: &["output"],
        ty: "column name",
        required: "no",
        default: "`column` (replaced)",
        doc: "the price",
    },
    Setting {
        keys: &["rate"],
        ty: "decimal text",
        required: "exactly one of `rate` / `amount` / `rules`",
        default: "",
        doc: "a fraction, e.g. `0.12`; read as an exact decimal. For `margin`: from 0 up to, not including, 1",
    },
    Setting {
        keys: &["amount"],
        ty: "decimal text",
        required: "exactly one",
        default: "",
        doc: "a fixed amount added (`markup`) or taken off (`discount`); not for `margin`",
    },
    Setting {
        keys: &["rules"],
        ty: "`{ reference, keys, rate_column }`",
        required: "exactly one",
        default: "",
        doc: "the rule table, its keys (a name, or `{ column, reference_column }`) and the column holding the rate",
    },
    Setting {
        keys: &["scale"],
        ty: "0-38",
        required: "no",
        default: "`4`",
        doc: "decimal places of the price",
    },
    ROUNDING,
    Setting {
        keys: &["on_missing_rule"],
        ty: "`fail`, `reject`, `skip`",
        required: "no",
        default: "`fail`",
        doc: "with `rules`: no rule row matches the row's keys",
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pricing {
    Markup,
    Discount,
    Margin,
}

impl Pricing {
    fn name(self) -> &'static str {
        match self {
            Pricing::Markup => "markup",
            Pricing::Discount => "discount",
            Pricing::Margin => "margin",
        }
    }
}

pub struct MarkupKind;
pub struct DiscountKind;
pub struct MarginKind;

#[derive(Debug)]
enum Source {
    Rate(ScalarValue),
    Amount(ScalarValue),
    Rules {
        reference: Text,
        keys: Vec<(Text, String)>,
        rate_column: String,
    },
}

#[derive(Debug)]
pub struct PricingStage {
    pricing: Pricing,
    column: Text,
    output: String,
    source: Source,
    scale: i8,
    mode: RoundingMode,
    on_missing: OnError,
}

/// Decimal text -> an exact Decimal128 literal with the text's own scale and the
/// smallest precision that holds it (so arithmetic types stay narrow).
pub fn decimal_literal(text: &str) -> Option<ScalarValue> {
    let t = text.trim();
    let scale = t.split_once('.').map(|(_, f)| f.len()).unwrap_or(0);
    let digits = t.chars().filter(|c| c.is_ascii_digit()).count();
    if scale > 38 || digits == 0 || digits > 38 {
        return None;
    }
    let precision = digits.max(scale + 1).min(38) as u8;
    let v = arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(t, precision, scale as i8).ok()?;
    Some(ScalarValue::Decimal128(Some(v), precision, scale as i8))
}

fn build(pricing: Pricing, f: &mut Fields, r: &mut Reader) -> Option<Arc<dyn Stage>> {
    let column = f.required_text(r, "column", "the cost column");
    let output = f.text(r, "output").map(|t| t.value);
    let rate = f.text(r, "rate");
    let amount = f.text(r, "amount");
    let rules = f.get("rules");
    let scale = read_scale(f, r, "scale", 4);
    let mode = read_rounding(f, r, "rounding");
    let on_missing = super::settings::on_error(
        f,
        r,
        "on_missing_rule",
        &[OnError::Fail, OnError::Reject, OnError::Skip],
        OnError::Fail,
    );
    let given = [rate.is_some(), amount.is_some(), rules.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        let at = f.location.clone();
        let d = r.error(
            format!("{} needs exactly one of `rate`, `amount` or `rules`", pricing.name()),
            at,
        );
        d.expected = Some(
            "`rate: 0.12` (a fraction), `amount: 0.50` (fixed), or `rules: { reference, keys, rate_column }`".into(),
        );
        return None;
    }
    let source = if let Some(t) = rate {
        let Some(v) = decimal_literal(&t.value) else {
            r.error(format!("`{}` is not a decimal number", t.value), t.location.clone())
                .expected = Some("a fraction such as `0.12` for 12%".into());
            return None;
        };
        if pricing == Pricing::Margin
            && !matches!(&v, ScalarValue::Decimal128(Some(x), _, s) if *x >= 0 && *x < 10i128.pow(*s as u32))
        {
            r.error(format!("a margin of {} cannot be reached", t.value), t.location.clone())
                .expected = Some("a fraction from 0 up to (not including) 1".into());
            return None;
        }
        Source::Rate(v)
    } else if let Some(t) = amount {
        if pricing == Pricing::Margin {
            r.error("a margin is a fraction of the price: use `rate`", t.location.clone());
            return None;
        }
        let Some(v) = decimal_literal(&t.value) else {
            r.error(format!("`{}` is not a decimal number", t.value), t.location.clone());
            return None;
        };
        Source::Amount(v)
    } else {
        let mut m = r.mapping(rules?, "rules")?;
        let reference = m.required_text(r, "reference", "the rule table (a reference)");
        let keys = m.require(r, "keys", "the key columns").and_then(|n| key_list(r, n));
        let rate_column = m.required_text(
            r,
            "rate_column",
            "the rule table's column holding the rate (a fraction)",
        );
        m.finish(r, &[]);
        Source::Rules {
            reference: reference?,
            keys: keys?,
            rate_column: rate_column?.value,
        }
    };
    let column = column?;
    Some(Arc::new(PricingStage {
        pricing,
        output: output.unwrap_or_else(|| column.value.clone()),
        column,
        source,
        scale: scale?,
        mode: mode?,
        on_missing: on_missing?,
    }))
}

macro_rules! kind {
    ($t:ty, $p:expr, $name:literal) => {
        impl StageKind for $t {
            fn name(&self) -> &'static str {
                $name
            }
            fn settings(&self) -> &'static [Setting] {
                SETTINGS
            }
            fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
                build($p, f, r)
            }
        }
    };
}
kind!(MarkupKind, Pricing::Markup, "markup");
kind!(DiscountKind, Pricing::Discount, "discount");
kind!(MarginKind, Pricing::Margin, "margin");

#[async_trait]
impl Stage for PricingStage {
    fn describe(&self) -> String {
        let src = match &self.source {
            Source::Rate(v) => format!("rate {v}"),
            Source::Amount(v) => format!("amount {v}"),
            Source::Rules {
                reference, rate_column, ..
            } => format!("rate {}.{rate_column}", reference.value),
        };
        format!(
            "{} {} -> {} ({src}, {} places {})",
            self.pricing.name(),
            self.column.value,
            self.output,
            self.scale,
            self.mode.name()
        )
    }
    fn tables(&self) -> Vec<String> {
        match &self.source {
            Source::Rules { reference, .. } => vec![reference.value.clone()],
            _ => vec![],
        }
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let cost = existing(&input, &self.column)?;
        let one = lit(ScalarValue::Decimal128(Some(1), 1, 0));
        let zero = lit(ScalarValue::Decimal128(Some(0), 1, 0));
        let (mut df, rate, extra_drop): (DataFrame, Option<Expr>, Vec<&str>) = match &self.source {
            Source::Rate(v) => (input, Some(lit(v.clone())), vec![]),
            Source::Amount(_) => (input, None, vec![]),
            Source::Rules {
                reference,
                keys,
                rate_column,
            } => {
                let keys = keys
                    .iter()
                    .map(|(c, k)| Ok((existing(&input, c)?, k.clone())))
                    .collect::<Result<Vec<_>, StageError>>()?;
                let key_text = concat_ws(
                    lit(", "),
                    keys.iter()
                        .map(|(e, _)| coalesce(vec![cast(e.clone(), DataType::Utf8), lit("NULL")]))
                        .collect(),
                );
                let join = Join {
                    reference: reference.clone(),
                    keys,
                    pulled: vec![(rate_column.clone(), "__bf_rule_rate".into())],
                    dated: None,
                    order: None,
                    several_dropped: true,
                };
                let df = join_reference(env.ctx, input, &join).await?;
                let many = ident(MATCHES).gt(lit(1i64));
                let reason = concat_ws(
                    lit(""),
                    vec![
                        lit(format!("several rows of `{}` match (", reference.value)),
                        key_text.clone(),
                        lit(")"),
                    ],
                );
                let df = apply_policy(df, OnError::Fail, many, reason, env.stage, env.side).map_err(plan_err)?;
                let missing = ident(MATCHES).eq(lit(0i64));
                let reason = concat_ws(
                    lit(""),
                    vec![
                        lit(format!(
                            "no {} rule in `{}` for (",
                            self.pricing.name(),
                            reference.value
                        )),
                        key_text,
                        lit(")"),
                    ],
                );
                let df = apply_policy(df, self.on_missing, missing, reason, env.stage, env.side).map_err(plan_err)?;
                // `skip`: no rule means no markup.
                (
                    df,
                    Some(coalesce(vec![ident("__bf_rule_rate"), zero.clone()])),
                    vec![MATCHES, "__bf_rule_rate"],
                )
            }
        };
        let price = match (&self.source, self.pricing) {
            (Source::Amount(v), Pricing::Markup) => cost + lit(v.clone()),
            (Source::Amount(v), _) => cost - lit(v.clone()),
            // Exact: one rounding of the full product or quotient.
            (_, Pricing::Markup) => mul_round(cost, one + rate.unwrap_or(zero), self.scale, self.mode),
            (_, Pricing::Discount) => mul_round(cost, one - rate.unwrap_or(zero), self.scale, self.mode),
            (_, Pricing::Margin) => div_round(cost, one - rate.unwrap_or(zero), self.scale, self.mode),
        };
        let price = match self.source {
            Source::Amount(_) => round(price, self.scale, self.mode),
            _ => price,
        };
        let mut drop = extra_drop;
        drop.push(self.output.as_str());
        let mut select = all_but(&df, &drop);
        select.push(price.alias(&self.output));
        df = df.select(select).map_err(plan_err)?;
        Ok(df)
    }
}
