//! Looking each row of a stream up in a table with at most one row per key: the stream's
//! rows go on as they came, each with the columns of its key's row in the table but those
//! the table's keys are made of (NULL where the table has no such row). It is what a right
//! outer join to a table unique on the join keys gives, without its copy of the stream: a hash join builds its output by gathering (`take`)
//! every column of the probe side, even when each probe row finds one match in order.
//! Here the stream's columns are passed on untouched and only the table's are gathered.
//!
//! The table is built once per execution of the plan, for all partitions of the stream
//! (as a join's small side is), and is accounted in the memory pool. A table with two rows
//! for one key is an error, never a silent choice: the callers reduce their tables to one
//! row per key first.

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, internal_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, ExprSchemable, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore, cast,
};
use datafusion::physical_expr::equivalence::ProjectionMapping;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Distribution, PhysicalExpr};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::DataFrame;
use futures::{StreamExt, TryFutureExt, TryStreamExt};

/// `probe` with the columns of `table` added: for each row of `probe`, those of the row
/// of `table` whose keys equal its own (`on`: pairs of an expression over `probe` and
/// one over `table`, compared as `=`, or as `IS NOT DISTINCT FROM` when `nulls_equal`),
/// NULL when `table` has none. One output row per row of `probe`, in its order and
/// partitions. Keys of different types are compared in their common type.
pub fn lookup(probe: DataFrame, table: DataFrame, on: Vec<(Expr, Expr)>, nulls_equal: bool) -> Result<DataFrame> {
    let (state, probe) = probe.into_parts();
    let (_, table) = table.into_parts();
    let node = LookupNode::try_new(probe, table, on, nulls_equal)?;
    Ok(DataFrame::new(
        state,
        LogicalPlan::Extension(Extension { node: Arc::new(node) }),
    ))
}

/// The logical node: its inputs are the stream (`probe`) and the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupNode {
    probe: LogicalPlan,
    table: LogicalPlan,
    /// (over `probe`, over `table`), of the same type.
    on: Vec<(Expr, Expr)>,
    nulls_equal: bool,
    /// The table's columns in the output: all but those its keys are made of.
    values: Vec<usize>,
    schema: DFSchemaRef,
}

impl PartialOrd for LookupNode {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        (self == other).then_some(CmpOrdering::Equal)
    }
}

impl LookupNode {
    fn try_new(probe: LogicalPlan, table: LogicalPlan, on: Vec<(Expr, Expr)>, nulls_equal: bool) -> Result<Self> {
        if on.is_empty() {
            return plan_err!("a lookup needs at least one key");
        }
        let on = on
            .into_iter()
            .map(|(p, t)| common_type(p, probe.schema(), t, table.schema()))
            .collect::<Result<Vec<_>>>()?;
        // The table's columns but its keys' (the stream has those), NULL for a row whose
        // key the table has not.
        let keys: Vec<&datafusion::common::Column> = on.iter().flat_map(|(_, t)| t.column_refs()).collect();
        let values: Vec<usize> = table
            .schema()
            .iter()
            .enumerate()
            .filter(|(_, (q, f))| {
                !keys
                    .iter()
                    .any(|k| k.name == *f.name() && k.relation.as_ref().is_none_or(|r| Some(r) == *q))
            })
            .map(|(i, _)| i)
            .collect();
        let table_fields: Vec<_> = values
            .iter()
            .map(|&i| {
                let (q, f) = table.schema().qualified_field(i);
                (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true)))
            })
            .collect();
        let table_schema = DFSchema::new_with_metadata(table_fields, Default::default())?;
        let schema = Arc::new(probe.schema().join(&table_schema)?);
        Ok(LookupNode {
            probe,
            table,
            on,
            nulls_equal,
            values,
            schema,
        })
    }
}

