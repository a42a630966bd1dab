//! A plan computed once for a stage that reads it more than once. DataFusion plans are
//! trees: a stage that joins its input back to an aggregate of it (`rate` does: the
//! groups' charges are shared back over the lines) runs everything before it twice, an
//! aggregate over millions of usage rows included. [`once`] runs the input one time and
//! gives a table over its result: held in memory within the run's memory limit (the
//! batches are reserved in its pool), written to an Arrow IPC file in the spill area past
//! it. The decision is the plan's, not the user's: [`worth_it`] says when re-reading
//! costs more than keeping (a plan that scans, projects, filters and looks up in small
//! references is cheaper read again than held).

use std::any::Any;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, SpillFile};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream_partitioned};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

/// What keeps materialised inputs alive (their memory reservations and spill files) for
/// as long as the session that reads them, and the plans that computed them as run,
/// with their metrics (they ran while the stream's plan was built, apart from it): a
/// session config extension.
#[derive(Default)]
pub struct Held {
    things: Mutex<Vec<Box<dyn Any + Send + Sync>>>,
    ran: Mutex<Vec<(String, String)>>,
}

impl Held {
    fn keep(&self, thing: impl Any + Send + Sync) {
        if let Ok(mut held) = self.things.lock() {
            held.push(Box::new(thing));
        }
    }

    /// The plan as text, not the plan: a finished plan still holds what it built (a
    /// hash join's table, say) for as long as it lives.
    fn ran(&self, what: &str, plan: &dyn ExecutionPlan) {
        let text = DisplayableExecutionPlan::with_metrics(plan).indent(true).to_string();
        if let Ok(mut ran) = self.ran.lock() {
            ran.push((what.to_string(), text));
        }
    }
}

/// The plans [`once`] ran in this session as text, with their metrics, each with what it
/// computed, in the order they ran.
pub fn ran_once(ctx: &SessionContext) -> Vec<(String, String)> {
    let held = ctx.state().config().get_extension::<Held>();
    held.and_then(|h| h.ran.lock().ok().map(|r| r.clone()))
        .unwrap_or_default()
}

