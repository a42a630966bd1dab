//! Exact money arithmetic on Arrow `Decimal128`: rounding to a scale with an explicit mode,
//! and products and quotients rounded once on the exact result, as vectorised scalar
//! functions (`billflow_round(x, scale, 'half_even')`, `billflow_mul_round`,
//! `billflow_div_round`) that billing stages build into their plans and SQL stages call by
//! name (see [`sql_functions`]). Overflow is an error, never a wrap.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::lit;
use datafusion::scalar::ScalarValue;

/// How to round a value that lies between two representable ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoundingMode {
    /// Ties to the even neighbour (banker's rounding): the default for money.
    HalfEven,
    /// Ties away from zero.
    HalfUp,
    /// Ties toward zero.
    HalfDown,
    /// Toward zero (truncate).
    Down,
    /// Away from zero.
    Up,
}

impl RoundingMode {
    pub const NAMES: &'static [&'static str] = &["half_even", "half_up", "half_down", "down", "up"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "half_even" => Self::HalfEven,
            "half_up" => Self::HalfUp,
            "half_down" => Self::HalfDown,
            "down" => Self::Down,
            "up" => Self::Up,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::HalfEven => "half_even",
            Self::HalfUp => "half_up",
            Self::HalfDown => "half_down",
            Self::Down => "down",
            Self::Up => "up",
        }
    }
}

/// Powers of ten that fit an i128: 10^0 ..= 10^38.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// 10^n, when it fits an i128 (a table lookup: these kernels run once per value).
fn pow10(n: i32) -> Option<i128> {
    POW10.get(usize::try_from(n).ok()?).copied()
}

/// `n / d` rounded with `mode`, decided by the true remainder. `None` when `d` is 0 or
/// the quotient overflows. Money mostly fits 64 bits, where division is many times cheaper
/// than 128-bit division, so that path comes first.
#[inline]
fn quot_round(n: i128, d: i128, mode: RoundingMode) -> Option<i128> {
    let (q, r) = match (i64::try_from(n), i64::try_from(d)) {
        (Ok(n), Ok(d)) if d != 0 && d != -1 => ((n / d) as i128, (n % d) as i128),
        _ => (n.checked_div(d)?, n.checked_rem(d)?),
    };
    let r = r.unsigned_abs();
    let d_abs = d.unsigned_abs();
    // r < |d| <= 2^127, so 2r fits a u128.
    let away = match mode {
        RoundingMode::Down => false,
        RoundingMode::Up => r != 0,
        RoundingMode::HalfUp => r * 2 >= d_abs,
        RoundingMode::HalfDown => r * 2 > d_abs,
        RoundingMode::HalfEven => r * 2 > d_abs || (r * 2 == d_abs && q % 2 != 0),
    };
    if !away || r == 0 {
        return Some(q);
    }
    if (n < 0) != (d < 0) {
        q.checked_sub(1)
    } else {
        q.checked_add(1)
    }
}

/// The money columns of `schema` (its decimals), each with its scale, in order.
pub fn decimal_columns(schema: &arrow::datatypes::Schema) -> Vec<(String, i8)> {
    schema
        .fields()
        .iter()
        .filter_map(|f| match f.data_type() {
            DataType::Decimal128(_, scale) => Some((f.name().clone(), *scale)),
            _ => None,
        })
        .collect()
}

/// Round an unscaled value `v` (at `from` decimal places) to `to` places.
pub fn round_unscaled(v: i128, from: i8, to: i8, mode: RoundingMode) -> Option<i128> {
    if to >= from {
        return pow10((to - from) as i32).and_then(|m| v.checked_mul(m));
    }
    let Some(d) = pow10((from - to) as i32) else {
        return Some(0); // more than 38 places dropped: every representable value rounds to 0
    };
    quot_round(v, d, mode)
}