/// The key pair cast to the type both compare in.
fn common_type(p: Expr, probe: &DFSchema, t: Expr, table: &DFSchema) -> Result<(Expr, Expr)> {
    let (pt, tt) = (p.get_type(probe)?, t.get_type(table)?);
    if pt == tt {
        return Ok((p, t));
    }
    let Some(common) = datafusion::logical_expr::type_coercion::binary::comparison_coercion(&pt, &tt) else {
        return plan_err!("a lookup cannot compare {p} ({pt}) with {t} ({tt})");
    };
    let to = |e: Expr, ty: &arrow::datatypes::DataType| if *ty == common { e } else { cast(e, common.clone()) };
    Ok((to(p, &pt), to(t, &tt)))
}

impl UserDefinedLogicalNodeCore for LookupNode {
    fn name(&self) -> &str {
        "Lookup"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.probe, &self.table]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    /// The probe's keys, then the table's.
    fn expressions(&self) -> Vec<Expr> {
        let (p, t): (Vec<Expr>, Vec<Expr>) = self.on.iter().cloned().unzip();
        p.into_iter().chain(t).collect()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self.on.iter().map(|(p, t)| format!("{p} = {t}")).collect();
        let eq = if self.nulls_equal { ", nulls equal" } else { "" };
        write!(f, "Lookup: on=[{}]{eq}", on.join(", "))
    }
    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let (Some(table), Some(probe), true, true) = (
            inputs.pop(),
            inputs.pop(),
            inputs.is_empty(),
            exprs.len() == 2 * self.on.len(),
        ) else {
            return internal_err!("Lookup takes two inputs and a pair of expressions per key");
        };
        let table_keys = exprs.split_off(self.on.len());
        LookupNode::try_new(
            probe,
            table,
            exprs.into_iter().zip(table_keys).collect(),
            self.nulls_equal,
        )
    }
    /// The probe's columns the parent needs and the table's (the keys' columns are added by
    /// the optimiser).
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let width = self.probe.schema().fields().len();
        let table = self.table.schema();
        let mut needed = (vec![], vec![]);
        for &i in output_columns {
            if i < width {
                needed.0.push(i);
            } else {
                let (q, f) = self.schema.qualified_field(i);
                needed.1.push(table.index_of_column_by_name(q, f.name())?);
            }
        }
        needed.1.sort_unstable();
        Some(vec![needed.0, needed.1])
    }
    // Filters stay above: DataFusion pushes what passes an extension node into every one
    // of its inputs, and the table's columns are not the stream's.
    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

/// The physical operator.
#[derive(Debug)]
pub struct LookupExec {
    probe: Arc<dyn ExecutionPlan>,
    table: Arc<dyn ExecutionPlan>,
    probe_keys: Vec<Arc<dyn PhysicalExpr>>,
    table_keys: Vec<Arc<dyn PhysicalExpr>>,
    nulls_equal: bool,
    /// The table's columns in the output: all but those its keys are made of.
    values: Vec<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// The table as built by the first partition to need it, for this plan's execution.
    built: Arc<tokio::sync::OnceCell<Arc<Table>>>,
    metrics: ExecutionPlanMetricsSet,
}

/// The table, ready to be probed.
#[derive(Debug)]
struct Table {
    /// Its columns in the output (row `i` of each is the row of key `i`).
    columns: Vec<ArrayRef>,
    index: Index,
    _reservation: MemoryReservation,
}

