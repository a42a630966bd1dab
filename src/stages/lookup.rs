//! `kind: lookup`: enrich rows from a reference table on one or several key columns,
//! optionally effective-dated (the reference row valid at the row's date). Policies for a
//! missing match (`fail`, `null`, `default`, `reject`) and for several matches (`fail`,
//! `first`, `last`, `reject`). The join itself is `reference.rs`.

use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::functions::expr_fn::{coalesce, concat_ws};
use datafusion::logical_expr::{Expr, cast, when};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::scalar::ScalarValue;
use marked_yaml::Node;

use super::settings::{all_but, existing, plan_err};
use super::{BuildContext, Grouping, Setting, SplitAround, Stage, StageEnv, StageError, StageKind};
use crate::definition::{Fields, Reader, Text};
use crate::engine::side::{OnError, apply_policy};

use super::reference::{Join, MATCHES, ValidTo, join_reference, key_list};

/// The settings of `kind: lookup`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["reference"],
        ty: "reference name",
        required: "yes",
        default: "",
        doc: "the reference table",
    },
    Setting {
        keys: &["keys"],
        ty: "list",
        required: "yes",
        default: "",
        doc: "each a column name present in both, or `{ column, reference_column }`",
    },
    Setting {
        keys: &["columns"],
        ty: "list",
        required: "yes",
        default: "",
        doc: "reference columns to add: a name, or `{ column, as }`; an added column replaces a stream column of the same name",
    },
    Setting {
        keys: &["date"],
        ty: "column name",
        required: "no",
        default: "none: not dated",
        doc: "the row's date; makes the lookup effective-dated",
    },
    Setting {
        keys: &["valid_from"],
        ty: "reference column",
        required: "no",
        default: "`valid_from`",
        doc: "inclusive start of validity",
    },
    Setting {
        keys: &["valid_to"],
        ty: "reference column",
        required: "no",
        default: "`valid_to`; a reference without it: until the key's next `valid_from`",
        doc: "exclusive end; NULL = still valid. Without the column, each row is valid until the next row of its key starts (an as-of join)",
    },
    Setting {
        keys: &["order_by"],
        ty: "reference column",
        required: "for `first`/`last` without `date`",
        default: "`valid_from` with `date`",
        doc: "decides `first` (smallest) and `last` (largest)",
    },
    Setting {
        keys: &["on_missing"],
        ty: "`fail`, `null`, `reject`",
        required: "no",
        default: "`fail`; with `defaults`: fill them in",
        doc: "no reference row matches",
    },
    Setting {
        keys: &["defaults"],
        ty: "mapping added column -> value",
        required: "no",
        default: "",
        doc: "values for rows that match nothing; each names an added column, cast to its type",
    },
    Setting {
        keys: &["on_multiple"],
        ty: "`fail`, `reject`, `first`, `last`",
        required: "no",
        default: "`fail`",
        doc: "several reference rows match",
    },
];

pub struct LookupKind;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Multiple {
    Fail,
    Reject,
    First,
    Last,
    /// The second half of a lookup split around a grouping: the rows whose key has
    /// several rows failed or were refused in the first half, before the grouping.
    Checked,
}

#[derive(Clone, Debug)]
pub struct LookupStage {
    reference: Text,
    keys: Vec<(Text, String)>,
    pulled: Vec<(String, String)>,
    dated: Option<(Text, String, ValidTo)>,
    order_by: Option<String>,
    on_missing: OnError,
    defaults: Vec<(String, String)>,
    on_multiple: Multiple,
    /// The first half of a lookup split around a grouping (`split_around`): the rows are
    /// matched and refused here, but the columns come NULL; the groups get them after.
    columns_later: bool,
}

fn pulled_list(r: &mut Reader, node: &Node) -> Option<Vec<(String, String)>> {
    let items = r.sequence(node, "columns")?;
    let mut out = Vec::new();
    for item in items {
        match item {
            Node::Scalar(_) => {
                let t = r.text(item, "column")?;
                out.push((t.value.clone(), t.value));
            }
            _ => {
                let mut f = r.mapping(item, "pulled column")?;
                let column = f.required_text(r, "column", "the reference's column");
                let alias = f.text(r, "as");
                f.finish(r, &["column", "as"]);
                let column = column?;
                let alias = alias.map(|a| a.value).unwrap_or_else(|| column.value.clone());
                out.push((column.value, alias));
            }
        }
    }
    Some(out)
}

