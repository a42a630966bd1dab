//! A counting checkpoint: a plan node that, in one vectorised pass, counts the rows it
//! sees, the rows a `refused` predicate flags and the rows a `keep` predicate keeps, and
//! passes on the kept rows. The engine tells from its counts how many rows came in, how
//! many a stage removed, and whether a second pass (over the refused rows only) is needed
//! to write a rejects file.
//!
//! Why a node of its own rather than a filter: DataFusion's optimisers move filters. They
//! push them through joins (even to the other side, by join-key equivalence), merge them
//! with their neighbours and evaluate one conjunct only on the rows an earlier one kept.
//! Counts taken inside a filter then count the wrong rows. A user-defined logical node is
//! opaque to filter pushdown (no predicate passes through it, none is taken out of it), and
//! its physical operator declines every pushdown, so what it counts is exactly its input.
//! It keeps its input's partitioning and order, and asks its input only for the columns its
//! parent and its predicates need, so projections still reach the scan below it.
//!
//! A plan may read the checked table more than once (rating reads its input for the
//! charges, the shares and the lines; a rejects file reads it again), and a consumer may
//! stop reading early (a limit). So counts are kept per physical checkpoint, and the first
//! one whose every partition was read to the end gives the tap's exact counts.

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use datafusion::common::{DFSchemaRef, internal_err};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;

use super::operator::{BatchFn, BatchNode, PartitionCountdown};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Rows seen, flagged as refused, and kept.
#[derive(Debug, Default)]
pub struct Counts {
    pub rows: AtomicU64,
    pub flagged: AtomicU64,
    pub kept: AtomicU64,
}

impl Counts {
    fn add(&self, rows: u64, flagged: u64, kept: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.flagged.fetch_add(flagged, Ordering::Relaxed);
        self.kept.fetch_add(kept, Ordering::Relaxed);
    }
    fn snapshot(&self) -> Scan {
        Scan {
            rows: self.rows.load(Ordering::Relaxed),
            flagged: self.flagged.load(Ordering::Relaxed),
            kept: self.kept.load(Ordering::Relaxed),
        }
    }
}

/// What one complete read of the checked table counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    pub rows: u64,
    pub flagged: u64,
    pub kept: u64,
}

/// A tap's counts: over everything its checkpoints saw, and those of the first complete
/// read (every partition of one physical checkpoint read to its end).
#[derive(Debug, Default)]
pub struct TapCounts {
    total: Counts,
    complete: std::sync::Mutex<Option<Scan>>,
    /// What to total over the kept rows, if anything, and the first complete read's totals.
    totals: Option<TotalsSpec>,
    complete_totals: std::sync::Mutex<Option<KeptTotals>>,
}

/// The kept rows totalled per group: the number of rows and the exact sum of each decimal
/// column (unscaled, in the column's own scale), per value of a grouping column (`None`
/// when there is none).
pub type KeptTotals = std::collections::BTreeMap<Option<String>, GroupTotals>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupTotals {
    pub rows: u64,
    /// In the order of [`TotalsSpec::decimals`].
    pub sums: Vec<i128>,
}

/// What a checkpoint totals over the rows it keeps: the sums of these decimal columns,
/// grouped by the values of `by` (a string column) if given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TotalsSpec {
    pub by: Option<String>,
    pub decimals: Vec<String>,
}

/// One physical checkpoint's own counts, and how many of its partitions are still reading.
#[derive(Debug)]
struct Reading {
    counts: Counts,
    totals: std::sync::Mutex<Result<KeptTotals, String>>,
    ended: PartitionCountdown,
}

/// The counts of one checkpoint, and the handle to place it in a plan.
#[derive(Clone, Debug)]
pub struct Tap {
    name: String,
    counts: Arc<TapCounts>,
}

impl Tap {
    pub fn new(name: &str) -> Self {
        Tap {
            name: format!("{name}#{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            counts: Arc::new(TapCounts::default()),
        }
    }

    /// A tap that also totals the rows it keeps ([`Tap::totals`]): so that what a run read
    /// of an input is accounted for in the same pass that reads it. Its checkpoints ask
    /// their input for the totalled columns even where nothing above them needs them.
    pub fn totalling(name: &str, spec: TotalsSpec) -> Self {
        Tap {
            name: format!("{name}#{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            counts: Arc::new(TapCounts {
                totals: Some(spec),
                ..TapCounts::default()
            }),
        }
    }

