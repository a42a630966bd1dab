//! Giving each group's rounding residue to exactly one of its lines, in one streaming pass.
//!
//! Penny reconciliation (`money::distribute_residue`) knows, per group, the residue (the
//! target minus the sum of the rounded lines) and which lines may take it: the candidates,
//! those equal to the group's first line in the reconciliation order on every sort key.
//! Usually one line per group is a candidate; when several tie on every key, any one of them
//! may take the residue, but only one. A ranking window would sort every line to pick it.
//! This operator instead lets the first candidate of each group that reaches it take the
//! residue: candidates are found with vectorised kernels, and only they (about one per
//! group) are looked up in a set of the groups already served, shared by the partitions of
//! one execution. The column is then adjusted with vectorised kernels.

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchemaRef, DataFusionError, internal_err};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::DataFrame;

use super::operator::{BatchFn, BatchNode, PartitionCountdown};

/// `df` with `residue` added to `column` on one `candidate` line per group (`group`).
/// `residue` must already have `column`'s type.
pub fn assign(df: DataFrame, column: &str, group: Vec<Expr>, candidate: Expr, residue: Expr) -> Result<DataFrame> {
    node(df, column, group, candidate, residue, None, Rule::Given)
}

/// How a [`ResidueNode`] knows each group's residue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rule {
    /// Its `amount` expression is the residue itself (the groups were summed before).
    Given,
    /// Its `amount` is the group's target: the node sums the group's lines itself, holding
    /// one line per group back until its input ends ([`hold`]).
    Hold,
}