impl StageKind for LookupKind {
    fn name(&self) -> &'static str {
        "lookup"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, _ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let reference = f.required_text(r, "reference", "the name of a reference table");
        let keys = f
            .require(r, "keys", "the key columns, e.g. `[subscription_id]`")
            .and_then(|n| key_list(r, n));
        let pulled = f
            .require(r, "columns", "the reference columns to add")
            .and_then(|n| pulled_list(r, n));
        let date = f.text(r, "date");
        let valid_from = f
            .text(r, "valid_from")
            .map(|t| t.value)
            .unwrap_or_else(|| "valid_from".into());
        let valid_to = ValidTo::from_setting(f.text(r, "valid_to").map(|t| t.value), "valid_to");
        let order_by = f.text(r, "order_by").map(|t| t.value);
        let on_missing = super::settings::on_error(
            f,
            r,
            "on_missing",
            &[OnError::Fail, OnError::Null, OnError::Reject],
            OnError::Fail,
        );
        let mut defaults = Vec::new();
        if let Some(n) = f.get("defaults") {
            let m = r.mapping(n, "defaults")?;
            for (k, v) in m.node().iter() {
                let v = r.text(v, "default value")?;
                defaults.push((k.as_str().to_string(), v.value));
            }
        }
        let on_missing = if !defaults.is_empty() && f.has("on_missing") && on_missing != Some(OnError::Null) {
            on_missing
        } else if !defaults.is_empty() {
            Some(OnError::Skip) // `default`: fill in the defaults
        } else {
            on_missing
        };
        let on_multiple = match f.get("on_multiple") {
            None => Some(Multiple::Fail),
            Some(n) => r
                .choice(n, "`on_multiple` policy", &["fail", "reject", "first", "last"])
                .map(|t| match t.value.as_str() {
                    "first" => Multiple::First,
                    "last" => Multiple::Last,
                    "reject" => Multiple::Reject,
                    _ => Multiple::Fail,
                }),
        };
        let (reference, keys, pulled, on_missing, on_multiple) =
            (reference?, keys?, pulled?, on_missing?, on_multiple?);
        if matches!(on_multiple, Multiple::First | Multiple::Last) && order_by.is_none() && date.is_none() {
            let at = f.location.clone();
            let d = r.error("`on_multiple: first/last` needs `order_by`", at);
            d.hint = Some(
                "files have no reliable row order; name the reference column that decides (e.g. `updated_at`)".into(),
            );
            return None;
        }
        for (d, _) in &defaults {
            if !pulled.iter().any(|(_, out)| out == d) {
                let at = f.location.clone();
                r.error(format!("default for `{d}`, which the lookup does not add"), at);
                return None;
            }
        }
        Some(Arc::new(LookupStage {
            reference,
            keys,
            pulled,
            dated: date.map(|d| (d, valid_from, valid_to)),
            order_by,
            on_missing,
            defaults,
            on_multiple,
            columns_later: false,
        }))
    }
}

impl LookupStage {
    /// `df` (joined for its match counts only) with the columns the lookup adds, NULL and
    /// typed as in the reference, where the join puts them: so that rows refused here show
    /// them as a lookup that adds them would (NULL when nothing matched), while the plan
    /// reads none of them for the rows it keeps.
    async fn null_columns(&self, df: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let reference = super::reference::reference_table(env.ctx, &self.reference).await?;
        let outs: Vec<&str> = self.pulled.iter().map(|(_, out)| out.as_str()).collect();
        let mut select = all_but(&df, &[&[MATCHES], outs.as_slice()].concat());
        for (column, out) in &self.pulled {
            // (A column the reference lacks is named by the second half, which adds it.)
            let ty = reference
                .schema()
                .field_with_unqualified_name(column)
                .map_or(DataType::Null, |f| f.data_type().clone());
            select.push(cast(lit(ScalarValue::Null), ty).alias(out));
        }
        select.push(ident(MATCHES));
        df.select(select).map_err(plan_err)
    }
}