    /// The totals of the kept rows of a complete read, for a tap made by
    /// [`Tap::totalling`]; `None` when no read was complete (or a total overflowed).
    pub fn totals(&self) -> Option<KeptTotals> {
        let mut totals = self.counts.complete_totals.lock().ok().and_then(|t| t.clone())?;
        // Ungrouped totals always have their one group, zero when no row was kept.
        if let Some(spec) = self.counts.totals.as_ref().filter(|s| s.by.is_none()) {
            totals.entry(None).or_insert_with(|| GroupTotals {
                rows: 0,
                sums: vec![0; spec.decimals.len()],
            });
        }
        Some(totals)
    }

    /// `df` through this checkpoint: counts every row, the rows where `refused` is true,
    /// and keeps the rows where `keep` is true (NULL: not kept).
    pub fn apply(&self, df: DataFrame, refused: Expr, keep: Expr) -> Result<DataFrame> {
        let (state, input) = df.into_parts();
        let node = Checkpoint {
            name: self.name.clone(),
            schema: input.schema().clone(),
            input,
            refused,
            keep,
            counts: self.counts.clone(),
        };
        Ok(DataFrame::new(
            state,
            LogicalPlan::Extension(Extension { node: Arc::new(node) }),
        ))
    }

    /// The counts of a complete read of the checked table: every row of it went through
    /// one physical checkpoint of this tap, read to its end. Several reads of the same
    /// table (a plan that reads it twice, the rejects written later) count the same rows,
    /// so any complete one is exact. `None` when no read was complete (a consumer stopped
    /// early): the engine then counts again.
    pub fn complete(&self) -> Option<Scan> {
        self.counts.complete.lock().ok().and_then(|c| *c)
    }

    /// Everything its checkpoints saw, over all reads (for plan displays and tests).
    pub fn seen(&self) -> Scan {
        self.counts.total.snapshot()
    }
}

/// Whether `plan` is a checkpoint's node (only a stream's rows pass checkpoints).
pub fn is_checkpoint(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(e) if e.node.as_any().is::<Checkpoint>())
}

/// The logical node.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    name: String,
    input: LogicalPlan,
    schema: DFSchemaRef,
    refused: Expr,
    keep: Expr,
    counts: Arc<TapCounts>,
}

impl PartialEq for Checkpoint {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.counts, &other.counts)
            && self.input == other.input
            && self.refused == other.refused
            && self.keep == other.keep
    }
}
impl Eq for Checkpoint {}
impl PartialOrd for Checkpoint {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        // Two checkpoints are never interchangeable: no order but identity.
        (self == other).then_some(CmpOrdering::Equal)
    }
}
impl Hash for Checkpoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        (Arc::as_ptr(&self.counts) as usize).hash(state);
    }
}

impl BatchNode for Checkpoint {
    fn batch_fn(
        &self,
        input: &Arc<dyn ExecutionPlan>,
        expr: &dyn Fn(&Expr) -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn BatchFn>> {
        Ok(Arc::new(CheckpointFn {
            name: self.name.clone(),
            refused: expr(&self.refused)?,
            keep: expr(&self.keep)?,
            counts: self.counts.clone(),
            reading: reading(input),
        }))
    }
}

impl UserDefinedLogicalNodeCore for Checkpoint {
    fn name(&self) -> &str {
        "Checkpoint"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![self.refused.clone(), self.keep.clone()]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Checkpoint {}: refused={}, keep={}",
            self.name, self.refused, self.keep
        )
    }
    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let (Some(input), Some(keep), Some(refused)) = (inputs.pop(), exprs.pop(), exprs.pop()) else {
            return internal_err!("Checkpoint takes one input and two expressions");
        };
        Ok(Checkpoint {
            name: self.name.clone(),
            schema: input.schema().clone(),
            input,
            refused,
            keep,
            counts: self.counts.clone(),
        })
    }
    /// Like a filter: the parent's columns (the predicates' are added by the optimiser),
    /// and the columns it totals.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let mut needed = output_columns.to_vec();
        if let Some(spec) = &self.counts.totals {
            for name in spec.by.iter().chain(&spec.decimals) {
                let i = self.schema.index_of_column_by_name(None, name)?;
                if !needed.contains(&i) {
                    needed.push(i);
                }
            }
            needed.sort_unstable();
        }
        Some(vec![needed])
    }
    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

