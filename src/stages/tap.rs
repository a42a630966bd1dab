//! A counting tap: a volatile scalar function `tap(refused, keep)` that returns `keep` and
//! counts, per record batch, the rows it saw, the rows refused and the rows kept. The engine
//! filters on it: one vectorised pass both drops rows from the output and tells whether a
//! second pass (only over the refused rows) is needed to write the rejects file.
//!
//! A tap must see every row, so it is always the lowest filter of its plan: DataFusion
//! merges stacked filters child-first and may skip evaluating later conjuncts on rows an
//! earlier one already decided (AND short-circuit / pre-selection).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

static NEXT: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default)]
pub struct Counts {
    pub rows: AtomicU64,
    pub flagged: AtomicU64,
    pub kept: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct Tap {
    name: String,
    signature: Signature,
    pub counts: Arc<Counts>,
}

impl PartialEq for Tap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.counts, &other.counts)
    }
}
impl Eq for Tap {}
impl Hash for Tap {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        (Arc::as_ptr(&self.counts) as usize).hash(state);
    }
}

impl Tap {
    pub fn new(name: &str) -> Self {
        Tap {
            // Unique per tap, so the engine can find it in a plan (see `Tap::exact_in`).
            name: format!(
                "billflow_tap_{}_{}",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            // Volatile: never folded, never pushed into a scan, evaluated once per row.
            signature: Signature::exact(vec![DataType::Boolean, DataType::Boolean], Volatility::Volatile),
            counts: Arc::new(Counts::default()),
        }
    }

    /// `tap(refused, keep)` as an expression: filter on it to keep the `keep` rows.
    pub fn call(&self, refused: Expr, keep: Expr) -> Expr {
        ScalarUDF::new_from_impl(self.clone()).call(vec![refused, keep])
    }

    /// Whether this tap's counts are exact for `plan`: it stands in exactly one filter,
    /// alone. A plan that reads the tapped table twice runs the tap twice; and when the
    /// optimiser merges another predicate into the tap's filter, it may evaluate the tap
    /// only on the rows that predicate keeps.
    pub fn exact_in(&self, plan: &datafusion::logical_expr::LogicalPlan) -> bool {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::LogicalPlan;
        use datafusion::logical_expr::utils::split_conjunction;
        let call = format!("{}(", self.name);
        let mut filters = 0;
        let mut alone = true;
        let mut elsewhere = false;
        let _ = plan.apply(|node| {
            match node {
                LogicalPlan::Filter(f) => {
                    let parts = split_conjunction(&f.predicate);
                    if parts.iter().any(|p| p.to_string().contains(&call)) {
                        filters += 1;
                        alone &= parts.len() == 1;
                    }
                }
                other => {
                    elsewhere |= other.expressions().iter().any(|e| e.to_string().contains(&call));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        filters == 1 && alone && !elsewhere
    }

    pub fn rows(&self) -> u64 {
        self.counts.rows.load(Ordering::Relaxed)
    }
    pub fn flagged(&self) -> u64 {
        self.counts.flagged.load(Ordering::Relaxed)
    }
    pub fn kept(&self) -> u64 {
        self.counts.kept.load(Ordering::Relaxed)
    }
}

impl ScalarUDFImpl for Tap {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows as u64;
        self.counts.rows.fetch_add(n, Ordering::Relaxed);
        let count = |v: &ColumnarValue| match v {
            ColumnarValue::Array(a) => a.as_boolean().true_count() as u64,
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => n,
            ColumnarValue::Scalar(_) => 0,
        };
        let mut it = args.args.into_iter();
        let refused = it
            .next()
            .unwrap_or(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
        let keep = it
            .next()
            .unwrap_or(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))));
        self.counts.flagged.fetch_add(count(&refused), Ordering::Relaxed);
        self.counts.kept.fetch_add(count(&keep), Ordering::Relaxed);
        Ok(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::*;

    #[tokio::test]
    async fn counts_rows_and_flags_in_one_pass() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT * FROM (VALUES (1), (2), (3), (4), (5)) AS t(x)")
            .await
            .unwrap();
        let tap = Tap::new("test");
        // Refuse x > 3, keep x <= 2 (x = 3 is neither: another period, say).
        let kept = df
            .filter(col("x").lt(lit(100)))
            .unwrap()
            .filter(tap.call(col("x").gt(lit(3)), col("x").lt_eq(lit(2))))
            .unwrap()
            .filter(col("x").gt(lit(1)))
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        assert_eq!(tap.rows(), 5);
        assert_eq!(tap.flagged(), 2);
        assert_eq!(tap.kept(), 2);
    }
}
