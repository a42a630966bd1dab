//! Running one stream for one period, as a sequence of named phases: resolve its input,
//! identify its batch (reuse it when it is already there), build its plan, execute it
//! into a staging batch, write what was refused, commit, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{DataFrame, SessionContext};

use super::stream_plan::{self, Inputs, PlanError, StreamPlan, template_vars};
use super::{Engine, Progress, RunOptions, Status, StreamError, StreamReport, empty_report, inputs, write};
use crate::batches::StoreLocation;
use crate::batches::{
    self, Committed, InputInfo, Manifest, OrganizationPart, PeriodInfo, Staging, Store, StreamLocation,
};
use crate::definition::{InputRef, Location, StreamDef, arrow_schema, stage_file_name};
use crate::engine::materialize;
use crate::engine::tap::Tap;
use crate::plan::{Period, Plan, PlannedStream};

/// What ended a stream before its batch was committed.
pub(super) struct Stop {
    status: Status,
    stage: Option<String>,
    message: String,
    location: Option<Location>,
    hint: Option<String>,
}

impl Stop {
    fn failed(message: impl Into<String>) -> Self {
        Stop {
            status: Status::Failed,
            stage: None,
            message: message.into(),
            location: None,
            hint: None,
        }
    }
    fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }
    fn in_stage(mut self, stage: Option<String>) -> Self {
        self.stage = stage;
        self
    }
}

impl From<PlanError> for Stop {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Input { message, location } => Stop::failed(message).at(location),
            PlanError::Stage { stage, location, error } => {
                let error = *error;
                Stop {
                    status: if error.waiting { Status::Waiting } else { Status::Failed },
                    stage: Some(stage),
                    message: error.message,
                    location: error.location.or(Some(location)),
                    hint: error.hint,
                }
            }
            PlanError::Contract { stage, problems } => {
                let first = problems.into_iter().next();
                let (message, location, hint) = first
                    .map(|d| (d.message, d.location, d.hint))
                    .unwrap_or_else(|| ("the stream's contract is not met".into(), None, None));
                Stop {
                    hint,
                    ..Stop::failed(message).at(location).in_stage(Some(stage))
                }
            }
            e @ PlanError::Plan { .. } => Stop::failed(e.to_string()),
        }
    }
}

/// The batch a run of the stream produces: its id, what decided it, and where it goes.
struct BatchIdentity {
    batch_id: String,
    definition: String,
    inputs: Vec<InputInfo>,
    at: StreamLocation,
    /// A `for_each` run: each organisation's batch.
    parts: BTreeMap<String, PartIdentity>,
}

/// One organisation's batch of a `for_each` run: its id hashes what decides its rows
/// (its chain's part of the input, not the other organisations'), so a run whose input
/// changed for one organisation gives only that organisation's batch a new version.
struct PartIdentity {
    batch_id: String,
    inputs: Vec<InputInfo>,
}

/// What the run refused and removed, and the rows that came in.
struct Tally {
    rows_in: u64,
    rejected: u64,
    samples: Vec<String>,
    removed: Vec<(String, String, u64)>,
}

impl Engine {
    /// Run stream `i` of `plan` for the period, given the reports of the streams it reads.
    pub(super) async fn run_stream(
        &self,
        plan: &Plan,
        i: usize,
        upstream: &[Option<Arc<StreamReport>>],
        options: &RunOptions,
        progress: &dyn Progress,
    ) -> StreamReport {
        let started = Instant::now();
        let ps = &plan.streams[i];
        let s = plan.def(ps);
        let mut report = empty_report(s, ps);
        if let Err(stop) = self
            .produce_batch(plan, ps, upstream, options, progress, &mut report)
            .await
        {
            report.status = stop.status;
            report.error = Some(StreamError {
                pipeline: plan.pipeline.id.value.clone(),
                stream: s.id.value.clone(),
                stage: stop.stage,
                message: stop.message,
                location: stop.location,
                hint: stop.hint,
            });
        }
        report.elapsed = started.elapsed();
        tracing::debug!(stream = %s.id.value, status = ?report.status, elapsed = ?report.elapsed, "stream ended");
        report
    }