/// Whether `plan` does work over the stream's rows that costs more to redo than to keep:
/// an aggregate, a window, a sort or a distinct with one of the stream's checkpoints
/// below it (only the stream's rows pass checkpoints; its input has one). The same work
/// over a reference is small: every lookup reduces its reference per key, and a plan
/// that only looks rows up is cheaper read again than held (millions of joined lines
/// held cost their memory). A join is not enough for the same reason.
pub fn worth_it(plan: &LogicalPlan) -> bool {
    let over_stream = |node: &LogicalPlan| node.exists(|n| Ok(super::tap::is_checkpoint(n))).unwrap_or(true);
    let mut costly = false;
    let _ = plan.apply(|node| {
        costly = matches!(
            node,
            LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Sort(_) | LogicalPlan::Distinct(_)
        ) && over_stream(node);
        Ok(if costly {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    costly
}

/// One partition of the result: batches held in memory (and reserved in the pool), or
/// written to a spill file once the pool refused more.
enum Part {
    Memory(Vec<RecordBatch>, MemoryReservation),
    Spilled(Arc<dyn SpillFile>),
}

/// Run `df` once and read it back as a table in `ctx`, partitioned as it ran. `what`
/// names the result where the plans that ran are shown.
pub async fn once(ctx: &SessionContext, df: DataFrame, what: &str) -> Result<DataFrame> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let schema = plan.schema();
    // Each partition in a task of its own: polled together in this one, the operators
    // above the plan's last exchange (a final aggregate, a join) would all run on one
    // thread while the others idle.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, stream) in execute_stream_partitioned(plan.clone(), task.clone())?
        .into_iter()
        .enumerate()
    {
        let runtime = task.runtime_env();
        let schema = schema.clone();
        tasks.spawn(async move { hold_partition(i, stream, runtime, schema).await.map(|part| (i, part)) });
    }
    let mut parts: Vec<Option<Part>> = std::iter::repeat_with(|| None).take(tasks.len()).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, part) = done.map_err(|e| DataFusionError::External(Box::new(e)))??;
        parts[i] = Some(part);
    }
    if let Some(held) = ctx.state().config().get_extension::<Held>() {
        held.ran(what, plan.as_ref());
    }
    drop(plan);
    table(ctx, schema, parts.into_iter().flatten().collect()).await
}

/// One partition's batches, held within the pool's limit; past it the partition goes to
/// a spill file, what was held first.
async fn hold_partition(
    i: usize,
    mut stream: SendableRecordBatchStream,
    runtime: Arc<RuntimeEnv>,
    schema: SchemaRef,
) -> Result<Part> {
    let reservation = MemoryConsumer::new(format!("stage input computed once[{i}]"))
        .with_can_spill(true)
        .register(&runtime.memory_pool);
    let mut held = Vec::new();
    let mut spill: Option<(Arc<dyn SpillFile>, arrow::ipc::writer::FileWriter<_>)> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if let Some((_, writer)) = spill.as_mut() {
            writer.write(&batch)?;
            continue;
        }
        if reservation.try_grow(batch.get_array_memory_size()).is_ok() {
            held.push(batch);
            continue;
        }
        let file = runtime.disk_manager.create_tmp_file("a stage input computed once")?;
        let mut writer = arrow::ipc::writer::FileWriter::try_new(file.open_writer()?, &schema)?;
        for b in held.drain(..).chain([batch]) {
            writer.write(&b)?;
        }
        reservation.free();
        spill = Some((file, writer));
    }
    Ok(match spill {
        Some((file, mut writer)) => {
            writer.finish()?;
            let mut inner = writer.into_inner()?;
            inner.finish()?;
            Part::Spilled(file)
        }
        None => Part::Memory(held, reservation),
    })
}