/// Precision of the result of rounding `Decimal128(p, s)` to `to` places: room for a carry.
pub fn rounded_precision(p: u8, s: i8, to: i8) -> u8 {
    let int_digits = (p as i16 - s as i16).max(1);
    (int_digits + to as i16 + 1).clamp(1, 38) as u8
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RoundUdf {
    signature: Signature,
}

impl RoundUdf {
    fn new() -> Self {
        Self {
            signature: optional_mode_signature(2),
        }
    }
}

/// `n` arguments, or `n + 1` with the rounding mode last (default `half_even`).
fn optional_mode_signature(n: usize) -> Signature {
    Signature::one_of(
        vec![TypeSignature::Any(n), TypeSignature::Any(n + 1)],
        Volatility::Immutable,
    )
}

/// The scale and rounding mode arguments: literals, so the result's type is known when
/// planning. `name` is the function's, for the message.
fn literal_args(name: &str, scale: Option<&ScalarValue>, mode: Option<&ScalarValue>) -> Result<(i8, RoundingMode)> {
    let scale = match scale {
        Some(ScalarValue::Int64(Some(s))) if (0..=38).contains(s) => *s as i8,
        Some(ScalarValue::Int32(Some(s))) if (0..=38).contains(s) => *s as i8,
        other => {
            return Err(DataFusionError::Plan(format!(
                "{name}: the scale must be an integer literal from 0 to 38, got {}",
                other.map(|v| v.to_string()).unwrap_or_else(|| "an expression".into())
            )));
        }
    };
    let mode = match mode {
        None => RoundingMode::HalfEven,
        Some(ScalarValue::Utf8(Some(m)) | ScalarValue::Utf8View(Some(m)) | ScalarValue::LargeUtf8(Some(m))) => {
            RoundingMode::parse(m).ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "{name}: unknown rounding mode '{m}'; expected one of {}",
                    RoundingMode::NAMES.join(", ")
                ))
            })?
        }
        Some(other) => {
            return Err(DataFusionError::Plan(format!(
                "{name}: the rounding mode must be a string literal ({}), got {other}",
                RoundingMode::NAMES.join(", ")
            )));
        }
    };
    Ok((scale, mode))
}

/// The mode argument at `index` when given (a literal, checked when planning).
fn mode_arg(args: &[ColumnarValue], index: usize) -> RoundingMode {
    match args.get(index) {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(m)) | ScalarValue::Utf8View(Some(m)) | ScalarValue::LargeUtf8(Some(m)),
        )) => RoundingMode::parse(m).unwrap_or(RoundingMode::HalfEven),
        _ => RoundingMode::HalfEven,
    }
}

/// Money arguments are decimals (or integers, exact at scale 0). A float is refused: it
/// would carry binary rounding into money.
fn check_money_arg(name: &str, ty: &DataType) -> Result<()> {
    match ty {
        DataType::Decimal128(_, _)
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::Null => Ok(()),
        other => Err(DataFusionError::Plan(format!(
            "{name}: expected a decimal or an integer, got {other}; cast it first, e.g. CAST(x AS DECIMAL(18, 4))"
        ))),
    }
}

