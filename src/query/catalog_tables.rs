//! The catalog tables of schema `billflow`: `batches` (one row per batch the reader
//! sees), `events` (their lifecycle logs) and `streams` (one row per stream table).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use datafusion::catalog::{MemTable, TableProvider};

use super::{QueryError, sql_name};
use crate::batches::catalog::Entry;
use crate::batches::lifecycle::Action;

type Column = (&'static str, ArrayRef);
/// A catalog table and its name in schema `billflow`.
pub(super) type NamedTable = (&'static str, Arc<dyn TableProvider>);

/// Each catalog table.
pub(super) fn tables(entries: &[Entry]) -> Result<Vec<NamedTable>, QueryError> {
    Ok(vec![
        ("batches", table(batches(entries))?),
        ("events", table(events(entries))?),
        ("streams", table(streams(entries))?),
    ])
}

fn table(columns: Vec<Column>) -> Result<Arc<dyn TableProvider>, QueryError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect())?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn text<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn int(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// RFC 3339 text as a UTC timestamp (NULL if it does not parse).
fn time<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let micros = values.map(|v| {
        v.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros())
    });
    Arc::new(TimestampMicrosecondArray::from_iter(micros).with_timezone("UTC"))
}

fn published_at(e: &Entry) -> Option<&str> {
    e.history
        .iter()
        .rev()
        .find(|ev| ev.action == Action::Publish)
        .map(|ev| ev.at.as_str())
}

fn batches(entries: &[Entry]) -> Vec<Column> {
    let m = || entries.iter().map(|e| &e.manifest);
    let totals: Vec<String> = m()
        .map(|m| serde_json::to_string(&m.control_totals).unwrap_or_default())
        .collect();
    let tables: Vec<String> = m()
        .map(|m| format!("{}.{}", sql_name(&m.organization), sql_name(&m.stream)))
        .collect();
    vec![
        ("id", text(m().map(|m| Some(m.batch_id.as_str())))),
        ("stream", text(m().map(|m| Some(m.stream.as_str())))),
        ("organization", text(m().map(|m| Some(m.organization.as_str())))),
        ("tier", text(m().map(|m| Some(m.tier.as_str())))),
        ("kind", text(m().map(|m| Some(m.kind.as_str())))),
        ("period", text(m().map(|m| Some(m.period.label.as_str())))),
        ("status", text(entries.iter().map(|e| Some(e.status.name())))),
        ("version", int(entries.iter().map(|e| e.version as i64))),
        (
            "stale",
            Arc::new(BooleanArray::from_iter(entries.iter().map(|e| Some(e.stale)))),
        ),
        ("rows", int(m().map(|m| m.rows as i64))),
        ("rows_in", int(m().map(|m| m.rows_in as i64))),
        ("rejected", int(m().map(|m| m.rows_rejected as i64))),
        ("control_totals", text(totals.iter().map(|t| Some(t.as_str())))),
        ("created", time(m().map(|m| Some(m.created_at.as_str())))),
        ("published", time(entries.iter().map(published_at))),
        ("table_name", text(tables.iter().map(|t| Some(t.as_str())))),
    ]
}

fn events(entries: &[Entry]) -> Vec<Column> {
    let ev = || entries.iter().flat_map(|e| e.history.iter());
    vec![
        ("batch_id", text(ev().map(|e| Some(e.batch.as_str())))),
        ("seq", int(ev().map(|e| e.seq as i64))),
        ("at", time(ev().map(|e| Some(e.at.as_str())))),
        ("actor", text(ev().map(|e| Some(e.actor.as_str())))),
        ("action", text(ev().map(|e| Some(e.action.name())))),
        ("reason", text(ev().map(|e| e.reason.as_deref()))),
        ("from_status", text(ev().map(|e| e.from.map(|s| s.name())))),
        ("to_status", text(ev().map(|e| Some(e.to.name())))),
        ("superseded_by", text(ev().map(|e| e.by.as_deref()))),
    ]
}

/// One row per stream table: what it is and what it holds.
fn streams(entries: &[Entry]) -> Vec<Column> {
    #[derive(Default)]
    struct Row<'a> {
        stream: &'a str,
        organization: &'a str,
        tier: &'a str,
        kind: &'a str,
        batches: i64,
        current: i64,
        first: Option<&'a str>,
        last: Option<&'a str>,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for e in entries {
        let m = &e.manifest;
        let name = format!("{}.{}", sql_name(&m.organization), sql_name(&m.stream));
        let r = rows.entry(name).or_insert_with(|| Row {
            stream: &m.stream,
            organization: &m.organization,
            tier: &m.tier,
            kind: &m.kind,
            ..Row::default()
        });
        r.batches += 1;
        if super::stream_table::CURRENT.contains(&e.status.name()) {
            r.current += 1;
        }
        let p = m.period.label.as_str();
        r.first = Some(r.first.map_or(p, |f| f.min(p)));
        r.last = Some(r.last.map_or(p, |l| l.max(p)));
    }
    let r = || rows.values();
    vec![
        ("table_name", text(rows.keys().map(|k| Some(k.as_str())))),
        ("stream", text(r().map(|r| Some(r.stream)))),
        ("organization", text(r().map(|r| Some(r.organization)))),
        ("tier", text(r().map(|r| Some(r.tier)))),
        ("kind", text(r().map(|r| Some(r.kind)))),
        ("batches", int(r().map(|r| r.batches))),
        ("current_batches", int(r().map(|r| r.current))),
        ("first_period", text(r().map(|r| r.first))),
        ("last_period", text(r().map(|r| r.last))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::datatypes::{DataType, TimeUnit};

    #[test]
    fn times_are_utc_timestamps_and_bad_text_is_null() {
        let a = time(["2026-10-03T12:00:00Z", "not a time"].into_iter().map(Some));
        let a = a.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        // 2026-10-03T12:00:00Z = 1_791_028_800 s after the epoch.
        assert_eq!(a.value(0), 1_791_028_800_000_000);
        assert!(a.is_null(1));
        assert_eq!(
            a.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }
}
