//! One stream's plan for one period: input -> period -> stages -> contract, lazily, with
//! the checkpoints that count what each step refused. `run`, `check`, `explain` and
//! `billflow test` all build it here, so what they run, check and show cannot drift.

use std::ops::Not;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::{DataFrame, SessionContext, coalesce, concat, ident, lit};

use super::contract;
use super::inputs::{self, PeriodSelection, StreamInput};
use crate::definition::{Diagnostic, InputRef, Location, StreamDef, TableDef, TableFormat, arrow_schema};
use crate::engine::side::{SideOutputs, reject_rows};
use crate::engine::tap::Tap;
use crate::plan::{Period, Plan, PlannedStream};
use crate::stages::{SplitAround, Stage, StageEnv, StageError, TemplateVars};

/// Where a stream's input comes from for one build of its plan.
#[derive(Clone, Copy, Debug)]
pub enum Inputs<'a> {
    /// The rows of the period: the source's files, or the committed batches (their data
    /// files) of the stream it reads.
    Read { upstream: Option<&'a [String]> },
    /// An empty table of the input's schema: the plan's shape, with no data read (the
    /// source's file headers are).
    Empty,
    /// A sample file in place of the input (`billflow test`), whatever the period.
    Sample(&'a Path),
}

/// Why a stream's plan could not be built.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PlanError {
    /// The stream's input (a source, an upstream batch, a sample, the references) could
    /// not be read.
    #[error("{message}")]
    Input {
        message: String,
        location: Option<Location>,
    },
    /// A stage could not plan its step, or paused the stream (`error.waiting`).
    #[error("stage `{stage}`: {error}")]
    Stage {
        stage: String,
        /// The stage's definition in the pipeline file.
        location: Location,
        error: Box<StageError>,
    },
    /// The last stage's output does not fit the stream's declared columns.
    #[error("{}", .problems.first().map(ToString::to_string).unwrap_or_else(|| "the stream's contract is not met".into()))]
    Contract { stage: String, problems: Vec<Diagnostic> },
    /// DataFusion refused a step billflow adds around the stages (contract, organisation
    /// check, order).
    #[error("{step}: {message}")]
    Plan { step: &'static str, message: String },
}

impl PlanError {
    fn input(message: impl std::fmt::Display, location: Option<Location>) -> Self {
        PlanError::Input {
            message: message.to_string(),
            location,
        }
    }
    fn plan(step: &'static str, e: datafusion::error::DataFusionError) -> Self {
        PlanError::Plan {
            step,
            message: e.strip_backtrace(),
        }
    }
}

/// Rows refused by a check billflow adds (the contract, the organisation of a `for_each`
/// row): a lazy plan over them, the file they go to, and the tap that counts them.
pub struct Refusal {
    pub file: &'static str,
    pub rows: DataFrame,
    pub tap: Tap,
}

/// A stream's lazy plan for one period.
pub struct StreamPlan {
    /// The input for the period, with its refused rows and its counting tap.
    pub input: StreamInput,
    /// The published rows: the declared columns, refused rows left out, in the declared
    /// order.
    pub output: DataFrame,
    /// What the stages left beside their output (refused rows, removed-row counts).
    pub side: SideOutputs,
    /// The contract's refusals, then (a `for_each` stream) the organisation check's.
    pub refusals: Vec<Refusal>,
    /// A `for_each` stream's organisation column and the organisations of its tier.
    pub for_each: Option<(String, Vec<String>)>,
    /// Each stage's output (lazy), to tell which of the stages fused into one plan
    /// failed when the plan fails at run.
    pub stage_outputs: Vec<(String, DataFrame)>,
}

impl StreamPlan {
    /// The first stage whose output, run by itself, fails: the stage to name for a run
    /// error of stages fused into one plan. It runs the stages again, one more each time,
    /// so it is asked only once the run has failed.
    pub async fn failing_stage(&self) -> Option<String> {
        use futures::StreamExt;
        for (name, df) in &self.stage_outputs {
            // Every column is computed (a count could skip a failing expression).
            let failed = match df.clone().execute_stream().await {
                Err(_) => true,
                Ok(mut rows) => {
                    let mut failed = false;
                    while let Some(batch) = rows.next().await {
                        if batch.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    failed
                }
            };
            if failed {
                return Some(name.clone());
            }
        }
        None
    }
}

/// A `for_each` stream's organisation column and the organisations of its tier.
fn for_each_organizations(plan: &Plan, s: &StreamDef) -> Option<(String, Vec<String>)> {
    s.for_each.as_ref().map(|e| {
        (
            e.column.value.clone(),
            plan.pipeline
                .organizations_of(&e.tier.value)
                .map(|o| o.id.value.clone())
                .collect(),
        )
    })
}

/// Build the stream's plan: read its input for the period, apply its stages, check the
/// contract. `executing`: the plan will run (a stage may then act outside it, e.g. a
/// `manual` export); `on_stage` is told as each stage starts planning.
pub async fn build(
    ctx: &SessionContext,
    plan: &Plan,
    ps: &PlannedStream,
    period: &Period,
    inputs: Inputs<'_>,
    executing: bool,
    on_stage: &(dyn Fn(usize, &str) + Sync),
) -> Result<StreamPlan, PlanError> {
    let input = read_input(ctx, plan, ps, period, inputs).await?;
    build_on(ctx, plan, ps, period, input, executing, on_stage).await
}

/// [`build`] over an input already read (see [`read_input`]).
pub async fn build_on(
    ctx: &SessionContext,
    plan: &Plan,
    ps: &PlannedStream,
    period: &Period,
    input: StreamInput,
    executing: bool,
    on_stage: &(dyn Fn(usize, &str) + Sync),
) -> Result<StreamPlan, PlanError> {
    let s = plan.def(ps);
    let vars = template_vars(plan, ps, period);
    let side = SideOutputs::default();
    let (staged, stage_outputs) = apply_stages(ps, input.df.clone(), ctx, &vars, &side, executing, on_stage).await?;
    let (published, contract) = apply_contract(ps, s, staged)?;
    let mut refusals = vec![contract];
    let for_each = for_each_organizations(plan, s);
    let published = match &for_each {
        Some((column, orgs)) => {
            let tier = s.for_each.as_ref().map(|e| e.tier.value.as_str()).unwrap_or_default();
            let (kept, refused) = check_organizations(published, column, orgs, tier)?;
            refusals.push(refused);
            kept
        }
        None => published,
    };
    let output = in_declared_order(published, s)?;
    Ok(StreamPlan {
        input,
        output,
        side,
        refusals,
        for_each,
        stage_outputs,
    })
}

/// The stream's input for the period (source rows typed as declared, refused rows aside),
/// with the references its stages read registered in `ctx`.
pub async fn read_input(
    ctx: &SessionContext,
    plan: &Plan,
    ps: &PlannedStream,
    period: &Period,
    inputs: Inputs<'_>,
) -> Result<StreamInput, PlanError> {
    let p = &plan.pipeline;
    let s = plan.def(ps);
    // Only the references the stages read are loaded into memory (a run reads them once).
    let load: Vec<String> = match inputs {
        Inputs::Read { .. } => ps.stages.iter().flat_map(|st| st.stage.tables()).collect(),
        Inputs::Empty | Inputs::Sample(_) => Vec::new(),
    };
    inputs::register_references(ctx, p, &load)
        .await
        .map_err(|e| PlanError::input(e, None))?;
    let selection = s.period.as_ref().map(|c| PeriodSelection {
        column: &c.value,
        period,
    });
    match (&s.input, inputs) {
        (InputRef::Source(name), Inputs::Read { .. }) => {
            let t = source(plan, &name.value, &name.location)?;
            inputs::read_source(ctx, p, t, selection).await.map_err(|e| {
                PlanError::input(
                    format!("reading source `{}`: {e}", t.name.value),
                    Some(t.url.location.clone()),
                )
            })
        }
        (InputRef::Stream(name), Inputs::Read { upstream: batches }) => {
            let up = upstream(plan, &name.value)?;
            let Some(files) = batches else {
                return Err(PlanError::input(
                    format!("no batch of input stream `{}`", name.value),
                    None,
                ));
            };
            let by = up.for_each.as_ref().map(|e| e.column.value.as_str());
            inputs::read_stream_batch(ctx, files, &arrow_schema(&up.columns, true), selection, by)
                .await
                .map_err(|e| PlanError::input(format!("reading batch of `{}`: {e}", name.value), None))
        }
        (InputRef::Source(name), Inputs::Empty) => {
            let t = source(plan, &name.value, &name.location)?;
            let read = inputs::read_source(ctx, p, t, None).await.map_err(|e| {
                PlanError::input(format!("source `{}`: {e}", t.name.value), Some(t.url.location.clone()))
            })?;
            empty_input(ctx, Arc::new(read.df.schema().as_arrow().clone()))
        }
        (InputRef::Stream(name), Inputs::Empty) => {
            let up = upstream(plan, &name.value)?;
            empty_input(ctx, Arc::new(arrow_schema(&up.columns, true)))
        }
        (InputRef::Source(name), Inputs::Sample(file)) => {
            let t = source(plan, &name.value, &name.location)?;
            let as_sample = TableDef {
                name: t.name.clone(),
                url: t.url.clone(),
                format: format_of(file),
                schema: t.schema.clone(),
                location: t.location.clone(),
            };
            inputs::read_source_files(ctx, &as_sample, &[file.to_path_buf()], None)
                .await
                .map_err(|e| PlanError::input(format!("sample {}: {e}", file.display()), None))
        }
        (InputRef::Stream(name), Inputs::Sample(file)) => {
            let up = upstream(plan, &name.value)?;
            let schema = arrow_schema(&up.columns, true);
            let df = inputs::read_files(ctx, &[file.to_path_buf()], format_of(file), Some(&schema))
                .await
                .map_err(|e| PlanError::input(format!("sample {}: {e}", file.display()), None))?;
            Ok(StreamInput::whole(df))
        }
    }
}

fn source<'p>(plan: &'p Plan, name: &str, at: &Location) -> Result<&'p TableDef, PlanError> {
    plan.pipeline
        .source(name)
        .ok_or_else(|| PlanError::input(format!("unknown source `{name}`"), Some(at.clone())))
}