#[async_trait]
impl Stage for LookupStage {
    fn describe(&self) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|(c, k)| {
                if c.value == *k {
                    k.clone()
                } else {
                    format!("{}={k}", c.value)
                }
            })
            .collect();
        let cols: Vec<&str> = self.pulled.iter().map(|(_, o)| o.as_str()).collect();
        let dated = self
            .dated
            .as_ref()
            .map(|(d, _, _)| format!(" valid at {}", d.value))
            .unwrap_or_default();
        format!(
            "lookup {} on ({}){dated} -> {}",
            self.reference.value,
            keys.join(", "),
            cols.join(", ")
        )
    }
    fn tables(&self) -> Vec<String> {
        vec![self.reference.value.clone()]
    }
    /// The reference columns of an undated lookup are a function of its keys: when the
    /// next stage groups by them and by the keys, the rows are checked (and refused) here,
    /// grouped, and only the groups get the columns.
    fn split_around(&self, grouping: &Grouping) -> Option<SplitAround> {
        let added: Vec<String> = self.pulled.iter().map(|(_, out)| out.clone()).collect();
        let keys: Vec<&str> = self.keys.iter().map(|(c, _)| c.value.as_str()).collect();
        let grouped = |c: &str| grouping.keys.iter().any(|k| k == c);
        // Read by an aggregation, or the name of one's result (the outputs after the keys).
        let aggregates = grouping.outputs.get(grouping.keys.len()..).unwrap_or_default();
        let aggregated = |c: &str| grouping.reads.iter().chain(aggregates).any(|r| r == c);
        let splits = self.dated.is_none()
            && !added.is_empty()
            && keys.iter().all(|k| grouped(k) && !added.iter().any(|a| a == k))
            && added.iter().all(|a| grouped(a) && !aggregated(a));
        if !splits {
            return None;
        }
        let before = LookupStage {
            defaults: Vec::new(),
            columns_later: true,
            ..self.clone()
        };
        // The rows this lookup refuses (or fails on) are gone before the grouping: on the
        // groups, a policy could only see rows it has already let through.
        let after = LookupStage {
            on_missing: match self.on_missing {
                OnError::Reject | OnError::Fail => OnError::Null,
                kept => kept,
            },
            on_multiple: match self.on_multiple {
                Multiple::Reject | Multiple::Fail => Multiple::Checked,
                kept => kept,
            },
            ..self.clone()
        };
        Some(SplitAround {
            before: Arc::new(before),
            after: Arc::new(after),
            added,
        })
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        let keys = self
            .keys
            .iter()
            .map(|(c, k)| Ok((existing(&input, c)?, k.clone())))
            .collect::<Result<Vec<_>, StageError>>()?;
        let dated = match &self.dated {
            Some((d, from, to)) => Some((existing(&input, d)?, from.clone(), to.clone())),
            None => None,
        };
        let order = match (self.on_multiple, &self.order_by) {
            (Multiple::First, Some(o)) => Some((o.clone(), false)),
            (Multiple::Last, Some(o)) => Some((o.clone(), true)),
            (Multiple::First, None) => self.dated.as_ref().map(|(_, from, _)| (from.clone(), false)),
            (Multiple::Checked, _) => None,
            _ => self.order_by.clone().map(|o| (o, true)),
        };
        let join = Join {
            reference: self.reference.clone(),
            keys,
            pulled: if self.columns_later {
                Vec::new()
            } else {
                self.pulled.clone()
            },
            dated,
            order,
            several_dropped: matches!(self.on_multiple, Multiple::Fail | Multiple::Checked),
        };
        let mut df = join_reference(env.ctx, input, &join).await?;
        if self.columns_later {
            df = self.null_columns(df, env).await?;
        }
        let key_text = {
            let parts: Vec<Expr> = self
                .keys
                .iter()
                .map(|(c, _)| coalesce(vec![cast(ident(&c.value), DataType::Utf8), lit("NULL")]))
                .collect();
            concat_ws(lit(", "), parts)
        };
        let matches = ident(MATCHES);
        let dated_note = self
            .dated
            .as_ref()
            .map(|(d, _, _)| format!(" valid at {}", d.value))
            .unwrap_or_default();
        // Several matches.
        let many = matches.clone().gt(lit(1i64));
        let many_reason = concat_ws(
            lit(""),
            vec![
                lit(format!("several rows of `{}` match (", self.reference.value)),
                key_text.clone(),
                lit(format!("){dated_note}")),
            ],
        );
        df = match self.on_multiple {
            Multiple::Fail => apply_policy(df, OnError::Fail, many, many_reason, env.stage, env.side),
            Multiple::Reject => apply_policy(df, OnError::Reject, many, many_reason, env.stage, env.side),
            _ => Ok(df),
        }
        .map_err(plan_err)?;
        // No match.
        let missing = matches.clone().eq(lit(0i64));
        let missing_reason = concat_ws(
            lit(""),
            vec![
                lit(format!("no row of `{}` matches (", self.reference.value)),
                key_text,
                lit(format!("){dated_note}")),
            ],
        );
        df = apply_policy(
            df,
            self.on_missing,
            missing.clone(),
            missing_reason,
            env.stage,
            env.side,
        )
        .map_err(plan_err)?;
        let mut select = all_but(&df, &[MATCHES]);
        if !self.defaults.is_empty() {
            let outs: Vec<&str> = self.defaults.iter().map(|(k, _)| k.as_str()).collect();
            select = all_but(&df, &[&[MATCHES], outs.as_slice()].concat());
            for (col, value) in &self.defaults {
                let ty = df
                    .schema()
                    .field_with_unqualified_name(col)
                    .map_err(plan_err)?
                    .data_type()
                    .clone();
                let v = when(missing.clone(), cast(lit(value.clone()), ty))
                    .otherwise(ident(col))
                    .map_err(plan_err)?;
                select.push(v.alias(col));
            }
        }
        df.select(select).map_err(plan_err)
    }
}