/// What the physical operator does to each batch.
#[derive(Debug)]
struct CheckpointFn {
    name: String,
    refused: Arc<dyn PhysicalExpr>,
    keep: Arc<dyn PhysicalExpr>,
    counts: Arc<TapCounts>,
    reading: Arc<Reading>,
}

fn reading(input: &Arc<dyn ExecutionPlan>) -> Arc<Reading> {
    Arc::new(Reading {
        counts: Counts::default(),
        totals: std::sync::Mutex::new(Ok(KeptTotals::new())),
        ended: PartitionCountdown::new(input),
    })
}

impl BatchFn for CheckpointFn {
    fn name(&self) -> &'static str {
        "CheckpointExec"
    }
    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let c = self.reading.counts.snapshot();
        write!(
            f,
            "CheckpointExec: {} refused={} keep={} (rows={}, refused={}, kept={})",
            self.name, self.refused, self.keep, c.rows, c.flagged, c.kept,
        )
    }
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.refused, &self.keep]
    }
    /// The tap is the same; this physical checkpoint's own reading starts afresh.
    fn renew(&self, input: &Arc<dyn ExecutionPlan>) -> Arc<dyn BatchFn> {
        Arc::new(CheckpointFn {
            name: self.name.clone(),
            refused: self.refused.clone(),
            keep: self.keep.clone(),
            counts: self.counts.clone(),
            reading: reading(input),
        })
    }
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let (out, scan) = pass(batch, self.refused.as_ref(), self.keep.as_ref())?;
        self.reading.counts.add(scan.rows, scan.flagged, scan.kept);
        self.counts.total.add(scan.rows, scan.flagged, scan.kept);
        if let Some(spec) = &self.counts.totals
            && out.num_rows() > 0
        {
            let totals = totals_of(&out, spec)?;
            if let Ok(mut acc) = self.reading.totals.lock() {
                add_totals(&mut acc, totals);
            }
        }
        Ok(out)
    }
    fn finish(&self) -> Result<Option<RecordBatch>> {
        if self.reading.ended.last_ended() {
            if let Ok(mut complete) = self.counts.complete.lock() {
                complete.get_or_insert(self.reading.counts.snapshot());
            }
            if self.counts.totals.is_some()
                && let (Ok(mut complete), Ok(read)) = (self.counts.complete_totals.lock(), self.reading.totals.lock())
                && let Ok(read) = &*read
            {
                complete.get_or_insert_with(|| read.clone());
            }
        }
        Ok(None)
    }
}

/// One batch through the checkpoint: the kept rows, and what was counted.
fn pass(batch: &RecordBatch, refused: &dyn PhysicalExpr, keep: &dyn PhysicalExpr) -> Result<(RecordBatch, Scan)> {
    let n = batch.num_rows();
    let refused = refused.evaluate(batch)?.into_array(n)?;
    let flagged = refused.as_boolean().true_count() as u64;
    let keep = keep.evaluate(batch)?.into_array(n)?;
    let keep = keep.as_boolean();
    let kept = keep.true_count();
    let scan = Scan {
        rows: n as u64,
        flagged,
        kept: kept as u64,
    };
    if kept == n && keep.null_count() == 0 {
        return Ok((batch.clone(), scan));
    }
    Ok((arrow::compute::filter_record_batch(batch, keep)?, scan))
}

