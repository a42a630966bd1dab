//! billflow: rating and converting billing data as it flows down a software supply chain
//! (vendor -> distributors -> resellers), as a dataflow engine over columnar data.
//!
//! The modules follow the data: [`definition`] (YAML -> validated pipeline) -> [`plan`]
//! (stages built, streams ordered into a DAG) -> [`stages`] (the stage kinds) ->
//! [`execution`] (each stream's plan built and run into a batch) -> [`batches`] (the
//! warehouse of immutable Parquet batches and their manifests) -> [`query`] (SQL over
//! the committed batches; [`shell`] is its interactive shell, [`serve`] its Postgres
//! wire-protocol server). [`engine`] is the
//! DataFusion-level machinery the stages and the execution build on (session, operators,
//! exact money, side outputs, the Polars bridge); it imports nothing else from billflow.
//! [`cli`] renders for the terminal.
//!
//! Embedding it: check a pipeline, then run it for a period.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use billflow::{execution::NoProgress, Engine, Period, RunOptions};
//!
//! let engine = Arc::new(Engine::new(None).unwrap());
//! let plan = billflow::check(&engine, "data-samples/cloud-reseller/pipeline.yaml".as_ref()).await.unwrap();
//! assert_eq!(plan.streams.len(), 10);
//! let warehouse = tempfile::tempdir().unwrap();
//! let options = RunOptions { period: Period::parse("2026-10").unwrap(), warehouse: warehouse.path().into(), until_level: None };
//! let report = engine.run(Arc::new(plan), options, Arc::new(NoProgress)).await;
//! assert!(report.ok());
//! assert_eq!(report.stream("nimbus-rated-usage").unwrap().control_totals["cost_usd"], "1017.6027");
//! # });
//! ```

pub mod batches;
pub mod cli;
pub mod definition;
pub mod engine;
pub mod execution;
pub mod generate;
pub mod plan;
pub mod query;
pub mod serve;
pub mod shell;
pub mod stages;
pub mod testing;

use std::path::Path;

pub use definition::{Diagnostic, Diagnostics};
pub use execution::{Engine, RunOptions, RunReport};
pub use plan::{Period, Plan};

/// Load, validate and compile a pipeline file: every problem found before any data is
/// read comes back at once.
pub fn compile(path: &Path) -> Result<Plan, Diagnostics> {
    compile_in(path, None)
}

/// [`compile`] with a sandbox: the pipeline and every file it names must lie under it.
pub fn compile_in(path: &Path, sandbox: Option<definition::Sandbox>) -> Result<Plan, Diagnostics> {
    let pipeline = definition::load_in(path, sandbox)?;
    plan::compile(pipeline)
}

/// `compile` plus schema inference through every stage (reads file headers, not data).
pub async fn check(engine: &Engine, path: &Path) -> Result<Plan, Diagnostics> {
    check_in(engine, path, None).await
}

/// [`check`] with a sandbox (see [`compile_in`]).
pub async fn check_in(engine: &Engine, path: &Path, sandbox: Option<definition::Sandbox>) -> Result<Plan, Diagnostics> {
    let plan = compile_in(path, sandbox)?;
    let d = engine.check(&plan).await;
    if d.is_empty() { Ok(plan) } else { Err(d) }
}
