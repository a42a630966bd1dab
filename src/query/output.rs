//! A result as an aligned table (for a terminal), CSV, JSON lines or Parquet, so it can
//! feed a spreadsheet or another tool. Decimals stay exact text in every format.

use std::io::Write;

use super::{Answer, QueryError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Write `answer` to `sink` as `format`, buffered, and flush it.
pub fn write(answer: &Answer, format: Format, sink: impl Write + Send) -> Result<(), QueryError> {
    let failed = |e: std::io::Error| QueryError::Internal(format!("writing the result: {e}"));
    let mut out = std::io::BufWriter::new(sink);
    write_as(answer, format, &mut out)?;
    out.flush().map_err(failed)
}

fn write_as(answer: &Answer, format: Format, out: &mut (impl Write + Send)) -> Result<(), QueryError> {
    let failed = |e: std::io::Error| QueryError::Internal(format!("writing the result: {e}"));
    match format {
        Format::Table => {
            let table = arrow::util::pretty::pretty_format_batches_with_schema(answer.schema.clone(), &answer.batches)?;
            let rows: usize = answer.batches.iter().map(|b| b.num_rows()).sum();
            writeln!(out, "{table}").map_err(failed)?;
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(failed)?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(out);
            if answer.batches.is_empty() {
                w.write(&arrow::record_batch::RecordBatch::new_empty(answer.schema.clone()))?;
            }
            for b in &answer.batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in &answer.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let schema = answer.batches.first().map_or(answer.schema.clone(), |b| b.schema());
            let mut w = parquet::arrow::ArrowWriter::try_new(out, schema, None)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            for b in &answer.batches {
                w.write(b).map_err(|e| QueryError::Internal(e.to_string()))?;
            }
            w.close().map_err(|e| QueryError::Internal(e.to_string()))?;
        }
    }
    Ok(())
}
