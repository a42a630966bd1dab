//! Writing a stream's output as Parquet, one file per partition, in parallel; row counts
//! and decimal control totals are taken from the very batches written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, SchemaRef};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Why a batch's files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("control total of `{column}`: {source}")]
    Total {
        column: String,
        source: arrow::error::ArrowError,
    },
    #[error("control total of `{column}` overflows decimal(38)")]
    TotalOverflow { column: String },
    #[error("the organisation column `{column}` is {ty}, not a string")]
    OrganizationType { column: String, ty: DataType },
    #[error("{rows} rows have no organisation in `{column}`")]
    NoOrganization { rows: usize, column: String },
    #[error("writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Row groups of about a million rows: large enough for scans, small enough to prune.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// zstd (level 3, as DuckDB and Polars write), row groups of about a million rows, and
/// dictionary encoding for the columns it pays on. Numbers that are not dates (ids,
/// quantities, amounts) are mostly distinct per row: a dictionary for them costs a hash per
/// value, is dropped anyway once it outgrows its page, and compresses worse than plain
/// values under zstd (the generated 10M-row job: 15% smaller output, 1 s less).
///
/// A file of fewer than [`SMALL_FILE_ROWS`] rows (an organisation's part of a `for_each`
/// batch, mostly) is written with Snappy instead. The Parquet writer sets zstd up afresh
/// for every column of every file, and zstd asks the CPU for its features each time,
/// which traps to the hypervisor on a virtual machine: for 2,000 files of about 125 rows,
/// that setup was 13% of the stream's CPU time. On such files zstd saves a few kilobytes
/// (about a fifth of the file; at 5,000 rows Snappy's files were 40% larger, so larger
/// files keep zstd).
pub fn writer_properties(schema: &arrow::datatypes::Schema, rows: Option<usize>) -> WriterProperties {
    let compression = match rows {
        Some(n) if n < SMALL_FILE_ROWS => Compression::SNAPPY,
        _ => Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()),
    };
    schema
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.data_type(),
                DataType::Int64
                    | DataType::UInt64
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Decimal128(..)
                    | DataType::Decimal256(..)
                    | DataType::Timestamp(..)
            )
        })
        .fold(
            WriterProperties::builder()
                .set_compression(compression)
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS)),
            |b, f| b.set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(f.name().as_str()), false),
        )
        .build()
}

/// Files with fewer rows than this are compressed with Snappy, not zstd
/// ([`writer_properties`]).
pub const SMALL_FILE_ROWS: usize = 1024;

/// A stream's physical plan, kept so that its metrics can be read once it has run.
pub struct Executable {
    pub plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    task: Arc<datafusion::execution::TaskContext>,
}

impl Executable {
    pub async fn new(df: DataFrame) -> Result<Self, WriteError> {
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await?;
        Ok(Executable { plan, task })
    }

    /// The same plan with its rows hash-partitioned on `column` into `n` partitions. Added
    /// to the optimised plan: the physical optimiser drops a repartition that no operator
    /// above it needs, and the writers above are not operators.
    pub fn partitioned_by(self, column: &str, n: usize) -> Result<Self, WriteError> {
        use datafusion::physical_plan::Partitioning;
        use datafusion::physical_plan::repartition::RepartitionExec;
        let key = datafusion::physical_expr::expressions::col(column, &self.plan.schema())?;
        let plan = RepartitionExec::try_new(self.plan, Partitioning::Hash(vec![key], n))?;
        Ok(Executable {
            plan: Arc::new(plan),
            task: self.task,
        })
    }

    fn streams(&self) -> Result<Vec<datafusion::execution::SendableRecordBatchStream>, WriteError> {
        Ok(datafusion::physical_plan::execute_stream_partitioned(
            self.plan.clone(),
            self.task.clone(),
        )?)
    }

    /// The plan as run, with each operator's rows, time and memory (for profiling).
    pub fn with_metrics(&self) -> String {
        datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(self.plan.as_ref())
            .indent(true)
            .to_string()
    }
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct Written {
    pub rows: u64,
    /// Sum per decimal column, unscaled, with the column's scale.
    pub totals: BTreeMap<String, (i128, i8)>,
}

impl Written {
    fn add(&mut self, other: Written) -> Result<(), WriteError> {
        self.rows += other.rows;
        for (k, (v, s)) in other.totals {
            let e = self.totals.entry(k.clone()).or_insert((0, s));
            e.0 =
                e.0.checked_add(v)
                    .ok_or_else(|| WriteError::TotalOverflow { column: k.clone() })?;
        }
        Ok(())
    }

