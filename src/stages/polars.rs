//! `kind: polars`: Polars lazy operations written as SQL expressions that Polars parses
//! (`with_columns`, `filter`, `select`, `group_by` + `agg`). The stream's table crosses to
//! Polars and back through the Arrow C Data Interface, without copying buffers.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::datasource::MemTable;
use datafusion::prelude::DataFrame;
use marked_yaml::Node;
use polars::prelude as pl;

use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::interop;

/// The settings of `kind: polars`, as its docs table shows them.
const SETTINGS: &[Setting] = &[Setting {
    keys: &["ops"],
    ty: "list",
    required: "yes",
    default: "",
    doc: "Polars lazy operations, run in order; at least one",
}];

pub struct PolarsKind;

const OPS: &[&str] = &["with_columns", "filter", "select", "group_by"];

impl StageKind for PolarsKind {
    fn name(&self) -> &'static str {
        "polars"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let ops_node = f.require(r, "ops", "a list of operations such as `- filter: \"quantity > 0\"`")?;
        let items = r.sequence(ops_node, "ops")?;
        let mut ops = Vec::new();
        let mut ok = true;
        for item in items {
            match parse_op(r, item) {
                Some(op) => ops.push(op),
                None => ok = false,
            }
        }
        if ok && ops.is_empty() {
            let at = r.loc(ops_node);
            r.error("polars stage has no operations", at).expected = Some(format!(
                "at least one of {}",
                crate::definition::diagnostics::one_of(OPS)
            ));
            return None;
        }
        ok.then(|| Arc::new(PolarsStage { ops }) as Arc<dyn Stage>)
    }
}

#[derive(Debug, Clone)]
enum Op {
    WithColumns(Vec<(String, pl::Expr)>),
    Filter(String, pl::Expr),
    Select(Vec<(String, pl::Expr)>),
    GroupBy {
        keys: Vec<(String, pl::Expr)>,
        aggs: Vec<(String, pl::Expr)>,
    },
}

fn expr(r: &mut Reader, t: &Text) -> Option<(String, pl::Expr)> {
    match polars::sql::sql_expr(&t.value) {
        Ok(e) => Some((t.value.clone(), e)),
        Err(e) => {
            let msg = e.to_string();
            let d = r.error(
                format!("Polars cannot parse expression `{}`: {}", t.value, msg.trim()),
                t.location.clone(),
            );
            d.expected =
                Some("a SQL expression, optionally with `AS name`, e.g. `quantity * 2 AS double_quantity`".into());
            None
        }
    }
}

fn exprs(r: &mut Reader, node: &Node, what: &str) -> Option<Vec<(String, pl::Expr)>> {
    let texts = r.string_list(node, what)?;
    let parsed: Vec<_> = texts.iter().map(|t| expr(r, t)).collect();
    parsed.into_iter().collect()
}

fn parse_op(r: &mut Reader, node: &Node) -> Option<Op> {
    let mut f = r.mapping(node, "polars operation")?;
    let present: Vec<&str> = OPS.iter().copied().filter(|k| f.has(k)).collect();
    let op = match present.as_slice() {
        ["with_columns"] => f
            .get("with_columns")
            .and_then(|n| exprs(r, n, "with_columns expressions"))
            .map(Op::WithColumns),
        ["filter"] => f.get("filter").and_then(|n| {
            let t = r.text(n, "filter condition")?;
            expr(r, &t).map(|(s, e)| Op::Filter(s, e))
        }),
        ["select"] => f
            .get("select")
            .and_then(|n| exprs(r, n, "select expressions"))
            .map(Op::Select),
        ["group_by"] => {
            let keys = f.get("group_by").and_then(|n| exprs(r, n, "group_by columns"));
            let aggs = f
                .require(r, "agg", "aggregations such as `- \"sum(amount) AS amount\"`")
                .and_then(|n| exprs(r, n, "agg expressions"));
            match (keys, aggs) {
                (Some(keys), Some(aggs)) => Some(Op::GroupBy { keys, aggs }),
                _ => None,
            }
        }
        [] => {
            let at = f.location.clone();
            let d = r.error("polars operation names no operation", at);
            d.expected = Some(crate::definition::diagnostics::one_of(OPS));
            None
        }
        many => {
            let at = f.location.clone();
            let d = r.error(format!("one operation per list item, found {}", many.join(" and ")), at);
            d.hint = Some("write each as its own `- ...` item; they run in order".into());
            None
        }
    };
    let mut allowed: Vec<&str> = OPS.to_vec();
    if present == ["group_by"] {
        allowed.push("agg");
    }
    f.finish(r, &allowed);
    op
}

#[derive(Debug)]
pub struct PolarsStage {
    ops: Vec<Op>,
}

fn exprs_only(list: &[(String, pl::Expr)]) -> Vec<pl::Expr> {
    list.iter().map(|(_, e)| e.clone()).collect()
}

impl PolarsStage {
    fn plan(&self, df: pl::DataFrame) -> pl::LazyFrame {
        let mut lf = pl::IntoLazy::lazy(df);
        for op in &self.ops {
            lf = match op {
                Op::WithColumns(e) => lf.with_columns(exprs_only(e)),
                Op::Filter(_, e) => lf.filter(e.clone()),
                Op::Select(e) => lf.select(exprs_only(e)),
                // Stable: groups come out in first-seen order, so output is reproducible.
                Op::GroupBy { keys, aggs } => lf.group_by_stable(exprs_only(keys)).agg(exprs_only(aggs)),
            };
        }
        lf
    }
}

#[async_trait]
impl Stage for PolarsStage {
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::WithColumns(e) => format!(
                    "with_columns({})",
                    e.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                Op::Filter(s, _) => format!("filter({s})"),
                Op::Select(e) => format!(
                    "select({})",
                    e.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                Op::GroupBy { keys, aggs } => format!(
                    "group_by({}).agg({})",
                    keys.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", "),
                    aggs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect();
        format!("polars {}", parts.join(" -> "))
    }
    fn fuses(&self) -> bool {
        false
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let schema = Arc::new(input.schema().as_arrow().clone());
        let batches = input
            .collect()
            .await
            .map_err(|e| StageError::new(e.strip_backtrace()))?;
        let parts = env.ctx.state().config().target_partitions();
        let plan = PolarsStage { ops: self.ops.clone() };
        // Polars computes on its own thread pool; keep the async runtime free meanwhile.
        let (schema, batches) = tokio::task::spawn_blocking(move || {
            let df = interop::to_polars(&schema, &batches).map_err(|e| format!("moving data to Polars: {e}"))?;
            let out = plan.plan(df).collect().map_err(|e| e.to_string())?;
            interop::to_arrow(&out, parts).map_err(|e| format!("moving data back from Polars: {e}"))
        })
        .await
        .map_err(|e| StageError::new(format!("polars stage panicked: {e}")))?
        .map_err(StageError::new)?;
        let table = MemTable::try_new(schema, batches.into_iter().map(|b| vec![b]).collect())
            .map_err(|e| StageError::new(e.strip_backtrace()))?;
        // One partition per slice lets DataFusion continue in parallel.
        env.ctx
            .read_table(Arc::new(table))
            .map_err(|e| StageError::new(e.strip_backtrace()))
    }
}