impl ScalarUDFImpl for RoundUdf {
    fn name(&self) -> &str {
        "billflow_round"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Err(DataFusionError::Internal(
            "billflow_round uses return_field_from_args".into(),
        ))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (to, _) = literal_args(
            self.name(),
            args.scalar_arguments[1],
            args.scalar_arguments.get(2).copied().flatten(),
        )?;
        check_money_arg(self.name(), args.arg_fields[0].data_type())?;
        let out = match args.arg_fields[0].data_type() {
            DataType::Decimal128(p, s) => DataType::Decimal128(rounded_precision(*p, *s, to), to),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => DataType::Decimal128(rounded_precision(19, 0, to), to),
            DataType::Null => DataType::Decimal128(38, to),
            other => {
                return Err(DataFusionError::Plan(format!(
                    "billflow_round: expected a decimal, got {other}"
                )));
            }
        };
        Ok(Arc::new(Field::new(self.name(), out, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::Decimal128(out_p, to) = *args.return_field.data_type() else {
            return Err(DataFusionError::Internal("billflow_round: bad return type".into()));
        };
        let mode = mode_arg(&args.args, 2);
        let input = args.args[0].to_array(args.number_rows)?;
        let input: ArrayRef = match input.data_type() {
            DataType::Decimal128(_, _) => input,
            DataType::Null => arrow::array::new_null_array(&DataType::Decimal128(38, 0), input.len()),
            _ => arrow::compute::cast(&input, &DataType::Decimal128(38, 0))?,
        };
        let DataType::Decimal128(_, from) = *input.data_type() else {
            unreachable!()
        };
        let values = input.as_primitive::<Decimal128Type>();
        let limit = 10u128.pow(out_p as u32);
        let out: Decimal128Array = arrow::compute::kernels::arity::try_unary(values, |v| {
            round_unscaled(v, from, to, mode)
                .filter(|r| r.unsigned_abs() < limit)
                .ok_or_else(|| {
                    arrow::error::ArrowError::ComputeError(format!(
                        "decimal overflow rounding {v} (scale {from}) to scale {to}"
                    ))
                })
        })?;
        let out = out.with_precision_and_scale(out_p, to)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The line of a group that takes its rounding residue: the first in `order`. Returns the
/// aggregates that find its sort keys (named `names`; the first key's is a plain max or
/// min, the next keys' those of the line winning on the keys before them) and the test
/// that a line is a candidate: equal to them on every key (lines tying on every key are
/// all candidates, and one of them takes the residue).
pub fn top_line(order: &[datafusion::logical_expr::SortExpr], names: &[String]) -> (Vec<Expr>, Expr) {
    use datafusion::functions_aggregate::expr_fn::{first_value, max, min};
    use datafusion::logical_expr::{Operator, binary_expr};
    use datafusion::prelude::ident;
    let aggregates = order
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (o, t))| {
            match (i, o.asc) {
                (0, true) => min(o.expr.clone()),
                (0, false) => max(o.expr.clone()),
                _ => first_value(o.expr.clone(), order.to_vec()),
            }
            .alias(t)
        })
        .collect();
    let candidate = order
        .iter()
        .zip(names)
        .map(|(o, t)| binary_expr(o.expr.clone(), Operator::IsNotDistinctFrom, ident(t)))
        .reduce(Expr::and)
        .unwrap_or(lit(true));
    (aggregates, candidate)
}

/// Penny reconciliation: adjust the already rounded `column` so that, per group, the lines
/// add up to the total of `exact` (each line's exact amount) rounded to `scale` with
/// `mode`. The residue goes to the first line in `order` (ties on every key: any one of
/// them). One aggregate per group (the sums of the rounded and the exact lines, and the
/// first line's sort keys), joined back, then one streaming pass that gives each group's
/// residue to one of its candidate lines (`residue.rs`): no sort of the lines, and no
/// window holding a whole group.
#[allow(clippy::too_many_arguments)]
pub fn distribute_residue(
    df: datafusion::prelude::DataFrame,
    column: &str,
    exact: Expr,
    scale: i8,
    mode: RoundingMode,
    group: Vec<Expr>,
    order: Vec<datafusion::logical_expr::SortExpr>,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    use datafusion::functions::expr_fn::coalesce;
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::logical_expr::cast;
    use datafusion::prelude::ident;

    let ty = df.schema().field_with_unqualified_name(column)?.data_type().clone();
    let names: Vec<String> = (0..group.len()).map(|i| format!("__bf_rg{i}")).collect();
    let tops: Vec<String> = (0..order.len()).map(|i| format!("__bf_top{i}")).collect();
    let mut aggs = vec![
        sum(ident(column)).alias("__bf_lines"),
        sum(exact).alias("__bf_exact_total"),
    ];
    let (top_aggregates, candidate) = top_line(&order, &tops);
    aggs.extend(top_aggregates);
    let sums = df.clone().aggregate(
        group.iter().zip(&names).map(|(g, n)| g.clone().alias(n)).collect(),
        aggs,
    )?;
    let on: Vec<(Expr, Expr)> = group.iter().zip(&names).map(|(g, n)| (g.clone(), ident(n))).collect();
    let df = super::lookup::lookup(df, sums, on, true)?;
    let zero = lit(ScalarValue::Decimal128(Some(0), 1, 0));
    let target = round(ident("__bf_exact_total"), scale, mode);
    let residue = cast(coalesce(vec![target - ident("__bf_lines"), zero]), ty);
    // The group's keys are the line's own (the lookup gives the table's columns but its keys).
    let df = super::residue::assign(df, column, group.clone(), candidate, residue)?;
    let select: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .filter(|f| {
            // (The group's names are the lookup's keys: not in its output.)
            !matches!(f.name().as_str(), "__bf_lines" | "__bf_exact_total") && !tops.contains(f.name())
        })
        .map(|f| ident(f.name()))
        .collect();
    df.select(select)
}

/// `a / b` rounded to `to` places, exactly: the quotient is computed on the unscaled
/// integers with the remainder deciding the rounding, never through a truncated
/// intermediate. `None` on division by zero or overflow.
pub fn div_round_unscaled(a: i128, sa: i8, b: i128, sb: i8, to: i8, mode: RoundingMode) -> Option<i128> {
    if b == 0 {
        return None;
    }
    // a/10^sa / (b/10^sb) * 10^to = a * 10^(to + sb - sa) / b
    let shift = to as i32 + sb as i32 - sa as i32;
    let (num, den) = if shift >= 0 {
        (a.checked_mul(pow10(shift)?)?, b)
    } else {
        (a, b.checked_mul(pow10(-shift)?)?)
    };
    quot_round(num, den, mode)
}

/// `a x b` rounded to `to` places, exactly: when the product fits 128 bits (nearly always
/// for money) it is rounded there; otherwise it is formed in 256 bits, so a result that
/// fits Decimal128 is never lost to an intermediate overflow.
pub fn mul_round_unscaled(a: i128, sa: i8, b: i128, sb: i8, to: i8, mode: RoundingMode) -> Option<i128> {
    let shift = to as i32 - (sa as i32 + sb as i32);
    if let Some(p) = a.checked_mul(b) {
        if shift >= 0 {
            if let Some(v) = pow10(shift).and_then(|m| p.checked_mul(m)) {
                return Some(v);
            }
        } else if let Some(d) = pow10(-shift) {
            return quot_round(p, d, mode);
        }
    }
    mul_round_wide(a, sa, b, sb, to, mode)
}

/// `mul_round_unscaled` on a 256-bit product, for products beyond 128 bits.
fn mul_round_wide(a: i128, sa: i8, b: i128, sb: i8, to: i8, mode: RoundingMode) -> Option<i128> {
    use arrow::datatypes::i256;
    let ten = i256::from_i128(10);
    let pow = |n: u32| -> Option<i256> { (0..n).try_fold(i256::from_i128(1), |acc, _| acc.checked_mul(ten)) };
    let p = i256::from_i128(a).checked_mul(i256::from_i128(b))?;
    let from = sa as i32 + sb as i32;
    let shift = to as i32 - from;
    if shift >= 0 {
        return p.checked_mul(pow(shift as u32)?)?.to_i128();
    }
    let d = pow((-shift) as u32)?;
    let q = p.checked_div(d)?;
    let r = p.checked_rem(d)?;
    let r2 = if r < i256::ZERO {
        r.checked_mul(i256::from_i128(-2))?
    } else {
        r.checked_mul(i256::from_i128(2))?
    };
    let odd = q.checked_rem(i256::from_i128(2))? != i256::ZERO;
    let away = match mode {
        RoundingMode::Down => false,
        RoundingMode::Up => r != i256::ZERO,
        RoundingMode::HalfUp => r2 >= d,
        RoundingMode::HalfDown => r2 > d,
        RoundingMode::HalfEven => r2 > d || (r2 == d && odd),
    };
    let q = if away && r != i256::ZERO {
        if p < i256::ZERO {
            q.checked_sub(i256::ONE)?
        } else {
            q.checked_add(i256::ONE)?
        }
    } else {
        q
    };
    q.to_i128()
}

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum ArithOp {
    Mul,
    Div,
}

/// `billflow_mul_round` / `billflow_div_round`: exact decimal arithmetic with one rounding.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArithRoundUdf {
    signature: Signature,
    op: ArithOp,
}

impl ScalarUDFImpl for ArithRoundUdf {
    fn name(&self) -> &str {
        match self.op {
            ArithOp::Mul => "billflow_mul_round",
            ArithOp::Div => "billflow_div_round",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Err(DataFusionError::Internal(format!(
            "{} uses return_field_from_args",
            self.name()
        )))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (to, _) = literal_args(
            self.name(),
            args.scalar_arguments[2],
            args.scalar_arguments.get(3).copied().flatten(),
        )?;
        check_money_arg(self.name(), args.arg_fields[0].data_type())?;
        check_money_arg(self.name(), args.arg_fields[1].data_type())?;
        Ok(Arc::new(Field::new(self.name(), DataType::Decimal128(38, to), true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::Decimal128(_, to) = *args.return_field.data_type() else {
            return Err(DataFusionError::Internal(format!("{}: bad return type", self.name())));
        };
        let mode = mode_arg(&args.args, 3);
        let as_decimal = |v: &ColumnarValue| -> Result<ArrayRef> {
            let a = v.to_array(args.number_rows)?;
            Ok(match a.data_type() {
                DataType::Decimal128(_, _) => a,
                DataType::Null => arrow::array::new_null_array(&DataType::Decimal128(38, 0), a.len()),
                _ => arrow::compute::cast(&a, &DataType::Decimal128(38, 0))?,
            })
        };
        let a = as_decimal(&args.args[0])?;
        let b = as_decimal(&args.args[1])?;
        let (DataType::Decimal128(_, sa), DataType::Decimal128(_, sb)) = (a.data_type().clone(), b.data_type().clone())
        else {
            return Err(DataFusionError::Internal("decimal arguments expected".into()));
        };
        let op = self.op;
        const LIMIT: u128 = 10u128.pow(38);
        let out: Decimal128Array = arrow::compute::kernels::arity::try_binary(
            a.as_primitive::<Decimal128Type>(),
            b.as_primitive::<Decimal128Type>(),
            |x, y| {
                let r = match op {
                    ArithOp::Mul => mul_round_unscaled(x, sa, y, sb, to, mode),
                    ArithOp::Div => div_round_unscaled(x, sa, y, sb, to, mode),
                };
                r.filter(|v| v.unsigned_abs() < LIMIT).ok_or_else(|| {
                    arrow::error::ArrowError::ComputeError(match (op, y) {
                        (ArithOp::Div, 0) => "division by zero".to_string(),
                        (ArithOp::Mul, _) => {
                            format!("decimal overflow: {x}e-{sa} x {y}e-{sb} does not fit 38 digits at {to} places")
                        }
                        (ArithOp::Div, _) => {
                            format!("decimal overflow: {x}e-{sa} / {y}e-{sb} does not fit 38 digits at {to} places")
                        }
                    })
                })
            },
        )?;
        Ok(ColumnarValue::Array(Arc::new(out.with_precision_and_scale(38, to)?)))
    }
}

fn arith_udf(op: ArithOp) -> ScalarUDF {
    ScalarUDF::new_from_impl(ArithRoundUdf {
        signature: optional_mode_signature(3),
        op,
    })
}

fn arith(op: ArithOp, a: Expr, b: Expr, scale: i8, mode: RoundingMode) -> Expr {
    arith_udf(op).call(vec![a, b, lit(scale as i64), lit(mode.name())])
}

/// The exact money functions, for SQL stages and queries: `billflow_round(x, scale [,
/// mode])`, `billflow_mul_round(a, b, scale [, mode])`, `billflow_div_round(a, b, scale [,
/// mode])`; `mode` is one of [`RoundingMode::NAMES`] (default `half_even`).
pub fn sql_functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(RoundUdf::new()),
        arith_udf(ArithOp::Mul),
        arith_udf(ArithOp::Div),
    ]
}

/// `a / b` rounded to `scale` places with `mode`, computed exactly.
pub fn div_round(a: Expr, b: Expr, scale: i8, mode: RoundingMode) -> Expr {
    arith(ArithOp::Div, a, b, scale, mode)
}

/// `a x b` rounded to `scale` places with `mode`, computed exactly (256-bit product).
pub fn mul_round(a: Expr, b: Expr, scale: i8, mode: RoundingMode) -> Expr {
    arith(ArithOp::Mul, a, b, scale, mode)
}

/// `x` rounded to `scale` places with `mode`, as a DataFusion expression.
pub fn round(x: Expr, scale: i8, mode: RoundingMode) -> Expr {
    ScalarUDF::new_from_impl(RoundUdf::new()).call(vec![x, lit(scale as i64), lit(mode.name())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: i128, from: i8, to: i8, m: RoundingMode) -> i128 {
        round_unscaled(v, from, to, m).unwrap()
    }

    #[test]
    fn ties_and_signs_for_every_mode() {
        use RoundingMode::*;
        // 1.2345 -> 3 places; -1.2345; 1.2355; 1.2346; 1.2344
        let cases = [
            (12345, [1234, 1235, 1234, 1234, 1235]),
            (-12345, [-1234, -1235, -1234, -1234, -1235]),
            (12355, [1236, 1236, 1235, 1235, 1236]),
            (12346, [1235, 1235, 1235, 1234, 1235]),
            (12344, [1234, 1234, 1234, 1234, 1235]),
            (-12346, [-1235, -1235, -1235, -1234, -1235]),
            (0, [0, 0, 0, 0, 0]),
        ];
        for (v, want) in cases {
            for (m, w) in [HalfEven, HalfUp, HalfDown, Down, Up].into_iter().zip(want) {
                assert_eq!(r(v, 4, 3, m), w, "{v} with {m:?}");
            }
        }
        // The worked tie from the sample data: 1.54325 -> 1.5432 (half_even), 1.5433 (half_up).
        assert_eq!(r(154325, 5, 4, HalfEven), 15432);
        assert_eq!(r(154325, 5, 4, HalfUp), 15433);
        assert_eq!(r(-107445, 5, 4, HalfEven), -10744);
        // Upscaling is exact; overflow is None, never a wrap.
        assert_eq!(r(15, 1, 4, HalfEven), 15000);
        assert_eq!(round_unscaled(i128::MAX / 10, 0, 2, HalfEven), None);
        // Dropping more places than i128 holds rounds to zero.
        assert_eq!(r(99, 39, 0, HalfEven), 0);
    }

    #[test]
    fn exact_division_rounds_on_the_true_remainder() {
        use RoundingMode::*;
        let d = |a, sa, b, sb, to, m| div_round_unscaled(a, sa, b, sb, to, m).unwrap();
        // 145.00 / 3 = 48.3333.. -> 48.33
        assert_eq!(d(14500, 2, 3, 0, 2, HalfEven), 4833);
        // 1 / 8 = 0.125: a tie at 2 places -> 0.12 (half-even), 0.13 (half-up)
        assert_eq!(d(1, 0, 8, 0, 2, HalfEven), 12);
        assert_eq!(d(1, 0, 8, 0, 2, HalfUp), 13);
        // Just above the tie: 0.1250000001 must round up even when a truncated quotient
        // would look like an exact tie.
        assert_eq!(d(1_250_000_001, 10, 1, 0, 2, HalfEven), 13);
        // Signs.
        assert_eq!(d(-1, 0, 8, 0, 2, HalfEven), -12);
        assert_eq!(d(1, 0, -8, 0, 2, HalfUp), -13);
        assert_eq!(d(-10, 0, 3, 0, 0, Up), -4);
        assert_eq!(d(-10, 0, 3, 0, 0, Down), -3);
        // cost / (1 - 0.25) = 10.0000 / 0.75
        assert_eq!(d(100_000, 4, 75, 2, 4, HalfEven), 133_333);
        assert_eq!(div_round_unscaled(1, 0, 0, 0, 2, HalfEven), None);
    }

    #[test]
    fn products_round_once_on_the_full_product() {
        use RoundingMode::*;
        let m = |a, sa, b, sb, to, md| mul_round_unscaled(a, sa, b, sb, to, md).unwrap();
        // 123.46 x 0.0125 = 1.54325: a tie at 4 places.
        assert_eq!(m(12346, 2, 125, 4, 4, HalfEven), 15432);
        assert_eq!(m(12346, 2, 125, 4, 4, HalfUp), 15433);
        assert_eq!(m(-12346, 2, 125, 4, 4, HalfEven), -15432);
        // 10^30 (4 places) x 0.91876543: the 256-bit product does not overflow, the
        // result at 5 places fits.
        let big = 10i128.pow(34);
        assert_eq!(m(big, 4, 91_876_543, 8, 5, HalfEven), 91_876_543 * 10i128.pow(27));
        // Results that cannot fit are None, never wrapped.
        assert_eq!(mul_round_unscaled(i128::MAX, 0, 10, 0, 0, HalfEven), None);
        assert_eq!(m(15, 1, 2, 0, 3, HalfEven), 3000);
    }

    /// A small deterministic generator of values across magnitudes and signs (xorshift).
    fn values(seed: u64, n: usize) -> Vec<i128> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let digits = (x % 37) as u32;
                let v = ((x >> 8) as i128 * 0x9E37_79B9 + (x as i128)) % 10i128.pow(digits).max(1);
                if x & 1 == 1 { -v } else { v }
            })
            .collect()
    }

    const MODES: [RoundingMode; 5] = [
        RoundingMode::HalfEven,
        RoundingMode::HalfUp,
        RoundingMode::HalfDown,
        RoundingMode::Down,
        RoundingMode::Up,
    ];

    #[test]
    fn the_64_and_128_bit_paths_agree_with_256_bit_arithmetic() {
        // Products and roundings through the fast paths must equal the 256-bit reference,
        // including ties (values exactly half way) and values past 64 bits.
        let xs = values(7, 400);
        let ys = values(11, 60);
        for (i, &x) in xs.iter().enumerate() {
            for &y in &ys {
                for (sa, sb, to) in [(4, 8, 4), (6, 6, 4), (2, 4, 4), (0, 0, 2), (10, 10, 6), (4, 4, 12)] {
                    let mode = MODES[i % 5];
                    assert_eq!(
                        mul_round_unscaled(x, sa, y, sb, to, mode),
                        mul_round_wide(x, sa, y, sb, to, mode),
                        "{x}e-{sa} x {y}e-{sb} to {to} {mode:?}"
                    );
                }
            }
            for mode in MODES {
                let tie = x - x % 100 + 50; // exactly half way at 4 places
                for v in [x, tie] {
                    assert_eq!(
                        round_unscaled(v, 6, 4, mode),
                        mul_round_wide(v, 6, 1, 0, 4, mode),
                        "round {v}e-6 {mode:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn division_on_64_bits_agrees_with_128_bits() {
        // The reference: the quotient and remainder on i128 only.
        fn reference(n: i128, d: i128, mode: RoundingMode) -> i128 {
            let (q, r, da) = (n / d, (n % d).unsigned_abs(), d.unsigned_abs());
            let away = match mode {
                RoundingMode::Down => false,
                RoundingMode::Up => r != 0,
                RoundingMode::HalfUp => r * 2 >= da,
                RoundingMode::HalfDown => r * 2 > da,
                RoundingMode::HalfEven => r * 2 > da || (r * 2 == da && q % 2 != 0),
            };
            match (away && r != 0, (n < 0) != (d < 0)) {
                (false, _) => q,
                (true, true) => q - 1,
                (true, false) => q + 1,
            }
        }
        let ns = values(3, 500);
        let ds: Vec<i128> = values(5, 80)
            .into_iter()
            .filter(|d| *d != 0)
            .chain([1, -1, 2, -2, 8, 10_000])
            .collect();
        for (i, &n) in ns.iter().enumerate() {
            for &d in &ds {
                let mode = MODES[i % 5];
                assert_eq!(
                    quot_round(n, d, mode),
                    Some(reference(n, d, mode)),
                    "{n} / {d} {mode:?}"
                );
            }
        }
        assert_eq!(quot_round(i128::MIN, -1, RoundingMode::HalfEven), None);
        assert_eq!(quot_round(1, 0, RoundingMode::HalfEven), None);
        assert_eq!(
            quot_round(i64::MIN as i128, -1, RoundingMode::HalfEven),
            Some(-(i64::MIN as i128))
        );
    }

    #[tokio::test]
    async fn rounds_a_decimal_column_in_a_plan() {
        use datafusion::prelude::*;
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT * FROM (VALUES (CAST(1.54325 AS DECIMAL(18,5))), (CAST(-1.07445 AS DECIMAL(18,5))), (NULL)) AS t(x)")
            .await
            .unwrap();
        let out = df
            .select(vec![super::round(col("x"), 4, RoundingMode::HalfEven).alias("y")])
            .unwrap();
        assert_eq!(out.schema().field(0).data_type(), &DataType::Decimal128(18, 4));
        let batches = out.collect().await.unwrap();
        let y = batches[0].column(0).as_primitive::<Decimal128Type>();
        assert_eq!((y.value(0), y.value(1), y.is_null(2)), (15432, -10744, true));
    }
}