impl LookupExec {
    fn try_new(
        probe: Arc<dyn ExecutionPlan>,
        table: Arc<dyn ExecutionPlan>,
        probe_keys: Vec<Arc<dyn PhysicalExpr>>,
        table_keys: Vec<Arc<dyn PhysicalExpr>>,
        nulls_equal: bool,
        values: Vec<usize>,
    ) -> Result<Self> {
        let probe_schema = probe.schema();
        let table_schema = table.schema();
        // The physical table has the logical table's columns, in its order.
        if let Some(i) = values.iter().find(|&&i| i >= table_schema.fields().len()) {
            return internal_err!("LookupExec: the table has no column {i}: {table_schema}");
        }
        let mut fields: Vec<Arc<Field>> = probe_schema.fields().iter().cloned().collect();
        fields.extend(
            values
                .iter()
                .map(|&i| Arc::new(table_schema.field(i).clone().with_nullable(true))),
        );
        let schema = Arc::new(Schema::new_with_metadata(fields, probe_schema.metadata().clone()));
        // The probe's columns keep their places: its order, equivalences and partitioning
        // hold for the output as they are, mapped column to column.
        let mapping = ProjectionMapping::try_new(
            probe_schema.fields().iter().enumerate().map(|(i, f)| {
                (
                    Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>,
                    f.name().clone(),
                )
            }),
            &probe_schema,
        )?;
        let input_eq = probe.equivalence_properties();
        let properties = PlanProperties::new(
            input_eq.project(&mapping, schema.clone()),
            probe.output_partitioning().project(&mapping, input_eq),
            probe.pipeline_behavior(),
            probe.boundedness(),
        );
        Ok(LookupExec {
            probe,
            table,
            probe_keys,
            table_keys,
            nulls_equal,
            values,
            schema,
            properties: Arc::new(properties),
            built: Arc::new(tokio::sync::OnceCell::new()),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for LookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self
            .probe_keys
            .iter()
            .zip(&self.table_keys)
            .map(|(p, t)| format!("{p} = {t}"))
            .collect();
        let eq = if self.nulls_equal { ", nulls equal" } else { "" };
        write!(f, "LookupExec: on=[{}]{eq}", on.join(", "))
    }
}

impl ExecutionPlan for LookupExec {
    fn name(&self) -> &str {
        "LookupExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution, Distribution::SinglePartition]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }
    /// As a hash join's probe side: more partitions, more cores.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true, false]
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.probe, &self.table]
    }
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self.probe_keys.iter().chain(&self.table_keys) {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(table), Some(probe), true) = (children.pop(), children.pop(), children.is_empty()) else {
            return internal_err!("LookupExec takes two inputs");
        };
        Ok(Arc::new(LookupExec::try_new(
            probe,
            table,
            self.probe_keys.clone(),
            self.table_keys.clone(),
            self.nulls_equal,
            self.values.clone(),
        )?))
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let probe = self.probe.execute(partition, context.clone())?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let (built, table, table_keys) = (self.built.clone(), self.table.clone(), self.table_keys.clone());
        let values = self.values.clone();
        let (probe_keys, nulls_equal, schema) = (self.probe_keys.clone(), self.nulls_equal, self.schema.clone());
        let table = async move {
            built
                .get_or_try_init(|| build(table, table_keys, values, nulls_equal, context))
                .await
                .cloned()
        };
        let out = schema.clone();
        let rows = futures::stream::once(table.map_ok(move |table| {
            probe.map(move |batch| {
                let timer = metrics.elapsed_compute().timer();
                let looked_up = batch.and_then(|b| look_up(&table, &probe_keys, nulls_equal, &out, &b));
                timer.done();
                if let Ok(b) = &looked_up {
                    metrics.record_output(b.num_rows());
                }
                looked_up
            })
        }))
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }
}

/// Read the whole table and index its rows by key.
async fn build(
    plan: Arc<dyn ExecutionPlan>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    values: Vec<usize>,
    nulls_equal: bool,
    context: Arc<TaskContext>,
) -> Result<Arc<Table>> {
    let reservation = MemoryConsumer::new("LookupExec table").register(context.memory_pool());
    let schema = plan.schema();
    let batches = datafusion::physical_plan::collect(plan, context).await?;
    let table = arrow::compute::concat_batches(&schema, &batches)?;
    drop(batches);
    let key_columns = evaluate(&keys, &table)?;
    let comparable = comparable(&key_columns, nulls_equal);
    let index = Index::build(key_columns, comparable.as_ref(), nulls_equal)?;
    reservation.try_grow(table.get_array_memory_size() + index.size())?;
    Ok(Arc::new(Table {
        columns: values.into_iter().map(|i| table.column(i).clone()).collect(),
        index,
        _reservation: reservation,
    }))
}