fn upstream<'p>(plan: &'p Plan, name: &str) -> Result<&'p StreamDef, PlanError> {
    plan.pipeline
        .stream(name)
        .ok_or_else(|| PlanError::input(format!("unknown stream `{name}`"), None))
}

fn empty_input(ctx: &SessionContext, schema: SchemaRef) -> Result<StreamInput, PlanError> {
    let df = ctx
        .read_batch(RecordBatch::new_empty(schema))
        .map_err(|e| PlanError::plan("an empty input", e))?;
    Ok(StreamInput::whole(df))
}

/// A sample file's format, from its extension (CSV with a header otherwise).
fn format_of(path: &Path) -> TableFormat {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if lower.ends_with(".parquet") {
        TableFormat::Parquet
    } else if lower.ends_with(".json") || lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        TableFormat::Ndjson
    } else {
        TableFormat::Csv {
            delimiter: b',',
            has_header: true,
        }
    }
}

/// The values `{{ ... }}` in a stream's stages expand to.
pub fn template_vars(plan: &Plan, ps: &PlannedStream, period: &Period) -> TemplateVars {
    let s = plan.def(ps);
    let p = &plan.pipeline;
    let owner = p.organization(&s.owner.value);
    // The vendor at the top of the owner's chain.
    let vendor = p.chain(&s.owner.value).last().copied();
    let mut values: Vec<(String, String)> = vec![
        ("pipeline".into(), p.id.value.clone()),
        ("stream".into(), s.id.value.clone()),
        ("tier".into(), ps.tier.clone()),
        ("period".into(), period.label.clone()),
        ("period_start".into(), period.start.to_string()),
        ("period_end".into(), period.end.to_string()),
    ];
    // A `for_each` stream runs for many organisations at once: no single owner.
    if s.for_each.is_none() {
        values.extend([
            ("owner_name".into(), owner.map(|o| o.name.clone()).unwrap_or_default()),
            (
                "owner_currency".into(),
                owner
                    .and_then(|o| o.currency.as_ref())
                    .map(|c| c.value.clone())
                    .unwrap_or_default(),
            ),
            ("vendor_name".into(), vendor.map(|o| o.name.clone()).unwrap_or_default()),
            ("owner".into(), s.owner.value.clone()),
        ]);
    }
    TemplateVars { values }
}

