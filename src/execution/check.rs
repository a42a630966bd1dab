//! Checking and explaining a plan without running it: every stream's plan is built on
//! empty inputs (file headers are read, not data) by the same builder a run uses.

use std::fmt::Write;

use arrow::datatypes::{DataType, Schema};

use super::stream_plan::{self, Inputs, PlanError};
use super::{Engine, contract, inputs};
use crate::definition::diagnostics::did_you_mean;
use crate::definition::{Diagnostic, Diagnostics, InputRef, StreamDef};
use crate::plan::{Period, Plan};

impl Engine {
    /// Infer every stream's schema through its stages on empty inputs and compare it with
    /// the stream's declared columns. Reads file headers and schemas, not data.
    pub async fn check(&self, plan: &Plan) -> Diagnostics {
        let mut diags = check_references(self, plan).await;
        if !diags.is_empty() {
            return diags;
        }
        let period = Period::current_month();
        for ps in &plan.streams {
            let s = plan.def(ps);
            let ctx = self.session();
            let input = match stream_plan::read_input(&ctx, plan, ps, &period, Inputs::Empty).await {
                Ok(input) => input,
                Err(e) => {
                    diags.extend(diagnostic(s, e));
                    continue;
                }
            };
            if let Some(d) = period_column(s, input.df.schema().as_arrow()) {
                diags.push(d);
            }
            if let Err(e) = stream_plan::build_on(&ctx, plan, ps, &period, input, false, &|_, _| {}).await {
                diags.extend(diagnostic(s, e));
            }
        }
        // Streams sharing stages through `extends` would repeat the same finding.
        let mut seen = std::collections::HashSet::new();
        diags.list.retain(|d| seen.insert(d.to_string()));
        diags.sorted()
    }
}

/// Every reference must read as declared.
async fn check_references(engine: &Engine, plan: &Plan) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let probe = engine.session();
    for r in &plan.pipeline.references {
        if let Err(e) = inputs::read_table(&probe, &plan.pipeline, r).await {
            diags.push(Diagnostic::new(
                format!("reference `{}`: {e}", r.name.value),
                Some(r.location.clone()),
            ));
        }
    }
    diags
}

/// A plan error as the diagnostics `check` reports (a contract may give several).
fn diagnostic(s: &StreamDef, e: PlanError) -> Diagnostics {
    let mut diags = Diagnostics::default();
    match e {
        PlanError::Input { message, location } => {
            diags.push(Diagnostic::new(message, location.or_else(|| Some(s.location.clone()))));
        }
        PlanError::Stage { stage, location, error } => diags.push(
            Diagnostic::new(
                format!("stage `{stage}` of stream `{}`: {}", s.id.value, error.message),
                error.location.clone().or(Some(location)),
            )
            .maybe_hint(error.hint.clone()),
        ),
        PlanError::Contract { problems, .. } => problems.into_iter().for_each(|d| diags.push(d)),
        e @ PlanError::Plan { .. } => diags.push(Diagnostic::new(e.to_string(), Some(s.location.clone()))),
    }
    diags
}

/// The stream's period column must be a date or timestamp column of its input.
fn period_column(s: &StreamDef, input: &Schema) -> Option<Diagnostic> {
    let col = s.period.as_ref()?;
    let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
    match input.field_with_name(&col.value) {
        Err(_) => Some(
            Diagnostic::new(
                format!(
                    "period column `{}` is not a column of stream `{}`'s input",
                    col.value, s.id.value
                ),
                Some(col.location.clone()),
            )
            .expected(format!("a date or timestamp column: {}", names.join(", ")))
            .maybe_hint(did_you_mean(&col.value, names.iter().copied())),
        ),
        Ok(f)
            if !matches!(
                f.data_type(),
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
            ) =>
        {
            Some(
                Diagnostic::new(
                    format!(
                        "period column `{}` is {}, not a date",
                        col.value,
                        contract::describe_type(f.data_type())
                    ),
                    Some(col.location.clone()),
                )
                .expected("a date or timestamp column")
                .hint("declare the column as `date` or `timestamp` in the source's schema"),
            )
        }
        Ok(_) => None,
    }
}

/// `explain --verbose`: DataFusion's logical and physical plan of each stream, as a run
/// builds it. A stream reading a source is planned over the source's files (so the scan,
/// its projection and the period's pruning show); a stream reading another stream, or with
/// a stage that materialises its input, over an empty input of its schema (its input may
/// not exist yet, and materialising would read the data).
pub async fn explain_plans(engine: &Engine, plan: &Plan) -> String {
    let mut out = String::new();
    let period = Period::current_month();
    for ps in &plan.streams {
        let s = plan.def(ps);
        let _ = writeln!(out, "\n== stream {} ==", s.id.value);
        let ctx = engine.session();
        let materialises = ps.stages.iter().any(|st| !st.stage.fuses());
        let inputs = match &s.input {
            InputRef::Source(_) if !materialises => Inputs::Read { upstream: None },
            _ => Inputs::Empty,
        };
        let df = match stream_plan::build(&ctx, plan, ps, &period, inputs, false, &|_, _| {}).await {
            Ok(sp) => sp.output,
            Err(e) => {
                let _ = writeln!(out, "cannot plan: {e}");
                continue;
            }
        };
        match df.clone().into_optimized_plan() {
            Ok(lp) => {
                let _ = writeln!(out, "-- logical plan (optimised)\n{}", lp.display_indent());
            }
            Err(e) => {
                let _ = writeln!(out, "logical plan: {}", e.strip_backtrace());
            }
        }
        match df.create_physical_plan().await {
            Ok(pp) => {
                let _ = writeln!(
                    out,
                    "-- physical plan\n{}",
                    datafusion::physical_plan::displayable(pp.as_ref()).indent(true)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "physical plan: {}", e.strip_backtrace());
            }
        }
    }
    out
}