    async fn produce_batch(
        &self,
        plan: &Plan,
        ps: &PlannedStream,
        upstream: &[Option<Arc<StreamReport>>],
        options: &RunOptions,
        progress: &dyn Progress,
        report: &mut StreamReport,
    ) -> Result<(), Stop> {
        let s = plan.def(ps);
        let mut phase = Phases::new(&s.id.value);
        let upstream = match upstream_batch(upstream)? {
            Some(up) => Some(published_input(plan, ps, up, &options.period, &options.warehouse).await?),
            None => None,
        };
        if let Some(up) = &upstream
            && !up.waiting.is_empty()
        {
            report.notes.push(format!(
                "no batch for the organisations below {}: their batch of `{}` is not published yet",
                up.waiting.join(", "),
                up.report.stream
            ));
        }
        progress.started(&s.id.value, ps.stages.len());
        let mut id = identify(plan, ps, upstream.as_ref(), &options.period).await?;
        phase.done("identify the batch");
        let store = Store::new(options.warehouse.clone());
        report.batch_id = Some(id.batch_id.clone());
        report.batch_location = Some(store.batch_dir(&id.at, &id.batch_id));
        report.batch_dir = store.local_batch_dir(&id.at, &id.batch_id);
        report.at = Some(id.at.clone());
        report.organization_batches = id.parts.len();
        if let Some(m) = store.committed(&id.at, &id.batch_id).await {
            report.status = Status::Reused;
            report.rows_in = m.rows_in;
            report.rows_out = m.rows;
            report.rows_rejected = m.rows_rejected;
            report.control_totals = m.control_totals.clone();
            // A run stopped between its commit and its first event left a batch with no
            // history: it gets its creation now.
            let accepted = auto_review(s, &m, upstream.as_ref(), report);
            record_in_log(&options.warehouse, &store, &id.at, &m, false, &accepted).await?;
            return Ok(());
        }

        let ctx = self.session();
        let on_stage = |k: usize, name: &str| progress.stage(&s.id.value, k, name);
        let upstream_files: Option<Vec<String>> = upstream.as_ref().map(Upstream::files);
        let inputs = Inputs::Read {
            upstream: upstream_files.as_deref(),
        };
        let sp = stream_plan::build(&ctx, plan, ps, &options.period, inputs, true, &on_stage).await?;
        phase.done("build the plan");

        progress.writing(&s.id.value);
        let staging = store
            .begin(&id.at, &id.batch_id)
            .map_err(|e| Stop::failed(format!("cannot create the batch directory: {e}")))?;
        let (written, organizations) = self.execute_and_write(&ctx, plan, ps, &sp, &staging).await?;
        phase.done("execute and write");
        let read_totals = sp.input.tap.totals();
        let tally = write_refusals(sp, &staging).await?;
        phase.done("write refused rows");
        if let Some(up) = &upstream {
            account_for_input(&ctx, plan, ps, &options.period, up, read_totals, &mut id).await?;
            phase.done("account for the input");
        }

        report.rows_in = tally.rows_in;
        report.rows_out = written.rows;
        report.rows_rejected = tally.rejected;
        report.reject_samples = tally.samples;
        report.removed = tally.removed;
        report.control_totals = written.totals_as_text();
        let at = id.at.clone();
        let manifest = manifest(plan, ps, &options.period, id, report, &staging, organizations);
        let (status, dir) = match store.commit(staging, &manifest, &at).await {
            Ok(Committed::New(dir)) => (Status::Written, dir),
            Ok(Committed::AlreadyThere(dir)) => (Status::Reused, dir),
            Err(e) => return Err(Stop::failed(format!("committing the batch: {e}"))),
        };
        phase.done("commit");
        let accepted = auto_review(s, &manifest, upstream.as_ref(), report);
        record_in_log(
            &options.warehouse,
            &store,
            &at,
            &manifest,
            status == Status::Written,
            &accepted,
        )
        .await?;
        phase.done("record in the lifecycle log");
        report.status = status;
        report.batch_location = Some(dir);
        Ok(())
    }

    /// Execute the plan straight into the staging batch's data files: one file per
    /// partition, or (a `for_each` stream) each organisation's rows under its own folder.
    async fn execute_and_write(
        &self,
        ctx: &SessionContext,
        plan: &Plan,
        ps: &PlannedStream,
        sp: &StreamPlan,
        staging: &Staging,
    ) -> Result<(write::Written, BTreeMap<String, OrganizationPart>), Stop> {
        let s = plan.def(ps);
        let each = &sp.for_each;
        // A `for_each` batch: each organisation's rows to one writer (one file each, not
        // one per writer), unless a declared order must be kept as sorted.
        let executable = write::Executable::new(sp.output.clone())
            .await
            .and_then(|x| match each {
                Some((column, _)) if s.order_by.is_empty() && self.partitions > 1 => {
                    x.partitioned_by(column, self.partitions)
                }
                _ => Ok(x),
            })
            .map_err(|e| Stop::failed(format!("planning: {e}")))?;
        let out_schema = Arc::new(arrow_schema(&s.columns, true));
        let mut organizations = BTreeMap::new();
        let written = match each {
            Some((column, orgs)) => {
                write::write_parquet_per_organization(&executable, &staging.data_dir(), out_schema, column)
                    .await
                    .map(|w| {
                        let empty = write::Written::default();
                        for org in orgs {
                            let part = w.parts.get(org).unwrap_or(&empty);
                            let part = OrganizationPart {
                                batch_id: String::new(),
                                rows: part.rows,
                                control_totals: part.totals_as_text(),
                                audience: Vec::new(),
                                inputs: Vec::new(),
                            };
                            organizations.insert(org.clone(), part);
                        }
                        w.total
                    })
            }
            None => write::write_parquet(&executable, &staging.data_dir(), out_schema).await,
        };
        // BILLFLOW_PLANS=DIR: each stream's physical plan as run, with its metrics, after
        // the plans of what its stages computed once while it was built.
        if let Some(dir) = std::env::var_os("BILLFLOW_PLANS") {
            let dir = PathBuf::from(dir);
            let path = dir.join(format!("{}.txt", s.id.value));
            let mut text = String::new();
            for (what, ran) in materialize::ran_once(ctx) {
                text.push_str(&format!("-- computed once: {what}\n{ran}\n"));
            }
            text.push_str(&format!("-- the stream\n{}", executable.with_metrics()));
            let wrote = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
            if let Err(e) = wrote {
                tracing::error!("BILLFLOW_PLANS: cannot write {}: {e}", path.display());
            }
        }
        let written = match written {
            Ok(w) => w,
            // The stages ran fused into one plan: name the one that fails by itself.
            Err(e) => return Err(Stop::failed(format!("while executing: {e}")).in_stage(sp.failing_stage().await)),
        };
        Ok((written, organizations))
    }
}