fn node(
    df: DataFrame,
    column: &str,
    group: Vec<Expr>,
    candidate: Expr,
    amount: Expr,
    lines: Option<Expr>,
    rule: Rule,
) -> Result<DataFrame> {
    let (state, input) = df.into_parts();
    let index = input
        .schema()
        .index_of_column_by_name(None, column)
        .ok_or_else(|| DataFusionError::Plan(format!("residue: no column `{column}`")))?;
    let node = ResidueNode {
        schema: input.schema().clone(),
        input,
        column: index,
        group,
        candidate,
        amount,
        lines,
        rule,
    };
    Ok(DataFrame::new(
        state,
        LogicalPlan::Extension(Extension { node: Arc::new(node) }),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResidueNode {
    input: LogicalPlan,
    schema: DFSchemaRef,
    /// Index of the adjusted column in the input (and output) schema.
    column: usize,
    group: Vec<Expr>,
    candidate: Expr,
    /// The residue (`Rule::Given`) or the group's target (`Rule::Hold`).
    amount: Expr,
    /// The number of lines in the line's group, when known (`Rule::Hold`).
    lines: Option<Expr>,
    rule: Rule,
}

impl PartialOrd for ResidueNode {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        (self == other).then_some(CmpOrdering::Equal)
    }
}

impl BatchNode for ResidueNode {
    fn batch_fn(
        &self,
        input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        expr: &dyn Fn(&Expr) -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn BatchFn>> {
        let group: Vec<Arc<dyn PhysicalExpr>> = self.group.iter().map(expr).collect::<Result<_>>()?;
        let schema = input.schema();
        if self.rule == Rule::Hold {
            let lines = self.lines.as_ref().map(expr).transpose()?;
            return hold_fn(
                self.column,
                group,
                expr(&self.candidate)?,
                expr(&self.amount)?,
                lines,
                input,
            );
        }
        let fields = group
            .iter()
            .map(|g| g.data_type(&schema).map(SortField::new))
            .collect::<Result<_>>()?;
        let f = ResidueFn {
            column: self.column,
            group,
            fields,
            candidate: expr(&self.candidate)?,
            residue: expr(&self.amount)?,
            served: Arc::new(Mutex::new(HashSet::new())),
            ended: PartitionCountdown::new(input),
        };
        Ok(f.renew(input))
    }
}

impl UserDefinedLogicalNodeCore for ResidueNode {
    fn name(&self) -> &str {
        match self.rule {
            Rule::Given => "AssignResidue",
            Rule::Hold => "HoldResidue",
        }
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        let mut e = self.group.clone();
        e.push(self.candidate.clone());
        e.push(self.amount.clone());
        e.extend(self.lines.clone());
        e
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.rule {
            Rule::Given => write!(
                f,
                "AssignResidue: column #{} + {} on the first of {} per group",
                self.column, self.amount, self.candidate
            ),
            Rule::Hold => {
                write!(
                    f,
                    "HoldResidue: column #{} reaches {} per group on the first of {}",
                    self.column, self.amount, self.candidate
                )?;
                released_at_once(f, self.lines.as_ref())
            }
        }
    }
    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let lines = match self.lines {
            Some(_) => Some(
                exprs
                    .pop()
                    .ok_or_else(|| DataFusionError::Internal("HoldResidue lost its line count".into()))?,
            ),
            None => None,
        };
        let (Some(input), Some(amount), Some(candidate)) = (inputs.pop(), exprs.pop(), exprs.pop()) else {
            return internal_err!("{} takes one input, its groups, a candidate and an amount", self.name());
        };
        // The adjusted column keeps its name; find it again in the (possibly pruned) input.
        let name = self.schema.field(self.column).name().clone();
        let column = input
            .schema()
            .index_of_column_by_name(None, &name)
            .ok_or_else(|| DataFusionError::Internal(format!("{} lost column `{name}`", self.name())))?;
        Ok(ResidueNode {
            schema: input.schema().clone(),
            input,
            column,
            group: exprs,
            candidate,
            amount,
            lines,
            rule: self.rule,
        })
    }
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // The parent's columns, the adjusted one, and (added by the optimiser) those of the
        // expressions.
        let mut cols = output_columns.to_vec();
        if !cols.contains(&self.column) {
            cols.push(self.column);
            cols.sort_unstable();
        }
        Some(vec![cols])
    }
    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

/// The groups that have had their residue, for one execution of the plan.
type Served = Arc<Mutex<HashSet<Box<[u8]>>>>;

/// What the physical operator does to each batch.
#[derive(Debug)]
struct ResidueFn {
    column: usize,
    group: Vec<Arc<dyn PhysicalExpr>>,
    /// The group columns' types, for their comparable row form.
    fields: Vec<SortField>,
    candidate: Arc<dyn PhysicalExpr>,
    residue: Arc<dyn PhysicalExpr>,
    served: Served,
    /// When the last partition of an execution ends, the served groups are forgotten, so
    /// the plan may be run again.
    ended: PartitionCountdown,
}

impl BatchFn for ResidueFn {
    fn name(&self) -> &'static str {
        "AssignResidueExec"
    }
    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AssignResidueExec: column #{} + {} on the first of {} per group",
            self.column, self.residue, self.candidate
        )
    }
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.group.iter().chain([&self.candidate, &self.residue]).collect()
    }
    fn renew(&self, input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Arc<dyn BatchFn> {
        Arc::new(ResidueFn {
            column: self.column,
            group: self.group.clone(),
            fields: self.fields.clone(),
            candidate: self.candidate.clone(),
            residue: self.residue.clone(),
            served: Arc::new(Mutex::new(HashSet::new())),
            ended: PartitionCountdown::new(input),
        })
    }
    fn finish(&self) -> Result<Option<RecordBatch>> {
        if self.ended.last_ended() {
            self.served
                .lock()
                .map_err(|_| DataFusionError::Execution("residue bookkeeping poisoned".into()))?
                .clear();
        }
        Ok(None)
    }
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let converter = RowConverter::new(self.fields.clone())?;
        assign_batch(
            batch,
            self.column,
            &self.group,
            self.candidate.as_ref(),
            self.residue.as_ref(),
            &converter,
            &self.served,
        )
    }
}