/// Apply a stream's stages in order, lazily; SQL and built-in stages fuse into one plan.
async fn apply_stages(
    ps: &PlannedStream,
    input: DataFrame,
    ctx: &SessionContext,
    vars: &TemplateVars,
    side: &SideOutputs,
    executing: bool,
    on_stage: &(dyn Fn(usize, &str) + Sync),
) -> Result<(DataFrame, Vec<(String, DataFrame)>), PlanError> {
    let mut df = input;
    // The plan after each stage, to name the stage that fails.
    let mut after: Vec<(String, DataFrame)> = Vec::new();
    let env = |k: usize| StageEnv {
        ctx,
        vars,
        stage: &ps.stages[k].name,
        side,
        executing,
    };
    let apply = |k: usize, stage: Arc<dyn Stage>, df: DataFrame| {
        let env = env(k);
        async move { stage.apply(df, &env).await.map_err(|error| stage_error(ps, k, error)) }
    };
    let mut k = 0;
    while k < ps.stages.len() {
        let st = &ps.stages[k];
        on_stage(k, &st.name);
        if let Some((split, grouping, outputs)) = split_around_next(ps, k) {
            // Stage k adds columns that only group stage k + 1's rows: refuse rows, group
            // them, then add the columns to the groups (the same output, computed on
            // fewer keys and rows).
            df = apply(k, split.before, df).await?;
            after.push((st.name.clone(), df.clone()));
            on_stage(k + 1, &ps.stages[k + 1].name);
            df = apply(k + 1, grouping, df).await?;
            df = apply(k, split.after, df).await?;
            df = df
                .select_columns(&outputs.iter().map(String::as_str).collect::<Vec<_>>())
                .map_err(|e| stage_error(ps, k + 1, StageError::new(e.strip_backtrace())))?;
            after.push((ps.stages[k + 1].name.clone(), df.clone()));
            k += 2;
            continue;
        }
        df = apply(k, st.stage.clone(), df).await?;
        after.push((st.name.clone(), df.clone()));
        k += 1;
    }
    // Checking: type-check and optimise the plan, so what only shows there (a literal that
    // does not cast, a predicate that is no boolean) is found at validate, named by the
    // first stage whose plan fails, rather than at run. Once for the whole stream; stage by
    // stage only when it fails.
    if !executing && df.clone().into_optimized_plan().is_err() {
        for (k, (_, stage_df)) in after.iter().enumerate() {
            if let Err(e) = stage_df.clone().into_optimized_plan() {
                return Err(stage_error(ps, k, StageError::new(e.strip_backtrace())));
            }
        }
    }
    Ok((df, after))
}