/// Who the lifecycle log says created or superseded a batch.
const RUN_ACTOR: &str = "billflow run";

/// Who the lifecycle log says accepted and published a batch under `review: auto`.
const AUTO_REVIEW_ACTOR: &str = "billflow run (review: auto)";

/// How many lifecycle entries a run writes at once (a `for_each` run has a batch per
/// organisation: thousands of small puts).
const LOG_CONCURRENCY: usize = 32;

/// How many times a run reads a batch's history again after another process appended
/// to it meanwhile (each time, that process moved the batch forward).
const LOG_RETRIES: usize = 8;

/// Record the batches of a committed run (one, or one per organisation of a `for_each`
/// run) in the warehouse's lifecycle log: each created (`ready`) unless it has a history
/// already, accepted and published at once when `review: auto` accepts it (`accepted`:
/// the batches and why), all as one entry of its log; and, for a batch this run committed
/// (`new_commit`), every older version of the same stream, organisation and period still current
/// superseded by it. Of two runs doing this at once, one records each entry; the other
/// reads what was recorded and goes on from there.
async fn record_in_log(
    warehouse: &StoreLocation,
    store: &Store,
    at: &batches::StreamLocation,
    committed: &Manifest,
    new_commit: bool,
    accepted: &AutoAccepted,
) -> Result<(), Stop> {
    use batches::lifecycle::{LifecycleError, Log};
    use futures::{StreamExt, TryStreamExt};
    let fail = |e: LifecycleError| Stop::failed(format!("recording the batch in the lifecycle log: {e}"));
    let log = Log::open(warehouse);
    let ours = committed.batches();
    // (batch, the newer version that supersedes it, or None for one of ours)
    let mut steps: Vec<(String, Option<String>)> = ours.iter().map(|b| (b.batch_id.clone(), None)).collect();
    if new_commit {
        let ids: std::collections::HashSet<&str> = ours.iter().map(|b| b.batch_id.as_str()).collect();
        for run in store.list(at).await {
            for older in run.batches() {
                let newer = ours
                    .iter()
                    .find(|b| b.organization == older.organization && b.period.label == older.period.label);
                if let Some(newer) = newer
                    && !ids.contains(older.batch_id.as_str())
                {
                    steps.push((older.batch_id.clone(), Some(newer.batch_id.clone())));
                }
            }
        }
    }
    futures::stream::iter(steps)
        .map(|(batch, by)| {
            let (log, fail) = (&log, &fail);
            async move {
                let why = accepted.why(&batch);
                // A batch this run has just committed has no history yet (if another
                // process wrote one meanwhile, the put conflicts and the history is read):
                // thousands of organisation batches are not listed one by one.
                let mut unread = new_commit && by.is_none();
                for _ in 0..LOG_RETRIES {
                    let history = if std::mem::take(&mut unread) {
                        Vec::new()
                    } else {
                        log.history(&batch).await.map_err(fail)?
                    };
                    let todo = steps_for(by.as_deref(), history.last().map(|e| e.to), why);
                    if todo.is_empty() {
                        return Ok(());
                    }
                    match log.append_after(&history, &batch, &todo).await {
                        Ok(_) => return Ok(()),
                        // Another process appended meanwhile: read what it did, go on.
                        Err(LifecycleError::Conflict { .. }) => continue,
                        Err(e) => return Err(fail(e)),
                    }
                }
                Err(Stop::failed(format!(
                    "recording batch {batch} in the lifecycle log: it changed {LOG_RETRIES} times while this run recorded it"
                )))
            }
        })
        .buffer_unordered(LOG_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// What a run records for `batch` given its status in the log (`None`: no history yet):
/// its creation, or its supersession `by` a newer version; then, for one of the run's own
/// batches that `review: auto` accepted (`why`), the acceptance and publication still
/// missing. Empty: nothing to record.
fn steps_for<'a>(
    by: Option<&'a str>,
    status: Option<batches::lifecycle::Status>,
    why: Option<&'a str>,
) -> Vec<batches::lifecycle::Step<'a>> {
    use batches::lifecycle::{Action, Status as Lifecycle, Step};
    let mut todo = Vec::new();
    match (by, status) {
        (None, None) => todo.push(Step::new(Action::Create, RUN_ACTOR)),
        (Some(_), Some(Lifecycle::Superseded | Lifecycle::Voided)) | (None, Some(_)) => {}
        // (With no history yet, an older batch is ready.)
        (Some(by), _) => todo.push(Step {
            by: Some(by),
            ..Step::new(Action::Supersede, RUN_ACTOR)
        }),
    }
    // A batch another run (with the same policy) accepted is published by this one too, so
    // that its own streams below read it published; one a person held or rejected stays as
    // they left it.
    if by.is_none() {
        let accept = Step::new(Action::Accept, AUTO_REVIEW_ACTOR).because(why);
        let publish = Step::new(Action::Publish, AUTO_REVIEW_ACTOR);
        match (why, status) {
            (Some(_), None | Some(Lifecycle::Ready)) => todo.extend([accept, publish]),
            (Some(_), Some(Lifecycle::Accepted)) => todo.push(publish),
            _ => {}
        }
    }
    todo
}

