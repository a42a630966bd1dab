//! `billflow test`: run each stream that declares a `sample` on its sample input and
//! compare the result with the expected rows, the way dbt users test models before a run.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::CsvReadOptions;

use crate::definition::arrow_schema;
use crate::execution::Engine;
use crate::execution::stream_plan::{self, Inputs, PlanError};
use crate::plan::{Period, Plan};

/// Why a sample could not be run or compared.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] DataFusionError),
    #[error("reading {}: {}", .file.display(), .source.strip_backtrace())]
    Expected { file: PathBuf, source: DataFusionError },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

#[derive(Debug)]
pub struct SampleOutcome {
    pub stream: String,
    pub expected_rows: usize,
    pub actual_rows: usize,
    /// Expected rows the stream did not produce.
    pub missing: Vec<String>,
    /// Rows the stream produced that were not expected.
    pub unexpected: Vec<String>,
    /// Rows refused by the input or the contract, with their reason.
    pub rejected: Vec<String>,
    pub error: Option<String>,
}

impl SampleOutcome {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Each row as `col=value, ...` text, sorted: order-insensitive comparison.
pub fn rows_as_text(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<String>, ArrowError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            let cells: Vec<String> = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, fmt)| format!("{}={}", f.name(), fmt.value(row)))
                .collect();
            out.push(cells.join(", "));
        }
    }
    out.sort();
    Ok(out)
}

/// Multiset difference a - b of sorted lists.
fn minus(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && b[j] < a[i] {
            j += 1;
        } else {
            out.push(a[i].clone());
            i += 1;
        }
    }
    out
}

pub async fn run_samples(engine: &Engine, plan: &Plan) -> Vec<SampleOutcome> {
    let mut out = Vec::new();
    for ps in &plan.streams {
        let s = plan.def(ps);
        let Some(sample) = &s.sample else { continue };
        let mut outcome = SampleOutcome {
            stream: s.id.value.clone(),
            expected_rows: 0,
            actual_rows: 0,
            missing: vec![],
            unexpected: vec![],
            rejected: vec![],
            error: None,
        };
        if let Err(e) = run_one(
            engine,
            plan,
            ps,
            &sample.input.value,
            &sample.expected.value,
            &mut outcome,
        )
        .await
        {
            outcome.error = Some(e.to_string());
        }
        out.push(outcome);
    }
    out
}

async fn run_one(
    engine: &Engine,
    plan: &Plan,
    ps: &crate::plan::PlannedStream,
    input_path: &str,
    expected_path: &str,
    outcome: &mut SampleOutcome,
) -> Result<(), SampleError> {
    let p = &plan.pipeline;
    let s = plan.def(ps);
    let ctx = engine.session();
    let input_file: PathBuf = p.resolve(input_path);
    let period = Period::current_month();
    let sp = stream_plan::build(&ctx, plan, ps, &period, Inputs::Sample(&input_file), false, &|_, _| {}).await?;
    let out_schema: SchemaRef = Arc::new(arrow_schema(&s.columns, true));
    let actual_batches = sp.output.collect().await?;
    let expected_file = p.resolve(expected_path);
    let expected = ctx
        .read_csv(
            expected_file.to_string_lossy().to_string(),
            CsvReadOptions::new()
                .has_header(true)
                .schema(&out_schema)
                .file_extension(""),
        )
        .await?
        .collect()
        .await
        .map_err(|source| SampleError::Expected {
            file: expected_file.clone(),
            source,
        })?;
    let a = rows_as_text(&out_schema, &actual_batches)?;
    let e = rows_as_text(&out_schema, &expected)?;
    outcome.actual_rows = a.len();
    outcome.expected_rows = e.len();
    outcome.missing = minus(&e, &a);
    outcome.unexpected = minus(&a, &e);
    let stage_rejects = sp.side.take_rejects().into_iter().map(|r| r.rows);
    let checks = sp.refusals.into_iter().map(|r| r.rows);
    for rej in sp.input.rejects.into_iter().chain(stage_rejects).chain(checks) {
        let batches = rej.collect().await?;
        let schema: SchemaRef = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        outcome.rejected.extend(rows_as_text(&schema, &batches)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::minus;

    #[test]
    fn multiset_difference() {
        let a: Vec<String> = ["a", "b", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = ["b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(minus(&a, &b), vec!["a", "b"]);
        assert_eq!(minus(&b, &a), vec!["d"]);
    }
}
