//! Reading CSV and NDJSON files so that a line that cannot be read is a row with its
//! problem, never the end of the run. A ragged line, a quote that is never closed, bytes
//! that are not UTF-8 or a JSON line that does not parse (or holds a value of the wrong
//! type) become a row whose columns are NULL and whose [`PROBLEM`] says what is wrong; the
//! caller refuses it like any other bad row, so rows in still equal rows out plus rows
//! refused.
//!
//! Files are read in parallel byte ranges, split at line ends (as DataFusion's own CSV
//! reader splits them): a quoted CSV value holding a line break is read correctly unless
//! a range boundary falls inside it, which only a file larger than [`MIN_RANGE`] can have.
//!
//! A table made `with_origin` also says where each row came from ([`FILE`], [`LINE`], and
//! [`RECORD`], the text of an unreadable line). Counting lines reads each range's prefix,
//! so the rows a run keeps come from a table without origin and only the rejects file,
//! computed when something was refused, reads with it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, RecordBatch, StringBuilder, UInt64Builder, new_null_array};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::PartitionStream;

/// The file a row came from (origin tables only).
pub const FILE: &str = "_reject_file";
/// The line of its file the row starts on, counting from 1 (origin tables only).
pub const LINE: &str = "_reject_line";
/// The text of a line that could not be read (origin tables only).
pub const RECORD: &str = "_reject_record";
/// Why a line could not be read; NULL for a row that was read.
pub const PROBLEM: &str = "_reject_problem";

/// Files smaller than this are read as one range.
pub const MIN_RANGE: u64 = 16 << 20;

#[derive(Clone, Copy, Debug)]
pub enum TextFormat {
    Csv { delimiter: u8, has_header: bool },
    Ndjson,
}

/// One file to read, and the name its rows' origin gives it.
#[derive(Clone, Debug)]
pub struct TextFile {
    pub path: PathBuf,
    pub name: String,
}

/// A table over `files`: `columns` (all text for CSV; the declared types for NDJSON,
/// decoded straight from the JSON text), then [`PROBLEM`], then with `with_origin`
/// [`FILE`], [`LINE`] and [`RECORD`].
pub fn text_table(
    files: &[TextFile],
    format: TextFormat,
    columns: &Schema,
    with_origin: bool,
    partitions: usize,
) -> Result<Arc<dyn TableProvider>> {
    table(files, format, columns, with_origin, partitions, MIN_RANGE)
}