impl Upstream {
    /// Every data file of the batches read.
    fn files(&self) -> Vec<String> {
        self.batches.iter().flat_map(|b| b.files.iter().cloned()).collect()
    }
}

/// The batches of the stream above that a run reads.
pub(super) struct Upstream {
    report: Arc<StreamReport>,
    batches: Vec<UpstreamBatch>,
    /// The stream above is a `for_each` stream and these of its organisations have no
    /// batch published for the period: nothing below them is built this run.
    waiting: Vec<String>,
}

/// One batch of the stream above, as published.
struct UpstreamBatch {
    batch_id: String,
    /// A `for_each` stream's batch: its organisation.
    organization: Option<String>,
    /// Its data files (paths, or URLs in an object store), as its manifest lists them.
    files: Vec<String>,
    rows: u64,
    control_totals: BTreeMap<String, String>,
}

impl UpstreamBatch {
    /// The batch `m` of the run directory `dir` (a key of the warehouse).
    fn of(warehouse: &StoreLocation, dir: &str, m: &Manifest) -> Self {
        let files = m
            .files
            .iter()
            .filter(|f| f.path.ends_with(".parquet"))
            .map(|f| warehouse.url_of(&format!("{dir}/{}", m.file_path(f))))
            .collect();
        UpstreamBatch {
            batch_id: m.batch_id.clone(),
            organization: m.part_of.as_ref().map(|_| m.organization.clone()),
            files,
            rows: m.rows,
            control_totals: m.control_totals.clone(),
        }
    }
}

/// The batches of the stream above that this stream reads. Both streams one
/// organisation's: the batch this run made. Otherwise, for each organisation whose batch
/// it reads (the one above; a `for_each` stream above: those of this stream's chain, or
/// all of them when this stream is a `for_each` one too), the newest version for the
/// period that is published, or the batch this run made when it is this stream's own
/// organisation's; with none, the stream waits, saying for which batch and what it needs.
async fn published_input(
    plan: &Plan,
    ps: &PlannedStream,
    up: Arc<StreamReport>,
    period: &Period,
    warehouse: &StoreLocation,
) -> Result<Upstream, Stop> {
    use batches::lifecycle::{Log, Status as Lifecycle};
    let s = plan.def(ps);
    let p = &plan.pipeline;
    let (Some(above), Some(at), Some(run_id)) = (p.stream(&up.stream), up.at.clone(), up.batch_id.clone()) else {
        return Err(Stop::failed(format!("stream `{}` left no batch", up.stream)));
    };
    let run_dir = format!("{}/{run_id}", at.key());
    let run = batches::storage::read_manifest(warehouse, &run_dir)
        .await
        .map_err(|e| Stop::failed(format!("reading the batch above: {e}")))?;
    let this_run: Vec<UpstreamBatch> = run
        .batches()
        .iter()
        .map(|m| UpstreamBatch::of(warehouse, &run_dir, m))
        .collect();
    let one_organisation = s.for_each.is_none() && above.for_each.is_none() && above.owner.value == s.owner.value;
    if one_organisation {
        return Ok(Upstream {
            report: up,
            batches: this_run,
            waiting: vec![],
        });
    }
    // The organisations whose batches of the stream above this stream reads.
    let wanted: Vec<String> = match (&above.for_each, &s.for_each) {
        (None, _) => vec![above.owner.value.clone()],
        (Some(e), None) => p
            .chain(&s.owner.value)
            .iter()
            .filter(|o| o.tier.value == e.tier.value)
            .map(|o| o.id.value.clone())
            .collect(),
        (Some(e), Some(_)) => p.organizations_of(&e.tier.value).map(|o| o.id.value.clone()).collect(),
    };
    let fail = |e: batches::lifecycle::LifecycleError| Stop::failed(format!("reading the lifecycle log: {e}"));
    let log = Log::open(warehouse);
    let runs = batches::catalog::in_stream(warehouse, &at.key())
        .await
        .map_err(|e| Stop::failed(format!("listing the batches above: {e}")))?;
    // (created, batch) of the newest published version for each organisation.
    let mut newest: BTreeMap<String, (String, UpstreamBatch)> = BTreeMap::new();
    for (dir, m) in batches::catalog::batches_of(runs) {
        if m.period.label != period.label
            || !wanted.contains(&m.organization)
            || (above.for_each.is_some() && m.organization == s.owner.value)
            || newest
                .get(&m.organization)
                .is_some_and(|(created, _)| *created >= m.created_at)
            || log.status(&m.batch_id).await.map_err(fail)? != Lifecycle::Published
        {
            continue;
        }
        newest.insert(
            m.organization.clone(),
            (m.created_at.clone(), UpstreamBatch::of(warehouse, &dir, &m)),
        );
    }
    let mut this_run = this_run;
    let mut chosen = Vec::new();
    let mut waiting = Vec::new();
    for org in &wanted {
        if let Some((_, b)) = newest.remove(org) {
            chosen.push(b);
        } else if let Some(i) = this_run
            .iter()
            .position(|b| b.organization.as_deref() == Some(org.as_str()) && *org == s.owner.value)
        {
            // Its own organisation's batch of a `for_each` stream above: as this run made it.
            chosen.push(this_run.remove(i));
        } else {
            waiting.push(org.clone());
        }
    }
    if !chosen.is_empty() {
        return Ok(Upstream {
            report: up,
            batches: chosen,
            waiting,
        });
    }
    Err(waiting_for(above, &this_run, &wanted, period, &log).await)
}

