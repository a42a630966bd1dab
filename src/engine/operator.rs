//! billflow's own plan nodes (checkpoints, residues) share one shape: one input, rows in
//! the same order and the same schema out, each record batch mapped by a function.
//! `BatchExec` is that operator; a `BatchFn` says what it does to a batch; a logical node
//! that is a [`BatchNode`] is planned into one by its own [`planner_for`], which the
//! session's query planner lists (`session.rs`).
//!
//! State shared across partitions (a [`PartitionCountdown`], lines a function holds, counts
//! read back after the run) lives in the process that runs every partition. It would not
//! survive a plan split into tasks run elsewhere: keep it here, and build nothing new on it.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::internal_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

/// What a [`BatchExec`] does to each record batch.
pub trait BatchFn: fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result;
    /// The expressions it evaluates (for DataFusion's plan walks).
    fn exprs(&self) -> Vec<&Arc<dyn PhysicalExpr>>;
    /// Itself for a plan rebuilt over `input`: state that belongs to one execution starts
    /// afresh.
    fn renew(&self, input: &Arc<dyn ExecutionPlan>) -> Arc<dyn BatchFn>;
    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch>;
    /// One partition of the input has ended (read to the end, not dropped early). A batch
    /// returned here is emitted at the end of that partition.
    fn finish(&self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
    /// Whether each row stays in its partition, in its order. A function that holds rows
    /// back and emits them at the end (from whichever partition ends last) does not: its
    /// operator then promises no partitioning and no order.
    fn keeps_rows_in_place(&self) -> bool {
        true
    }
}

/// Counts down the partitions of one execution of an operator's input as they end. The
/// last to end learns it, and the count starts again, so a plan may be executed again
/// (each execution's end is then seen once, by the last partition to end in it).
#[derive(Debug)]
pub struct PartitionCountdown {
    partitions: usize,
    left: std::sync::atomic::AtomicUsize,
}

impl PartitionCountdown {
    pub fn new(input: &Arc<dyn ExecutionPlan>) -> Self {
        let partitions =
            datafusion::physical_plan::ExecutionPlanProperties::output_partitioning(input).partition_count();
        PartitionCountdown {
            partitions,
            left: std::sync::atomic::AtomicUsize::new(partitions),
        }
    }

    /// One partition has ended: whether it was the last of its execution.
    pub fn last_ended(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.left.store(self.partitions, Ordering::Release);
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct BatchExec {
    input: Arc<dyn ExecutionPlan>,
    f: Arc<dyn BatchFn>,
    /// Its own properties when rows do not stay in place (else the input's).
    moved: Option<Arc<PlanProperties>>,
}

impl BatchExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, f: Arc<dyn BatchFn>) -> Self {
        let moved = (!f.keeps_rows_in_place()).then(|| {
            let p = input.properties();
            Arc::new(PlanProperties::new(
                datafusion::physical_expr::EquivalenceProperties::new(input.schema()),
                datafusion::physical_plan::Partitioning::UnknownPartitioning(p.output_partitioning().partition_count()),
                datafusion::physical_plan::execution_plan::EmissionType::Both,
                p.boundedness,
            ))
        });
        BatchExec { input, f, moved }
    }
}

impl DisplayAs for BatchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.f.describe(f)
    }
}

impl ExecutionPlan for BatchExec {
    fn name(&self) -> &str {
        self.f.name()
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        // Same partitioning, order and equivalences as the input, unless rows move.
        self.moved.as_ref().unwrap_or_else(|| self.input.properties())
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![self.f.keeps_rows_in_place()]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self.f.exprs() {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("{} takes one input", self.f.name());
        };
        let f = self.f.renew(&input);
        Ok(Arc::new(BatchExec::new(input, f)))
    }
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let f = self.f.clone();
        let mut input = input;
        let mut ended = false;
        // Map each batch; tell the function when the input ends (an error or a consumer
        // that stops early never reaches that point).
        let stream = futures::stream::poll_fn(move |cx| {
            if ended {
                return std::task::Poll::Ready(None);
            }
            match input.poll_next_unpin(cx) {
                std::task::Poll::Ready(Some(batch)) => std::task::Poll::Ready(Some(batch.and_then(|b| f.apply(&b)))),
                std::task::Poll::Ready(None) => {
                    ended = true;
                    std::task::Poll::Ready(f.finish().transpose())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// A logical node that runs as a [`BatchExec`].
pub trait BatchNode {
    /// Its batch function, given its input's schema and a planner for its expressions.
    fn batch_fn(
        &self,
        input: &Arc<dyn ExecutionPlan>,
        expr: &dyn Fn(&Expr) -> Result<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn BatchFn>>;
}

/// The planner of one kind of [`BatchNode`]: each node type brings its own (see
/// [`planner_for`]) and the session lists them, so this module knows none of its users.
struct BatchNodePlanner<N>(std::marker::PhantomData<fn() -> N>);

/// The `ExtensionPlanner` that plans logical nodes of type `N` into [`BatchExec`]s.
pub fn planner_for<N: BatchNode + Send + Sync + 'static>() -> Arc<dyn ExtensionPlanner + Send + Sync> {
    Arc::new(BatchNodePlanner::<N>(std::marker::PhantomData))
}

#[async_trait]
impl<N: BatchNode + Send + Sync + 'static> ExtensionPlanner for BatchNodePlanner<N> {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<N>() else {
            return Ok(None);
        };
        let (Some(logical), Some(input), 1, 1) = (
            logical_inputs.first(),
            physical_inputs.first(),
            logical_inputs.len(),
            physical_inputs.len(),
        ) else {
            return internal_err!("{} takes one input", node.name());
        };
        let schema = logical.schema();
        let expr = |e: &Expr| planner.create_physical_expr(e, schema, session, planning_ctx);
        let f = n.batch_fn(input, &expr)?;
        Ok(Some(Arc::new(BatchExec::new(input.clone(), f))))
    }
}
