//! The runtime shared by every stream of a run and the session each stream plans in.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::operator::planner_for;
use super::residue::ResidueNode;
use super::tap::Checkpoint;

/// The runtime: one memory pool and spill area for every stream of a run. With `bytes`,
/// sorts, aggregations and joins share that budget, spilling to disk (the OS temp
/// directory) past it; an operator that cannot spill fails with a clear error instead of
/// the machine running out of memory. `None`: no limit.
pub fn runtime(memory_limit: Option<usize>) -> Result<Arc<RuntimeEnv>> {
    let builder = RuntimeEnvBuilder::new();
    let builder = match memory_limit {
        Some(bytes) => builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(bytes),
            std::num::NonZeroUsize::new(5).unwrap_or(std::num::NonZeroUsize::MIN),
        ))),
        None => builder,
    };
    builder.build_arc()
}

/// A fresh session over `runtime` with `partitions` partitions per plan: billflow's
/// settings, its query planner and its money functions (callable from SQL).
pub fn session(runtime: &Arc<RuntimeEnv>, partitions: usize) -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(config(partitions))
        .with_runtime_env(runtime.clone())
        .with_default_features()
        .with_query_planner(Arc::new(Planner))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for udf in super::money::sql_functions() {
        ctx.register_udf(udf);
    }
    ctx
}

fn config(partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_information_schema(true)
        .with_extension(Arc::new(super::materialize::Held::default()));
    let options = config.options_mut();
    // Spans let SQL errors point at the line and column in the query.
    options.sql_parser.collect_spans = true;
    // References (price lists, rates, mappings) are the build side of lookup joins:
    // build them once and share them across partitions (CollectLeft) up to this size,
    // rather than hash-repartitioning the usage rows on both sides.
    options.optimizer.hash_join_single_partition_threshold = 256 << 20;
    options.optimizer.hash_join_single_partition_threshold_rows = 8 << 20;
    // Billflow's own joins put the small side (a reference, or one row per group) on
    // the build side: build it once for all partitions rather than hash-repartition
    // the usage rows on both sides. (Joins in SQL stages are still ordered by size.)
    options.optimizer.repartition_joins = false;
    // Record batches of 32k rows rather than 8k: each operator's cost per batch (and a
    // sort's merge fan-in) shrinks; measured 1.3 s less for rating 10M rows on 2 cores.
    config.with_batch_size(32 * 1024)
}

/// The query planner of billflow's sessions: DataFusion's, plus one extension planner per
/// billflow node type. A new node type is one more line here.
#[derive(Debug)]
pub struct Planner;

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![
            planner_for::<Checkpoint>(),
            planner_for::<ResidueNode>(),
            super::lookup::planner(),
        ])
        .create_physical_plan(plan, session)
        .await
    }
}