/// Why a stream cannot run yet: the batch of the stream above it waits for, and what
/// would publish it.
async fn waiting_for(
    above: &StreamDef,
    this_run: &[UpstreamBatch],
    wanted: &[String],
    period: &Period,
    log: &batches::lifecycle::Log,
) -> Stop {
    let this = this_run
        .iter()
        .find(|b| b.organization.as_ref().is_none_or(|o| wanted.contains(o)))
        .map(|b| b.batch_id.clone())
        .unwrap_or_default();
    let status = match log.status(&this).await {
        Ok(s) => s.name().to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let owner = this_run
        .iter()
        .find(|b| b.batch_id == this)
        .and_then(|b| b.organization.clone())
        .unwrap_or_else(|| above.owner.value.clone());
    Stop {
        status: Status::Waiting,
        hint: Some(format!(
            "`billflow batch accept {this}` then `billflow batch publish {this}` (as `{owner}`), or give stream `{}` `review: auto`",
            above.id.value
        )),
        ..Stop::failed(format!(
            "waits for a batch of stream `{}` for {} to be published: batch {this} is {status}",
            above.id.value, period.label,
        ))
    }
}

/// Record what the run read of each upstream batch (rows and control totals) in the
/// inputs of the batch and of each organisation's batch: as the input tap totalled it
/// while the plan read it (`read_totals`), or, when no read was complete, read from its
/// files again.
async fn account_for_input(
    ctx: &SessionContext,
    plan: &Plan,
    ps: &PlannedStream,
    period: &Period,
    up: &Upstream,
    read_totals: Option<crate::engine::tap::KeptTotals>,
    id: &mut BatchIdentity,
) -> Result<(), Stop> {
    let s = plan.def(ps);
    let Some(above) = plan.pipeline.stream(&up.report.stream) else {
        return Ok(());
    };
    let files = up.files();
    let selection = s.period.as_ref().map(|c| inputs::PeriodSelection {
        column: &c.value,
        period,
    });
    let by = above.for_each.as_ref().map(|e| e.column.value.as_str());
    let schema = arrow_schema(&above.columns, true);
    let read = match read_totals {
        Some(totals) => inputs::consumed_from_tap(&totals, &schema),
        None => inputs::consumed(ctx, &files, &schema, selection, by)
            .await
            .map_err(|e| Stop::failed(format!("accounting for what was read of `{}`: {e}", above.id.value)))?,
    };
    let fill = |infos: &mut Vec<InputInfo>| {
        for info in infos.iter_mut().filter(|i| i.kind == "stream") {
            let key = by.and(info.organization.clone());
            info.consumed = Some(read.get(&key).cloned().unwrap_or_default());
        }
    };
    fill(&mut id.inputs);
    for part in id.parts.values_mut() {
        fill(&mut part.inputs);
    }
    Ok(())
}

/// What `review: auto` accepted of a run's batches, and why (the accepting event's note).
#[derive(Default)]
struct AutoAccepted {
    batches: std::collections::HashSet<String>,
    why: String,
}

impl AutoAccepted {
    fn why(&self, batch: &str) -> Option<&str> {
        self.batches.contains(batch).then_some(self.why.as_str())
    }
}

/// `review: auto`: which of the run's batches meet the conditions to be accepted and
/// published (its run's refused rows within the declared share, and what it read of each
/// upstream batch equal to what that batch published); the others stay ready for a
/// person to review, and the report says why.
fn auto_review(
    s: &StreamDef,
    committed: &Manifest,
    upstream: Option<&Upstream>,
    report: &mut StreamReport,
) -> AutoAccepted {
    let crate::definition::Review::Auto { max_rejected_percent } = s.review else {
        return AutoAccepted::default();
    };
    let (rejected, rows_in) = (committed.rows_rejected, committed.rows_in);
    let share = if rows_in == 0 {
        0.0
    } else {
        rejected as f64 * 100.0 / rows_in as f64
    };
    if share > max_rejected_percent {
        report.notes.push(format!(
            "review: auto: {share:.2}% of rows refused, over {max_rejected_percent}%: its batches are left for review"
        ));
        return AutoAccepted::default();
    }
    let mut accepted = AutoAccepted {
        batches: Default::default(),
        why: format!(
            "{rejected} of {rows_in} rows refused ({share:.2}%, at most {max_rejected_percent}%); what it read reconciles with what was published"
        ),
    };
    for b in committed.batches() {
        match unreconciled(&b, upstream) {
            Some(problem) => report
                .notes
                .push(format!("review: auto: left for review: {}: {problem}", b.batch_id)),
            None => {
                accepted.batches.insert(b.batch_id);
            }
        }
    }
    accepted
}

/// How what batch `b` read of an upstream batch differs from what that batch published,
/// if it does.
fn unreconciled(b: &Manifest, upstream: Option<&Upstream>) -> Option<String> {
    let up = upstream?;
    for input in b.inputs.iter().filter(|i| i.kind == "stream") {
        let (Some(id), Some(read)) = (&input.batch_id, &input.consumed) else {
            continue;
        };
        let Some(published) = up.batches.iter().find(|u| &u.batch_id == id) else {
            continue;
        };
        if let Some(difference) = batches::reconcile::difference(published.rows, &published.control_totals, read) {
            return Some(format!("of batch {id} it read {difference}"));
        }
    }
    None
}

/// Debug-level timings of a stream's phases (`RUST_LOG=billflow=debug`).
struct Phases<'a> {
    stream: &'a str,
    last: Instant,
}

