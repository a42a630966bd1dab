//! `kind: map_values`: replace values by a table of from -> to pairs (inline, or a CSV
//! file with `from,to` columns). Unmapped values keep their value (`keep`, the default),
//! take a `default`, become NULL, go to the rejects file (`reject`) or fail the stream.

use std::ops::Not;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::functions::expr_fn::concat_ws;
use datafusion::logical_expr::{Expr, case, cast};
use datafusion::prelude::{DataFrame, lit};

use super::settings::{all_but, existing, plan_err};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::side::{OnError, apply_policy};

/// The settings of `kind: map_values`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["column"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the column whose values are mapped",
    },
    Setting {
        keys: &["output"],
        ty: "column name",
        required: "no",
        default: "`column` (replaced)",
        doc: "where the mapped value goes",
    },
    Setting {
        keys: &["values"],
        ty: "mapping from -> to",
        required: "one of `values` / `file` (or both)",
        default: "",
        doc: "inline pairs",
    },
    Setting {
        keys: &["file"],
        ty: "path",
        required: "one of `values` / `file`",
        default: "",
        doc: "a CSV relative to the pipeline file: first line exactly `from,to`, each line split at its first comma (no quoting), blank lines skipped; read at `validate`, and part of the batch id",
    },
    Setting {
        keys: &["unmapped"],
        ty: "`keep`, `default`, `null`, `reject`, `fail`",
        required: "no",
        default: "`keep`, or `default` when `default` is given",
        doc: "what an unmapped value becomes",
    },
    Setting {
        keys: &["default"],
        ty: "string",
        required: "with `unmapped: default`",
        default: "",
        doc: "the value for unmapped values",
    },
];

pub struct MapValuesKind;

#[derive(Debug, Clone, PartialEq)]
enum Unmapped {
    Keep,
    Default(String),
    Null,
    Reject,
    Fail,
}

#[derive(Debug)]
pub struct MapValuesStage {
    column: Text,
    output: Option<Text>,
    pairs: Vec<(String, String)>,
    unmapped: Unmapped,
}

/// Why a mapping file cannot be read.
#[derive(Debug, thiserror::Error)]
enum PairsFileError {
    #[error("cannot read {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: the first line must be `from,to`, found `{header}`", .path.display())]
    Header { path: PathBuf, header: String },
    #[error("{} line {line}: expected `from,to`, found `{text}`", .path.display())]
    Line { path: PathBuf, line: usize, text: String },
}

fn read_pairs_file(path: &Path) -> Result<Vec<(String, String)>, PairsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PairsFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("").trim();
    if header != "from,to" {
        return Err(PairsFileError::Header {
            path: path.to_path_buf(),
            header: header.to_string(),
        });
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((from, to)) = line.split_once(',') else {
            return Err(PairsFileError::Line {
                path: path.to_path_buf(),
                line: i + 2,
                text: line.to_string(),
            });
        };
        out.push((from.to_string(), to.to_string()));
    }
    Ok(out)
}

impl StageKind for MapValuesKind {
    fn name(&self) -> &'static str {
        "map_values"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let column = f.required_text(r, "column", "the column whose values are mapped");
        let output = f.text(r, "output");
        let mut pairs = Vec::new();
        if let Some(node) = f.get("values") {
            let m = r.mapping(node, "values")?;
            for (k, v) in m.node().iter() {
                let to = r.text(v, &format!("the value `{}` maps to", k.as_str()))?;
                pairs.push((k.as_str().to_string(), to.value));
            }
            let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            m.finish(r, &keys);
        }
        if let Some(file) = f.text(r, "file") {
            let full = match ctx.file(&file.value) {
                Ok(full) => full,
                Err(e) => {
                    r.error(e.to_string(), file.location.clone());
                    return None;
                }
            };
            match read_pairs_file(&full) {
                Ok(p) => pairs.extend(p),
                Err(e) => {
                    r.error(e.to_string(), file.location.clone());
                    return None;
                }
            }
        }
        if pairs.is_empty() {
            let at = f.location.clone();
            r.error("map_values has no pairs", at).expected =
                Some("`values: { from: to, ... }` or `file: <csv with from,to>`".into());
            return None;
        }
        let default = f.text(r, "default");
        let unmapped = match f.get("unmapped") {
            None if default.is_some() => {
                Unmapped::Default(default.as_ref().map(|d| d.value.clone()).unwrap_or_default())
            }
            None => Unmapped::Keep,
            Some(n) => match r
                .choice(n, "`unmapped` policy", &["keep", "default", "null", "reject", "fail"])?
                .value
                .as_str()
            {
                "keep" => Unmapped::Keep,
                "null" => Unmapped::Null,
                "reject" => Unmapped::Reject,
                "fail" => Unmapped::Fail,
                _ => match &default {
                    Some(d) => Unmapped::Default(d.value.clone()),
                    None => {
                        let at = f.location.clone();
                        r.error("`unmapped: default` needs a `default:` value", at);
                        return None;
                    }
                },
            },
        };
        Some(Arc::new(MapValuesStage {
            column: column?,
            output,
            pairs,
            unmapped,
        }))
    }
}

#[async_trait]
impl Stage for MapValuesStage {
    fn describe(&self) -> String {
        let target = self
            .output
            .as_ref()
            .map(|o| o.value.as_str())
            .unwrap_or(&self.column.value);
        format!(
            "map_values {} -> {target} ({} pairs, unmapped: {:?})",
            self.column.value,
            self.pairs.len(),
            self.unmapped
        )
    }
    fn fingerprint(&self, _vars: &super::TemplateVars) -> String {
        format!("{} {:?}", self.describe(), self.pairs)
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let column = existing(&input, &self.column)?;
        let as_text = cast(column.clone(), arrow::datatypes::DataType::Utf8);
        let froms: Vec<Expr> = self.pairs.iter().map(|(f, _)| lit(f.clone())).collect();
        let mapped = column.clone().is_not_null().and(as_text.clone().in_list(froms, false));
        let mut df = input;
        if matches!(self.unmapped, Unmapped::Reject | Unmapped::Fail) {
            let bad = mapped.clone().not();
            let reason = concat_ws(
                lit(""),
                vec![
                    lit(format!("{}: no mapping for '", self.column.value)),
                    as_text.clone(),
                    lit("'"),
                ],
            );
            let policy = if self.unmapped == Unmapped::Reject {
                OnError::Reject
            } else {
                OnError::Fail
            };
            df = apply_policy(df, policy, bad, reason, env.stage, env.side).map_err(plan_err)?;
        }
        let mut c = case(as_text.clone());
        for (from, to) in &self.pairs {
            c = c.when(lit(from.clone()), lit(to.clone()));
        }
        let value = match &self.unmapped {
            Unmapped::Keep => c.otherwise(as_text),
            Unmapped::Default(d) => c.otherwise(lit(d.clone())),
            _ => c.end(),
        }
        .map_err(plan_err)?;
        let target = self.output.as_ref().unwrap_or(&self.column).value.clone();
        let mut select = all_but(&df, &[target.as_str()]);
        select.push(value.alias(&target));
        df.select(select).map_err(plan_err)
    }
}
