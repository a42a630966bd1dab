//! The pipeline definition: YAML file -> validated [`Pipeline`], with located diagnostics.

pub mod diagnostics;
pub mod model;
pub mod organizations_file;
pub mod parse;
pub mod reader;
pub mod sandbox;
pub mod validate;

use std::path::Path;

pub use diagnostics::{Diagnostic, Diagnostics, Location, SourceFile};
pub use model::*;
pub use reader::{Fields, Reader, Text};
pub use sandbox::{OutsideSandbox, Sandbox};

/// Read, parse and validate a pipeline file. All problems come back together.
pub fn load(path: &Path) -> Result<Pipeline, Diagnostics> {
    load_in(path, None)
}

/// [`load`] with a sandbox: the pipeline file and every file it names must lie under it.
pub fn load_in(path: &Path, sandbox: Option<Sandbox>) -> Result<Pipeline, Diagnostics> {
    if let Some(s) = &sandbox {
        let full = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Err(e) = s.admit(&full, &path.display().to_string()) {
            let mut d = Diagnostics::default();
            d.error(format!("the pipeline file {e}"), None).hint =
                Some("with --sandbox DIR, the pipeline and every file it names lie under DIR".into());
            return Err(d);
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut d = Diagnostics::default();
        d.error(format!("cannot read pipeline file {}: {e}", path.display()), None)
            .hint =
            Some("pass the path of a pipeline YAML file, e.g. data-samples/cloud-reseller/pipeline.yaml".into());
        d
    })?;
    load_str_in(path, text, sandbox)
}

/// Parse and validate pipeline text as if read from `path` (relative paths resolve there).
pub fn load_str(path: &Path, text: String) -> Result<Pipeline, Diagnostics> {
    load_str_in(path, text, None)
}

fn load_str_in(path: &Path, text: String, sandbox: Option<Sandbox>) -> Result<Pipeline, Diagnostics> {
    // A byte-order mark is not part of the first key.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    let file = SourceFile::new(path, text);
    let (pipeline, mut diags) = parse::parse(file);
    match pipeline {
        Some(mut p) => {
            p.sandbox = sandbox;
            organizations_file::read_into(&mut p, &mut diags);
            validate::validate(&mut p, &mut diags);
            if diags.is_empty() { Ok(p) } else { Err(diags.sorted()) }
        }
        None => Err(diags.sorted()),
    }
}

/// did-you-mean for stage kinds (kept here so the plan need not reach into diagnostics).
pub fn did_you_mean_stage(wrong: &str, names: &[&str]) -> Option<String> {
    diagnostics::did_you_mean(wrong, names.iter().copied())
}