impl<'a> Phases<'a> {
    fn new(stream: &'a str) -> Self {
        Phases {
            stream,
            last: Instant::now(),
        }
    }
    fn done(&mut self, phase: &str) {
        let now = Instant::now();
        let took = now - std::mem::replace(&mut self.last, now);
        tracing::debug!(stream = self.stream, phase, ?took, "phase done");
    }
}

/// The batch of the stream this one reads, if it reads one; a failed or skipped
/// upstream skips this stream.
fn upstream_batch(upstream: &[Option<Arc<StreamReport>>]) -> Result<Option<Arc<StreamReport>>, Stop> {
    let mut batch = None;
    for u in upstream {
        match u {
            Some(r) if matches!(r.status, Status::Written | Status::Reused) => batch = Some(r.clone()),
            Some(r) => {
                return Err(Stop {
                    status: Status::Skipped,
                    ..Stop::failed(format!(
                        "not run: its input stream `{}` did not produce a batch",
                        r.stream
                    ))
                });
            }
            None => return Err(Stop::failed("its input stream did not report")),
        }
    }
    Ok(batch)
}

/// Everything that decides the stream's output goes into its batch id: its definition
/// and stage texts, its input (file contents or upstream batch id), the references its
/// stages read, the period and billflow's version.
async fn identify(
    plan: &Plan,
    ps: &PlannedStream,
    upstream: Option<&Upstream>,
    period: &Period,
) -> Result<BatchIdentity, Stop> {
    let p = &plan.pipeline;
    let s = plan.def(ps);
    let inputs = input_fingerprints(plan, ps, upstream).await?;
    let vars = template_vars(plan, ps, period);
    let stage_prints: Vec<String> = ps
        .stages
        .iter()
        .map(|st| format!("{}:{}", st.kind, st.stage.fingerprint(&vars)))
        .collect();
    let definition = batches::fingerprint(&[("stream", &s.canonical), ("stages", &stage_prints.join("\u{1f}"))]);
    let print = |organization: &str, inputs: &[InputInfo]| {
        let inputs_text: Vec<String> = inputs
            .iter()
            .map(|i| format!("{}:{}:{}", i.kind, i.name, i.fingerprint))
            .collect();
        let print = batches::fingerprint(&[
            ("format", &batches::FORMAT_VERSION.to_string()),
            // A new billflow may compute differently (a fixed bug): its batches are new ones.
            ("engine", env!("CARGO_PKG_VERSION")),
            ("pipeline", &p.id.value),
            ("stream", &s.id.value),
            ("owner", organization),
            ("definition", &definition),
            ("period", &format!("{}..{}", period.start, period.end)),
            ("inputs", &inputs_text.join("\u{1f}")),
        ]);
        batches::batch_id(&period.label, &print)
    };
    let mut parts = BTreeMap::new();
    if let Some(each) = &s.for_each {
        let waiting = upstream.map(|u| u.waiting.as_slice()).unwrap_or_default();
        for org in p.organizations_of(&each.tier.value) {
            let chain: Vec<&str> = p.chain(&org.id.value).iter().map(|o| o.id.value.as_str()).collect();
            if chain.iter().any(|c| waiting.iter().any(|w| w == c)) {
                continue;
            }
            let own: Vec<InputInfo> = inputs
                .iter()
                .filter(|i| i.organization.as_deref().is_none_or(|o| chain.contains(&o)))
                .cloned()
                .collect();
            let batch_id = print(&org.id.value, &own);
            parts.insert(org.id.value.clone(), PartIdentity { batch_id, inputs: own });
        }
    }
    let at = StreamLocation {
        tier: ps.tier.clone(),
        organization: if s.for_each.is_some() {
            batches::EACH.to_string()
        } else {
            s.owner.value.clone()
        },
        stream: s.id.value.clone(),
    };
    Ok(BatchIdentity {
        batch_id: print(&s.owner.value, &inputs),
        definition,
        inputs,
        at,
        parts,
    })
}

