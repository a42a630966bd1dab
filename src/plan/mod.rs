//! The pipeline compiled to a DAG: sources and references feed streams, streams feed the
//! streams of the tiers below. Stages are built here (through the stage registry), so
//! every stage setting is checked before any data is read.

pub mod explain;
mod period;

pub use period::{Period, PeriodError};

use std::collections::HashMap;
use std::sync::Arc;

use crate::definition::{self, Diagnostics, InputRef, Pipeline, Reader, StageDef, StreamDef, did_you_mean_stage};
use crate::stages::{self, BuildContext, Stage};

/// A built stage with its name and where it was written.
#[derive(Debug)]
pub struct PlannedStage {
    pub name: String,
    pub kind: &'static str,
    pub stage: Arc<dyn Stage>,
    pub def: StageDef,
}

/// A stream ready to run: its stages built and its place in the DAG known.
#[derive(Debug)]
pub struct PlannedStream {
    /// Index into `Pipeline::streams`.
    pub index: usize,
    pub stages: Vec<PlannedStage>,
    /// Streams (indices into `Plan::streams`) this one reads.
    pub upstream: Vec<usize>,
    /// Tier name of the owner (`vendor`, `distributor`, ...): the warehouse's first level.
    pub tier: String,
    /// How far from the sources: 0 for streams that read a source.
    pub depth: usize,
    /// The owner's level in the chain: 1 for the vendor, 2 for the tier below, ...
    pub level: usize,
}

/// Why `--until-tier` names no tier.
#[derive(Debug, thiserror::Error)]
#[error("no tier `{tier}` in the pipeline (its tiers: {}){}", .tiers.join(", "), .closest.as_ref().map(|c| format!("; did you mean `{c}`?")).unwrap_or_default())]
pub struct UnknownTier {
    pub tier: String,
    pub tiers: Vec<String>,
    pub closest: Option<String>,
}

#[derive(Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    /// In topological order: every stream comes after the streams it reads.
    pub streams: Vec<PlannedStream>,
}

impl Plan {
    pub fn def(&self, s: &PlannedStream) -> &StreamDef {
        &self.pipeline.streams[s.index]
    }
    /// The level in the chain of tier `tier` (as streams name it: `vendor`,
    /// `distributor`, ...), for `run --until-tier`.
    pub fn tier_level(&self, tier: &str) -> Result<usize, UnknownTier> {
        let mut tiers: Vec<(usize, &str)> = self.streams.iter().map(|s| (s.level, s.tier.as_str())).collect();
        tiers.sort();
        tiers.dedup();
        if let Some((level, _)) = tiers.iter().find(|(_, t)| *t == tier) {
            return Ok(*level);
        }
        Err(UnknownTier {
            tier: tier.to_string(),
            closest: tiers
                .iter()
                .map(|(_, t)| (strsim::levenshtein(tier, t), *t))
                .filter(|(d, _)| *d <= tier.len().max(3) / 3 + 1)
                .min()
                .map(|(_, t)| t.to_string()),
            tiers: tiers.into_iter().map(|(_, t)| t.to_string()).collect(),
        })
    }
    pub fn find(&self, id: &str) -> Option<usize> {
        self.streams.iter().position(|s| self.def(s).id.value == id)
    }
    /// Streams downstream of `i` (transitively), in plan order.
    pub fn downstream_of(&self, i: usize) -> Vec<usize> {
        let mut hit = vec![false; self.streams.len()];
        hit[i] = true;
        let mut out = Vec::new();
        for (j, s) in self.streams.iter().enumerate() {
            if s.upstream.iter().any(|u| hit[*u]) {
                hit[j] = true;
                out.push(j);
            }
        }
        out
    }
}

