//! `kind: focus`: shape a billing stream as the FinOps FOCUS 1.2 cost and usage schema, so
//! FinOps tools read any tier's batches directly, and check FOCUS's rules on every row.
//!
//! Each FOCUS column comes from a column of the stream (`BilledCost: amount`), a constant
//! (`ChargeCategory: { value: Usage }`) or its default: the costs default to BilledCost,
//! the billing period to the run's period, InvoiceIssuerName to the stream owner (the
//! issuing tier), ProviderName and PublisherName to the chain's vendor. Columns listed
//! under `keep` are published too, as `x_<name>` (FOCUS's prefix for custom columns).

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use datafusion::functions::expr_fn::{concat_ws, regexp_like};
use datafusion::functions::math::expr_fn::abs;
use datafusion::logical_expr::{Expr, ExprSchemable, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;
use marked_yaml::Node;

use super::settings::{existing, plan_err};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind, TemplateVars};
use crate::definition::{Fields, Reader, Text};
use crate::engine::side::{OnError, apply_policy};

/// The settings of `kind: focus`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["columns"],
        ty: "mapping FOCUS column -> column name or `{ value: <constant> }`",
        required: "yes",
        default: "",
        doc: "must map `BilledCost`, `BillingCurrency` and `BillingAccountId`; a key that is not one of the columns below is an error",
    },
    Setting {
        keys: &["keep"],
        ty: "list of column names",
        required: "no",
        default: "`[]`",
        doc: "stream columns also published, each as `x_<name>` after the FOCUS columns",
    },
    Setting {
        keys: &["on_error"],
        ty: "`fail`, `reject`",
        required: "no",
        default: "`fail`",
        doc: "a row that breaks a FOCUS rule",
    },
];

pub struct FocusKind;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Money,
    Quantity,
    Text,
    Time,
}

/// The FOCUS 1.2 columns billflow writes, in output order.
const COLUMNS: &[(&str, Kind)] = &[
    ("BilledCost", Kind::Money),
    ("EffectiveCost", Kind::Money),
    ("ListCost", Kind::Money),
    ("ContractedCost", Kind::Money),
    ("BillingCurrency", Kind::Text),
    ("PricingCurrency", Kind::Text),
    ("BillingAccountId", Kind::Text),
    ("BillingAccountName", Kind::Text),
    ("SubAccountId", Kind::Text),
    ("SubAccountName", Kind::Text),
    ("BillingPeriodStart", Kind::Time),
    ("BillingPeriodEnd", Kind::Time),
    ("ChargePeriodStart", Kind::Time),
    ("ChargePeriodEnd", Kind::Time),
    ("ChargeCategory", Kind::Text),
    ("ChargeClass", Kind::Text),
    ("ChargeDescription", Kind::Text),
    ("InvoiceIssuerName", Kind::Text),
    ("ProviderName", Kind::Text),
    ("PublisherName", Kind::Text),
    ("ServiceName", Kind::Text),
    ("ServiceCategory", Kind::Text),
    ("SkuId", Kind::Text),
    ("SkuPriceId", Kind::Text),
    ("PricingQuantity", Kind::Quantity),
    ("PricingUnit", Kind::Text),
    ("ConsumedQuantity", Kind::Quantity),
    ("ConsumedUnit", Kind::Text),
    ("RegionId", Kind::Text),
    ("RegionName", Kind::Text),
    ("ResourceId", Kind::Text),
    ("ResourceName", Kind::Text),
];
const REQUIRED: &[&str] = &["BilledCost", "BillingCurrency", "BillingAccountId"];
const CHARGE_CATEGORIES: &[&str] = &["Adjustment", "Credit", "Purchase", "Tax", "Usage"];
const SERVICE_CATEGORIES: &[&str] = &[
    "AI and Machine Learning",
    "Analytics",
    "Business Applications",
    "Compute",
    "Databases",
    "Developer Tools",
    "Multicloud",
    "Identity",
    "Integration",
    "Internet of Things",
    "Management and Governance",
    "Media",
    "Migration",
    "Mobile",
    "Networking",
    "Security",
    "Storage",
    "Web",
    "Other",
];

#[derive(Debug, Clone)]
enum Source {
    Column(Text),
    Value(String),
}

