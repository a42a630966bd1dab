//! `kind: convert_currency`: an amount from one currency (fixed, or per row from a column)
//! to another, at the rate of an exchange-rate reference valid on the row's date (or the
//! period's closing rate), rounded to `scale` places (default 5, half-even). A missing
//! rate fails the stream naming the currency pair and date (or, with
//! `on_missing_rate: reject`, refuses the row): never a silent zero. A NULL amount stays
//! NULL; an amount already in the target currency is kept (rate 1).

use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::functions::expr_fn::{coalesce, concat_ws};
use datafusion::logical_expr::{Expr, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;

use super::reference::{Join, MATCHES, ValidTo, join_reference};
use super::settings::{ROUNDING, all_but, existing, plan_err, read_rounding, read_scale};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::money::{RoundingMode, mul_round};
use crate::engine::side::{OnError, apply_policy};

/// The settings of `kind: convert_currency`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["amount"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the decimal amount",
    },
    Setting {
        keys: &["from", "from_column"],
        ty: "currency code / column name",
        required: "exactly one",
        default: "",
        doc: "the source currency: a fixed code (upper-cased) or a column holding it",
    },
    Setting {
        keys: &["to", "to_column"],
        ty: "currency code / column name",
        required: "exactly one",
        default: "",
        doc: "the target currency",
    },
    Setting {
        keys: &["rates"],
        ty: "reference name",
        required: "yes",
        default: "",
        doc: "the exchange-rate reference",
    },
    Setting {
        keys: &["rate_columns"],
        ty: "mapping",
        required: "no",
        default: "`from_currency`, `to_currency`, `rate`, `valid_from`, `valid_to`",
        doc: "the reference's column names, under those keys. A table without a `valid_to` column (and none named here) has each rate valid until the next one of its pair starts: the latest rate on or before the date",
    },
    Setting {
        keys: &["date"],
        ty: "column name",
        required: "one of `date` / `rate_date`",
        default: "",
        doc: "the rate valid on each row's date",
    },
    Setting {
        keys: &["rate_date"],
        ty: "`period_end`",
        required: "one of `date` / `rate_date`",
        default: "",
        doc: "the closing rate: valid on the period's last day (the day before `{{ period_end }}`)",
    },
    Setting {
        keys: &["output"],
        ty: "column name",
        required: "no",
        default: "`amount` (replaced)",
        doc: "the converted amount",
    },
    Setting {
        keys: &["rate_output"],
        ty: "column name",
        required: "no",
        default: "none",
        doc: "also write the rate used",
    },
    Setting {
        keys: &["scale"],
        ty: "0-38",
        required: "no",
        default: "`5`",
        doc: "decimal places of the result",
    },
    ROUNDING,
    Setting {
        keys: &["on_missing_rate"],
        ty: "`fail`, `reject`",
        required: "no",
        default: "`fail`",
        doc: "a non-NULL amount with no rate for its pair and date",
    },
];

pub struct ConvertCurrencyKind;

#[derive(Debug, Clone)]
enum Currency {
    Fixed(String),
    Column(Text),
}

#[derive(Debug, Clone)]
enum RateDate {
    Column(Text),
    PeriodEnd,
}

#[derive(Debug)]
pub struct ConvertCurrencyStage {
    amount: Text,
    from: Currency,
    to: Currency,
    rates: Text,
    columns: [String; 5],
    /// Whether `rate_columns` names the end of validity (then the table must have it).
    valid_to_named: bool,
    date: RateDate,
    output: String,
    rate_output: Option<String>,
    scale: i8,
    mode: RoundingMode,
    on_missing: OnError,
}

fn currency(f: &mut Fields, r: &mut Reader, fixed: &str, column: &str) -> Option<Currency> {
    match (f.text(r, fixed), f.text(r, column)) {
        (Some(c), None) => Some(Currency::Fixed(c.value.to_ascii_uppercase())),
        (None, Some(c)) => Some(Currency::Column(c)),
        (Some(c), Some(_)) => {
            r.error(format!("give `{fixed}` or `{column}`, not both"), c.location);
            None
        }
        (None, None) => {
            let at = f.location.clone();
            r.error(
                format!("convert_currency needs `{fixed}` (a currency code) or `{column}` (a column holding it)"),
                at,
            );
            None
        }
    }
}

impl StageKind for ConvertCurrencyKind {
    fn name(&self) -> &'static str {
        "convert_currency"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let amount = f.required_text(r, "amount", "the column holding the amount to convert");
        let from = currency(f, r, "from", "from_column");
        let to = currency(f, r, "to", "to_column");
        let rates = f.required_text(r, "rates", "the exchange-rate reference, e.g. `fx_rates`");
        let mut columns = ["from_currency", "to_currency", "rate", "valid_from", "valid_to"].map(String::from);
        let mut valid_to_named = false;
        if let Some(n) = f.get("rate_columns") {
            let mut m = r.mapping(n, "rate_columns")?;
            for (i, key) in ["from_currency", "to_currency", "rate", "valid_from", "valid_to"]
                .iter()
                .enumerate()
            {
                if let Some(t) = m.text(r, key) {
                    columns[i] = t.value;
                    valid_to_named |= *key == "valid_to";
                }
            }
            m.finish(r, &[]);
        }
        let date = match (f.text(r, "date"), f.get("rate_date")) {
            (Some(d), None) => Some(RateDate::Column(d)),
            (None, Some(n)) => r.choice(n, "`rate_date`", &["period_end"]).map(|_| RateDate::PeriodEnd),
            (Some(d), Some(_)) => {
                r.error(
                    "give `date` (the row's date) or `rate_date: period_end`, not both",
                    d.location,
                );
                None
            }
            (None, None) => {
                let at = f.location.clone();
                let d = r.error("convert_currency needs the date whose rate applies", at);
                d.expected = Some("`date: <column>` (the rate valid on each row's date) or `rate_date: period_end` (the period's closing rate)".into());
                None
            }
        };
        let output = f.text(r, "output").map(|t| t.value);
        let rate_output = f.text(r, "rate_output").map(|t| t.value);
        let scale = read_scale(f, r, "scale", 5);
        let mode = read_rounding(f, r, "rounding");
        let on_missing = super::settings::on_error(
            f,
            r,
            "on_missing_rate",
            &[OnError::Fail, OnError::Reject],
            OnError::Fail,
        );
        let amount = amount?;
        Some(Arc::new(ConvertCurrencyStage {
            output: output.unwrap_or_else(|| amount.value.clone()),
            amount,
            from: from?,
            to: to?,
            rates: rates?,
            columns,
            valid_to_named,
            date: date?,
            rate_output,
            scale: scale?,
            mode: mode?,
            on_missing: on_missing?,
        }))
    }
}