/// The parts as one table: in memory when none spilled; otherwise every part in a file
/// (the held ones written too), read as Arrow IPC files.
async fn table(ctx: &SessionContext, schema: SchemaRef, parts: Vec<Part>) -> Result<DataFrame> {
    let held = ctx.state().config().get_extension::<Held>();
    let keep = |thing: Box<dyn Any + Send + Sync>| {
        if let Some(h) = &held {
            h.keep(thing);
        }
    };
    if parts.iter().all(|p| matches!(p, Part::Memory(..))) {
        let mut partitions = Vec::with_capacity(parts.len());
        for part in parts {
            if let Part::Memory(batches, reservation) = part {
                partitions.push(batches);
                keep(Box::new(reservation));
            }
        }
        return ctx.read_table(Arc::new(MemTable::try_new(schema, partitions)?));
    }
    let mut files = Vec::with_capacity(parts.len());
    for part in parts {
        files.push(match part {
            Part::Spilled(file) => file,
            Part::Memory(batches, _reservation) => {
                let file = ctx
                    .runtime_env()
                    .disk_manager
                    .create_tmp_file("a stage input computed once")?;
                let mut writer = arrow::ipc::writer::FileWriter::try_new(file.open_writer()?, &schema)?;
                for b in &batches {
                    writer.write(b)?;
                }
                writer.finish()?;
                writer.into_inner()?.finish()?;
                file
            }
        });
    }
    let paths: Vec<String> = files
        .iter()
        .map(|f| {
            f.path()
                .map(|p| p.display().to_string())
                .ok_or_else(|| DataFusionError::Execution("the spill area is not a local folder".into()))
        })
        .collect::<Result<_>>()?;
    for f in files {
        keep(Box::new(f));
    }
    let options = ArrowReadOptions {
        file_extension: "",
        schema: Some(&schema),
        ..Default::default()
    };
    ctx.read_arrow(paths, options).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::session;

    /// 1, 2, ..., 200000 (1.6 MB as Int64).
    const ROWS: &str = "SELECT value AS v FROM generate_series(1, 200000)";

    async fn computed_once(memory_limit: Option<usize>) -> (String, String) {
        let runtime = session::runtime(memory_limit).unwrap();
        let ctx = session::session(&runtime, 2);
        let df = ctx.sql(ROWS).await.unwrap();
        // What is held is a projection (`w = v * 2`), which must not be computed again.
        let df = ctx.read_batches(df.collect().await.unwrap()).unwrap();
        let v = datafusion::prelude::ident("v");
        let df = df
            .select(vec![(v.clone() * datafusion::prelude::lit(2i64)).alias("w")])
            .unwrap();
        let once = once(&ctx, df, "w").await.unwrap();
        let physical = once.clone().create_physical_plan().await.unwrap();
        let plan = datafusion::physical_plan::displayable(physical.as_ref())
            .indent(true)
            .to_string();
        let total = once
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::sum(
                    datafusion::prelude::ident("w"),
                )],
            )
            .unwrap()
            .collect()
            .await
            .unwrap();
        (
            arrow::util::pretty::pretty_format_batches(&total).unwrap().to_string(),
            plan,
        )
    }

    /// Held in memory, or spilled past a limit too small for it: the same rows either
    /// way (2 x (1 + 2 + ... + 200000) = 200000 x 200001 = 40000200000), read from a
    /// table rather than recomputed.
    #[tokio::test]
    async fn an_input_computed_once_is_the_same_in_memory_and_spilled() {
        let (total, plan) = computed_once(None).await;
        assert!(total.contains("40000200000"), "{total}");
        assert!(
            plan.contains("DataSourceExec: partitions=2") && !plan.contains("* 2"),
            "{plan}"
        );
        let (total, plan) = computed_once(Some(512 * 1024)).await;
        assert!(total.contains("40000200000"), "{total}");
        assert!(plan.contains("file_type=arrow") && !plan.contains("* 2"), "{plan}");
    }

    /// Found in review (issue 17): every billflow lookup reduces its reference per key (an
    /// aggregate), so a plan that only looked lines up was held in memory, all 10M lines
    /// of the generated job's vendor stream (2.5 GB at its peak). Only an aggregate over
    /// the stream's rows, which pass a checkpoint, is worth holding.
    #[tokio::test]
    async fn a_scan_or_a_lookup_is_read_again_and_an_aggregate_of_the_stream_held() {
        use crate::engine::tap::Tap;
        use datafusion::functions_aggregate::expr_fn::count;
        use datafusion::prelude::{ident, lit};
        let ctx = SessionContext::new();
        let rows = ctx.sql("SELECT value FROM generate_series(1, 10)").await.unwrap();
        let stream = Tap::new("input").apply(rows, lit(false), lit(true)).unwrap();
        let filtered = stream.clone().filter(ident("value").gt(lit(3i64))).unwrap();
        assert!(!worth_it(filtered.logical_plan()));
        // A lookup as billflow's stages write it: the reference reduced to one row per key.
        let reference = ctx.sql("SELECT value AS k FROM generate_series(1, 3)").await.unwrap();
        let reduced = reference
            .aggregate(vec![ident("k")], vec![count(lit(1)).alias("n")])
            .unwrap();
        let looked_up = reduced
            .join_on(
                stream.clone(),
                datafusion::common::JoinType::Right,
                vec![ident("k").eq(ident("value"))],
            )
            .unwrap();
        assert!(!worth_it(looked_up.logical_plan()));
        let grouped = stream
            .clone()
            .aggregate(vec![ident("value") % lit(2i64)], vec![count(lit(1))])
            .unwrap();
        assert!(worth_it(grouped.logical_plan()));
        let sorted = stream.sort(vec![ident("value").sort(false, false)]).unwrap();
        assert!(worth_it(sorted.logical_plan()));
    }
}
