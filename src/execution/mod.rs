//! Running a plan: each stream becomes one lazy DataFusion plan (input -> period -> stages
//! -> contract, built by [`stream_plan`]) executed straight into a staging batch
//! (`stream.rs`); independent streams run at the same time, a stream starts as soon as the
//! stream it reads has committed its batch. `check.rs` builds the same plans on empty
//! inputs to check and explain a pipeline.

mod check;
pub mod contract;
pub mod fetch;
pub mod inputs;
mod stream;
pub mod stream_plan;
pub mod write;

pub use check::explain_plans;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;

use crate::definition::{Diagnostic, Location, StreamDef};
use crate::engine::session;
use crate::plan::{Period, Plan, PlannedStream};

/// Shared execution resources: one memory pool and spill area for every stream.
pub struct Engine {
    runtime: Arc<RuntimeEnv>,
    partitions: usize,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub period: Period,
    /// A local folder, or a prefix in an object store (`s3://`, `gs://`, `az://bucket/prefix`).
    pub warehouse: crate::batches::StoreLocation,
    /// Run only the streams of tiers at this level of the chain and above (`run
    /// --until-tier`, through [`Plan::tier_level`]); `None`: every stream.
    pub until_level: Option<usize>,
}

/// Hooks for showing progress; the CLI draws bars, a library user may ignore them.
pub trait Progress: Send + Sync {
    fn started(&self, _stream: &str, _stages: usize) {}
    fn stage(&self, _stream: &str, _index: usize, _name: &str) {}
    fn writing(&self, _stream: &str) {}
    fn finished(&self, _report: &StreamReport) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// A new batch was committed.
    Written,
    /// The same inputs and definition already have a committed batch: nothing to do.
    Reused,
    Failed,
    /// Not run because a stream it reads failed.
    Skipped,
    /// Paused at a manual stage until its file is provided, or waiting for a batch of the
    /// stream it reads to be published to it.
    Waiting,
}

/// Why a stream failed: the stage (when known), the cause, and where to look.
#[derive(Clone, Debug)]
pub struct StreamError {
    pub pipeline: String,
    pub stream: String,
    pub stage: Option<String>,
    pub message: String,
    pub location: Option<Location>,
    pub hint: Option<String>,
}

impl StreamError {
    /// What the stream was and where it failed: `pipeline .., stream .., stage ..`.
    fn context(&self) -> String {
        let mut out = format!("pipeline `{}`, stream `{}`", self.pipeline, self.stream);
        if let Some(s) = &self.stage {
            out.push_str(&format!(", stage `{s}`"));
        }
        out
    }