/// The rows and decimal sums of `batch` per value of the spec's `by` column: one group
/// when the column holds one value (as it does in a batch read from one organisation's
/// file), else the rows sorted by it and cut where it changes.
fn totals_of(batch: &RecordBatch, spec: &TotalsSpec) -> Result<KeptTotals> {
    use arrow::datatypes::{DataType, Decimal128Type};
    let sums_of = |b: &RecordBatch| -> Result<GroupTotals> {
        let mut sums = Vec::with_capacity(spec.decimals.len());
        for name in &spec.decimals {
            let column = b.column_by_name(name).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!("totalled column {name} is not read"))
            })?;
            let values = column.as_primitive_opt::<Decimal128Type>().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!("totalled column {name} is not a decimal"))
            })?;
            sums.push(arrow::compute::sum_checked(values)?.unwrap_or(0));
        }
        Ok(GroupTotals {
            rows: b.num_rows() as u64,
            sums,
        })
    };
    let mut out = KeptTotals::new();
    let Some(by) = &spec.by else {
        out.insert(None, sums_of(batch)?);
        return Ok(out);
    };
    let keys = batch
        .column_by_name(by)
        .ok_or_else(|| datafusion::error::DataFusionError::Internal(format!("grouping column {by} is not read")))?;
    let keys = arrow::compute::cast(keys, &DataType::Utf8)?;
    let first = arrow::array::Scalar::new(keys.slice(0, 1));
    let same = arrow::compute::kernels::cmp::not_distinct(&keys, &first)?;
    let key_of = |k: &dyn Array, i: usize| k.is_valid(i).then(|| k.as_string::<i32>().value(i).to_string());
    if same.true_count() == keys.len() {
        out.insert(Some(key_of(&keys, 0).unwrap_or_default()), sums_of(batch)?);
        return Ok(out);
    }
    let order = arrow::compute::sort_to_indices(&keys, None, None)?;
    let sorted = arrow::compute::take_record_batch(batch, &order)?;
    let sorted_keys = arrow::compute::take(&keys, &order, None)?;
    for range in arrow::compute::partition(std::slice::from_ref(&sorted_keys))?.ranges() {
        // Sorted, so each range has a value of its own.
        let key = key_of(&sorted_keys, range.start).unwrap_or_default();
        out.insert(Some(key), sums_of(&sorted.slice(range.start, range.end - range.start))?);
    }
    Ok(out)
}

/// `more` added into `into`, exactly: an overflow leaves the error (no totals, so the
/// engine reads the input again to account for it).
fn merge(into: &mut KeptTotals, more: KeptTotals) -> std::result::Result<(), String> {
    for (key, g) in more {
        let t = into.entry(key).or_insert_with(|| GroupTotals {
            rows: 0,
            sums: vec![0; g.sums.len()],
        });
        t.rows += g.rows;
        for (a, b) in t.sums.iter_mut().zip(g.sums) {
            *a = a.checked_add(b).ok_or("a total overflows decimal(38)")?;
        }
    }
    Ok(())
}