/// The rows of a table by key.
#[derive(Debug)]
enum Index {
    /// One text key compared with `=` (most lookups: an id): rows by the text's bytes.
    Text(datafusion::common::HashMap<Box<[u8]>, u32>),
    /// Any keys: rows by the hash of their keys (as a hash join hashes them), the rows
    /// whose keys share a hash chained; each probe row's first candidate is checked in
    /// bulk, key by key, and the rare row it does not match goes down its chain.
    Hashed {
        first: datafusion::common::HashMap<u64, u32>,
        /// The next row with the same hash ([`NO_ROW`]: none).
        next: Vec<u32>,
        keys: Vec<ArrayRef>,
        nulls_equal: bool,
    },
}

const NO_ROW: u32 = u32::MAX;

/// The hashes both sides of a lookup compute (any fixed seed: they are never stored).
const HASHES: datafusion::common::hash_utils::RandomState =
    datafusion::common::hash_utils::RandomState::with_seed(0x6269_6c6c_666c_6f77);

/// Keys compared column by column, row `i` of `left` against row `j` of `right`.
fn comparators(left: &[ArrayRef], right: &[ArrayRef]) -> Result<Vec<arrow::array::DynComparator>> {
    left.iter()
        .zip(right)
        .map(|(l, r)| {
            Ok(arrow::array::make_comparator(
                l.as_ref(),
                r.as_ref(),
                arrow::compute::SortOptions::default(),
            )?)
        })
        .collect()
}

/// Whether each probe row's keys equal those of its first candidate row in the table
/// (`heads`; [`NO_ROW`]: none, and then the answer is meaningless), checked for all rows at
/// once, key by key, as a hash join checks its matches: in bulk, the table's rows are read
/// in one pass per key rather than one row at a time.
fn first_candidates_equal(
    probe: &[ArrayRef],
    table: &[ArrayRef],
    heads: &[u32],
    nulls_equal: bool,
) -> Result<arrow::array::BooleanArray> {
    use arrow::compute::kernels::cmp::{eq, not_distinct};
    let candidates = UInt32Array::from_iter(heads.iter().map(|&j| (j != NO_ROW).then_some(j)));
    let mut equal: Option<arrow::array::BooleanArray> = None;
    for (p, t) in probe.iter().zip(table) {
        let theirs = arrow::compute::take(t.as_ref(), &candidates, None)?;
        let this = if nulls_equal {
            not_distinct(p, &theirs)?
        } else {
            eq(p, &theirs)?
        };
        equal = Some(match equal {
            None => this,
            Some(before) => arrow::compute::and(&before, &this)?,
        });
    }
    equal.ok_or_else(|| DataFusionError::Internal("a lookup without keys".into()))
}

/// The first row from `j` on, following `next`, for which `matches` holds ([`NO_ROW`]:
/// none).
fn along_chain(next: &[u32], mut j: u32, matches: impl Fn(usize) -> bool) -> u32 {
    while j != NO_ROW && !matches(j as usize) {
        j = next[j as usize];
    }
    j
}

fn hashes(keys: &[ArrayRef]) -> Result<Vec<u64>> {
    let mut hashes = vec![0u64; keys.first().map_or(0, |k| k.len())];
    datafusion::common::hash_utils::create_hashes(keys, &HASHES, &mut hashes)?;
    Ok(hashes)
}

/// Text keys' bytes, row by row, in one loop per kind of text array.
fn each_text(key: &ArrayRef, mut f: impl FnMut(usize, &[u8])) -> Result<()> {
    fn each<'k>(n: usize, text: impl Fn(usize) -> &'k [u8], f: &mut impl FnMut(usize, &[u8])) {
        for i in 0..n {
            f(i, text(i));
        }
    }
    let n = key.len();
    if let Some(t) = key.as_string_view_opt() {
        each(n, |i| t.value(i).as_bytes(), &mut f);
    } else if let Some(t) = key.as_string_opt::<i32>() {
        each(n, |i| t.value(i).as_bytes(), &mut f);
    } else if let Some(t) = key.as_string_opt::<i64>() {
        each(n, |i| t.value(i).as_bytes(), &mut f);
    } else {
        return internal_err!("a lookup's text key is {}", key.data_type());
    }
    Ok(())
}

fn several(row: usize) -> DataFusionError {
    DataFusionError::Execution(format!(
        "a lookup table has several rows for one key (row {row}): it must be reduced to one row per key first"
    ))
}

