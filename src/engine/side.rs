//! What stages produce besides their output table: rows they refuse (written to the
//! batch's rejects file with the stage and the reason) and counts of rows they remove
//! (shown in the run summary). Also the `on_error` policies every billing stage shares.

use std::ops::Not;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
};
use datafusion::prelude::{DataFrame, ident, lit};

use super::tap::Tap;
use super::text_scan;

/// Rows a stage refused: a lazy plan over them, and the tap that tells whether any were.
pub struct StageRejects {
    pub stage: String,
    pub rows: DataFrame,
    pub tap: Tap,
}

/// Rows a stage removed on purpose (a filter, a `drop_when`), for the run summary.
pub struct StageCount {
    pub stage: String,
    pub what: String,
    pub tap: Tap,
    /// The stage's input and output, to count exactly when the tap's counts are not.
    pub before: DataFrame,
    pub after: DataFrame,
}

#[derive(Default)]
pub struct SideOutputs {
    pub rejects: Mutex<Vec<StageRejects>>,
    pub counts: Mutex<Vec<StageCount>>,
}

impl SideOutputs {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn take_rejects(&self) -> Vec<StageRejects> {
        self.rejects
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
    pub fn take_counts(&self) -> Vec<StageCount> {
        self.counts
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The refused rows of `df`: every column as text, plus the stage and the reason, then
/// where each row came from when its reader said so (the file and line of
/// `text_scan::FILE`, `LINE` and `RECORD`; its `PROBLEM` is already the reason).
pub fn reject_rows(df: DataFrame, bad: Expr, reason: Expr, stage: &str) -> Result<DataFrame> {
    let origin = [text_scan::FILE, text_scan::LINE, text_scan::RECORD];
    let from_reader = |name: &str| origin.contains(&name) || name == text_scan::PROBLEM;
    let mut select: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .filter(|f| !from_reader(f.name()))
        .map(|f| cast(ident(f.name()), DataType::Utf8).alias(f.name()))
        .collect();
    select.push(lit(stage.to_string()).alias("_reject_stage"));
    select.push(reason.alias("_reject_reason"));
    for name in origin {
        if let Ok(f) = df.schema().field_with_unqualified_name(name) {
            let value = match f.data_type() {
                DataType::UInt64 => ident(name),
                _ => cast(ident(name), DataType::Utf8),
            };
            select.push(value.alias(name));
        }
    }
    df.filter(bad).and_then(|d| d.select(select))
}

/// What a stage does with a row it cannot process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Stop the stream with the stage, the row's values and the reason.
    Fail,
    /// Send the row to the rejects file; the batch goes on without it.
    Reject,
    /// Keep the row with NULL in the stage's output.
    Null,
    /// Keep the row unchanged.
    Skip,
}

impl OnError {
    pub fn name(self) -> &'static str {
        match self {
            OnError::Fail => "fail",
            OnError::Reject => "reject",
            OnError::Null => "null",
            OnError::Skip => "skip",
        }
    }
}

/// Apply a policy to rows flagged `bad` (with `reason`): refuse them into the rejects
/// file, or fail the stream on the first one. `Null`/`Skip` are the stage's business
/// (it computes the row's values accordingly) and leave `df` as it is.
pub fn apply_policy(
    df: DataFrame,
    policy: OnError,
    bad: Expr,
    reason: Expr,
    stage: &str,
    side: &SideOutputs,
) -> Result<DataFrame> {
    match policy {
        OnError::Reject => {
            let tap = Tap::new(stage);
            let rows = reject_rows(df.clone(), bad.clone(), reason, stage)?;
            let kept = tap.apply(df, bad.clone(), bad.not())?;
            if let Ok(mut v) = side.rejects.lock() {
                v.push(StageRejects {
                    stage: stage.to_string(),
                    rows,
                    tap,
                });
            }
            Ok(kept)
        }
        OnError::Fail => df.filter(fail_on(bad, reason, stage)),
        OnError::Null | OnError::Skip => Ok(df),
    }
}

/// Remove rows deliberately (a filter), counting them for the summary.
pub fn remove_rows(df: DataFrame, remove: Expr, what: &str, stage: &str, side: &SideOutputs) -> Result<DataFrame> {
    let tap = Tap::new(stage);
    let removed = remove.is_true();
    let kept = tap.apply(df.clone(), removed.clone(), removed.not())?;
    if let Ok(mut v) = side.counts.lock() {
        v.push(StageCount {
            stage: stage.to_string(),
            what: what.to_string(),
            tap,
            before: df,
            after: kept.clone(),
        });
    }
    Ok(kept)
}

/// `billflow_fail(bad, reason, stage)`: true for every row, or an execution error carrying
/// the first bad row's reason. Volatile, so the optimiser never drops or moves it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FailUdf {
    signature: Signature,
    stage: String,
    /// What the flagged rows are, when they are not the stage's rows (e.g. the pairs of
    /// a join): the message then counts them as such.
    unit: Option<String>,
}

impl ScalarUDFImpl for FailUdf {
    fn name(&self) -> &str {
        "billflow_fail"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let bad = args.args[0].to_array(n)?;
        let bad = bad.as_boolean();
        if bad.true_count() > 0 {
            let reason = arrow::compute::cast(&args.args[1].to_array(n)?, &DataType::Utf8)?;
            let reason = reason.as_string::<i32>();
            let first = (0..n).find(|i| bad.is_valid(*i) && bad.value(*i)).unwrap_or(0);
            let why = if reason.is_valid(first) {
                reason.value(first).to_string()
            } else {
                "no reason given".into()
            };
            let count = bad.true_count();
            return Err(DataFusionError::Execution(match &self.unit {
                None => format!(
                    "stage `{}` refused a row ({count} in this batch of {n}): {why}",
                    self.stage
                ),
                Some(unit) => format!(
                    "stage `{}` refused {unit} ({count} of the {n} in this batch): {why}",
                    self.stage
                ),
            }));
        }
        Ok(ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Boolean(Some(
            true,
        ))))
    }
}

pub fn fail_on(bad: Expr, reason: Expr, stage: &str) -> Expr {
    fail_on_each(bad, reason, stage, None)
}

/// [`fail_on`] over rows that are not the stage's rows: `unit` says what one is (e.g.
/// "a (usage group, price band) pair"), so the message does not count them as rows.
pub fn fail_on_each(bad: Expr, reason: Expr, stage: &str, unit: Option<&str>) -> Expr {
    // The reason only where the row is bad: CASE evaluates its branch on those rows alone,
    // so a passing batch never builds the message strings.
    let bad = bad.is_true();
    let reason = cast(reason, DataType::Utf8);
    let reason = datafusion::logical_expr::when(bad.clone(), reason.clone())
        .otherwise(lit(datafusion::scalar::ScalarValue::Utf8(None)))
        .unwrap_or(reason);
    ScalarUDF::new_from_impl(FailUdf {
        signature: Signature::exact(vec![DataType::Boolean, DataType::Utf8], Volatility::Volatile),
        stage: stage.to_string(),
        unit: unit.map(str::to_string),
    })
    .call(vec![bad, reason])
}