fn table(
    files: &[TextFile],
    format: TextFormat,
    columns: &Schema,
    with_origin: bool,
    partitions: usize,
    min_range: u64,
) -> Result<Arc<dyn TableProvider>> {
    let columns = Arc::new(Schema::new(
        columns
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut fields: Vec<Field> = columns.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PROBLEM, DataType::Utf8, true));
    if with_origin {
        fields.push(Field::new(
            FILE,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ));
        fields.push(Field::new(LINE, DataType::UInt64, true));
        fields.push(Field::new(RECORD, DataType::Utf8, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let groups = plan_ranges(files, partitions.max(1), min_range).map_err(DataFusionError::IoError)?;
    let parts: Vec<Arc<dyn PartitionStream>> = groups
        .into_iter()
        .map(|ranges| {
            Arc::new(TextPartition {
                schema: schema.clone(),
                columns: columns.clone(),
                format,
                with_origin,
                ranges,
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    Ok(Arc::new(StreamingTable::try_new(schema, parts)?))
}

/// A byte range of one file: the rows whose line starts in `[start, end)`.
#[derive(Clone, Debug)]
struct Range {
    file: Arc<TextFile>,
    start: u64,
    end: u64,
}

/// Cut the files into about `partitions` groups of ranges of similar size, in file order.
fn plan_ranges(files: &[TextFile], partitions: usize, min_range: u64) -> std::io::Result<Vec<Vec<Range>>> {
    let mut sized = Vec::with_capacity(files.len());
    for f in files {
        sized.push((Arc::new(f.clone()), std::fs::metadata(&f.path)?.len()));
    }
    let total: u64 = sized.iter().map(|(_, n)| n).sum();
    let chunk = total.div_ceil(partitions as u64).max(min_range);
    let mut groups: Vec<Vec<Range>> = vec![Vec::new()];
    let mut filled = 0u64;
    for (file, size) in sized {
        let mut start = 0;
        while start < size {
            let take = (size - start).min(chunk - filled);
            groups.last_mut().expect("one group").push(Range {
                file: file.clone(),
                start,
                end: start + take,
            });
            start += take;
            filled += take;
            if filled >= chunk {
                groups.push(Vec::new());
                filled = 0;
            }
        }
    }
    if groups.len() > 1 && groups.last().is_some_and(Vec::is_empty) {
        groups.pop();
    }
    Ok(groups)
}

#[derive(Debug)]
struct TextPartition {
    schema: SchemaRef,
    columns: SchemaRef,
    format: TextFormat,
    with_origin: bool,
    ranges: Vec<Range>,
}

impl PartitionStream for TextPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let tx = builder.tx();
        let reader = RangeReader {
            schema: self.schema.clone(),
            columns: self.columns.clone(),
            format: self.format,
            with_origin: self.with_origin,
            batch_size: ctx.session_config().batch_size().max(1),
        };
        let ranges = self.ranges.clone();
        builder.spawn_blocking(move || {
            for r in &ranges {
                let sent = reader.read(r, &mut |batch| tx.blocking_send(Ok(batch)).is_ok())?;
                if !sent {
                    break; // the consumer stopped reading
                }
            }
            Ok(())
        });
        builder.build()
    }
}

/// What one partition reads its ranges with.
struct RangeReader {
    schema: SchemaRef,
    columns: SchemaRef,
    format: TextFormat,
    with_origin: bool,
    batch_size: usize,
}

/// Rows read so far in one range: how many, the line of each (origin tables only), and
/// the few that could not be read, with their problem and text.
struct Pending {
    rows: usize,
    lines: Vec<u64>,
    with_lines: bool,
    unreadable: Vec<Unreadable>,
}

/// A row that could not be read: its index in the batch, the problem, and its text.
struct Unreadable {
    row: usize,
    problem: String,
    text: Option<String>,
}

impl Pending {
    fn new(with_lines: bool) -> Self {
        Pending {
            rows: 0,
            lines: Vec::new(),
            with_lines,
            unreadable: Vec::new(),
        }
    }
    fn len(&self) -> usize {
        self.rows
    }
    fn push(&mut self, line: u64, problem: Option<String>, record: Option<String>) {
        if self.with_lines {
            self.lines.push(line);
        }
        if let Some(p) = problem {
            self.unreadable.push(Unreadable {
                row: self.rows,
                problem: p,
                text: record,
            });
        }
        self.rows += 1;
    }
    fn clear(&mut self) {
        self.rows = 0;
        self.lines.clear();
        self.unreadable.clear();
    }
}

/// Where a range's reading starts and stops, as line starts: the first line start at or
/// after `start` (0 for the file's start), and the same for `end` (the file's length at
/// its end). A row belongs to the range its first line starts in.
struct Bounds {
    from: u64,
    to: u64,
    /// Lines before `from` (origin tables only).
    lines_before: u64,
    len: u64,
}

fn io_err(file: &TextFile, e: std::io::Error) -> DataFusionError {
    DataFusionError::IoError(std::io::Error::new(e.kind(), format!("{}: {e}", file.path.display())))
}

/// The first line start at or after `at`.
fn line_start_at(f: &mut File, at: u64, len: u64) -> std::io::Result<u64> {
    if at == 0 || at >= len {
        return Ok(at.min(len));
    }
    f.seek(SeekFrom::Start(at - 1))?;
    let mut r = BufReader::with_capacity(64 << 10, f);
    let mut skipped = Vec::new();
    let n = r.read_until(b'\n', &mut skipped)?;
    Ok((at - 1 + n as u64).min(len))
}

fn count_lines(f: &mut File, upto: u64) -> std::io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let mut left = upto;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        left -= n as u64;
    }
    Ok(lines)
}

fn bounds(r: &Range, with_origin: bool) -> std::io::Result<(File, Bounds)> {
    let mut f = File::open(&r.file.path)?;
    let len = f.metadata()?.len();
    let mut from = line_start_at(&mut f, r.start, len)?;
    let to = line_start_at(&mut f, r.end, len)?;
    // A byte-order mark opens the file, not its first value.
    if from == 0 {
        let mut bom = [0u8; 3];
        f.seek(SeekFrom::Start(0))?;
        if f.read(&mut bom)? == 3 && bom == [0xEF, 0xBB, 0xBF] {
            from = 3;
        }
    }
    let lines_before = if with_origin && from > 0 {
        count_lines(&mut f, from)?
    } else {
        0
    };
    f.seek(SeekFrom::Start(from))?;
    Ok((
        f,
        Bounds {
            from,
            to,
            lines_before,
            len,
        },
    ))
}

impl RangeReader {
    /// Read one range, handing each batch to `emit` (false: stop). Returns whether every
    /// batch was taken.
    fn read(&self, r: &Range, emit: &mut dyn FnMut(RecordBatch) -> bool) -> Result<bool> {
        let (file, b) = bounds(r, self.with_origin).map_err(|e| io_err(&r.file, e))?;
        if b.from >= b.to {
            return Ok(true);
        }
        match self.format {
            TextFormat::Csv { delimiter, has_header } => self.read_csv(r, file, &b, delimiter, has_header, emit),
            TextFormat::Ndjson => self.read_ndjson(r, file, &b, emit),
        }
    }

    /// The columns of NULLs for rows that could not be read, beside the origin columns.
    fn finish(&self, r: &Range, columns: Vec<ArrayRef>, pending: &Pending) -> Result<RecordBatch> {
        let n = pending.len();
        let mut arrays = columns;
        // Mostly NULL: only the rows that could not be read have a problem and a text.
        let sparse = |value: &dyn Fn(&Unreadable) -> Option<&str>| -> ArrayRef {
            if pending.unreadable.is_empty() {
                return new_null_array(&DataType::Utf8, n);
            }
            let mut b = StringBuilder::with_capacity(n, 0);
            let mut next = pending.unreadable.iter().peekable();
            for row in 0..n {
                match next.peek() {
                    Some(u) if u.row == row => {
                        b.append_option(value(u));
                        next.next();
                    }
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        };
        arrays.push(sparse(&|u| Some(u.problem.as_str())));
        if self.with_origin {
            let keys = arrow::array::Int32Array::from(vec![0; n]);
            let values = Arc::new(arrow::array::StringArray::from(vec![r.file.name.clone()]));
            arrays.push(Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values)?));
            let mut lines = UInt64Builder::with_capacity(n);
            lines.append_slice(&pending.lines);
            arrays.push(Arc::new(lines.finish()));
            arrays.push(sparse(&|u| u.text.as_deref()));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }

    fn read_csv(
        &self,
        r: &Range,
        file: File,
        b: &Bounds,
        delimiter: u8,
        has_header: bool,
        emit: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<bool> {
        let fail = |e: std::io::Error| io_err(&r.file, e);
        let width = self.columns.fields().len();
        let mut builders: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
        let mut pending = Pending::new(self.with_origin);
        let mut raw = File::open(&r.file.path).map_err(fail)?;
        let ends = if self.with_origin {
            line_ends(&mut raw, b.len).map_err(fail)?
        } else {
            LineEnds::default()
        };
        let mut header = has_header && r.start == 0;
        // Where the reader starts; after a quote that is never closed, it starts again on
        // the next line.
        let mut from = b.from;
        let mut first_line = b.lines_before + 1;
        let mut file = Some(file);
        'restart: loop {
            let f = match file.take() {
                Some(f) => f,
                None => {
                    let mut f = File::open(&r.file.path).map_err(fail)?;
                    f.seek(SeekFrom::Start(from)).map_err(fail)?;
                    f
                }
            };
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .delimiter(delimiter)
                .buffer_capacity(256 << 10)
                .from_reader(f);
            let mut rec = csv::ByteRecord::new();
            loop {
                let at = from + rdr.position().byte();
                if at >= b.to {
                    break 'restart;
                }
                let line_at = first_line + rdr.position().line() - 1;
                let read = rdr
                    .read_byte_record(&mut rec)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                if !read {
                    break 'restart;
                }
                let after = from + rdr.position().byte();
                // A row straddling the range's end belongs here only if its first line
                // starts before the end (what precedes it may be blank lines).
                if after > b.to && blank(&mut raw, at, b.to).map_err(fail)? {
                    break 'restart;
                }
                if std::mem::take(&mut header) {
                    continue; // the header, checked against the schema before the read
                }
                let line = if self.with_origin {
                    ends.start_line(&rec, first_line + rdr.position().line() - 1, after >= b.len)
                } else {
                    0
                };
                if after >= b.len && spans_lines(&rec) && odd_quotes(&mut raw, at, b.len).map_err(fail)? {
                    // Everything to the end of the file went into one value: refuse the
                    // line the quote opens on and read on from the next one.
                    let (start, blank_lines) = skip_blank(&mut raw, at, b.len).map_err(fail)?;
                    let text = first_line_text(&mut raw, start).map_err(fail)?;
                    let line = line_at + blank_lines;
                    for bld in builders.iter_mut() {
                        bld.append_null();
                    }
                    pending.push(
                        line,
                        Some("a quoted value is not closed before the end of the file".into()),
                        self.with_origin
                            .then(|| String::from_utf8_lossy(text.trim_ascii_end()).into_owned()),
                    );
                    from = start + text.len() as u64;
                    first_line = line + 1;
                    continue 'restart;
                }
                self.push_csv_row(&rec, line, &mut builders, &mut pending, delimiter);
                if pending.len() >= self.batch_size && !self.flush_csv(r, &mut builders, &mut pending, emit)? {
                    return Ok(false);
                }
            }
        }
        if pending.len() > 0 {
            return self.flush_csv(r, &mut builders, &mut pending, emit);
        }
        Ok(true)
    }

    fn push_csv_row(
        &self,
        rec: &csv::ByteRecord,
        line: u64,
        builders: &mut [StringBuilder],
        pending: &mut Pending,
        delimiter: u8,
    ) {
        // Fields split at ASCII delimiters, so a record that is UTF-8 as a whole has UTF-8
        // fields: one check per record.
        let text = std::str::from_utf8(rec.as_slice());
        let problem = if rec.len() != builders.len() {
            Some(format!(
                "the line has {} field(s) where {} column(s) are declared",
                rec.len(),
                builders.len()
            ))
        } else if text.is_err() {
            let field = rec.iter().position(|v| std::str::from_utf8(v).is_err()).unwrap_or(0);
            Some(format!(
                "field {} (`{}`) is not valid UTF-8",
                field + 1,
                self.columns.field(field).name()
            ))
        } else {
            None
        };
        match (problem, text) {
            (None, Ok(text)) => {
                for (i, bld) in builders.iter_mut().enumerate() {
                    match rec.range(i) {
                        Some(r) if !r.is_empty() => bld.append_value(&text[r]),
                        _ => bld.append_null(),
                    }
                }
                pending.push(line, None, None);
            }
            (why, _) => {
                let why = why.unwrap_or_default();
                for bld in builders.iter_mut() {
                    bld.append_null();
                }
                let text = self.with_origin.then(|| {
                    let fields: Vec<String> = rec.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                    fields.join(&(delimiter as char).to_string())
                });
                pending.push(line, Some(why), text);
            }
        }
    }

    fn flush_csv(
        &self,
        r: &Range,
        builders: &mut [StringBuilder],
        pending: &mut Pending,
        emit: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<bool> {
        let columns: Vec<ArrayRef> = builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let batch = self.finish(r, columns, pending)?;
        pending.clear();
        Ok(emit(batch))
    }

    fn read_ndjson(
        &self,
        r: &Range,
        file: File,
        b: &Bounds,
        emit: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<bool> {
        let mut input = BufReader::with_capacity(256 << 10, file);
        let mut at = b.from;
        let mut line = b.lines_before;
        let mut chunk: Vec<u8> = Vec::new();
        // Each JSON line of the chunk: its line number and its bytes in `chunk`.
        let mut spans: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        let mut buf = Vec::new();
        while at < b.to {
            buf.clear();
            let n = input.read_until(b'\n', &mut buf).map_err(|e| io_err(&r.file, e))?;
            if n == 0 {
                break;
            }
            at += n as u64;
            line += 1;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let start = chunk.len();
            chunk.extend_from_slice(&buf);
            if !chunk.ends_with(b"\n") {
                chunk.push(b'\n');
            }
            spans.push((line, start..chunk.len()));
            if spans.len() >= self.batch_size {
                if !emit(self.decode_json(r, &chunk, &spans)?) {
                    return Ok(false);
                }
                chunk.clear();
                spans.clear();
            }
        }
        if !spans.is_empty() {
            return Ok(emit(self.decode_json(r, &chunk, &spans)?));
        }
        Ok(true)
    }

    fn decode_all(&self, bytes: &[u8], rows: usize) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        let mut d = arrow::json::ReaderBuilder::new(self.columns.clone())
            .with_batch_size(rows.max(1) + 1)
            .build_decoder()?;
        let mut done = 0;
        while done < bytes.len() {
            let n = d.decode(&bytes[done..])?;
            if n == 0 {
                break;
            }
            done += n;
        }
        d.flush()
    }

    /// Decode a chunk of JSON lines at once; only a chunk that fails is decoded line by
    /// line, to find the lines that cannot be read.
    fn decode_json(&self, r: &Range, chunk: &[u8], spans: &[(u64, std::ops::Range<usize>)]) -> Result<RecordBatch> {
        let mut pending = Pending::new(self.with_origin);
        if let Ok(Some(batch)) = self.decode_all(chunk, spans.len())
            && batch.num_rows() == spans.len()
        {
            for (line, _) in spans {
                pending.push(*line, None, None);
            }
            return self.finish(r, batch.columns().to_vec(), &pending);
        }
        let mut parts: Vec<RecordBatch> = Vec::with_capacity(spans.len());
        for (line, span) in spans {
            let bytes = &chunk[span.clone()];
            match self.decode_all(bytes, 1) {
                Ok(Some(one)) if one.num_rows() == 1 => {
                    parts.push(one);
                    pending.push(*line, None, None);
                }
                result => {
                    let why = match result {
                        Err(e) => format!("not readable as JSON: {e}"),
                        _ => "not one JSON value on one line".to_string(),
                    };
                    let nulls: Vec<ArrayRef> = self
                        .columns
                        .fields()
                        .iter()
                        .map(|f| new_null_array(f.data_type(), 1))
                        .collect();
                    parts.push(RecordBatch::try_new(self.columns.clone(), nulls)?);
                    pending.push(
                        *line,
                        Some(why),
                        self.with_origin
                            .then(|| String::from_utf8_lossy(bytes.trim_ascii_end()).into_owned()),
                    );
                }
            }
        }
        let batch = arrow::compute::concat_batches(&self.columns, &parts)?;
        self.finish(r, batch.columns().to_vec(), &pending)
    }
}

/// How a file ends its lines, to tell the line a record starts on from the line the
/// reader is at after it.
#[derive(Default)]
struct LineEnds {
    crlf: bool,
    final_break: bool,
}

fn line_ends(f: &mut File, len: u64) -> std::io::Result<LineEnds> {
    let head = read_span(f, 0, len.min(64 << 10))?;
    let last = if len > 0 {
        read_span(f, len - 1, len)?
    } else {
        Vec::new()
    };
    Ok(LineEnds {
        crlf: head.windows(2).any(|w| w == b"\r\n"),
        final_break: last == b"\n",
    })
}

impl LineEnds {
    /// The line a record starts on: the line after it, less the line breaks inside its
    /// values and the one that ends it. (With CRLF the reader takes a record's `\n` only
    /// when it reads the next one; a file's last line may have no break.)
    fn start_line(&self, rec: &csv::ByteRecord, line_after: u64, at_end: bool) -> u64 {
        let inside = rec.as_slice().iter().filter(|&&c| c == b'\n').count() as u64;
        // At the end of the file, the final line break may lie inside the last value.
        let last_in_value = rec.iter().next_back().is_some_and(|v| v.ends_with(b"\n"));
        let ended = u64::from(!self.crlf && (!at_end || (self.final_break && !last_in_value)));
        line_after.saturating_sub(inside + ended).max(1)
    }
}

/// Whether a value of the record runs over a line break (as one does when a quote was
/// never closed).
fn spans_lines(rec: &csv::ByteRecord) -> bool {
    rec.iter().any(|v| v.contains(&b'\n') || v.contains(&b'\r'))
}

/// The first byte at or after `from` that is not a line break, and the lines skipped.
fn skip_blank(f: &mut File, from: u64, len: u64) -> std::io::Result<(u64, u64)> {
    let span = read_span(f, from, len.min(from + 4096))?;
    let blank: Vec<&u8> = span.iter().take_while(|b| matches!(b, b'\n' | b'\r')).collect();
    let lines = blank.iter().filter(|&&&b| b == b'\n').count() as u64;
    Ok((from + blank.len() as u64, lines))
}

fn read_span(f: &mut File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((to - from) as usize);
    f.take(to - from).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether `[from, to)` of the file is only line breaks.
fn blank(f: &mut File, from: u64, to: u64) -> std::io::Result<bool> {
    Ok(read_span(f, from, to)?.iter().all(|b| matches!(b, b'\n' | b'\r')))
}

/// Whether the text from `from` to `to` holds an odd number of quote marks (so one was
/// never closed).
fn odd_quotes(f: &mut File, from: u64, to: u64) -> std::io::Result<bool> {
    f.seek(SeekFrom::Start(from))?;
    let mut rest = f.take(to - from);
    let mut buf = vec![0u8; 1 << 20];
    let mut quotes = 0usize;
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            return Ok(quotes % 2 == 1);
        }
        quotes += buf[..n].iter().filter(|&&b| b == b'"').count();
    }
}

/// The bytes of the line that starts at `from`, with its line break.
fn first_line_text(f: &mut File, from: u64) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(from))?;
    let mut line = Vec::new();
    BufReader::new(f).read_until(b'\n', &mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(sizes: &[u64], partitions: usize) -> Vec<Vec<(usize, u64, u64)>> {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<TextFile> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, vec![b'x'; *n as usize]).unwrap();
                TextFile {
                    path,
                    name: format!("f{i}"),
                }
            })
            .collect();
        plan_ranges(&files, partitions, MIN_RANGE)
            .unwrap()
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|r| {
                        (
                            files.iter().position(|f| f.path == r.file.path).unwrap(),
                            r.start,
                            r.end,
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn small_files_are_one_range_each_and_large_ones_are_cut_evenly() {
        assert_eq!(ranges(&[10, 20], 2), vec![vec![(0, 0, 10), (1, 0, 20)]]);
        let m = MIN_RANGE;
        // 4 MIN_RANGE over 2 partitions: 2 MIN_RANGE each.
        assert_eq!(ranges(&[4 * m], 2), vec![vec![(0, 0, 2 * m)], vec![(0, 2 * m, 4 * m)]]);
        assert_eq!(ranges(&[], 2), vec![Vec::<(usize, u64, u64)>::new()]);
    }

    /// A row as read: its id, its line and its problem.
    type Row = (Option<String>, u64, Option<String>);

    /// Read `text` as CSV (columns id, name) cut into ranges of about `min` bytes: every
    /// row once, with its line.
    async fn read_csv_ranges(text: &[u8], min: u64, partitions: usize) -> Vec<Row> {
        use arrow::array::{Array, AsArray};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, text).unwrap();
        let files = [TextFile {
            path,
            name: "t.csv".into(),
        }];
        let columns = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        let format = TextFormat::Csv {
            delimiter: b',',
            has_header: true,
        };
        let t = table(&files, format, &columns, true, partitions, min).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let batches = ctx.read_table(t).unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let ids = b.column(0).as_string::<i32>();
            let problems = b.column(2).as_string::<i32>();
            let lines = b.column(4).as_primitive::<arrow::datatypes::UInt64Type>();
            for i in 0..b.num_rows() {
                rows.push((
                    ids.is_valid(i).then(|| ids.value(i).to_string()),
                    lines.value(i),
                    problems.is_valid(i).then(|| problems.value(i).to_string()),
                ));
            }
        }
        rows.sort_by_key(|r| r.1);
        rows
    }

    /// A CSV text (columns id, name) with line 1 the header, rows on lines 2.., a blank
    /// line after every 7th row, one ragged row, and (`multi_line`) a value over two lines,
    /// and what reading it must give.
    fn csv_text(eol: &str, multi_line: bool) -> (String, Vec<Row>) {
        let mut text = format!("id,name{eol}");
        let mut expected = Vec::new();
        let mut line = 2;
        for i in 0..300u64 {
            if i == 50 && multi_line {
                text.push_str(&format!("{i},\"two{eol}lines\"{eol}"));
                expected.push((Some(i.to_string()), line, None));
                line += 2;
            } else if i == 120 {
                text.push_str(&format!("{i},a,b{eol}"));
                let why = "the line has 3 field(s) where 2 column(s) are declared";
                expected.push((None, line, Some(why.to_string())));
                line += 1;
            } else {
                text.push_str(&format!("{i},name {i}{eol}"));
                expected.push((Some(i.to_string()), line, None));
                line += 1;
            }
            if i % 7 == 6 {
                text.push_str(eol);
                line += 1;
            }
        }
        (text, expected)
    }

    #[tokio::test]
    async fn ranges_cut_at_line_starts_read_every_row_once_with_its_line() {
        for eol in ["\n", "\r\n"] {
            let (text, expected) = csv_text(eol, true);
            let rows = read_csv_ranges(text.as_bytes(), 1 << 20, 4).await;
            assert_eq!(rows, expected, "line ends {eol:?}, one range");
            // Many small ranges (a value over two lines could be cut: not here).
            let (text, expected) = csv_text(eol, false);
            for min in [64, 97, 1000] {
                let rows = read_csv_ranges(text.as_bytes(), min, 64).await;
                assert_eq!(rows, expected, "line ends {eol:?}, ranges of {min} bytes");
            }
        }
    }
}