/// Stage `k` split around stage `k + 1`, a grouping (see `Stage::split_around`): the two
/// halves, the grouping without the columns the second half adds, and the grouping's
/// output columns in order.
fn split_around_next(ps: &PlannedStream, k: usize) -> Option<(SplitAround, Arc<dyn Stage>, Vec<String>)> {
    let next = ps.stages.get(k + 1)?;
    let grouping = next.stage.grouping()?;
    let split = ps.stages[k].stage.split_around(&grouping)?;
    let fewer = next.stage.grouping_without(&split.added)?;
    Some((split, fewer, grouping.outputs))
}

fn stage_error(ps: &PlannedStream, k: usize, error: StageError) -> PlanError {
    let st = &ps.stages[k];
    PlanError::Stage {
        stage: st.name.clone(),
        location: st.def.location.clone(),
        error: Box::new(error),
    }
}

/// The contract: the last stage's output must fit the declared columns; rows that break
/// them (a value that does not convert, a NULL in a required column) are refused; the
/// declared columns are published.
fn apply_contract(ps: &PlannedStream, s: &StreamDef, staged: DataFrame) -> Result<(DataFrame, Refusal), PlanError> {
    let last = ps
        .stages
        .last()
        .map(|st| st.name.clone())
        .unwrap_or_else(|| "input".into());
    let raw: SchemaRef = Arc::new(staged.schema().as_arrow().clone());
    let problems = contract::check_schema(&s.id.value, &last, &raw, &s.columns);
    if !problems.is_empty() {
        return Err(PlanError::Contract { stage: last, problems });
    }
    let checks = contract::row_checks(&raw, &s.columns);
    let tap = Tap::new("contract");
    let rows = reject_rows(staged.clone(), checks.bad.clone(), checks.reason, "contract")
        .map_err(|e| PlanError::plan("the contract's rejects", e))?;
    let published = tap
        .apply(staged, checks.bad.clone(), checks.bad.not())
        .and_then(|d| d.select(contract::output_projection(&raw, &s.columns)))
        .map_err(|e| PlanError::plan("the contract", e))?;
    let refusal = Refusal {
        file: "output.parquet",
        rows,
        tap,
    };
    Ok((published, refusal))
}

/// A `for_each` stream: every row must name an organisation of the tier in `column`.
fn check_organizations(
    df: DataFrame,
    column: &str,
    organizations: &[String],
    tier: &str,
) -> Result<(DataFrame, Refusal), PlanError> {
    let c = ident(column);
    let bad = c.clone().is_null().or(c
        .clone()
        .in_list(organizations.iter().map(|o| lit(o.clone())).collect(), true));
    let reason = concat(vec![
        lit(format!("`{column}` `")),
        coalesce(vec![c, lit("NULL")]),
        lit(format!("` is not an organisation of tier `{tier}`")),
    ]);
    let rows = reject_rows(df.clone(), bad.clone(), reason, "for_each")
        .map_err(|e| PlanError::plan("the organisation check's rejects", e))?;
    let tap = Tap::new("organization");
    let kept = tap
        .apply(df, bad.clone(), bad.not())
        .map_err(|e| PlanError::plan("the organisation check", e))?;
    let refusal = Refusal {
        file: "organization.parquet",
        rows,
        tap,
    };
    Ok((kept, refusal))
}

/// A declared `order_by`: one sorted run (DataFusion spills it to disk when large).
fn in_declared_order(df: DataFrame, s: &StreamDef) -> Result<DataFrame, PlanError> {
    if s.order_by.is_empty() {
        return Ok(df);
    }
    df.sort(s.order_by.iter().map(|o| ident(&o.value).sort(true, true)).collect())
        .map_err(|e| PlanError::plan("ordering the batch", e))
}
