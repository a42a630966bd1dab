//! `kind: copy_columns`: copy columns to new names, optionally converting the type.
//! `rename: true` moves instead of copying.

use std::ops::Not;
use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::functions::expr_fn::concat_ws;
use datafusion::logical_expr::{cast, try_cast, when};
use datafusion::prelude::{DataFrame, lit};

use super::settings::{all_but, column_type, existing, plan_err};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{ColumnType, Fields, Reader, Text};
use crate::engine::side::{OnError, apply_policy};

/// The settings of `kind: copy_columns`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["columns"],
        ty: "list of `{ from, to, type }`",
        required: "yes",
        default: "",
        doc: "`from`: an existing column; `to`: the new name; `type` (optional): the column type to convert to",
    },
    Setting {
        keys: &["rename"],
        ty: "boolean",
        required: "no",
        default: "`false`",
        doc: "move instead of copy",
    },
    Setting {
        keys: &["on_error"],
        ty: "`fail`, `reject`, `null`",
        required: "no",
        default: "`fail`",
        doc: "a non-NULL value that does not convert to `type`",
    },
];

pub struct CopyColumnsKind;

#[derive(Debug)]
struct Copy {
    from: Text,
    to: Text,
    ty: Option<ColumnType>,
}

#[derive(Debug)]
pub struct CopyColumnsStage {
    copies: Vec<Copy>,
    rename: bool,
    on_error: OnError,
}

impl StageKind for CopyColumnsKind {
    fn name(&self) -> &'static str {
        "copy_columns"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let rename = f.bool_or(r, "rename", false);
        let on_error = super::settings::on_error(
            f,
            r,
            "on_error",
            &[OnError::Fail, OnError::Null, OnError::Reject],
            OnError::Fail,
        )?;
        let node = f.require(r, "columns", "a list of `{ from, to, type }`")?;
        let mut copies = Vec::new();
        for item in r.sequence(node, "columns")? {
            let mut c = r.mapping(item, "column copy")?;
            let from = c.required_text(r, "from", "the column to copy");
            let to = c.required_text(r, "to", "the new column's name");
            let ty = c.get("type").and_then(|n| column_type(r, n, "`type`"));
            c.finish(r, &["from", "to", "type"]);
            copies.push(Copy {
                from: from?,
                to: to?,
                ty,
            });
        }
        Some(Arc::new(CopyColumnsStage {
            copies,
            rename,
            on_error,
        }))
    }
}

#[async_trait]
impl Stage for CopyColumnsStage {
    fn describe(&self) -> String {
        let verb = if self.rename { "rename" } else { "copy" };
        let parts: Vec<String> = self
            .copies
            .iter()
            .map(|c| {
                format!(
                    "{} -> {}{}",
                    c.from.value,
                    c.to.value,
                    c.ty.map(|t| format!(" as {t}")).unwrap_or_default()
                )
            })
            .collect();
        format!("{verb} {}", parts.join(", "))
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let mut df = input;
        let mut new_columns = Vec::new();
        for c in &self.copies {
            let from = existing(&df, &c.from)?;
            let value = match c.ty {
                None => from,
                Some(ty) => {
                    let from_type = df
                        .schema()
                        .field_with_unqualified_name(&c.from.value)
                        .map_err(plan_err)?
                        .data_type()
                        .clone();
                    let text = matches!(from_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
                    if !text && !crate::definition::converts_losslessly(&from_type, ty) {
                        let mut e = StageError::new(format!(
                            "copying `{}` ({from_type}) as {ty} would lose precision",
                            c.from.value
                        ))
                        .at(Some(c.from.location.clone()));
                        e.hint = Some(
                            "round explicitly first (a `round` stage), or declare a type with at least the same scale"
                                .into(),
                        );
                        return Err(e);
                    }
                    let converted = try_cast(from.clone(), ty.to_arrow());
                    if self.on_error == OnError::Null {
                        converted
                    } else {
                        let bad = from.clone().is_not_null().and(converted.clone().is_null());
                        let reason = concat_ws(
                            lit(""),
                            vec![
                                lit(format!("{}: cannot convert '", c.from.value)),
                                cast(from.clone(), arrow::datatypes::DataType::Utf8),
                                lit(format!("' to {ty}")),
                            ],
                        );
                        df = apply_policy(df, self.on_error, bad.clone(), reason, env.stage, env.side)
                            .map_err(plan_err)?;
                        when(bad.not(), converted).end().map_err(plan_err)?
                    }
                }
            };
            new_columns.push(value.alias(&c.to.value));
        }
        let mut drop: Vec<&str> = self.copies.iter().map(|c| c.to.value.as_str()).collect();
        if self.rename {
            drop.extend(self.copies.iter().map(|c| c.from.value.as_str()));
        }
        let mut select = all_but(&df, &drop);
        select.extend(new_columns);
        df.select(select).map_err(plan_err)
    }
}