impl Index {
    /// The index of a table's `keys` (rows not `comparable` are left out); two rows with
    /// equal keys are an error.
    fn build(keys: Vec<ArrayRef>, comparable: Option<&NullBuffer>, nulls_equal: bool) -> Result<Self> {
        use arrow::datatypes::DataType::{LargeUtf8, Utf8, Utf8View};
        let n = keys.first().map_or(0, |k| k.len());
        let skip = |i: usize| comparable.is_some_and(|c| c.is_null(i));
        match keys.as_slice() {
            [one] if !nulls_equal && matches!(one.data_type(), Utf8 | LargeUtf8 | Utf8View) => {
                let mut rows = datafusion::common::HashMap::with_capacity(n);
                let mut twice = None;
                each_text(one, |i, text| {
                    if !skip(i) && rows.insert(Box::<[u8]>::from(text), i as u32).is_some() {
                        twice.get_or_insert(i);
                    }
                })?;
                match twice {
                    Some(i) => Err(several(i)),
                    None => Ok(Index::Text(rows)),
                }
            }
            _ => {
                let hashes = hashes(&keys)?;
                let same = comparators(&keys, &keys)?;
                let mut first = datafusion::common::HashMap::with_capacity(n);
                let mut next = vec![NO_ROW; n];
                for (i, &h) in hashes.iter().enumerate() {
                    if skip(i) {
                        continue;
                    }
                    let head = first.entry(h).or_insert(NO_ROW);
                    if along_chain(&next, *head, |j| same.iter().all(|c| c(i, j).is_eq())) != NO_ROW {
                        return Err(several(i));
                    }
                    next[i] = *head;
                    *head = i as u32;
                }
                Ok(Index::Hashed {
                    first,
                    next,
                    keys,
                    nulls_equal,
                })
            }
        }
    }

    /// Bytes held, for the memory pool.
    fn size(&self) -> usize {
        match self {
            Index::Text(rows) => rows.keys().map(|k| k.len() + 16).sum::<usize>() + rows.capacity() * 8,
            Index::Hashed { first, next, .. } => first.capacity() * 16 + next.len() * 4,
        }
    }

    /// Call `found` with each probe row's row in the table, if any (rows not `comparable`
    /// have none).
    fn find(
        &self,
        keys: &[ArrayRef],
        comparable: Option<&NullBuffer>,
        mut found: impl FnMut(Option<u32>),
    ) -> Result<()> {
        let skip = |i: usize| comparable.is_some_and(|c| c.is_null(i));
        match (self, keys) {
            (Index::Text(rows), [one]) => each_text(one, |i, text| {
                found(if skip(i) { None } else { rows.get(text).copied() })
            }),
            (
                Index::Hashed {
                    first,
                    next,
                    keys: table,
                    nulls_equal,
                },
                _,
            ) => {
                let heads: Vec<u32> = hashes(keys)?
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        if skip(i) {
                            NO_ROW
                        } else {
                            first.get(h).copied().unwrap_or(NO_ROW)
                        }
                    })
                    .collect();
                let equal = first_candidates_equal(keys, table, &heads, *nulls_equal)?;
                // A row whose first candidate differs (two keys share a hash) goes down
                // the chain, compared row by row: rare.
                let mut same = None;
                for (i, &head) in heads.iter().enumerate() {
                    let mut j = head;
                    if j != NO_ROW && !(equal.is_valid(i) && equal.value(i)) {
                        let same = match &mut same {
                            Some(same) => same,
                            None => same.insert(comparators(keys, table)?),
                        };
                        j = along_chain(next, next[j as usize], |j| same.iter().all(|c| c(i, j).is_eq()));
                    }
                    found((j != NO_ROW).then_some(j));
                }
                Ok(())
            }
            (Index::Text(_), _) => internal_err!("a lookup by text has {} keys", keys.len()),
        }
    }
}

fn evaluate(keys: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    keys.iter()
        .map(|k| k.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())))
        .collect()
}