    /// For a terminal: with a location, the snippet of the pipeline or query file drawn by
    /// miette; without one, the error in one line.
    pub fn render(&self) -> String {
        match &self.location {
            Some(at) => Diagnostic::new(format!("{}: {}", self.context(), self.message), Some(at.clone()))
                .maybe_hint(self.hint.clone())
                .render(),
            None => self.to_string(),
        }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context(), self.message)?;
        if let Some(l) = &self.location {
            write!(f, " (at {l})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StreamError {}

#[derive(Clone, Debug)]
pub struct StreamReport {
    pub stream: String,
    pub tier: String,
    pub organization: String,
    pub status: Status,
    pub error: Option<StreamError>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_rejected: u64,
    pub reject_samples: Vec<String>,
    /// Rows removed on purpose by a stage: (stage, what, rows).
    pub removed: Vec<(String, String, u64)>,
    pub control_totals: BTreeMap<String, String>,
    pub elapsed: Duration,
    pub batch_id: Option<String>,
    /// Where the batch is: a folder, or a URL in an object store.
    pub batch_location: Option<String>,
    /// The batch's folder, when the warehouse is on this machine.
    pub batch_dir: Option<PathBuf>,
    /// The stream's place in the warehouse (where its batches are).
    pub at: Option<crate::batches::StreamLocation>,
    /// A `for_each` stream: the organisations' batches its run holds.
    pub organization_batches: usize,
    /// What the run noticed and left (organisations of a `for_each` stream whose input is
    /// not published yet, a batch `review: auto` left for a person, and why).
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct RunReport {
    pub pipeline: String,
    pub period: Period,
    pub warehouse: crate::batches::StoreLocation,
    pub streams: Vec<StreamReport>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.streams
            .iter()
            .all(|s| matches!(s.status, Status::Written | Status::Reused))
    }
    pub fn stream(&self, id: &str) -> Option<&StreamReport> {
        self.streams.iter().find(|s| s.stream == id)
    }
}

impl Engine {
    /// `threads`: DataFusion partitions per plan (default: the machine's cores).
    pub fn new(threads: Option<usize>) -> Result<Self, DataFusionError> {
        let partitions = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
            .max(1);
        let runtime = session::runtime(None)?;
        Ok(Engine { runtime, partitions })
    }

    /// Bound the memory of sorts, aggregations and joins, shared by the streams running at
    /// once (see [`session::runtime`]). `None`: no limit.
    pub fn with_memory_limit(self, bytes: Option<usize>) -> Result<Self, DataFusionError> {
        if bytes.is_none() {
            return Ok(self);
        }
        let runtime = session::runtime(bytes)?;
        Ok(Engine { runtime, ..self })
    }

    /// The runtime (memory pool, spill) every session of this engine shares.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        self.runtime.clone()
    }

    /// Partitions per plan.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// A fresh session per stream: stages register `input` without stepping on each other.
    pub fn session(&self) -> SessionContext {
        session::session(&self.runtime, self.partitions)
    }

    /// Run every stream for one period. Streams whose input failed are skipped; the others
    /// finish. The report says what happened to each.
    pub async fn run(self: &Arc<Self>, plan: Arc<Plan>, options: RunOptions, progress: Arc<dyn Progress>) -> RunReport {
        let n = plan.streams.len();
        // Upstream batches are read by the streams' scans: a warehouse in an object
        // store must be known to the runtime they share.
        options.warehouse.register(&self.runtime);
        let mut senders = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = tokio::sync::watch::channel::<Option<Arc<StreamReport>>>(None);
            senders.push(tx);
            receivers.push(rx);
        }
        let mut tasks = tokio::task::JoinSet::new();
        // Streams flow down the chain: those below the last tier asked for read only
        // streams that are not run either.
        let runs = |i: usize| options.until_level.is_none_or(|l| plan.streams[i].level <= l);
        for (i, tx) in senders.into_iter().enumerate() {
            if !runs(i) {
                continue;
            }
            let upstream_rx: Vec<_> = plan.streams[i].upstream.iter().map(|u| receivers[*u].clone()).collect();
            let engine = self.clone();
            let plan = plan.clone();
            let options = options.clone();
            let progress = progress.clone();
            tasks.spawn(async move {
                let mut upstream = Vec::new();
                for mut rx in upstream_rx {
                    let r = match rx.wait_for(|v| v.is_some()).await {
                        Ok(v) => v.clone(),
                        Err(_) => None,
                    };
                    upstream.push(r);
                }
                // A panic inside a stream (ours or a library's) fails that stream with the
                // panic's message instead of vanishing with its task.
                let run =
                    std::panic::AssertUnwindSafe(engine.run_stream(&plan, i, &upstream, &options, progress.as_ref()));
                let report = match futures::FutureExt::catch_unwind(run).await {
                    Ok(r) => r,
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        failed_report(
                            &plan,
                            i,
                            format!("internal error (a bug in billflow or a library it uses): {what}"),
                            Some("please report it with the pipeline file".into()),
                        )
                    }
                };
                progress.finished(&report);
                let report = Arc::new(report);
                let _ = tx.send(Some(report.clone()));
                (i, report)
            });
        }
        let mut reports: Vec<Option<Arc<StreamReport>>> = vec![None; n];
        while let Some(r) = tasks.join_next().await {
            if let Ok((i, report)) = r {
                reports[i] = Some(report);
            }
        }
        let streams = reports
            .into_iter()
            .enumerate()
            .filter(|(i, _)| runs(*i))
            .map(|(i, r)| match r {
                Some(r) => (*r).clone(),
                None => failed_report(&plan, i, "the stream's task stopped unexpectedly".into(), None),
            })
            .collect();
        RunReport {
            pipeline: plan.pipeline.id.value.clone(),
            period: options.period.clone(),
            warehouse: options.warehouse.clone(),
            streams,
        }
    }
}

/// A report for a stream that failed before or outside its stages.
fn failed_report(plan: &Plan, i: usize, message: String, hint: Option<String>) -> StreamReport {
    let ps = &plan.streams[i];
    let s = plan.def(ps);
    let mut r = empty_report(s, ps);
    r.status = Status::Failed;
    r.error = Some(StreamError {
        pipeline: plan.pipeline.id.value.clone(),
        stream: s.id.value.clone(),
        stage: None,
        message,
        location: None,
        hint,
    });
    r
}

fn empty_report(s: &StreamDef, ps: &PlannedStream) -> StreamReport {
    StreamReport {
        stream: s.id.value.clone(),
        tier: ps.tier.clone(),
        organization: s.owner.value.clone(),
        status: Status::Skipped,
        error: None,
        rows_in: 0,
        rows_out: 0,
        rows_rejected: 0,
        reject_samples: vec![],
        removed: vec![],
        control_totals: BTreeMap::new(),
        elapsed: Duration::ZERO,
        batch_id: None,
        batch_location: None,
        batch_dir: None,
        at: None,
        organization_batches: 0,
        notes: vec![],
    }
}