#[derive(Debug)]
pub struct FocusStage {
    sources: Vec<(&'static str, Source)>,
    keep: Vec<Text>,
    on_error: OnError,
}

impl StageKind for FocusKind {
    fn name(&self) -> &'static str {
        "focus"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let on_error = super::settings::on_error(f, r, "on_error", &[OnError::Fail, OnError::Reject], OnError::Fail);
        let keep = match f.get("keep") {
            Some(n) => r.string_list(n, "kept columns"),
            None => Some(vec![]),
        };
        let node = f.require(
            r,
            "columns",
            "FOCUS column names mapped to the stream's columns, e.g. `BilledCost: amount`",
        )?;
        let mut m = r.mapping(node, "FOCUS columns")?;
        let mut sources = Vec::new();
        let mut ok = true;
        for (name, _) in COLUMNS {
            let Some(v) = m.get(name) else { continue };
            let s = match v {
                Node::Scalar(_) => r.text(v, name).map(Source::Column),
                _ => {
                    let mut c = r.mapping(v, &format!("`{name}`"))?;
                    let value = c.required_text(r, "value", "a constant for every row");
                    c.finish(r, &[]);
                    value.map(|t| Source::Value(t.value))
                }
            };
            match s {
                Some(s) => sources.push((*name, s)),
                None => ok = false,
            }
        }
        let at = m.location.clone();
        m.finish(r, &[]);
        for req in REQUIRED {
            if !sources.iter().any(|(n, _)| n == req) {
                let d = r.error(format!("FOCUS needs `{req}`"), at.clone());
                d.hint = Some(format!("map it to a column of the stream, e.g. `{req}: <column>`"));
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Arc::new(FocusStage {
            sources,
            keep: keep?,
            on_error: on_error?,
        }))
    }
}

fn timestamp(e: Expr) -> Expr {
    cast(e, DataType::Timestamp(TimeUnit::Microsecond, None))
}

impl FocusStage {
    fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
    }
}

#[async_trait]
impl Stage for FocusStage {
    fn describe(&self) -> String {
        let mapped: Vec<String> = self
            .sources
            .iter()
            .map(|(n, s)| match s {
                Source::Column(c) => format!("{n}={}", c.value),
                Source::Value(v) => format!("{n}='{v}'"),
            })
            .collect();
        format!("focus 1.2 ({})", mapped.join(", "))
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let df = self.focus_columns(input, env.vars)?;
        let (bad, reason) = row_rules()?;
        apply_policy(df, self.on_error, bad, reason, env.stage, env.side).map_err(plan_err)
    }
}

impl FocusStage {
    /// The FOCUS columns, each from its mapped column or value, else its default.
    fn focus_columns(&self, input: DataFrame, vars: &TemplateVars) -> Result<DataFrame, StageError> {
        let var = |n: &str| vars.get(n).unwrap_or("").to_string();
        let period = |n: &str| timestamp(cast(lit(var(n)), DataType::Date32));
        let given = |name: &str| -> Result<Option<Expr>, StageError> {
            Ok(match self.source(name) {
                Some(Source::Column(c)) => Some(existing(&input, c)?),
                Some(Source::Value(v)) => Some(lit(v.clone())),
                None => None,
            })
        };
        // Untyped NULL: converts to whatever type the stream declares for the column.
        let null = || lit(ScalarValue::Null);
        let mut select = Vec::new();
        for (name, kind) in COLUMNS {
            let value = match (given(name)?, *name) {
                (Some(e), _) => e,
                (None, "EffectiveCost" | "ListCost" | "ContractedCost") => given("BilledCost")?.unwrap_or(null()),
                (None, "PricingCurrency") => given("BillingCurrency")?.unwrap_or(null()),
                (None, "BillingAccountName") => given("BillingAccountId")?.unwrap_or(null()),
                (None, "BillingPeriodStart") => period("period_start"),
                (None, "BillingPeriodEnd") => period("period_end"),
                (None, "ChargePeriodStart") => period("period_start"),
                // A charge dated by day covers that day.
                (None, "ChargePeriodEnd") => match self.source("ChargePeriodStart") {
                    Some(Source::Column(c))
                        if input
                            .schema()
                            .field_with_unqualified_name(&c.value)
                            .is_ok_and(|f| f.data_type() == &DataType::Date32) =>
                    {
                        timestamp(existing(&input, c)? + lit(ScalarValue::new_interval_dt(1, 0)))
                    }
                    _ => period("period_end"),
                },
                (None, "ChargeCategory") => lit("Usage"),
                (None, "InvoiceIssuerName") => lit(var("owner_name")),
                (None, "ProviderName" | "PublisherName") => lit(var("vendor_name")),
                (None, _) => null(),
            };
            let value = match kind {
                Kind::Money | Kind::Quantity => {
                    if let Expr::Column(_) = &value {
                        let t = value.get_type(input.schema()).map_err(plan_err)?;
                        if !matches!(t, DataType::Decimal128(_, _)) {
                            let mut e = StageError::new(format!(
                                "FOCUS {name} must be an exact decimal, the mapped column is {t}"
                            ));
                            e.hint = Some(
                                "costs and quantities stay Decimal128; cast the column to decimal(p,s) first".into(),
                            );
                            return Err(e);
                        }
                    }
                    value
                }
                Kind::Text => cast(value, DataType::Utf8),
                Kind::Time => timestamp(value),
            };
            select.push(value.alias(*name));
        }
        for k in &self.keep {
            select.push(existing(&input, k)?.alias(format!("x_{}", k.value)));
        }
        input.select(select).map_err(plan_err)
    }
}