/// Which rows may match at all: with `=`, a row with a NULL key matches nothing. `None`:
/// all of them.
fn comparable(keys: &[ArrayRef], nulls_equal: bool) -> Option<NullBuffer> {
    if nulls_equal {
        return None;
    }
    keys.iter().fold(None, |acc, k| {
        NullBuffer::union(acc.as_ref(), k.logical_nulls().as_ref())
    })
}

/// One batch of the probe with the table's columns of each row's key.
fn look_up(
    table: &Table,
    keys: &[Arc<dyn PhysicalExpr>],
    nulls_equal: bool,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let key_columns = evaluate(keys, batch)?;
    let comparable = comparable(&key_columns, nulls_equal);
    let mut places = Vec::with_capacity(n);
    let mut found = arrow::array::BooleanBufferBuilder::new(n);
    table.index.find(&key_columns, comparable.as_ref(), |place| {
        found.append(place.is_some());
        places.push(place.unwrap_or(0));
    })?;
    let found: BooleanBuffer = found.finish();
    let none_found = found.count_set_bits() == 0;
    let places = UInt32Array::new(places.into(), Some(NullBuffer::new(found)));
    let mut columns = batch.columns().to_vec();
    for c in &table.columns {
        columns.push(if none_found {
            arrow::array::new_null_array(c.data_type(), n)
        } else {
            arrow::compute::take(c.as_ref(), &places, None)?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The planner of [`LookupNode`]s, listed by the session's query planner.
pub fn planner() -> Arc<dyn ExtensionPlanner + Send + Sync> {
    Arc::new(LookupPlanner)
}

struct LookupPlanner;

#[async_trait]
impl ExtensionPlanner for LookupPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<LookupNode>() else {
            return Ok(None);
        };
        let ([probe_logical, table_logical], [probe, table]) = (logical_inputs, physical_inputs) else {
            return internal_err!("Lookup takes two inputs");
        };
        let exprs = |side: &LogicalPlan, exprs: Vec<&Expr>| {
            exprs
                .into_iter()
                .map(|e| planner.create_physical_expr(e, side.schema(), session, planning_ctx))
                .collect::<Result<Vec<_>>>()
        };
        let probe_keys = exprs(probe_logical, n.on.iter().map(|(p, _)| p).collect())?;
        let table_keys = exprs(table_logical, n.on.iter().map(|(_, t)| t).collect())?;
        Ok(Some(Arc::new(LookupExec::try_new(
            probe.clone(),
            table.clone(),
            probe_keys,
            table_keys,
            n.nulls_equal,
            n.values.clone(),
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, Int64Array, StringArray, StringViewArray};
    use arrow::datatypes::{DataType, Int32Type, Int64Type};
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext, col, lit};

    fn session() -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_query_planner(Arc::new(crate::engine::session::Planner))
            .build();
        SessionContext::new_with_state(state)
    }

    #[test]
    fn a_value_column_the_physical_table_lacks_is_an_error_not_a_panic() {
        use datafusion::physical_plan::empty::EmptyExec;
        let schema = |names: &[&str]| {
            Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ))
        };
        let (probe, table) = (schema(&["sku", "qty"]), schema(&["sku", "price"]));
        let key = || vec![Arc::new(Column::new("sku", 0)) as Arc<dyn PhysicalExpr>];
        let exec = |values: Vec<usize>| {
            LookupExec::try_new(
                Arc::new(EmptyExec::new(probe.clone())),
                Arc::new(EmptyExec::new(table.clone())),
                key(),
                key(),
                false,
                values,
            )
        };
        assert_eq!(exec(vec![1]).unwrap().schema().field(2).name(), "price");
        let err = exec(vec![2]).unwrap_err().to_string();
        assert!(err.contains("the table has no column 2"), "{err}");
    }

    /// Usage in two partitions (the second with a NULL key and a key the table lacks).
    fn usage(ctx: &SessionContext) -> (DataFrame, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sku", DataType::Utf8View, true),
            Field::new("qty", DataType::Int64, false),
        ]));
        let part = |skus: Vec<Option<&str>>, qty: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringViewArray::from(skus)), Arc::new(Int64Array::from(qty))],
            )
            .unwrap()
        };
        let parts = vec![
            part(vec![Some("b"), Some("a"), Some("b")], vec![1, 2, 3]),
            part(vec![None, Some("zz"), Some("a")], vec![4, 5, 6]),
        ];
        let table = datafusion::datasource::MemTable::try_new(
            schema.clone(),
            vec![vec![parts[0].clone()], vec![parts[1].clone()]],
        )
        .unwrap();
        (ctx.read_table(Arc::new(table)).unwrap(), parts)
    }

    /// A price list (Utf8 keys, compared with the usage's string views), with a NULL key.
    fn prices(ctx: &SessionContext) -> DataFrame {
        let schema = Arc::new(Schema::new(vec![
            Field::new("price_sku", DataType::Utf8, true),
            Field::new("price", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])),
                Arc::new(Int32Array::from(vec![10, 20, 99])),
            ],
        )
        .unwrap();
        ctx.read_batch(batch).unwrap()
    }

    /// Each partition's rows in their order: (sku, qty, price).
    async fn run(df: DataFrame) -> (Arc<dyn ExecutionPlan>, Vec<Vec<RecordBatch>>) {
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.unwrap();
        let parts = datafusion::physical_plan::collect_partitioned(plan.clone(), task)
            .await
            .unwrap();
        (plan, parts)
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(Option<String>, i64, Option<i32>)> {
        batches
            .iter()
            .flat_map(|b| {
                let sku = b.column(0).as_string_view();
                let qty = b.column(1).as_primitive::<Int64Type>();
                let price = b.column(2).as_primitive::<Int32Type>();
                (0..b.num_rows())
                    .map(|i| {
                        (
                            sku.is_valid(i).then(|| sku.value(i).to_string()),
                            qty.value(i),
                            price.is_valid(i).then(|| price.value(i)),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn each_row_keeps_its_place_and_its_columns_and_gets_its_keys_row() {
        let ctx = session();
        let (usage, input) = usage(&ctx);
        let df = lookup(usage, prices(&ctx), vec![(col("sku"), col("price_sku"))], false)
            .unwrap()
            .select(vec![col("sku"), col("qty"), col("price")])
            .unwrap();
        let (plan, parts) = run(df).await;
        let s = |v: &str| Some(v.to_string());
        // A NULL key matches nothing under `=`, not even the table's NULL key; "zz" is
        // not in the table.
        assert_eq!(
            parts.iter().map(|p| rows(p)).collect::<Vec<_>>(),
            [
                vec![(s("b"), 1, Some(20)), (s("a"), 2, Some(10)), (s("b"), 3, Some(20))],
                vec![(None, 4, None), (s("zz"), 5, None), (s("a"), 6, Some(10))],
            ]
        );
        // The stream's columns are passed on, not copied: the same buffers.
        for (part, original) in parts.iter().zip(&input) {
            for c in 0..2 {
                assert!(
                    part[0].column(c).to_data().ptr_eq(&original.column(c).to_data()),
                    "column {c} was copied"
                );
            }
        }
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        assert!(shown.contains("LookupExec: on=[sku@0 = "), "{shown}");
        assert!(!shown.contains("HashJoinExec"), "{shown}");
    }

    #[tokio::test]
    async fn with_nulls_equal_a_null_key_finds_the_tables_null_key() {
        let ctx = session();
        let (usage, _) = usage(&ctx);
        let df = lookup(usage, prices(&ctx), vec![(col("sku"), col("price_sku"))], true)
            .unwrap()
            .select(vec![col("sku"), col("qty"), col("price")])
            .unwrap();
        let (_, parts) = run(df).await;
        let found: Vec<(i64, Option<i32>)> = parts.iter().flat_map(|p| rows(p)).map(|r| (r.1, r.2)).collect();
        assert_eq!(
            found,
            [
                (1, Some(20)),
                (2, Some(10)),
                (3, Some(20)),
                (4, Some(99)),
                (5, None),
                (6, Some(10))
            ]
        );
    }

    /// Keys of several columns and of different types (Int32 against Int64) compare in
    /// their common type; a filter above stays there (DataFusion would push it into the
    /// table too), and only the columns used are read.
    #[tokio::test]
    async fn keys_of_several_columns_and_types_and_what_the_optimiser_may_do() {
        let ctx = session();
        let (usage, _) = usage(&ctx);
        let table = ctx
            .sql("SELECT * FROM (VALUES ('a', CAST(2 AS INT), 'two a', 1), ('b', CAST(3 AS INT), 'three b', 2), ('a', CAST(6 AS INT), 'six a', 3)) AS t(k, n, label, unused)")
            .await
            .unwrap();
        let df = lookup(
            usage,
            table,
            vec![(col("sku"), col("k")), (col("qty"), col("n"))],
            false,
        )
        .unwrap()
        .filter(col("qty").gt(lit(1i64)))
        .unwrap()
        .select(vec![col("qty"), col("label")])
        .unwrap();
        let (plan, parts) = run(df).await;
        let mut found: Vec<(i64, Option<String>)> = parts
            .iter()
            .flatten()
            .flat_map(|b| {
                let qty = b.column(0).as_primitive::<Int64Type>();
                let label = b.column(1).as_string::<i32>();
                (0..b.num_rows())
                    .map(|i| (qty.value(i), label.is_valid(i).then(|| label.value(i).to_string())))
                    .collect::<Vec<_>>()
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                (2, Some("two a".into())),
                (3, Some("three b".into())),
                (4, None),
                (5, None),
                (6, Some("six a".into()))
            ]
        );
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let lookup_line = shown.lines().position(|l| l.contains("LookupExec")).unwrap();
        let filter_line = shown.lines().position(|l| l.contains("FilterExec")).unwrap();
        assert!(filter_line < lookup_line, "the filter runs above the lookup:\n{shown}");
        let mut lookups = vec![];
        let _ = datafusion::common::tree_node::TreeNode::apply(&plan, |p| {
            let any: &dyn std::any::Any = p.as_ref();
            if let Some(l) = any.downcast_ref::<LookupExec>() {
                lookups.push(l.table.schema());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let table_columns: Vec<String> = lookups[0].fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            table_columns,
            ["k", "n", "label"],
            "an unused column of the table is not read"
        );
    }

    #[tokio::test]
    async fn a_table_with_two_rows_for_one_key_is_an_error() {
        let ctx = session();
        let (usage, _) = usage(&ctx);
        let table = ctx
            .sql("SELECT * FROM (VALUES ('a', 1), ('b', 2), ('a', 3)) AS t(k, price)")
            .await
            .unwrap();
        let df = lookup(usage.clone(), table.clone(), vec![(col("sku"), col("k"))], false).unwrap();
        let e = df.collect().await.unwrap_err();
        let several = "a lookup table has several rows for one key (row 2)";
        assert!(e.to_string().contains(several), "{e}");
        // Found the same way when keys are hashed and compared column by column.
        let df = lookup(usage, table, vec![(col("sku"), col("k"))], true).unwrap();
        let e = df.collect().await.unwrap_err();
        assert!(e.to_string().contains(several), "{e}");
    }

    #[tokio::test]
    async fn an_empty_table_gives_nulls_and_keys_that_cannot_compare_are_a_plan_error() {
        let ctx = session();
        let (usage, _) = usage(&ctx);
        let empty = prices(&ctx).filter(lit(false)).unwrap();
        let df = lookup(usage.clone(), empty, vec![(col("sku"), col("price_sku"))], false)
            .unwrap()
            .select(vec![col("sku"), col("qty"), col("price")])
            .unwrap();
        let (_, parts) = run(df).await;
        let prices: Vec<Option<i32>> = parts.iter().flat_map(|p| rows(p)).map(|r| r.2).collect();
        assert_eq!(prices, [None; 6]);
        let lists = ctx.sql("SELECT [1, 2] AS l").await.unwrap();
        let Err(e) = lookup(usage, lists, vec![(col("qty"), col("l"))], false) else {
            panic!("an Int64 key looked up in a list column");
        };
        assert!(
            e.to_string()
                .contains("a lookup cannot compare qty (Int64) with l (List("),
            "{e}"
        );
    }
}