/// The stream's input and the references its stages read, each with its fingerprint.
async fn input_fingerprints(
    plan: &Plan,
    ps: &PlannedStream,
    upstream: Option<&Upstream>,
) -> Result<Vec<InputInfo>, Stop> {
    let p = &plan.pipeline;
    let s = plan.def(ps);
    let mut infos = Vec::new();
    match &s.input {
        InputRef::Source(name) => {
            let t = p.source(&name.value).ok_or_else(|| {
                Stop::failed(format!("unknown source `{}`", name.value)).at(Some(name.location.clone()))
            })?;
            let info = inputs::fingerprint_table("source", p, t)
                .await
                .map_err(|e| Stop::failed(e.to_string()).at(Some(t.url.location.clone())))?;
            infos.push(info);
        }
        InputRef::Stream(name) => {
            for b in upstream.map(|u| u.batches.as_slice()).unwrap_or_default() {
                infos.push(InputInfo {
                    kind: "stream".into(),
                    name: name.value.clone(),
                    fingerprint: b.batch_id.clone(),
                    files: vec![],
                    batch_id: Some(b.batch_id.clone()),
                    organization: b.organization.clone(),
                    consumed: None,
                });
            }
        }
    }
    let read: Vec<String> = ps.stages.iter().flat_map(|st| st.stage.tables()).collect();
    for r in p.references.iter().filter(|r| read.contains(&r.name.value)) {
        let info = inputs::fingerprint_table("reference", p, r)
            .await
            .map_err(|e| Stop::failed(format!("reference `{}`: {e}", r.name.value)).at(Some(r.url.location.clone())))?;
        infos.push(info);
    }
    Ok(infos)
}

/// Write the rows refused along the way, one file per origin (the input, each stage with
/// `on_error: reject`, the contract, the organisation check), and count what came in and
/// what stages removed. The taps are read first: writing the rejects runs parts of the
/// plan again. A rejects file is computed only where its tap saw a refusal, or where no
/// read was complete (a tap that cannot tell).
async fn write_refusals(sp: StreamPlan, staging: &Staging) -> Result<Tally, Stop> {
    let refused_by = |t: &Tap| t.complete().map(|c| c.flagged);
    let maybe = |flagged: Option<u64>| flagged.is_none_or(|n| n > 0);
    let input_rows = sp.input.rows_in();
    let counts: Vec<_> = sp
        .side
        .take_counts()
        .into_iter()
        .map(|c| (refused_by(&c.tap), c))
        .collect();
    // (file, stage, rows)
    let mut refused: Vec<(String, Option<String>, DataFrame)> = Vec::new();
    if maybe(refused_by(&sp.input.tap))
        && let Some(rows) = sp.input.rejects.clone()
    {
        refused.push(("input.parquet".into(), None, rows));
    }
    for r in sp.side.take_rejects() {
        if maybe(refused_by(&r.tap)) {
            let file = format!("stage-{}.parquet", stage_file_name(&r.stage));
            refused.push((file, Some(r.stage), r.rows));
        }
    }
    for r in sp.refusals {
        if maybe(refused_by(&r.tap)) {
            refused.push((r.file.into(), None, r.rows));
        }
    }

    let mut tally = Tally {
        rows_in: 0,
        rejected: 0,
        samples: Vec::new(),
        removed: Vec::new(),
    };
    let mut input_refused = 0;
    // Stage names are unique per stream as files (validate checks it); a rejects file is
    // still never written twice.
    let mut files = std::collections::HashSet::new();
    for (file, stage, rows) in refused {
        if !files.insert(file.clone()) {
            return Err(Stop::failed(format!("two sets of refused rows would both go to {file}")).in_stage(stage));
        }
        let (n, samples) = write::write_rejects(rows, &staging.rejects_dir().join(&file))
            .await
            .map_err(|e| Stop::failed(format!("writing refused rows to {file}: {e}")).in_stage(stage))?;
        tally.rejected += n;
        if file == "input.parquet" {
            input_refused = n;
        }
        tally.samples.extend(samples);
    }
    // Rows in: the input tap's count when the plan read the input once; otherwise (a
    // stage that reads its input twice, or materialises it) count again, exactly.
    tally.rows_in = match input_rows {
        Some(n) => n,
        None => {
            let n = sp
                .input
                .df
                .clone()
                .count()
                .await
                .map_err(|e| Stop::failed(format!("counting input rows: {}", e.strip_backtrace())))?;
            n as u64 + input_refused
        }
    };
    for (flagged, c) in counts {
        let n = match flagged {
            Some(n) => n,
            None => {
                let failed = |e: datafusion::error::DataFusionError| {
                    Stop::failed(format!("counting removed rows: {}", e.strip_backtrace()))
                        .in_stage(Some(c.stage.clone()))
                };
                let before = c.before.count().await.map_err(failed)?;
                let after = c.after.count().await.map_err(failed)?;
                (before - after) as u64
            }
        };
        tally.removed.push((c.stage, c.what, n));
    }
    Ok(tally)
}