    pub fn totals_as_text(&self) -> BTreeMap<String, String> {
        self.totals
            .iter()
            .map(|(k, (v, s))| (k.clone(), format_decimal(*v, *s)))
            .collect()
    }
}

pub use crate::batches::format_decimal;

fn batch_totals(batch: &RecordBatch, into: &mut Written) -> Result<(), WriteError> {
    into.rows += batch.num_rows() as u64;
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::Decimal128(_, scale) = field.data_type() {
            let arr = column.as_primitive::<Decimal128Type>();
            let sum = arrow::compute::sum_checked(arr)
                .map_err(|source| WriteError::Total {
                    column: field.name().clone(),
                    source,
                })?
                .unwrap_or(0);
            let e = into.totals.entry(field.name().clone()).or_insert((0, *scale));
            e.0 = e.0.checked_add(sum).ok_or_else(|| WriteError::TotalOverflow {
                column: field.name().clone(),
            })?;
        }
    }
    Ok(())
}

/// The next non-empty record batch of a plan's partition, under the declared output
/// schema (a NULL in a non-nullable column is an error here, never written).
async fn next_batch(
    stream: &mut datafusion::execution::SendableRecordBatchStream,
    schema: &SchemaRef,
) -> Result<Option<RecordBatch>, WriteError> {
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            return Ok(Some(RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?));
        }
    }
    Ok(None)
}