/// Build every stage and order the streams. The pipeline must have passed validation.
pub fn compile(pipeline: Pipeline) -> Result<Plan, Diagnostics> {
    let mut diags = Diagnostics::default();
    let ctx = BuildContext {
        pipeline_dir: &pipeline.dir,
        sandbox: pipeline.sandbox.as_ref(),
    };
    let mut built: Vec<Vec<PlannedStage>> = Vec::with_capacity(pipeline.streams.len());
    // A stage shared through `extends` is built once per stream but reported once.
    let mut reported: Vec<(usize, usize)> = Vec::new();
    for s in &pipeline.streams {
        let mut list = Vec::new();
        for def in &s.stages {
            let key = (def.location.line, def.location.column);
            let mut local = Diagnostics::default();
            let stage = {
                let mut r = Reader::new(def.location.file.clone(), &mut local);
                build_stage(def, &mut r, &ctx)
            };
            if !reported.contains(&key) {
                reported.push(key);
                diags.extend(local);
            }
            if let Some(stage) = stage {
                list.push(stage);
            }
        }
        built.push(list);
    }

    // Topological order (Kahn), stable by file order.
    let n = pipeline.streams.len();
    let index_of: HashMap<&str, usize> = pipeline
        .streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.value.as_str(), i))
        .collect();
    let up_of: Vec<Option<usize>> = pipeline
        .streams
        .iter()
        .map(|s| match &s.input {
            InputRef::Stream(t) => index_of.get(t.value.as_str()).copied(),
            InputRef::Source(_) => None,
        })
        .collect();
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while order.len() < n {
        let before = order.len();
        for i in 0..n {
            if !placed[i] && up_of[i].is_none_or(|u| placed[u]) {
                placed[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            break; // a cycle: validation reported it
        }
    }
    if !diags.is_empty() {
        return Err(diags.sorted());
    }
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(pos, i)| (*i, pos)).collect();
    let mut depth = vec![0usize; n];
    for &i in &order {
        if let Some(u) = up_of[i] {
            depth[i] = depth[u] + 1;
        }
    }
    let mut built: Vec<Option<Vec<PlannedStage>>> = built.into_iter().map(Some).collect();
    let streams = order
        .iter()
        .map(|&i| {
            let s = &pipeline.streams[i];
            let owner = match &s.for_each {
                Some(e) => pipeline.organizations_of(&e.tier.value).next(),
                None => pipeline.organization(&s.owner.value),
            };
            let tier = owner
                .map(|o| {
                    if o.level > 3 {
                        o.tier.value.clone()
                    } else {
                        definition::validate::tier_name(o.level)
                    }
                })
                .unwrap_or_else(|| "unknown".into());
            PlannedStream {
                index: i,
                stages: built[i].take().unwrap_or_default(),
                upstream: up_of[i].map(|u| position[&u]).into_iter().collect(),
                tier,
                depth: depth[i],
                level: owner.map(|o| o.level).unwrap_or(usize::MAX),
            }
        })
        .collect();
    Ok(Plan { pipeline, streams })
}

fn build_stage(def: &StageDef, r: &mut Reader, ctx: &BuildContext) -> Option<PlannedStage> {
    let Some(kind) = stages::kind(&def.kind.value) else {
        let names = stages::kind_names();
        let d = r.error(
            format!("unknown stage kind `{}`", def.kind.value),
            def.kind.location.clone(),
        );
        d.expected = Some(definition::diagnostics::one_of(&names));
        d.hint = did_you_mean_stage(&def.kind.value, &names);
        return None;
    };
    let mut f = r.mapping(&def.node, &format!("{} stage `{}`", kind.name(), def.name))?;
    let _ = f.get("kind");
    let _ = f.get("name");
    let _ = f.get("description");
    let stage = kind.build(&mut f, r, ctx);
    let mut allowed: Vec<&str> = stages::COMMON_KEYS.to_vec();
    allowed.extend(kind.keys());
    // A kind reads only the keys it declares: its declaration is what the docs show and
    // what the reader accepts. (A key read but not declared is a bug in the kind.)
    debug_assert!(
        f.used().all(|k| allowed.contains(&k)),
        "stage kind `{}` read an undeclared key (declared: {allowed:?})",
        kind.name()
    );
    f.finish(r, &allowed);
    Some(PlannedStage {
        name: def.name.clone(),
        kind: kind.name(),
        stage: stage?,
        def: def.clone(),
    })
}
