//! `batch diff A B`: what a new version of a stream's batch changes, for a reviewer.
//! Rows are matched on key columns; a row of B with no match in A is added, one of A with
//! none in B removed, and a matched row whose other values differ (NULL-safe) changed,
//! with the columns that changed. Control totals are set side by side. One full outer
//! join, computed by DataFusion.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use datafusion::common::JoinType;
use datafusion::functions_aggregate::expr_fn::sum;
use std::ops::Not;

use datafusion::logical_expr::{Expr, Operator, binary_expr, lit, when};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, ident};

use super::catalog::Entry;

/// How two versions of a batch differ.
#[derive(Debug, Default)]
pub struct Diff {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// For each column other than the keys, the matched rows whose value changed.
    pub changed_columns: BTreeMap<String, u64>,
    /// Each control total: (in A, in B).
    pub totals: BTreeMap<String, (Option<String>, Option<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("`{column}` is not a column of {which} (its columns: {})", .columns.join(", "))]
    NoKeyColumn {
        column: String,
        which: String,
        columns: Vec<String>,
    },
    #[error("give the key columns that match a row of one version to the other (--key)")]
    NoKey,
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// A batch's rows; with no data file (no rows), an empty table shaped as `like`'s.
async fn read(ctx: &SessionContext, files: &[String], like: Option<&DataFrame>) -> Result<DataFrame, DiffError> {
    match (files.is_empty(), like) {
        (true, Some(other)) => Ok(ctx.read_batch(RecordBatch::new_empty(Arc::new(other.schema().as_arrow().clone())))?),
        _ => Ok(ctx
            .read_parquet(files.to_vec(), ParquetReadOptions::default().file_extension(".parquet"))
            .await?),
    }
}

/// Compare batch `a` (the older) with `b` on `keys`.
pub async fn diff(a: &Entry, b: &Entry, keys: &[String]) -> Result<Diff, DiffError> {
    if keys.is_empty() {
        return Err(DiffError::NoKey);
    }
    let ctx = SessionContext::new();
    a.root.register(&ctx.runtime_env());
    let (a_files, b_files) = (a.data_files(), b.data_files());
    let (left, right) = if a_files.is_empty() {
        let right = read(&ctx, &b_files, None).await?;
        (read(&ctx, &a_files, Some(&right)).await?, right)
    } else {
        let left = read(&ctx, &a_files, None).await?;
        let right = read(&ctx, &b_files, Some(&left)).await?;
        (left, right)
    };
    let (a, b) = ((a.dir(), &a.manifest), (b.dir(), &b.manifest));
    let names = |df: &DataFrame| -> Vec<String> { df.schema().fields().iter().map(|f| f.name().clone()).collect() };
    let (a_cols, b_cols) = (names(&left), names(&right));
    for (cols, which) in [(&a_cols, &a.1.batch_id), (&b_cols, &b.1.batch_id)] {
        if let Some(k) = keys.iter().find(|k| !cols.contains(k)) {
            return Err(DiffError::NoKeyColumn {
                column: k.clone(),
                which: which.clone(),
                columns: cols.clone(),
            });
        }
    }
    let compared: Vec<String> = a_cols
        .iter()
        .filter(|c| !keys.contains(c) && b_cols.contains(c))
        .cloned()
        .collect();
    // Each side under its own names, plus a marker that it has the row.
    let side = |df: DataFrame, tag: &str| -> Result<DataFrame, DiffError> {
        let mut exprs: Vec<Expr> = a_cols
            .iter()
            .filter(|c| keys.contains(c) || compared.contains(c))
            .map(|c| ident(c).alias(format!("{tag}{c}")))
            .collect();
        exprs.push(lit(true).alias(format!("{tag}__here")));
        Ok(df.select(exprs)?)
    };
    let (l, r) = (side(left, "a.")?, side(right, "b.")?);
    let on: Vec<Expr> = keys
        .iter()
        .map(|k| ident(format!("a.{k}")).eq(ident(format!("b.{k}"))))
        .collect();
    let joined = l.join_on(r, JoinType::Full, on)?;
    let here = |tag: &str| ident(format!("{tag}__here")).is_not_null();
    let differs = |c: &str| {
        binary_expr(
            ident(format!("a.{c}")),
            Operator::IsDistinctFrom,
            ident(format!("b.{c}")),
        )
        .and(here("a."))
        .and(here("b."))
    };
    let count = |e: Expr, name: &str| sum(when(e, lit(1i64)).otherwise(lit(0i64)).unwrap_or(lit(0i64))).alias(name);
    let any_change = compared
        .iter()
        .map(|c| differs(c))
        .reduce(Expr::or)
        .unwrap_or(lit(false));
    let mut aggs = vec![
        count(here("b.").and(here("a.").not()), "added"),
        count(here("a.").and(here("b.").not()), "removed"),
        count(any_change.clone(), "changed"),
        count(here("a.").and(here("b.")).and(any_change.not()), "unchanged"),
    ];
    for (i, c) in compared.iter().enumerate() {
        aggs.push(count(differs(c), &format!("c{i}")));
    }
    let batches = joined.aggregate(vec![], aggs)?.collect().await?;
    let value = |b: &RecordBatch, i: usize| -> u64 {
        let a = b.column(i).as_primitive::<arrow::datatypes::Int64Type>();
        if a.is_valid(0) { a.value(0) as u64 } else { 0 }
    };
    let mut out = Diff::default();
    if let Some(b0) = batches.iter().find(|b| b.num_rows() > 0) {
        out.added = value(b0, 0);
        out.removed = value(b0, 1);
        out.changed = value(b0, 2);
        out.unchanged = value(b0, 3);
        for (i, c) in compared.iter().enumerate() {
            let n = value(b0, 4 + i);
            if n > 0 {
                out.changed_columns.insert(c.clone(), n);
            }
        }
    }
    let names: std::collections::BTreeSet<&String> =
        a.1.control_totals.keys().chain(b.1.control_totals.keys()).collect();
    for n in names {
        out.totals.insert(
            n.clone(),
            (a.1.control_totals.get(n).cloned(), b.1.control_totals.get(n).cloned()),
        );
    }
    Ok(out)
}