/// The batch's manifest, from what the run found and wrote.
fn manifest(
    plan: &Plan,
    ps: &PlannedStream,
    period: &Period,
    id: BatchIdentity,
    report: &StreamReport,
    staging: &Staging,
    organizations: BTreeMap<String, OrganizationPart>,
) -> Manifest {
    let p = &plan.pipeline;
    let s: &StreamDef = plan.def(ps);
    let mut parts = id.parts;
    let organizations = organizations
        .into_iter()
        .filter_map(|(org, part)| {
            let own = parts.remove(&org)?;
            let part = OrganizationPart {
                batch_id: own.batch_id,
                inputs: own.inputs,
                audience: audience(p, &org),
                ..part
            };
            Some((org, part))
        })
        .collect();
    Manifest {
        format: batches::FORMAT_VERSION,
        batch_id: id.batch_id,
        status: "committed".into(),
        files_in: None,
        pipeline: p.id.value.clone(),
        stream: s.id.value.clone(),
        kind: s.kind.name().into(),
        organization: s.owner.value.clone(),
        tier: ps.tier.clone(),
        period: PeriodInfo {
            label: period.label.clone(),
            start: period.start.to_string(),
            end: period.end.to_string(),
        },
        inputs: id.inputs,
        definition_fingerprint: id.definition,
        schema: s
            .output_columns()
            .map(|c| batches::ColumnInfo {
                name: c.name.value.clone(),
                ty: c.ty.to_string(),
                nullable: c.nullable,
            })
            .collect(),
        rows: report.rows_out,
        rows_in: report.rows_in,
        rows_rejected: report.rows_rejected,
        control_totals: report.control_totals.clone(),
        files: staging.files(batches::DATA_DIR).unwrap_or_default(),
        rejects: staging.files(batches::REJECTS_DIR).unwrap_or_default(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        billflow_version: env!("CARGO_PKG_VERSION").into(),
        organizations,
        audience: audience(p, &s.owner.value),
        part_of: None,
    }
}

/// The organisations directly below `organization`: those a batch of it is published to.
fn audience(p: &crate::definition::Pipeline, organization: &str) -> Vec<String> {
    p.organizations
        .iter()
        .filter(|o| o.upstream.as_ref().is_some_and(|u| u.value == organization))
        .map(|o| o.id.value.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::steps_for;
    use crate::batches::lifecycle::{Action, Status};

    fn actions(by: Option<&str>, status: Option<Status>, why: Option<&str>) -> Vec<Action> {
        steps_for(by, status, why).iter().map(|s| s.action).collect()
    }

    #[test]
    fn a_run_records_only_what_its_batches_still_miss() {
        use Action::*;
        let auto = Some("no rows refused");
        // One of the run's own batches: created, then accepted and published by auto.
        assert_eq!(actions(None, None, auto), [Create, Accept, Publish]);
        assert_eq!(actions(None, None, None), [Create]);
        assert_eq!(actions(None, Some(Status::Ready), auto), [Accept, Publish]);
        assert_eq!(actions(None, Some(Status::Accepted), auto), [Publish]);
        // What a person decided stays as they left it.
        for decided in [Status::Held, Status::Rejected, Status::Published, Status::Voided] {
            assert_eq!(actions(None, Some(decided), auto), [], "{decided:?}");
        }
        // An older version: superseded once, whatever its status, unless already gone.
        assert_eq!(actions(Some("new"), None, auto), [Supersede]);
        assert_eq!(actions(Some("new"), Some(Status::Published), None), [Supersede]);
        assert_eq!(actions(Some("new"), Some(Status::Superseded), None), []);
        assert_eq!(actions(Some("new"), Some(Status::Voided), None), []);
        let superseded = steps_for(Some("new"), Some(Status::Ready), None);
        assert_eq!(superseded[0].by, Some("new"));
    }
}
