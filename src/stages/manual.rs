//! `kind: manual`: a step done outside billflow (a credit controller reviews disputed
//! lines, an external system enriches them). On a run, if the reviewed file is not there
//! yet, the stage exports its input to `export` and the stream waits (status WAITING, no
//! batch). Once the user puts the reviewed rows at `resume` (CSV, same columns as the
//! export), the next run continues from that file; its contents become part of the batch
//! id, so a corrected file gives a new batch. Paths may use `{{ stream }}`, `{{ period }}`...
//! and are relative to the pipeline file.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{CsvReadOptions, DataFrame};

use super::settings::plan_err;
use super::{BuildContext, Setting, Stage, StageEnv, StageError, StageKind, TemplateVars};
use crate::definition::{Fields, Reader, Text};

/// The settings of `kind: manual`, as its docs table shows them.
const SETTINGS: &[Setting] = &[
    Setting {
        keys: &["export"],
        ty: "path",
        required: "yes",
        default: "",
        doc: "where to write the rows to review, e.g. `manual/{{ stream }}-{{ period }}-to-review.csv`",
    },
    Setting {
        keys: &["resume"],
        ty: "path",
        required: "yes",
        default: "",
        doc: "where the reviewed rows will be, e.g. `manual/{{ stream }}-{{ period }}-reviewed.csv`",
    },
    Setting {
        keys: &["instructions"],
        ty: "string",
        required: "no",
        default: "none",
        doc: "added to the waiting message",
    },
];

pub struct ManualKind;

#[derive(Debug)]
pub struct ManualStage {
    dir: PathBuf,
    sandbox: Option<crate::definition::Sandbox>,
    export: Text,
    resume: Text,
    instructions: Option<String>,
}

impl StageKind for ManualKind {
    fn name(&self) -> &'static str {
        "manual"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn build(&self, f: &mut Fields, r: &mut Reader, ctx: &BuildContext) -> Option<Arc<dyn Stage>> {
        let export = f.required_text(
            r,
            "export",
            "where to write the rows to review, e.g. `manual/{{ stream }}-{{ period }}-to-review.csv`",
        );
        let resume = f.required_text(
            r,
            "resume",
            "where the reviewed rows will be, e.g. `manual/{{ stream }}-{{ period }}-reviewed.csv`",
        );
        let instructions = f.text(r, "instructions").map(|t| t.value);
        let (export, resume) = (export?, resume?);
        for t in [&export, &resume] {
            let checked = TemplateVars::check(&t.value)
                .map_err(|e| e.to_string())
                .and_then(|probe| confined(&probe).map(|_| ()).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                let d = r.error(e, t.location.clone());
                d.hint =
                    Some("manual files live beside the pipeline file, e.g. `manual/{{ stream }}-to-review.csv`".into());
                return None;
            }
        }
        Some(Arc::new(ManualStage {
            dir: ctx.pipeline_dir.to_path_buf(),
            sandbox: ctx.sandbox.cloned(),
            export,
            resume,
            instructions,
        }))
    }
}

/// A manual path that would leave the pipeline's folder.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a path inside the pipeline's folder: manual files are relative to the pipeline file, without `..`"
)]
struct OutsideThePipeline(String);

/// A manual path stays inside the pipeline's folder: relative, with no `..`.
fn confined(path: &str) -> Result<&Path, OutsideThePipeline> {
    let p = Path::new(path);
    let escapes = p
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes || path.is_empty() {
        return Err(OutsideThePipeline(path.to_string()));
    }
    Ok(p)
}

/// Beside an export, the SHA-256 of what billflow wrote there: an existing file is
/// replaced only when it is still exactly that.
fn export_mark(export: &Path) -> PathBuf {
    let mut name = export.file_name().unwrap_or_default().to_os_string();
    name.push(".billflow-export");
    export.with_file_name(name)
}

