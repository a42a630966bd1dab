//! A stream's declared columns are its contract. At check time the stages' output schema
//! must have every declared column with a type that converts without loss, and nothing
//! undeclared. At run time each row is checked (NULL in a non-nullable column, a value
//! that does not fit the declared type) and refused rows go to the rejects file.

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::functions::expr_fn::concat_ws;
use datafusion::logical_expr::{Expr, cast, try_cast, when};
use datafusion::prelude::{ident, lit};

use crate::definition::diagnostics::did_you_mean;
use crate::definition::{ColumnDef, ColumnType, Diagnostic};
use crate::engine::text_checks::{self, TextRule};

pub use crate::definition::converts_losslessly;

fn type_hint(from: &DataType, to: ColumnType) -> Option<String> {
    match (from, to) {
        (DataType::Decimal128(_, s) | DataType::Decimal256(_, s), ColumnType::Decimal { precision, scale })
            if *s > scale =>
        {
            Some(format!(
                "round explicitly in the stage, e.g. `CAST(ROUND(x, {scale}) AS DECIMAL({precision}, {scale}))`, or declare scale {s}"
            ))
        }
        (DataType::Float32 | DataType::Float64, ColumnType::Decimal { precision, scale }) => Some(format!(
            "money must not pass through floating point: compute in decimals, or CAST(x AS DECIMAL({precision}, {scale})) deliberately"
        )),
        _ => Some("cast in the stage to the declared type, or change the declared type".into()),
    }
}

/// Compare the stages' output schema with the declared columns.
pub fn check_schema(stream_id: &str, last_stage: &str, actual: &SchemaRef, declared: &[ColumnDef]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names: Vec<&str> = actual.fields().iter().map(|f| f.name().as_str()).collect();
    for c in declared {
        match actual.field_with_name(&c.name.value) {
            Err(_) => {
                out.push(
                    Diagnostic::new(
                        format!("stream `{stream_id}` declares column `{}` but its last stage `{last_stage}` does not produce it", c.name.value),
                        Some(c.name.location.clone()),
                    )
                    .expected(format!("one of the produced columns: {}", names.join(", ")))
                    .maybe_hint(did_you_mean(&c.name.value, names.iter().copied())),
                );
            }
            Ok(f) if !converts_losslessly(f.data_type(), c.ty) => {
                out.push(
                    Diagnostic::new(
                        format!(
                            "column `{}` of stream `{stream_id}` is {} after stage `{last_stage}` but is declared {}",
                            c.name.value,
                            describe_type(f.data_type()),
                            c.ty
                        ),
                        Some(c.name.location.clone()),
                    )
                    .expected(format!("a type that converts to {} without loss", c.ty))
                    .maybe_hint(type_hint(f.data_type(), c.ty)),
                );
            }
            Ok(_) => {}
        }
    }
    for f in actual.fields() {
        if !declared.iter().any(|c| c.name.value == *f.name()) {
            let location = declared.first().map(|c| c.name.location.clone());
            out.push(
                Diagnostic::new(
                    format!("stage `{last_stage}` of stream `{stream_id}` produces column `{}` that the stream's columns do not declare", f.name()),
                    location,
                )
                .hint(format!(
                    "declare it under `columns:` ({}; add `output: false` to keep it out of the batch), or leave it out of the last stage",
                    describe_type(f.data_type())
                )),
            );
        }
    }
    out
}

pub fn describe_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int64 => "integer".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        other => other.to_string(),
    }
}

/// Row checks for a set of declared columns: the flag of a bad row, and its reason.
pub struct RowChecks {
    pub bad: Expr,
    pub reason: Expr,
}

/// `bad` is true where any declared column is NULL but declared non-nullable, or holds a
/// value that does not convert to the declared type. `raw` gives each column's current
/// type (the conversion checked is raw -> declared).
pub fn row_checks(raw: &SchemaRef, declared: &[ColumnDef]) -> RowChecks {
    let mut flags: Vec<Expr> = Vec::new();
    let mut reasons: Vec<Expr> = Vec::new();
    for c in declared {
        let Ok(field) = raw.field_with_name(&c.name.value) else {
            continue;
        };
        let column = ident(&c.name.value);
        let target = c.ty.to_arrow();
        if !c.nullable {
            let f = column.clone().is_null();
            reasons.push(
                when(
                    f.clone(),
                    lit(format!("{} is empty but declared nullable: false", c.name.value)),
                )
                .end()
                .unwrap_or(lit("")),
            );
            flags.push(f);
        }
        if field.data_type() != &target && field.data_type() != &DataType::Null {
            if let Some((f, why)) = text_check(&column, field.data_type(), c) {
                let message = concat_ws(
                    lit(""),
                    vec![
                        lit(format!("{}: '", c.name.value)),
                        cast(column.clone(), DataType::Utf8),
                        lit(format!("' {why}")),
                    ],
                );
                reasons.push(when(f.clone(), message).end().unwrap_or(lit("")));
                flags.push(f);
            }
            if always_converts(field.data_type(), &target) {
                continue;
            }
            let f = column
                .clone()
                .is_not_null()
                .and(try_cast(column.clone(), target.clone()).is_null());
            let shown = cast(column.clone(), DataType::Utf8);
            let message = concat_ws(
                lit(""),
                vec![
                    lit(format!("{}: cannot read '", c.name.value)),
                    shown,
                    lit(format!("' as {}", c.ty)),
                ],
            );
            reasons.push(when(f.clone(), message).end().unwrap_or(lit("")));
            flags.push(f);
        }
    }
    let bad = flags.into_iter().reduce(Expr::or).unwrap_or(lit(false));
    // concat_ws takes two arguments or more.
    let reason = match reasons.len() {
        0 => lit(""),
        1 => reasons.remove(0),
        _ => concat_ws(lit("; "), reasons),
    };
    RowChecks { bad, reason }
}

