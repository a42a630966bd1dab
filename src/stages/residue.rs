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

use super::operator::{BatchFn, BatchNode};

/// `df` with `residue` added to `column` on one `candidate` line per group (`group`).
/// `residue` must already have `column`'s type.
pub fn assign(df: DataFrame, column: &str, group: Vec<Expr>, candidate: Expr, residue: Expr) -> Result<DataFrame> {
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
        residue,
    };
    Ok(DataFrame::new(
        state,
        LogicalPlan::Extension(Extension { node: Arc::new(node) }),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResidueNode {
    input: LogicalPlan,
    schema: DFSchemaRef,
    /// Index of the adjusted column in the input (and output) schema.
    column: usize,
    group: Vec<Expr>,
    candidate: Expr,
    residue: Expr,
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
        let fields = group
            .iter()
            .map(|g| g.data_type(&schema).map(SortField::new))
            .collect::<Result<_>>()?;
        Ok(Arc::new(ResidueFn {
            column: self.column,
            group,
            fields,
            candidate: expr(&self.candidate)?,
            residue: expr(&self.residue)?,
            served: Arc::new(Mutex::new(HashSet::new())),
        }))
    }
}

impl UserDefinedLogicalNodeCore for ResidueNode {
    fn name(&self) -> &str {
        "AssignResidue"
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
        e.push(self.residue.clone());
        e
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AssignResidue: column #{} + {} on the first of {} per group",
            self.column, self.residue, self.candidate
        )
    }
    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let (Some(input), Some(residue), Some(candidate)) = (inputs.pop(), exprs.pop(), exprs.pop()) else {
            return internal_err!("AssignResidue takes one input, its groups, a candidate and a residue");
        };
        // The adjusted column keeps its name; find it again in the (possibly pruned) input.
        let name = self.schema.field(self.column).name().clone();
        let column = input
            .schema()
            .index_of_column_by_name(None, &name)
            .ok_or_else(|| DataFusionError::Internal(format!("AssignResidue lost column `{name}`")))?;
        Ok(ResidueNode {
            schema: input.schema().clone(),
            input,
            column,
            group: exprs,
            candidate,
            residue,
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
    fn renew(&self, _input: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Arc<dyn BatchFn> {
        Arc::new(ResidueFn {
            column: self.column,
            group: self.group.clone(),
            fields: self.fields.clone(),
            candidate: self.candidate.clone(),
            residue: self.residue.clone(),
            served: Arc::new(Mutex::new(HashSet::new())),
        })
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
    let mask = BooleanArray::from(takes);
    let current = batch.column(column);
    let residue = residue.evaluate(batch)?.into_array(n)?;
    if residue.data_type() != current.data_type() {
        return internal_err!(
            "AssignResidue: residue is {} but the column is {}",
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
    let adjusted = arrow::compute::kernels::zip::zip(&mask, &adjusted, current)?;
    let mut columns = batch.columns().to_vec();
    columns[column] = adjusted;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::*;

    #[tokio::test]
    async fn one_line_per_group_takes_the_residue_even_when_candidates_tie_across_partitions() {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_query_planner(Arc::new(super::super::operator::Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(10, 2), false),
            Field::new("residue", DataType::Decimal128(10, 2), false),
        ]));
        // Group a: three tied candidates, two in one partition and one in the other; group
        // b: one candidate; NULL is a group of its own.
        let part = |g: Vec<Option<&str>>, amount: Vec<i128>, residue: Vec<i128>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(g)),
                    Arc::new(Decimal128Array::from(amount).with_precision_and_scale(10, 2).unwrap()),
                    Arc::new(Decimal128Array::from(residue).with_precision_and_scale(10, 2).unwrap()),
                ],
            )
            .unwrap()
        };
        let p1 = part(
            vec![Some("a"), Some("a"), Some("b")],
            vec![100, 100, 50],
            vec![1, 1, -2],
        );
        let p2 = part(vec![Some("a"), None, None], vec![100, 7, 7], vec![1, 3, 3]);
        let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![p1], vec![p2]]).unwrap();
        let df = ctx.read_table(Arc::new(table)).unwrap();
        let out = assign(df, "amount", vec![col("g")], col("amount").gt(lit(0)), col("residue")).unwrap();
        let batches = out.collect().await.unwrap();
        let mut by_group: std::collections::BTreeMap<Option<String>, Vec<i128>> = Default::default();
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
        let sum = |k: Option<&str>| by_group[&k.map(String::from)].iter().sum::<i128>();
        assert_eq!(sum(Some("a")), 301, "{by_group:?}");
        assert_eq!(sum(Some("b")), 48);
        assert_eq!(sum(None), 17);
        assert_eq!(
            by_group[&Some("a".to_string())].iter().filter(|v| **v == 101).count(),
            1
        );
    }
}