/// Wait for every writing task, folding what each wrote with `add`; the first error wins,
/// after all tasks have ended (none is left writing into the staging directory).
async fn join_writers<T: 'static>(
    mut tasks: tokio::task::JoinSet<Result<T, WriteError>>,
    mut add: impl FnMut(T) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let outcome = match r {
            Ok(Ok(w)) => add(w),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(WriteError::Task(e)),
        };
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Execute `df` and write each partition to `dir/part-NNNNN.parquet` with `schema` (the
/// declared output schema: a NULL in a non-nullable column is an error here, never
/// written). At least one file is written, so an empty batch still has a schema.
pub async fn write_parquet(plan: &Executable, dir: &Path, schema: SchemaRef) -> Result<Written, WriteError> {
    let mut streams = plan.streams()?;
    if streams.len() == 1 {
        let stream = streams.remove(0);
        let parallel = plan.task.session_config().target_partitions();
        let total = write_in_runs(stream, dir, schema.clone(), parallel, ROW_GROUP_ROWS).await?;
        return finish_dir(dir, &schema, total).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let path = dir.join(format!("part-{i:05}.parquet"));
        let schema = schema.clone();
        tasks.spawn(async move {
            let mut written = Written::default();
            let mut writer: Option<AsyncArrowWriter<tokio::fs::File>> = None;
            while let Some(batch) = next_batch(&mut stream, &schema).await? {
                batch_totals(&batch, &mut written)?;
                if writer.is_none() {
                    let file = tokio::fs::File::create(&path).await.map_err(io(&path))?;
                    writer = Some(AsyncArrowWriter::try_new(
                        file,
                        schema.clone(),
                        Some(writer_properties(&schema, None)),
                    )?);
                }
                if let Some(w) = writer.as_mut() {
                    w.write(&batch).await?;
                }
            }
            if let Some(w) = writer {
                w.close().await?;
            }
            Ok::<Written, WriteError>(written)
        });
    }
    let mut total = Written::default();
    join_writers(tasks, |w| total.add(w)).await?;
    finish_dir(dir, &schema, total).await
}

/// Write one ordered stream (a declared `order_by` is merged into a single partition)
/// as consecutive files of one row group each, `part-00000`, `part-00001`, ...: their
/// name order is the rows' order. The files are encoded by up to `parallel` tasks at
/// once while the stream goes on, rather than by the one task reading it (at 2 threads,
/// encoding 10M rows in one task left a core idle for seconds). Memory stays bounded:
/// at most `parallel` runs (of about `run_rows` rows) are held.
async fn write_in_runs(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    dir: &Path,
    schema: SchemaRef,
    parallel: usize,
    run_rows: usize,
) -> Result<Written, WriteError> {
    let mut total = Written::default();
    let mut tasks: tokio::task::JoinSet<Result<(), WriteError>> = tokio::task::JoinSet::new();
    let read = async {
        let (mut run, mut rows, mut files) = (Vec::new(), 0usize, 0usize);
        loop {
            let batch = next_batch(&mut stream, &schema).await?;
            let end = batch.is_none();
            if let Some(b) = batch {
                batch_totals(&b, &mut total)?;
                rows += b.num_rows();
                run.push(b);
            }
            if rows >= run_rows || (end && rows > 0) {
                // A free encoder first: at most `parallel` runs in memory.
                while tasks.len() >= parallel.max(1) {
                    match tasks.join_next().await {
                        Some(Ok(r)) => r?,
                        Some(Err(e)) => return Err(WriteError::Task(e)),
                        None => break,
                    }
                }
                let path = dir.join(format!("part-{files:05}.parquet"));
                let (batches, schema) = (std::mem::take(&mut run), schema.clone());
                tasks.spawn(async move { write_file(&path, schema, &batches).await });
                files += 1;
                rows = 0;
            }
            if end {
                return Ok(());
            }
        }
    };
    let read: Result<(), WriteError> = read.await;
    // Every encoder ends before returning, even after an error: none is left writing.
    let written = join_writers(tasks, |()| Ok(())).await;
    read.and(written).map(|()| total)
}

/// Write `batches` (possibly none) as one Parquet file at `path`.
async fn write_file(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<(), WriteError> {
    let file = tokio::fs::File::create(path).await.map_err(io(path))?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let props = writer_properties(&schema, Some(rows));
    let mut writer = AsyncArrowWriter::try_new(file, schema, Some(props))?;
    for b in batches {
        writer.write(b).await?;
    }
    writer.close().await?;
    Ok(())
}

/// At least one file per batch directory, so an empty batch still has a schema.
async fn finish_dir(dir: &Path, schema: &SchemaRef, total: Written) -> Result<Written, WriteError> {
    let any_file = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !any_file {
        write_file(&dir.join("part-00000.parquet"), schema.clone(), &[]).await?;
    }
    Ok(total)
}

/// Rows held in memory per writing task of a `for_each` batch, waiting to be written:
/// past this, the organisations holding the most are written out (a file each), so memory
/// stays bounded however many organisations there are, and an organisation's rows land in
/// few files. Only the files being written hold a Parquet encoder.
const BUFFER_BUDGET: usize = 128 << 20;

/// What a `for_each` batch wrote: the whole, and each organisation's part.
#[derive(Debug, Default)]
pub struct WrittenPerOrganization {
    pub total: Written,
    pub parts: BTreeMap<String, Written>,
}

/// One organisation's rows waiting to be written by one task.
#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    bytes: usize,
    files: usize,
}

/// How many small files (rows held under [`SMALL_FILE`] bytes) a task writes at once when
/// its input ends: their cost is the file system's, which overlaps. Larger ones are
/// written one at a time, as each is held encoded until it is written.
const FILES_AT_ONCE: usize = 4;
const SMALL_FILE: usize = 1 << 20;

impl Pending {
    /// Take the rows held, to be written as the organisation's next file in `dir`.
    fn take(&mut self, dir: &Path, task: usize, org: &str) -> Option<(PathBuf, Vec<RecordBatch>)> {
        if self.batches.is_empty() {
            return None;
        }
        let path = dir.join(crate::batches::organization_file(org, task, self.files));
        self.files += 1;
        self.bytes = 0;
        Some((path, std::mem::take(&mut self.batches)))
    }
}

/// Write one organisation's rows as one new file at `path`, and return what was written.
/// The pieces are put together first: on unsorted input they are a few rows from each
/// record batch, and the Parquet writer's cost per call (per column) would otherwise
/// dominate, as would the totals taken per piece. The file is encoded in memory here, on
/// the task (encoding on the blocking pool's threads spread the allocations over more
/// malloc arenas: 0.6 GB more peak memory on the generated job at 10M rows), and written
/// off the async workers in one call: thousands of organisations make thousands of small
/// files, where each round trip to the file system counts.
async fn flush(path: PathBuf, batches: Vec<RecordBatch>, schema: SchemaRef) -> Result<Written, WriteError> {
    let rows = arrow::compute::concat_batches(&schema, &batches)?;
    drop(batches);
    let mut written = Written::default();
    batch_totals(&rows, &mut written)?;
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        &mut bytes,
        schema.clone(),
        Some(writer_properties(&schema, Some(rows.num_rows()))),
    )?;
    writer.write(&rows)?;
    writer.close()?;
    drop(rows);
    tokio::task::spawn_blocking(move || std::fs::write(&path, bytes).map_err(io(&path))).await??;
    Ok(written)
}

