//! The settings readers the stage kinds share (columns, types, rounding, scale, `on_error`
//! policies) and the expression helpers they build with.

use datafusion::logical_expr::Expr;
use datafusion::prelude::DataFrame;
use marked_yaml::Node;

use super::{Setting, StageError};
use crate::definition::{ColumnType, Fields, Reader, Text};
use crate::engine::money::RoundingMode;
use crate::engine::side::OnError;

/// A required column name.
pub fn column(f: &mut Fields, r: &mut Reader, key: &str, what: &str) -> Option<Text> {
    f.required_text(r, key, what)
}

/// A list of column names (a single name is a list of one).
pub fn columns(f: &mut Fields, r: &mut Reader, key: &str, what: &str) -> Option<Vec<Text>> {
    let node = f.require(r, key, what)?;
    r.string_list(node, &format!("`{key}`"))
}

/// An optional column type such as `decimal(18,4)`.
pub fn column_type(r: &mut Reader, node: &Node, what: &str) -> Option<ColumnType> {
    let t = r.text(node, what)?;
    match ColumnType::parse(&t.value) {
        Ok(ty) => Some(ty),
        Err(msg) => {
            let hint = crate::definition::diagnostics::did_you_mean(&t.value, ColumnType::NAMES.iter().copied());
            let d = r.error(msg.to_string(), t.location.clone());
            d.expected = Some(crate::definition::diagnostics::one_of(ColumnType::NAMES));
            d.hint = hint;
            None
        }
    }
}

/// Parse SQL expression text against the current table, locating errors at the text.
pub fn sql_expr(df: &DataFrame, text: &Text) -> Result<Expr, StageError> {
    df.parse_sql_expr(&text.value).map_err(|e| {
        StageError::new(format!("`{}`: {}", text.value, e.strip_backtrace())).at(Some(text.location.clone()))
    })
}

/// A column of the current table, or a located error naming the columns there are.
pub fn existing(df: &DataFrame, name: &Text) -> Result<Expr, StageError> {
    if df.schema().field_with_unqualified_name(&name.value).is_ok() {
        return Ok(datafusion::prelude::ident(&name.value));
    }
    let names: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut e = StageError::new(format!("no column `{}` in the stream's table here", name.value))
        .at(Some(name.location.clone()));
    e.hint = crate::definition::diagnostics::did_you_mean(&name.value, names.iter().map(String::as_str))
        .or(Some(format!("the columns are: {}", names.join(", "))));
    Err(e)
}

/// Every column of `df` except `except`, as expressions (to rebuild a row around new ones).
pub fn all_but(df: &DataFrame, except: &[&str]) -> Vec<Expr> {
    df.schema()
        .fields()
        .iter()
        .filter(|f| !except.contains(&f.name().as_str()))
        .map(|f| datafusion::prelude::ident(f.name()))
        .collect()
}

pub fn plan_err(e: datafusion::error::DataFusionError) -> StageError {
    StageError::new(e.strip_backtrace())
}

/// The `rounding` setting of the kinds that round money.
pub const ROUNDING: Setting = Setting {
    keys: &["rounding"],
    ty: "rounding mode",
    required: "no",
    default: "`half_even`",
    doc: "see [Money and rounding](#money-and-rounding)",
};

/// A rounding mode (default `half_even`).
pub fn read_rounding(f: &mut Fields, r: &mut Reader, key: &str) -> Option<RoundingMode> {
    match f.get(key) {
        None => Some(RoundingMode::HalfEven),
        Some(n) => r
            .choice(n, "rounding mode", RoundingMode::NAMES)
            .and_then(|t| RoundingMode::parse(&t.value)),
    }
}

pub fn read_scale(f: &mut Fields, r: &mut Reader, key: &str, default: i8) -> Option<i8> {
    match f.get(key) {
        None => Some(default),
        Some(n) => match r.unsigned(n, "`scale`") {
            Some(s) if s <= 38 => Some(s as i8),
            Some(s) => {
                let at = r.loc(n);
                r.error(format!("scale {s} is more than Decimal128's 38 digits"), at);
                None
            }
            None => None,
        },
    }
}

/// An `on_error`-style policy under `key` (default `default`), accepting only `allowed`.
pub fn on_error(f: &mut Fields, r: &mut Reader, key: &str, allowed: &[OnError], default: OnError) -> Option<OnError> {
    let Some(node) = f.get(key) else { return Some(default) };
    let names: Vec<&str> = allowed.iter().map(|o| o.name()).collect();
    let t = r.choice(node, &format!("`{key}` policy"), &names)?;
    allowed.iter().copied().find(|o| o.name() == t.value)
}