/// FOCUS's rules, per row: whether a row breaks any, and which (`; `-separated).
fn row_rules() -> Result<(Expr, Expr), StageError> {
    let mut checks: Vec<(Expr, String)> = Vec::new();
    for name in [
        "BilledCost",
        "BillingCurrency",
        "BillingAccountId",
        "ChargeCategory",
        "BillingPeriodStart",
        "BillingPeriodEnd",
        "ChargePeriodStart",
        "ChargePeriodEnd",
    ] {
        checks.push((ident(name).is_null(), format!("{name} is required")));
    }
    for name in ["BillingCurrency", "PricingCurrency"] {
        checks.push((
            ident(name)
                .is_not_null()
                .and(regexp_like(ident(name), lit("^[A-Z]{3}$"), None).is_not_true()),
            format!("{name} must be an ISO 4217 code"),
        ));
    }
    checks.push((
        ident("ChargeCategory")
            .is_not_null()
            .and(ident("ChargeCategory").in_list(CHARGE_CATEGORIES.iter().map(|c| lit(*c)).collect(), true)),
        format!("ChargeCategory must be one of {}", CHARGE_CATEGORIES.join(", ")),
    ));
    checks.push((
        ident("ChargeClass")
            .is_not_null()
            .and(ident("ChargeClass").not_eq(lit("Correction"))),
        "ChargeClass must be empty or Correction".into(),
    ));
    checks.push((
        ident("ServiceCategory")
            .is_not_null()
            .and(ident("ServiceCategory").in_list(SERVICE_CATEGORIES.iter().map(|c| lit(*c)).collect(), true)),
        "ServiceCategory is not a FOCUS service category".into(),
    ));
    checks.push((
        abs(ident("ListCost")).lt(abs(ident("ContractedCost"))),
        "ListCost must be at least ContractedCost".into(),
    ));
    checks.push((
        ident("ChargePeriodStart").gt_eq(ident("ChargePeriodEnd")),
        "ChargePeriodStart must be before ChargePeriodEnd".into(),
    ));
    checks.push((
        ident("BillingPeriodStart").gt_eq(ident("BillingPeriodEnd")),
        "BillingPeriodStart must be before BillingPeriodEnd".into(),
    ));
    let bad = checks
        .iter()
        .map(|(c, _)| c.clone().is_true())
        .reduce(Expr::or)
        .unwrap_or(lit(false));
    let reasons: Vec<Expr> = checks
        .iter()
        .map(|(c, why)| when(c.clone().is_true(), lit(format!("FOCUS: {why}"))).end())
        .collect::<Result<_, _>>()
        .map_err(plan_err)?;
    Ok((bad, concat_ws(lit("; "), reasons)))
}