/// Execute `df` and write each organisation's rows (named by the `column`, a non-null
/// string column of `schema`) in `dir`, in files named by organisation. Each partition
/// of the plan is written by its own task, which groups its rows by organisation (batch
/// by batch when they come grouped, else in chunks of a quarter of a million rows;
/// stably, so a declared `order_by` still holds within each file) and holds them until
/// its budget is reached or its input ends.
pub async fn write_parquet_per_organization(
    plan: &Executable,
    dir: &Path,
    schema: SchemaRef,
    column: &str,
) -> Result<WrittenPerOrganization, WriteError> {
    let org_index = schema.index_of(column)?;
    let streams = plan.streams()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (task, mut stream) in streams.into_iter().enumerate() {
        let schema = schema.clone();
        let dir = dir.to_path_buf();
        tasks.spawn(async move {
            let mut parts: BTreeMap<String, Written> = BTreeMap::new();
            let mut pending: std::collections::HashMap<String, Pending> = std::collections::HashMap::new();
            let mut held = 0usize;
            let mut chunk = Chunk::default();
            loop {
                let next = next_batch(&mut stream, &schema).await?;
                let end = next.is_none();
                let Some((groups, per_row)) = chunk.add(next, org_index)? else {
                    if end {
                        break;
                    }
                    continue;
                };
                for (org, slice) in groups {
                    let bytes = per_row * slice.num_rows();
                    let p = pending.entry(org).or_default();
                    p.batches.push(slice);
                    p.bytes += bytes;
                    held += bytes;
                }
                if held > BUFFER_BUDGET {
                    // Write out the largest holders until half the budget is free.
                    let mut by_size: Vec<(usize, String)> = pending
                        .iter()
                        .map(|(k, p)| (p.bytes, k.clone()))
                        .filter(|(b, _)| *b > 0)
                        .collect();
                    by_size.sort_unstable_by(|a, b| b.cmp(a));
                    for (bytes, org) in by_size {
                        if held <= BUFFER_BUDGET / 2 {
                            break;
                        }
                        if let Some((path, batches)) = pending.get_mut(&org).and_then(|p| p.take(&dir, task, &org)) {
                            let w = flush(path, batches, schema.clone()).await?;
                            parts.entry(org).or_default().add(w)?;
                        }
                        held = held.saturating_sub(bytes);
                    }
                }
                if end {
                    break;
                }
            }
            let (small, large): (Vec<_>, Vec<_>) = pending
                .iter_mut()
                .filter(|(_, p)| !p.batches.is_empty())
                .partition(|(_, p)| p.bytes < SMALL_FILE);
            for (at_once, orgs) in [(1, large), (FILES_AT_ONCE, small)] {
                let last: Vec<(String, PathBuf, Vec<RecordBatch>)> = orgs
                    .into_iter()
                    .filter_map(|(org, p)| p.take(&dir, task, org).map(|(path, b)| (org.clone(), path, b)))
                    .collect();
                let mut flushes = futures::stream::iter(last)
                    .map(|(org, path, batches)| {
                        let schema = schema.clone();
                        async move { flush(path, batches, schema).await.map(|w| (org, w)) }
                    })
                    .buffer_unordered(at_once);
                while let Some(done) = flushes.next().await {
                    let (org, w) = done?;
                    parts.entry(org).or_default().add(w)?;
                }
            }
            Ok::<BTreeMap<String, Written>, WriteError>(parts)
        });
    }
    let mut out = WrittenPerOrganization::default();
    join_writers(tasks, |parts| {
        for (org, w) in parts {
            out.total.add(w.clone())?;
            out.parts.entry(org).or_default().add(w)?;
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Rows a `for_each` writing task groups by organisation in one go when they do not come
/// grouped: one grouping of a quarter of a million rows, rather than one per record batch
/// (which on unsorted input cut each batch into a slice of a few rows per organisation,
/// and sorted each batch on the text of its organisation column).
const CHUNK_ROWS: usize = 1 << 18;

/// ... or fewer rows, when they hold this much memory (wide rows).
const CHUNK_BYTES: usize = 64 << 20;

/// Record batches waiting to be grouped by organisation, in the order they came.
#[derive(Default)]
struct Chunk {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl Chunk {
    /// Take `next` (`None`: the input ended) and return the rows to write now, if any, one
    /// slice per organisation, with the bytes a row holds: a batch already in one run per
    /// organisation goes on at once (sorted input, the common case) unless rows before it
    /// wait; others wait for [`CHUNK_ROWS`] rows (or [`CHUNK_BYTES`]).
    fn add(&mut self, next: Option<RecordBatch>, org: usize) -> Result<Option<(Grouped, usize)>, WriteError> {
        if let Some(batch) = next {
            if self.batches.is_empty()
                && let Some(ranges) = runs(&batch, org)
            {
                let per_row = batch.get_array_memory_size() / batch.num_rows().max(1);
                return Ok(Some((slices(&batch, org, ranges)?, per_row)));
            }
            self.rows += batch.num_rows();
            self.bytes += batch.get_array_memory_size();
            self.batches.push(batch);
            if self.rows < CHUNK_ROWS && self.bytes < CHUNK_BYTES {
                return Ok(None);
            }
        }
        if self.batches.is_empty() {
            return Ok(None);
        }
        let per_row = self.bytes / self.rows.max(1);
        let batches = std::mem::take(&mut self.batches);
        (self.rows, self.bytes) = (0, 0);
        Ok(Some((group_by_organization(&batches, org)?, per_row)))
    }
}

/// Rows of one organisation each, with its name.
type Grouped = Vec<(String, RecordBatch)>;

/// The organisation column of `batch`: a Utf8 string as the output contract casts it,
/// with no NULL (the engine refuses such rows before writing). Another type is an
/// error, rather than a panic.
fn organizations(batch: &RecordBatch, org: usize) -> Result<&arrow::array::StringArray, WriteError> {
    let column = batch.column(org);
    let field = || batch.schema().field(org).name().clone();
    let strings = column
        .as_string_opt::<i32>()
        .ok_or_else(|| WriteError::OrganizationType {
            column: field(),
            ty: column.data_type().clone(),
        })?;
    if strings.null_count() > 0 {
        return Err(WriteError::NoOrganization {
            rows: strings.null_count(),
            column: field(),
        });
    }
    Ok(strings)
}

/// The runs of equal organisations in `batch`, if each organisation has one run.
fn runs(batch: &RecordBatch, org: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let strings = organizations(batch, org).ok()?;
    let ranges = arrow::compute::partition(std::slice::from_ref(batch.column(org)))
        .ok()?
        .ranges();
    let mut seen = std::collections::HashSet::with_capacity(ranges.len().min(4096));
    ranges
        .iter()
        .all(|r| seen.insert(strings.value(r.start)))
        .then_some(ranges)
}

/// `batch` cut into its runs of one organisation each.
fn slices(batch: &RecordBatch, org: usize, runs: Vec<std::ops::Range<usize>>) -> Result<Grouped, WriteError> {
    let strings = organizations(batch, org)?;
    Ok(runs
        .into_iter()
        .map(|r| (strings.value(r.start).to_string(), batch.slice(r.start, r.len())))
        .collect())
}

/// The rows of `batches` as one batch per organisation (the value of column `org`), with
/// its name. Each row gets its organisation's number (a dictionary of the column over all
/// the batches) and a counting sort on that number orders them: linear, and the rows of
/// one organisation keep their order. The rows are gathered from the batches in that
/// order in one copy. (A batch that comes grouped never gets here: [`Chunk::add`] slices
/// it.)
fn group_by_organization(batches: &[RecordBatch], org: usize) -> Result<Grouped, WriteError> {
    use arrow::datatypes::UInt32Type;
    let columns = batches
        .iter()
        .map(|b| organizations(b, org).map(|s| s as &dyn Array))
        .collect::<Result<Vec<_>, _>>()?;
    let all = arrow::compute::concat(&columns)?;
    let numbered = arrow::compute::cast(
        &all,
        &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
    )?;
    let numbered = numbered.as_dictionary::<UInt32Type>();
    let names = numbered.values().as_string::<i32>();
    let places = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |row| (b, row)));
    let (order, starts) = counting_sort(numbered.keys().values(), places, names.len());
    let sorted = arrow::compute::interleave_record_batch(&batches.iter().collect::<Vec<_>>(), &order)?;
    Ok((0..names.len())
        .filter(|&k| starts[k + 1] > starts[k])
        .map(|k| {
            (
                names.value(k).to_string(),
                sorted.slice(starts[k], starts[k + 1] - starts[k]),
            )
        })
        .collect())
}

/// The places of `keys` (each below `distinct`; `places` gives each key's place, in the
/// same order) ordered by key, stably, and where each key's places start in that order
/// (with the end last).
fn counting_sort<P: Copy + Default>(
    keys: &[u32],
    places: impl Iterator<Item = P>,
    distinct: usize,
) -> (Vec<P>, Vec<usize>) {
    let mut starts = vec![0usize; distinct + 1];
    for &k in keys {
        starts[k as usize + 1] += 1;
    }
    for k in 1..starts.len() {
        starts[k] += starts[k - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![P::default(); keys.len()];
    for (place, &k) in places.zip(keys) {
        order[next[k as usize]] = place;
        next[k as usize] += 1;
    }
    (order, starts)
}

/// Write refused rows to one file; returns how many and the first few reasons. No rows,
/// no file.
pub async fn write_rejects(df: DataFrame, path: &Path) -> Result<(u64, Vec<String>), WriteError> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let mut writer: Option<AsyncArrowWriter<tokio::fs::File>> = None;
    let mut rows = 0u64;
    let mut samples = Vec::new();
    let reason_idx = schema.index_of("_reject_reason").ok();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        if writer.is_none() {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
            }
            let file = tokio::fs::File::create(path).await.map_err(io(path))?;
            writer = Some(AsyncArrowWriter::try_new(
                file,
                schema.clone(),
                Some(writer_properties(&schema, None)),
            )?);
        }
        if let Some(i) = reason_idx {
            // A few examples for the run summary: the reason and the row's first values.
            let options = arrow::util::display::FormatOptions::default().with_null("NULL");
            let shown: Vec<usize> = (0..batch.num_columns())
                .filter(|c| !schema.field(*c).name().starts_with("_reject"))
                .take(4)
                .collect();
            let formatters = shown
                .iter()
                .map(|c| arrow::util::display::ArrayFormatter::try_new(batch.column(*c).as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            let reasons = arrow::compute::cast(batch.column(i), &DataType::Utf8)?;
            let reasons = reasons.as_string::<i32>();
            for row in 0..batch.num_rows().min(5usize.saturating_sub(samples.len())) {
                let values: Vec<String> = shown
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| format!("{}={}", schema.field(*c).name(), f.value(row)))
                    .collect();
                samples.push(format!("{} [{}, ...]", reasons.value(row), values.join(", ")));
            }
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch).await?;
        }
    }
    if let Some(w) = writer {
        w.close().await?;
    }
    Ok((rows, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organisation_column_that_is_not_a_utf8_string_is_an_error_not_a_panic() {
        use arrow::array::{Int64Array, StringViewArray};
        use arrow::datatypes::{Field, Schema};
        let batch = |field: Field, column: arrow::array::ArrayRef| {
            RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![column]).unwrap()
        };
        let ids = batch(
            Field::new("org", DataType::Int64, false),
            Arc::new(Int64Array::from(vec![1, 2])),
        );
        let err = group_by_organization(std::slice::from_ref(&ids), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`org` is Int64, not a string"), "{err}");
        let views = batch(
            Field::new("org", DataType::Utf8View, false),
            Arc::new(StringViewArray::from(vec!["R1", "R2"])),
        );
        assert!(
            group_by_organization(std::slice::from_ref(&views), 0)
                .unwrap_err()
                .to_string()
                .contains("Utf8View")
        );
        let text = batch(
            Field::new("org", DataType::Utf8, false),
            Arc::new(arrow::array::StringArray::from(vec!["R2", "R1", "R2"])),
        );
        let mut groups: Vec<(String, usize)> = group_by_organization(std::slice::from_ref(&text), 0)
            .unwrap()
            .into_iter()
            .map(|(o, b)| (o, b.num_rows()))
            .collect();
        groups.sort();
        assert_eq!(groups, [("R1".to_string(), 1), ("R2".to_string(), 2)]);
    }

    #[test]
    fn rows_are_grouped_by_organisation_keeping_their_order() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("org", DataType::Utf8, false),
            Field::new("line", DataType::Int64, false),
        ]));
        let rows = |orgs: Vec<&str>, lines: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from(orgs)), Arc::new(Int64Array::from(lines))],
            )
            .unwrap()
        };
        let lines = |groups: Grouped| -> Vec<(String, Vec<i64>)> {
            let mut g: Vec<(String, Vec<i64>)> = groups
                .into_iter()
                .map(|(o, b)| {
                    (
                        o,
                        b.column(1)
                            .as_primitive::<arrow::datatypes::Int64Type>()
                            .values()
                            .to_vec(),
                    )
                })
                .collect();
            g.sort();
            g
        };
        let grouped = |batches: &[RecordBatch]| lines(group_by_organization(batches, 0).unwrap());
        let owned = |o: &str, l: &[i64]| (o.to_string(), l.to_vec());
        // Interleaved: each organisation's lines in the order they came.
        let mixed = rows(vec!["R2", "R1", "R2", "R3", "R1", "R2"], vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(
            grouped(std::slice::from_ref(&mixed)),
            [owned("R1", &[1, 4]), owned("R2", &[0, 2, 5]), owned("R3", &[3])]
        );
        // Already in runs: the same runs.
        let sorted = rows(vec!["R1", "R1", "R2"], vec![7, 8, 9]);
        assert_eq!(
            grouped(std::slice::from_ref(&sorted)),
            [owned("R1", &[7, 8]), owned("R2", &[9])]
        );
        // Runs, but one organisation twice: not grouped yet.
        let twice = rows(vec!["R1", "R2", "R1"], vec![0, 1, 2]);
        assert!(runs(&twice, 0).is_none());
        assert_eq!(
            grouped(std::slice::from_ref(&twice)),
            [owned("R1", &[0, 2]), owned("R2", &[1])]
        );
        // Several batches: gathered across them, in the order they came; each batch in runs
        // of its own, but not together.
        assert_eq!(
            grouped(&[sorted.clone(), twice, sorted.clone()]),
            [owned("R1", &[7, 8, 0, 2, 7, 8]), owned("R2", &[9, 1, 9])]
        );

        // A chunk passes a grouped batch on at once, and holds unsorted ones (and any
        // batch after them) until it has CHUNK_ROWS rows or the input ends.
        let mut chunk = Chunk::default();
        let (first, _) = chunk.add(Some(sorted.clone()), 0).unwrap().unwrap();
        assert_eq!(lines(first), [owned("R1", &[7, 8]), owned("R2", &[9])]);
        assert!(chunk.add(Some(mixed.clone()), 0).unwrap().is_none());
        assert!(chunk.add(Some(sorted.clone()), 0).unwrap().is_none());
        let (rest, per_row) = chunk.add(None, 0).unwrap().unwrap();
        assert!(per_row > 0);
        assert_eq!(
            lines(rest),
            [
                owned("R1", &[1, 4, 7, 8]),
                owned("R2", &[0, 2, 5, 9]),
                owned("R3", &[3])
            ]
        );
        assert!(chunk.add(None, 0).unwrap().is_none());

        // Wide rows: a chunk holding CHUNK_BYTES goes on with fewer rows.
        let wide_schema = Arc::new(Schema::new(vec![
            Field::new("org", DataType::Utf8, false),
            Field::new("note", DataType::Utf8, false),
        ]));
        let long = "x".repeat(CHUNK_BYTES);
        let wide = RecordBatch::try_new(
            wide_schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["R2", "R1", "R2"])),
                Arc::new(StringArray::from(vec!["a", long.as_str(), "b"])),
            ],
        )
        .unwrap();
        let mut chunk = Chunk::default();
        let (groups, _) = chunk.add(Some(wide), 0).unwrap().unwrap();
        assert_eq!(groups.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 3);
    }

    #[tokio::test]
    async fn numbers_are_written_plain_and_text_and_dates_with_a_dictionary() {
        use arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
        use arrow::datatypes::{Field, Schema};
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(18, 2), false),
            Field::new("sku", DataType::Utf8, false),
            Field::new("day", DataType::Date32, false),
        ]));
        // Few distinct values in every column: only the column's type decides.
        let n = 1000;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 3))),
                Arc::new(
                    Decimal128Array::from_iter_values((0..n).map(|i| i128::from(i % 3)))
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("SKU-{}", i % 3)))),
                Arc::new(Date32Array::from_iter_values((0..n).map(|i| 20_000 + (i % 3) as i32))),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_file(&path, schema, &[batch]).await.unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary = |i: usize| {
            let encodings: Vec<Encoding> = group.column(i).encodings().collect();
            encodings.contains(&Encoding::RLE_DICTIONARY) || encodings.contains(&Encoding::PLAIN_DICTIONARY)
        };
        assert_eq!((0..4).map(dictionary).collect::<Vec<_>>(), [false, false, true, true]);
        assert_eq!(
            group.column(0).compression(),
            Compression::SNAPPY,
            "1,000 rows: a small file"
        );
    }

    #[tokio::test]
    async fn a_file_of_fewer_than_small_file_rows_is_snappy_and_a_larger_one_zstd() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{Field, Schema};
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let dir = tempfile::tempdir().unwrap();
        let compression = |rows: usize| {
            let ids = Int64Array::from_iter_values(0..rows as i64);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap();
            let path = dir.path().join(format!("{rows}.parquet"));
            let schema = schema.clone();
            async move {
                write_file(&path, schema, &[batch]).await.unwrap();
                let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
                reader.metadata().row_group(0).column(0).compression()
            }
        };
        assert_eq!(compression(SMALL_FILE_ROWS - 1).await, Compression::SNAPPY);
        assert!(matches!(compression(SMALL_FILE_ROWS).await, Compression::ZSTD(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ordered_stream_is_written_as_files_in_its_order() {
        use arrow::array::{Decimal128Array, Int64Array};
        use arrow::datatypes::{Field, Schema};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(18, 2), false),
        ]));
        // 10 batches of 100 rows, ids 0..999 in order, amount = id cents.
        let batches: Vec<RecordBatch> = (0..10i64)
            .map(|b| {
                let ids: Vec<i64> = (b * 100..b * 100 + 100).collect();
                let amounts = Decimal128Array::from(ids.iter().map(|i| *i as i128).collect::<Vec<_>>())
                    .with_precision_and_scale(18, 2)
                    .unwrap();
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(amounts)]).unwrap()
            })
            .collect();
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ));
        let dir = tempfile::tempdir().unwrap();
        let written = write_in_runs(stream, dir.path(), schema.clone(), 2, 250).await.unwrap();
        // sum of 0..999 cents = 4995.00
        assert_eq!(written.rows, 1000);
        assert_eq!(written.totals.get("amount"), Some(&(499_500, 2)));
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Runs close at the first batch boundary at or past 250 rows: 300, 300, 300, 100.
        assert_eq!(
            names,
            [
                "part-00000.parquet",
                "part-00001.parquet",
                "part-00002.parquet",
                "part-00003.parquet"
            ]
        );
        let mut ids = Vec::new();
        for n in &names {
            let file = std::fs::File::open(dir.path().join(n)).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
            for b in reader {
                let b = b.unwrap();
                ids.extend(
                    b.column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
        }
        assert_eq!(
            ids,
            (0..1000).collect::<Vec<i64>>(),
            "files in name order hold the rows in order"
        );
    }

    #[test]
    fn decimal_text_is_exact() {
        assert_eq!(format_decimal(12345, 4), "1.2345");
        assert_eq!(format_decimal(-5, 4), "-0.0005");
        assert_eq!(format_decimal(0, 2), "0.00");
        assert_eq!(format_decimal(-12345, 2), "-123.45");
        assert_eq!(format_decimal(i128::MAX, 0), i128::MAX.to_string());
        assert_eq!(format_decimal(1000, 0), "1000");
    }
}