impl ManualStage {
    fn path(&self, t: &Text, vars: &TemplateVars) -> Result<PathBuf, StageError> {
        let p = vars
            .expand(&t.value)
            .map_err(|e| StageError::new(e.to_string()).at(Some(t.location.clone())))?;
        let full = confined(&p)
            .map(|rel| self.dir.join(rel))
            .map_err(|e| e.to_string())
            .and_then(|full| match &self.sandbox {
                Some(s) => s.admit(&full, &p).map_err(|e| e.to_string()),
                None => Ok(full),
            })
            .map_err(|e| StageError::new(e).at(Some(t.location.clone())))?;
        Ok(full)
    }

    /// Write the rows to review to `export`, never replacing a file billflow did not write
    /// (or that was changed since).
    async fn export(&self, input: DataFrame, export: &Path) -> Result<(), StageError> {
        let io = |p: &Path, e: std::io::Error| StageError::new(format!("{}: {e}", p.display()));
        let mark = export_mark(export);
        if export.exists() {
            let ours = std::fs::read_to_string(&mark).ok();
            let now = crate::batches::file_fingerprint(export).map_err(|e| io(export, e))?;
            if ours.as_deref().map(str::trim) != Some(now.as_str()) {
                let mut e = StageError::new(format!(
                    "{} exists and billflow did not write it (or it was changed since): it is not replaced",
                    export.display()
                ))
                .at(Some(self.export.location.clone()));
                e.hint = Some("move the file away, or choose another `export` path".into());
                return Err(e);
            }
        }
        if let Some(parent) = export.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let tmp = export.with_extension("csv.tmp");
        input
            .write_csv(
                &tmp.to_string_lossy(),
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await
            .map_err(plan_err)?;
        let written = crate::batches::file_fingerprint(&tmp).map_err(|e| io(&tmp, e))?;
        std::fs::write(&mark, written).map_err(|e| io(&mark, e))?;
        std::fs::rename(&tmp, export).map_err(|e| io(export, e))
    }
}

#[async_trait]
impl Stage for ManualStage {
    fn describe(&self) -> String {
        format!(
            "manual: export to {}, resume from {}",
            self.export.value, self.resume.value
        )
    }
    fn fuses(&self) -> bool {
        false
    }
    fn fingerprint(&self, vars: &TemplateVars) -> String {
        // The reviewed rows decide the output: hash them when they are there.
        let content = self
            .path(&self.resume, vars)
            .ok()
            .and_then(|p| crate::batches::file_fingerprint(&p).ok())
            .unwrap_or_else(|| "not provided".into());
        format!("{} {content}", self.describe())
    }
    async fn apply(&self, input: DataFrame, env: &StageEnv<'_>) -> Result<DataFrame, StageError> {
        // Both paths are checked with the stream's values, when checking too.
        let resume = self.path(&self.resume, env.vars)?;
        let export = self.path(&self.export, env.vars)?;
        let schema = input.schema().as_arrow().clone();
        if resume.is_file() {
            let df = env
                .ctx
                .read_csv(
                    resume.to_string_lossy().to_string(),
                    CsvReadOptions::new()
                        .has_header(true)
                        .schema(&schema)
                        .file_extension(""),
                )
                .await
                .map_err(|e| {
                    StageError::new(format!(
                        "reading the reviewed file {}: {}",
                        resume.display(),
                        e.strip_backtrace()
                    ))
                    .at(Some(self.resume.location.clone()))
                })?;
            return Ok(df);
        }
        if !env.executing {
            // Checking or explaining: the reviewed rows will have the input's columns.
            return Ok(input);
        }
        self.export(input, &export).await?;
        let mut e = StageError::new(format!(
            "waiting for a manual step: its input is in {}; put the reviewed rows (same columns) in {} and run again{}",
            export.display(),
            resume.display(),
            self.instructions
                .as_ref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default()
        ))
        .at(Some(self.resume.location.clone()));
        e.waiting = true;
        Err(e)
    }
}