fn assign_batch(
    batch: &RecordBatch,
    column: usize,
    group: &[Arc<dyn PhysicalExpr>],
    candidate: &dyn PhysicalExpr,
    residue: &dyn PhysicalExpr,
    converter: &RowConverter,
    served: &Served,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let candidates = candidate.evaluate(batch)?.into_array(n)?;
    let candidates = candidates.as_boolean();
    if candidates.true_count() == 0 {
        return Ok(batch.clone());
    }
    // Group keys of the candidate rows only, as comparable bytes.
    let all = arrow::array::UInt32Array::from_iter_values(0..n as u32);
    let take = arrow::compute::filter(&all, candidates)?;
    let take = take.as_primitive::<arrow::datatypes::UInt32Type>().clone();
    let positions = take.values();
    let keys: Vec<ArrayRef> = group
        .iter()
        .map(|g| {
            let a = g.evaluate(batch)?.into_array(n)?;
            Ok(arrow::compute::take(a.as_ref(), &take, None)?)
        })
        .collect::<Result<_>>()?;
    let rows = converter.convert_columns(&keys)?;
    let mut takes = vec![false; n];
    {
        let mut served = served
            .lock()
            .map_err(|_| DataFusionError::Execution("residue bookkeeping poisoned".into()))?;
        for (k, row) in rows.iter().enumerate() {
            if served.insert(row.as_ref().into()) {
                takes[positions[k] as usize] = true;
            }
        }
    }
    let residue = residue.evaluate(batch)?.into_array(n)?;
    add_residue(batch, column, &residue, Some(&BooleanArray::from(takes)))
}

/// `batch` with `residue` added to its `column` (on the rows of `on`; all rows without it),
/// with the column's type kept: an overflow of its precision is an error, never a wrap.
fn add_residue(
    batch: &RecordBatch,
    column: usize,
    residue: &ArrayRef,
    on: Option<&BooleanArray>,
) -> Result<RecordBatch> {
    let current = batch.column(column);
    if residue.data_type() != current.data_type() {
        return internal_err!(
            "residue is {} but the column is {}",
            residue.data_type(),
            current.data_type()
        );
    }
    let adjusted = arrow::compute::kernels::numeric::add(current, &residue).map_err(|e| {
        DataFusionError::Execution(format!(
            "decimal overflow adding a rounding residue to `{}`: {e}",
            batch.schema().field(column).name()
        ))
    })?;
    // Decimal addition widens the precision by a digit: back to the column's type (an
    // overflow of the declared precision is an error, never a wrap).
    let adjusted = arrow::compute::cast_with_options(
        &adjusted,
        current.data_type(),
        &arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        },
    )?;
    let adjusted = match on {
        Some(mask) => arrow::compute::kernels::zip::zip(mask, &adjusted, current)?,
        None => adjusted,
    };
    let mut columns = batch.columns().to_vec();
    columns[column] = adjusted;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// `df` with, per group (`group`), the residue `target - sum(column)` added to `column` on
/// one `candidate` line, in the one pass that reads the lines: each line goes on at once,
/// except the first candidate of each group, which is held back (copied out, one row per
/// group) until every partition has ended; the group's sum is then known, and the held
/// lines come out last, with their residue. `target` must be constant within a group and
/// have `column`'s type. This replaces a pass that sums the lines per group and a join back.
/// Rows held are not counted by the memory pool: one per group, like the groups' charges
/// the rating stage holds.
///
/// With `lines`, each line's group's number of lines, a candidate alone in its group is
/// the whole group: it takes the target at once and is neither looked up nor held. Where
/// most groups have one line (usage summed per group before rating), holding them all
/// would emit nearly every line from the last partition, on one thread.
pub fn hold(
    df: DataFrame,
    column: &str,
    group: Vec<Expr>,
    candidate: Expr,
    target: Expr,
    lines: Option<Expr>,
) -> Result<DataFrame> {
    node(df, column, group, candidate, target, lines, Rule::Hold)
}

