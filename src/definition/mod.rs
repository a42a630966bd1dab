//! The pipeline definition: YAML file -> validated [`Pipeline`], with located diagnostics.

pub mod diagnostics;
pub mod model;
pub mod parse;
pub mod reader;
pub mod validate;

use std::path::Path;

pub use diagnostics::{Diagnostic, Diagnostics, Location, SourceFile};
pub use model::*;
pub use reader::{Fields, Reader, Text};

/// Read, parse and validate a pipeline file. All problems come back together.
pub fn load(path: &Path) -> Result<Pipeline, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut d = Diagnostics::default();
        d.error(format!("cannot read pipeline file {}: {e}", path.display()), None)
            .hint =
            Some("pass the path of a pipeline YAML file, e.g. data-samples/cloud-reseller/pipeline.yaml".into());
        d
    })?;
    load_str(path, text)
}

/// Parse and validate pipeline text as if read from `path` (relative paths resolve there).
pub fn load_str(path: &Path, text: String) -> Result<Pipeline, Diagnostics> {
    // A byte-order mark is not part of the first key.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    let file = SourceFile::new(path, text);
    let (pipeline, mut diags) = parse::parse(file);
    match pipeline {
        Some(mut p) => {
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