/// Whether every non-NULL value of type `from` converts to `to`, so that a row needs no
/// conversion check (a `TRY_CAST` per value: for text read as string views, it copied
/// every string of every checked column, twice per checkpoint). Text to text and wider
/// integers only.
fn always_converts(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let text = |t: &DataType| match t {
        Utf8 | LargeUtf8 | Utf8View => true,
        Dictionary(_, v) => matches!(v.as_ref(), Utf8 | LargeUtf8 | Utf8View),
        _ => false,
    };
    match (from, to) {
        (f, t) if text(f) && text(t) => true,
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        // Decimals stay checked, even to a wider type: a decimal array can hold a value
        // beyond its own precision (Arrow checks it only when asked), and the check is
        // what refuses it.
        _ => false,
    }
}

/// What a cast from text would let through silently: a decimal with more places than its
/// column (the cast rounds it, half away from zero), a date not written `YYYY-MM-DD` (the
/// cast reads `20261001` and `2026-10-1`, and drops a time of day). Such text is refused
/// with the reason instead: a flag and the reason's tail.
fn text_check(column: &Expr, raw: &DataType, c: &ColumnDef) -> Option<(Expr, String)> {
    if !matches!(raw, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return None;
    }
    let (rule, why) = match c.ty {
        ColumnType::Decimal { scale, .. } => (
            TextRule::DecimalPlaces(scale.max(0) as u8),
            format!(
                "has more than {scale} decimal places ({}): it would be rounded; declare more places and round it with a `round` stage",
                c.ty
            ),
        ),
        ColumnType::Date => (TextRule::IsoDate, "is not a date written YYYY-MM-DD".to_string()),
        _ => return None,
    };
    let text = match raw {
        DataType::Utf8 => column.clone(),
        _ => cast(column.clone(), DataType::Utf8),
    };
    let flag = text_checks::breaks(text, rule).is_true();
    Some((column.clone().is_not_null().and(flag), why))
}

/// The published projection: declared output columns, in order, cast to declared types.
pub fn output_projection(raw: &SchemaRef, declared: &[ColumnDef]) -> Vec<Expr> {
    projection(raw, declared, false)
}

/// The declared columns of a source, typed as declared, except that text read as string
/// views stays views: Parquet's short strings are held in the view itself, which
/// groups and joins compare without following a pointer; the output contract makes
/// them `string` where the stream's rows are written, usually far fewer.
pub fn input_projection(raw: &SchemaRef, declared: &[ColumnDef]) -> Vec<Expr> {
    projection(raw, declared, true)
}

fn projection(raw: &SchemaRef, declared: &[ColumnDef], views: bool) -> Vec<Expr> {
    declared
        .iter()
        .filter(|c| c.output)
        .map(|c| {
            let target = c.ty.to_arrow();
            let column = ident(&c.name.value);
            let same = raw
                .field_with_name(&c.name.value)
                .map(|f| {
                    f.data_type() == &target
                        || (views && f.data_type() == &DataType::Utf8View && target == DataType::Utf8)
                })
                .unwrap_or(false);
            if same {
                column
            } else {
                cast(column, target).alias(&c.name.value)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::always_converts;
    use arrow::datatypes::DataType::*;

    #[test]
    fn only_conversions_that_cannot_fail_go_unchecked() {
        // Text to text keeps every value: no check.
        assert!(always_converts(&Utf8View, &Utf8));
        assert!(always_converts(&LargeUtf8, &Utf8View));
        // Text to anything else can fail ('abc' as a date).
        assert!(!always_converts(&Utf8View, &Date32));
        assert!(!always_converts(&Utf8, &Decimal128(18, 4)));
        // Wider integers keep the value, narrower ones may not.
        assert!(always_converts(&Int32, &Int64));
        assert!(!always_converts(&Int64, &Int32));
        // Decimals are checked, narrower or wider: decimal(38,10) -> (18,4) overflows
        // past 14 whole digits, and a decimal(18,4) array may hold a value beyond 18.
        assert!(!always_converts(&Decimal128(38, 10), &Decimal128(18, 4)));
        assert!(!always_converts(&Decimal128(18, 4), &Decimal128(38, 10)));
    }
}