fn currency_expr(df: &DataFrame, c: &Currency) -> Result<Expr, StageError> {
    Ok(match c {
        Currency::Fixed(code) => lit(code.clone()),
        Currency::Column(t) => cast(existing(df, t)?, DataType::Utf8),
    })
}

#[async_trait]
impl Stage for ConvertCurrencyStage {
    fn describe(&self) -> String {
        let cur = |c: &Currency| match c {
            Currency::Fixed(s) => s.clone(),
            Currency::Column(t) => format!("[{}]", t.value),
        };
        let date = match &self.date {
            RateDate::Column(t) => format!("rate valid on {}", t.value),
            RateDate::PeriodEnd => "closing rate of the period".into(),
        };
        format!(
            "convert_currency {} {} -> {} as {} ({date} from {}, {} places {})",
            self.amount.value,
            cur(&self.from),
            cur(&self.to),
            self.output,
            self.rates.value,
            self.scale,
            self.mode.name()
        )
    }
    fn tables(&self) -> Vec<String> {
        vec![self.rates.value.clone()]
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let amount = existing(&input, &self.amount)?;
        let from = currency_expr(&input, &self.from)?;
        let to = currency_expr(&input, &self.to)?;
        let date = match &self.date {
            RateDate::Column(t) => existing(&input, t)?,
            RateDate::PeriodEnd => {
                // The last day of the period: the period's end is exclusive.
                let end = env
                    .vars
                    .get("period_end")
                    .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                let last = end
                    .and_then(|d| d.pred_opt())
                    .ok_or_else(|| StageError::new("no period end to take the closing rate at"))?;
                let days = (last - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32;
                lit(ScalarValue::Date32(Some(days)))
            }
        };
        let [c_from, c_to, c_rate, c_valid_from, c_valid_to] = self.columns.clone();
        let join = Join {
            reference: self.rates.clone(),
            keys: vec![(from.clone(), c_from), (to.clone(), c_to)],
            pulled: vec![(c_rate, "__billflow_rate".into())],
            dated: Some((
                date.clone(),
                c_valid_from,
                if self.valid_to_named {
                    ValidTo::Named(c_valid_to)
                } else {
                    ValidTo::Default(c_valid_to)
                },
            )),
            order: None,
            several_dropped: true,
        };
        let mut df = join_reference(env.ctx, input, &join).await?;
        let same = from.clone().eq(to.clone());
        // Several rates valid on one day: the reference is ambiguous, never guessed.
        let many = ident(MATCHES).gt(lit(1i64));
        let pair = concat_ws(
            lit(""),
            vec![
                coalesce(vec![from.clone(), lit("NULL")]),
                lit("->"),
                coalesce(vec![to.clone(), lit("NULL")]),
            ],
        );
        let on_date = concat_ws(
            lit(""),
            vec![
                lit(" valid on "),
                coalesce(vec![cast(date.clone(), DataType::Utf8), lit("NULL")]),
            ],
        );
        let many_reason = concat_ws(
            lit(""),
            vec![
                lit(format!("several rates in `{}` for ", self.rates.value)),
                pair.clone(),
                on_date.clone(),
            ],
        );
        df = apply_policy(
            df,
            OnError::Fail,
            many.and(same.clone().is_not_true()),
            many_reason,
            env.stage,
            env.side,
        )
        .map_err(plan_err)?;
        let missing = amount
            .clone()
            .is_not_null()
            .and(same.clone().is_not_true())
            .and(ident(MATCHES).eq(lit(0i64)));
        let missing_reason = concat_ws(
            lit(""),
            vec![
                lit("no exchange rate "),
                pair,
                on_date,
                lit(format!(" in `{}`", self.rates.value)),
            ],
        );
        df = apply_policy(df, self.on_missing, missing, missing_reason, env.stage, env.side).map_err(plan_err)?;
        let rate = when(same, lit(ScalarValue::Decimal128(Some(1), 1, 0)))
            .otherwise(ident("__billflow_rate"))
            .map_err(plan_err)?;
        // One rounding of the full (256-bit) product: no intermediate overflow.
        let converted = mul_round(amount, rate.clone(), self.scale, self.mode);
        let mut drop = vec![MATCHES, "__billflow_rate", self.output.as_str()];
        if let Some(ro) = &self.rate_output {
            drop.push(ro.as_str());
        }
        let mut select = all_but(&df, &drop);
        select.push(converted.alias(&self.output));
        if let Some(ro) = &self.rate_output {
            select.push(rate.alias(ro));
        }
        df.select(select).map_err(plan_err)
    }
}