fn add_totals(acc: &mut std::result::Result<KeptTotals, String>, more: KeptTotals) {
    if let Ok(into) = acc
        && let Err(e) = merge(into, more)
    {
        *acc = Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::*;

    fn session() -> SessionContext {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(Arc::new(crate::engine::session::Planner))
            .build();
        SessionContext::new_with_state(state)
    }

    #[tokio::test]
    async fn counts_every_row_even_when_filters_sit_above_and_below() {
        let ctx = session();
        let df = ctx
            .sql("SELECT * FROM (VALUES (1), (2), (3), (4), (5)) AS t(x)")
            .await
            .unwrap();
        let tap = Tap::new("test");
        // Refuse x > 3, keep x <= 2 (x = 3 is neither: another period, say). The filters
        // above and below must not be merged into the checkpoint or moved across it.
        let kept = tap
            .apply(
                df.filter(col("x").lt(lit(100))).unwrap(),
                col("x").gt(lit(3)),
                col("x").lt_eq(lit(2)),
            )
            .unwrap()
            .filter(col("x").gt(lit(1)))
            .unwrap();
        assert_eq!(tap.complete(), None, "nothing read yet");
        let rows = kept.clone().collect().await.unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        let exact = Scan {
            rows: 5,
            flagged: 2,
            kept: 2,
        };
        assert_eq!(tap.complete(), Some(exact));
        // Read again (as a rejects file would): the complete read's counts stand, the
        // totals double.
        kept.collect().await.unwrap();
        assert_eq!(tap.complete(), Some(exact));
        assert_eq!(tap.seen().rows, 10);
    }

    #[tokio::test]
    async fn a_filter_on_a_join_key_is_not_moved_across_the_checkpoint() {
        let ctx = session();
        let stream = ctx
            .sql("SELECT * FROM (VALUES ('a', 1), ('b', 2), ('z', 3)) AS s(k, v)")
            .await
            .unwrap();
        let reference = ctx
            .sql("SELECT * FROM (VALUES ('a', 10), ('b', 20), ('z', 30)) AS r(rk, w)")
            .await
            .unwrap();
        let joined = reference.join(stream, JoinType::Right, &["rk"], &["k"], None).unwrap();
        let tap = Tap::new("org");
        let bad = col("k").in_list(vec![lit("a"), lit("b")], true);
        let out = tap.apply(joined, bad.clone(), bad.not()).unwrap();
        let rows = out.collect().await.unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(
            tap.complete(),
            Some(Scan {
                rows: 3,
                flagged: 1,
                kept: 2
            })
        );
    }

    #[tokio::test]
    async fn a_totalling_tap_sums_the_kept_rows_per_group_even_of_a_column_nothing_above_reads() {
        let ctx = session();
        // Two record batches: `b` is one batch of its own, the other has two organisations.
        let df = ctx
            .sql(
                "SELECT org, CAST(amount AS DECIMAL(10, 2)) AS amount FROM (VALUES \
                 ('a', 1.25), ('b', 2.50), ('a', 3.00), ('c', 9.99)) AS t(org, amount) \
                 UNION ALL SELECT 'b', CAST(-0.75 AS DECIMAL(10, 2))",
            )
            .await
            .unwrap();
        let spec = TotalsSpec {
            by: Some("org".into()),
            decimals: vec!["amount".into()],
        };
        let tap = Tap::totalling("input", spec);
        let refused = col("org").eq(lit("c"));
        let out = tap
            .apply(df, refused.clone(), refused.not())
            .unwrap()
            .select(vec![col("org")])
            .unwrap();
        assert_eq!(tap.totals(), None, "nothing read yet");
        let rows = out.collect().await.unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        // a: 1.25 + 3.00 = 4.25 over 2 rows; b: 2.50 - 0.75 = 1.75 over 2; c refused.
        let group = |rows, sum| GroupTotals { rows, sums: vec![sum] };
        let want = KeptTotals::from([
            (Some("a".to_string()), group(2, 425)),
            (Some("b".to_string()), group(2, 175)),
        ]);
        assert_eq!(tap.totals(), Some(want));
    }

    #[tokio::test]
    async fn a_read_stopped_early_is_not_complete() {
        let ctx = session();
        let df = ctx
            .sql("SELECT * FROM generate_series(1, 100000) AS t(x)")
            .await
            .unwrap();
        let tap = Tap::new("limited");
        let out = tap.apply(df, lit(false), lit(true)).unwrap().limit(0, Some(3)).unwrap();
        let rows = out.collect().await.unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(tap.complete(), None, "{:?}", tap.seen());
    }

    #[tokio::test]
    async fn a_totalling_tap_read_stopped_early_has_no_totals() {
        let ctx = session();
        let df = ctx
            .sql("SELECT CAST(x AS DECIMAL(20, 0)) AS x FROM generate_series(1, 100000) AS t(x)")
            .await
            .unwrap();
        let spec = TotalsSpec {
            by: None,
            decimals: vec!["x".into()],
        };
        let tap = Tap::totalling("limited", spec);
        let df_again = df.clone();
        let out = tap.apply(df, lit(false), lit(true)).unwrap().limit(0, Some(3)).unwrap();
        out.collect().await.unwrap();
        assert_eq!(tap.totals(), None);
        // Read to the end, keeping nothing: one group of no rows, summing to zero.
        let out = tap.apply(df_again, lit(false), lit(false)).unwrap();
        out.collect().await.unwrap();
        let none = GroupTotals { rows: 0, sums: vec![0] };
        assert_eq!(tap.totals(), Some(KeptTotals::from([(None, none)])));
    }
}