/// The batch function of a `HoldResidue` node.
fn hold_fn(
    column: usize,
    group: Vec<Arc<dyn PhysicalExpr>>,
    candidate: Arc<dyn PhysicalExpr>,
    target: Arc<dyn PhysicalExpr>,
    lines: Option<Arc<dyn PhysicalExpr>>,
    input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Result<Arc<dyn BatchFn>> {
    let schema = input.schema();
    let keys = arrow::datatypes::Schema::new(
        group
            .iter()
            .enumerate()
            .map(|(i, g)| {
                Ok(arrow::datatypes::Field::new(
                    format!("k{i}"),
                    g.data_type(&schema)?,
                    true,
                ))
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let f = HoldFn {
        column,
        group,
        keys: Arc::new(keys),
        candidate,
        target,
        lines,
        ended: PartitionCountdown::new(input),
        state: Arc::new(Mutex::new(None)),
    };
    Ok(f.renew(input))
}

/// What one execution of a [`HoldFn`] keeps.
struct HoldState {
    groups: Box<dyn datafusion::physical_plan::aggregates::group_values::GroupValues>,
    /// Per group id: the sum of the column so far, its target, and whether a line is held.
    sums: Vec<i128>,
    targets: Vec<Option<i128>>,
    held: Vec<bool>,
    /// The held lines, and the group id of each, in the order they were held.
    rows: Vec<RecordBatch>,
    row_groups: Vec<u32>,
}

#[derive(Debug)]
struct HoldFn {
    column: usize,
    group: Vec<Arc<dyn PhysicalExpr>>,
    keys: arrow::datatypes::SchemaRef,
    candidate: Arc<dyn PhysicalExpr>,
    target: Arc<dyn PhysicalExpr>,
    lines: Option<Arc<dyn PhysicalExpr>>,
    /// When the last partition of an execution ends, the held lines are emitted and the
    /// state starts afresh.
    ended: PartitionCountdown,
    state: Arc<Mutex<Option<HoldState>>>,
}

impl fmt::Debug for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} groups, {} held", self.sums.len(), self.row_groups.len())
    }
}

impl HoldFn {
    /// The state of an execution that has not started.
    fn fresh_state(&self) -> Option<HoldState> {
        datafusion::physical_plan::aggregates::group_values::new_group_values(
            self.keys.clone(),
            &datafusion::physical_plan::aggregates::order::GroupOrdering::None,
        )
        .map(|groups| HoldState {
            groups,
            sums: Vec::new(),
            targets: Vec::new(),
            held: Vec::new(),
            rows: Vec::new(),
            row_groups: Vec::new(),
        })
        .ok()
    }

    /// The candidate lines alone in their group, if any.
    fn alone(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        let Some(lines) = &self.lines else {
            return Ok(None);
        };
        let n = batch.num_rows();
        let lines = arrow::compute::cast(
            &lines.evaluate(batch)?.into_array(n)?,
            &arrow::datatypes::DataType::Int64,
        )?;
        let one = arrow::array::Int64Array::new_scalar(1);
        let alone = arrow::compute::kernels::cmp::eq(&lines, &one)?;
        let candidates = self.candidate.evaluate(batch)?.into_array(n)?;
        let alone = arrow::compute::and(&alone, candidates.as_boolean())?;
        let alone = match alone.null_count() {
            0 => alone,
            _ => arrow::compute::prep_null_mask_filter(&alone),
        };
        Ok((alone.true_count() > 0).then_some(alone))
    }

    /// Lines that are their whole group: each takes its group's target (a NULL target
    /// leaves the line as it is, as a held line's residue is then zero).
    fn take_targets(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let targets = self.target.evaluate(batch)?.into_array(n)?;
        let current = batch.column(self.column);
        if targets.data_type() != current.data_type() {
            return internal_err!(
                "HoldResidue: the target is {} but the column is {}",
                targets.data_type(),
                current.data_type()
            );
        }
        let known = arrow::compute::is_not_null(&targets)?;
        let mut columns = batch.columns().to_vec();
        columns[self.column] = arrow::compute::kernels::zip::zip(&known, &targets, current)?;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    /// Each line goes on, summed into its group, except the first candidate of each
    /// group, which is held.
    fn pass_or_hold(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let keys: Vec<ArrayRef> = self
            .group
            .iter()
            .map(|g| g.evaluate(batch)?.into_array(n))
            .collect::<Result<_>>()?;
        let candidates = self.candidate.evaluate(batch)?.into_array(n)?;
        let candidates = candidates.as_boolean();
        let values = decimals(batch.column(self.column), "the column")?;
        let targets = decimals(&self.target.evaluate(batch)?.into_array(n)?, "the target")?;
        let mut ids = Vec::with_capacity(n);
        let mut hold = Vec::new();
        {
            let mut guard = self.lock()?;
            let Some(st) = guard.as_mut() else {
                return internal_err!("HoldResidue: no group table");
            };
            st.groups.intern(&keys, &mut ids)?;
            let groups = st.groups.len();
            st.sums.resize(groups, 0);
            st.targets.resize(groups, None);
            st.held.resize(groups, false);
            // The per-group sums, as an aggregate's accumulator keeps them.
            for (i, &g) in ids.iter().enumerate() {
                if values.is_valid(i) {
                    st.sums[g] = st.sums[g]
                        .checked_add(values.value(i))
                        .ok_or_else(|| DataFusionError::Execution("decimal overflow summing a group's lines".into()))?;
                }
                if targets.is_valid(i) {
                    st.targets[g] = Some(targets.value(i));
                }
                if candidates.is_valid(i) && candidates.value(i) && !st.held[g] {
                    st.held[g] = true;
                    hold.push(i as u32);
                    st.row_groups.push(g as u32);
                }
            }
            if !hold.is_empty() {
                let idx = arrow::array::UInt32Array::from(hold.clone());
                st.rows.push(arrow::compute::take_record_batch(batch, &idx)?);
            }
        }
        if hold.is_empty() {
            return Ok(batch.clone());
        }
        let mut keep = vec![true; n];
        for i in &hold {
            keep[*i as usize] = false;
        }
        Ok(arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))?)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<HoldState>>> {
        self.state
            .lock()
            .map_err(|_| DataFusionError::Execution("residue bookkeeping poisoned".into()))
    }
}

fn decimals(a: &ArrayRef, what: &str) -> Result<arrow::array::Decimal128Array> {
    match a.as_primitive_opt::<arrow::datatypes::Decimal128Type>() {
        Some(d) => Ok(d.clone()),
        None => internal_err!("HoldResidue: {what} is {}, not a decimal", a.data_type()),
    }
}

/// The end of `HoldResidue`'s plan text (logical and physical): when a candidate line is
/// released at once rather than held, from its group's line count.
fn released_at_once(f: &mut fmt::Formatter, lines: Option<&impl fmt::Display>) -> fmt::Result {
    match lines {
        Some(lines) => write!(f, ", a candidate at once where {lines} = 1"),
        None => Ok(()),
    }
}

impl BatchFn for HoldFn {
    fn name(&self) -> &'static str {
        "HoldResidueExec"
    }
    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "HoldResidueExec: column #{} reaches {} per group on the first of {}",
            self.column, self.target, self.candidate
        )?;
        released_at_once(f, self.lines.as_ref())
    }
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.group
            .iter()
            .chain([&self.candidate, &self.target])
            .chain(self.lines.as_ref())
            .collect()
    }
    fn renew(&self, input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Arc<dyn BatchFn> {
        let mut f = HoldFn {
            column: self.column,
            group: self.group.clone(),
            keys: self.keys.clone(),
            candidate: self.candidate.clone(),
            target: self.target.clone(),
            lines: self.lines.clone(),
            ended: PartitionCountdown::new(input),
            state: Arc::new(Mutex::new(None)),
        };
        f.state = Arc::new(Mutex::new(f.fresh_state()));
        Arc::new(f)
    }
    fn keeps_rows_in_place(&self) -> bool {
        false
    }
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let Some(alone) = self.alone(batch)? else {
            return self.pass_or_hold(batch);
        };
        let whole = self.take_targets(&arrow::compute::filter_record_batch(batch, &alone)?)?;
        if whole.num_rows() == batch.num_rows() {
            return Ok(whole);
        }
        let rest = self.pass_or_hold(&arrow::compute::filter_record_batch(
            batch,
            &arrow::compute::not(&alone)?,
        )?)?;
        Ok(arrow::compute::concat_batches(&batch.schema(), [&whole, &rest])?)
    }
    fn finish(&self) -> Result<Option<RecordBatch>> {
        if !self.ended.last_ended() {
            return Ok(None);
        }
        // This execution is over; the plan may be run again, from a fresh state.
        let mut guard = self.lock()?;
        let fresh = self.fresh_state();
        let Some(st) = std::mem::replace(&mut *guard, fresh) else {
            return Ok(None);
        };
        drop(guard);
        if st.rows.is_empty() {
            return Ok(None);
        }
        let rows = arrow::compute::concat_batches(&st.rows[0].schema(), &st.rows)?;
        // Each held line's residue: its group's target minus the sum of its lines.
        let residues = st
            .row_groups
            .iter()
            .map(|&g| {
                let g = g as usize;
                st.targets[g].map_or(Ok(0), |t| {
                    t.checked_sub(st.sums[g])
                        .ok_or_else(|| DataFusionError::Execution("decimal overflow in a rounding residue".into()))
                })
            })
            .collect::<Result<Vec<i128>>>()?;
        let residues: ArrayRef = Arc::new(
            arrow::array::Decimal128Array::from(residues).with_data_type(rows.column(self.column).data_type().clone()),
        );
        add_residue(&rows, self.column, &residues, None).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::*;

    type ByGroup = std::collections::BTreeMap<Option<String>, Vec<i128>>;

    /// Two partitions of (g, amount, <third>) rows, in a session with billflow's planner;
    /// `run` gets the table and returns the plan to run; its lines are returned per group.
    async fn two_partitions(
        third: &str,
        p1: (Vec<Option<&str>>, Vec<i128>, Vec<i128>),
        p2: (Vec<Option<&str>>, Vec<i128>, Vec<i128>),
        run: impl FnOnce(DataFrame) -> DataFrame,
    ) -> ByGroup {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_query_planner(Arc::new(crate::engine::session::Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(10, 2), false),
            Field::new(third, DataType::Decimal128(10, 2), false),
        ]));
        let part = |(g, amount, other): (Vec<Option<&str>>, Vec<i128>, Vec<i128>)| {
            let dec = |v: Vec<i128>| Arc::new(Decimal128Array::from(v).with_precision_and_scale(10, 2).unwrap());
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from(g)), dec(amount), dec(other)],
            )
            .unwrap()
        };
        let table =
            datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![part(p1)], vec![part(p2)]]).unwrap();
        // The same physical plan, run twice, gives the same lines: what an execution keeps
        // (groups served, lines held) does not leak into the next.
        let df = run(ctx.read_table(Arc::new(table)).unwrap());
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan.clone(), task.clone())
            .await
            .unwrap();
        let again = datafusion::physical_plan::collect(plan, task).await.unwrap();
        let lines = |b: &[RecordBatch]| {
            let mut v: Vec<String> = arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
                .lines()
                .map(String::from)
                .collect();
            v.sort();
            v
        };
        assert_eq!(lines(&batches), lines(&again), "a second run of the same plan");
        let mut by_group = ByGroup::new();
        for b in &batches {
            let g = b.column(0).as_string::<i32>();
            let a = b.column(1).as_primitive::<arrow::datatypes::Decimal128Type>();
            for i in 0..b.num_rows() {
                by_group
                    .entry(g.is_valid(i).then(|| g.value(i).to_string()))
                    .or_default()
                    .push(a.value(i));
            }
        }
        by_group
    }

    fn sum(by_group: &ByGroup, k: Option<&str>) -> i128 {
        by_group[&k.map(String::from)].iter().sum()
    }

    #[tokio::test]
    async fn one_line_per_group_takes_the_residue_even_when_candidates_tie_across_partitions() {
        // Group a: three tied candidates, two in one partition and one in the other; group
        // b: one candidate; NULL is a group of its own.
        let by_group = two_partitions(
            "residue",
            (
                vec![Some("a"), Some("a"), Some("b")],
                vec![100, 100, 50],
                vec![1, 1, -2],
            ),
            (vec![Some("a"), None, None], vec![100, 7, 7], vec![1, 3, 3]),
            |df| assign(df, "amount", vec![col("g")], col("amount").gt(lit(0)), col("residue")).unwrap(),
        )
        .await;
        assert_eq!(sum(&by_group, Some("a")), 301, "{by_group:?}");
        assert_eq!(sum(&by_group, Some("b")), 48);
        assert_eq!(sum(&by_group, None), 17);
        assert_eq!(
            by_group[&Some("a".to_string())].iter().filter(|v| **v == 101).count(),
            1
        );
    }

    #[tokio::test]
    async fn held_lines_reach_each_groups_target_once_across_partitions() {
        held_lines_reach_each_groups_target(None).await;
    }

    #[tokio::test]
    async fn lines_alone_in_their_group_take_its_target_without_being_held() {
        // b is a candidate alone in its group: it takes its target at once; c is alone but
        // no candidate, so it keeps its value (as a group with no candidate does).
        let lines = when(col("g").eq(lit("a")), lit(3i64))
            .when(col("g").eq(lit("b")), lit(1i64))
            .when(col("g").eq(lit("c")), lit(1i64))
            .otherwise(lit(2i64))
            .unwrap();
        held_lines_reach_each_groups_target(Some(lines)).await;
    }

    async fn held_lines_reach_each_groups_target(lines: Option<Expr>) {
        // Group a: 3 x 1.00 must reach 3.01, three tied candidates over both partitions;
        // b: 0.50 must reach 0.48; NULL: 2 x 0.07 must reach 0.17 (a residue of 0.03);
        // c has no candidate line, so it keeps its -0.05 short of its target of -0.07.
        let by_group = two_partitions(
            "target",
            (
                vec![Some("a"), Some("a"), Some("b"), Some("c")],
                vec![100, 100, 50, -5],
                vec![301, 301, 48, -7],
            ),
            (vec![Some("a"), None, None], vec![100, 7, 7], vec![301, 17, 17]),
            |df| {
                hold(
                    df,
                    "amount",
                    vec![col("g")],
                    col("amount").gt(lit(0)),
                    col("target"),
                    lines,
                )
                .unwrap()
            },
        )
        .await;
        let lines: usize = by_group.values().map(Vec::len).sum();
        assert_eq!(lines, 7, "no line lost or doubled: {by_group:?}");
        assert_eq!(sum(&by_group, Some("a")), 301, "{by_group:?}");
        assert_eq!(sum(&by_group, Some("b")), 48);
        assert_eq!(sum(&by_group, None), 17);
        assert_eq!(sum(&by_group, Some("c")), -5);
        assert_eq!(
            by_group[&Some("a".to_string())].iter().filter(|v| **v == 101).count(),
            1
        );
    }
}
