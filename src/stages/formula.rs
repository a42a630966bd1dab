//! `kind: formula`: computed columns, each a SQL expression over the row with a declared
//! type; an optional `drop_when` predicate deletes rows (counted in the run summary).
//! A value that does not convert to the declared type fails the stream (`on_error: fail`,
//! the default), becomes NULL (`null`) or sends the row to the rejects file (`reject`).

use std::ops::Not;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::functions::expr_fn::concat_ws;
use datafusion::logical_expr::{cast, try_cast, when};
use datafusion::prelude::{DataFrame, lit};

use super::settings::{all_but, column_type, plan_err, sql_expr};
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind};
use crate::definition::{ColumnType, Fields, Reader, Text};
use crate::engine::side::{OnError, apply_policy, remove_rows};

/// The settings of `kind: formula`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["outputs"],
        ty: "list",
        required: "one of `outputs` / `drop_when` (or both)",
        default: "",
        doc: "the computed columns",
    },
    Setting {
        keys: &["outputs[].name"],
        ty: "column name",
        required: "yes",
        default: "",
        doc: "the output column",
    },
    Setting {
        keys: &["outputs[].type"],
        ty: "column type",
        required: "yes",
        default: "",
        doc: r#"e.g. `"decimal(18,4)"`, `string`, `boolean`"#,
    },
    Setting {
        keys: &["outputs[].expr"],
        ty: "SQL expression",
        required: "yes",
        default: "",
        doc: "e.g. `quantity * unit_price`",
    },
    Setting {
        keys: &["outputs[].on_error"],
        ty: "`fail`, `reject`, `null`",
        required: "no",
        default: "`fail`",
        doc: "the value does not convert to `type`",
    },
    Setting {
        keys: &["drop_when"],
        ty: "SQL predicate",
        required: "one of `outputs` / `drop_when`",
        default: "",
        doc: "rows where it is true are removed (counted); NULL keeps the row",
    },
];

pub struct FormulaKind;

#[derive(Debug)]
struct Output {
    name: Text,
    ty: ColumnType,
    expr: Text,
    on_error: OnError,
}

#[derive(Debug)]
pub struct FormulaStage {
    outputs: Vec<Output>,
    drop_when: Option<Text>,
}

impl StageKind for FormulaKind {
    fn name(&self) -> &'static str {
        "formula"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let drop_when = f.text(r, "drop_when");
        let mut outputs = Vec::new();
        if let Some(node) = f.get("outputs") {
            for item in r.sequence(node, "outputs")? {
                let mut o = r.mapping(item, "formula output")?;
                let name = o.required_text(r, "name", "the output column's name");
                let ty = o
                    .require(r, "type", "the output's type, e.g. `decimal(18,4)`")
                    .and_then(|n| column_type(r, n, "`type`"));
                let expr = o.required_text(r, "expr", "a SQL expression over the row, e.g. `quantity * unit_price`");
                let on_error = super::settings::on_error(
                    &mut o,
                    r,
                    "on_error",
                    &[OnError::Fail, OnError::Null, OnError::Reject],
                    OnError::Fail,
                );
                o.finish(r, &["name", "type", "expr", "on_error"]);
                outputs.push(Output {
                    name: name?,
                    ty: ty?,
                    expr: expr?,
                    on_error: on_error?,
                });
            }
        }
        // Templates are not expanded in formula expressions: `{{ owner }}` would be published
        // as that text. Said at validate, where the user wrote it.
        let texts = outputs.iter().map(|o| &o.expr).chain(drop_when.as_ref());
        if let Some(t) = texts.into_iter().find(|t| t.value.contains("{{")) {
            let d = r.error(
                format!("`{}`: template variables are not expanded in a formula", t.value),
                t.location.clone(),
            );
            d.hint = Some(
                "compare with the organisation in a `filter` or a `sql` stage, where `{{ ... }}` is expanded".into(),
            );
            return None;
        }
        if outputs.is_empty() && drop_when.is_none() {
            let at = f.location.clone();
            r.error("formula stage computes nothing", at).expected =
                Some("`outputs:` (a list of `{ name, type, expr }`) and/or `drop_when:`".into());
            return None;
        }
        Some(Arc::new(FormulaStage { outputs, drop_when }))
    }
}

#[async_trait]
impl Stage for FormulaStage {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .outputs
            .iter()
            .map(|o| format!("{} {} = {}", o.name.value, o.ty, o.expr.value))
            .collect();
        if let Some(d) = &self.drop_when {
            parts.push(format!("drop when {}", d.value));
        }
        format!("formula {}", parts.join("; "))
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let mut df = input;
        if let Some(d) = &self.drop_when {
            let cond = sql_expr(&df, d)?;
            df = remove_rows(df, cond, &format!("drop_when {}", d.value), env.stage, env.side).map_err(plan_err)?;
        }
        // Each output sees the columns computed before it.
        for o in &self.outputs {
            let raw = sql_expr(&df, &o.expr)?;
            let target = o.ty.to_arrow();
            let converted = try_cast(raw.clone(), target.clone());
            let bad = raw.clone().is_not_null().and(converted.clone().is_null());
            let reason = concat_ws(
                lit(""),
                vec![
                    lit(format!("{} = {}: cannot convert '", o.name.value, o.expr.value)),
                    cast(raw.clone(), arrow::datatypes::DataType::Utf8),
                    lit(format!("' to {}", o.ty)),
                ],
            );
            let value = match o.on_error {
                OnError::Null => converted,
                _ => {
                    df = apply_policy(df, o.on_error, bad.clone(), reason, env.stage, env.side).map_err(plan_err)?;
                    // Refused rows are gone; for the others the conversion succeeds.
                    when(bad.not(), converted).end().map_err(plan_err)?
                }
            };
            let mut select = all_but(&df, &[o.name.value.as_str()]);
            select.push(value.alias(&o.name.value));
            df = df.select(select).map_err(plan_err)?;
        }
        Ok(df)
    }
}
