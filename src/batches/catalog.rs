//! The batches of a warehouse as a reviewer sees them: each committed batch with its
//! manifest, its status (from the lifecycle log), its version among the batches of its
//! stream and period, and who may see it.

use std::path::{Path, PathBuf};

use super::lifecycle::{self, LifecycleError, Log, Status};
use super::{MANIFEST, Manifest, read_manifest};

/// One committed batch.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub status: Status,
    /// Its lifecycle log, in order (the status is the last event's).
    pub history: Vec<lifecycle::Event>,
    /// 1 for the first batch of its stream and period, then one more each (by creation).
    pub version: usize,
    /// Built from a batch that was since superseded or voided: the next run of its stream
    /// builds a new version from what is published now.
    pub stale: bool,
}

impl Entry {
    pub fn id(&self) -> &str {
        &self.manifest.batch_id
    }

    /// The batch's Parquet files (paths as text, as DataFusion takes them).
    pub fn data_files(&self) -> Vec<String> {
        self.manifest
            .files
            .iter()
            .filter(|f| f.path.ends_with(".parquet"))
            .map(|f| self.dir.join(&f.path).to_string_lossy().into_owned())
            .collect()
    }

    /// Whether `organization` may see the batch: its own, or published to it.
    pub fn visible_to(&self, organization: Option<&str>) -> bool {
        organization.is_none_or(|org| {
            self.manifest.organization == org
                || (self.status == Status::Published && self.manifest.audience.iter().any(|a| a == org))
        })
    }
}

/// Why a batch id named no batch.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no batch `{id}`{}", .closest.as_ref().map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default())]
    NotFound { id: String, closest: Option<String> },
    #[error("`{id}` is the start of {} batch ids: {}; give more of it", .matches.len(), .matches.join(", "))]
    Ambiguous { id: String, matches: Vec<String> },
}

/// The committed batches of one stream's directory with their manifests.
pub fn in_stream_dir(stream_dir: &Path) -> Vec<(PathBuf, Manifest)> {
    let mut out: Vec<(PathBuf, Manifest)> = std::fs::read_dir(stream_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .filter(|p| p.join(MANIFEST).is_file())
                .filter_map(|p| read_manifest(&p).ok().map(|m| (p, m)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every committed batch directory of the warehouse with its manifest:
/// `<tier>/<organisation>/<stream>/<batch id>/batch.json`. Hidden entries (staging) and
/// the lifecycle log are not batches.
pub fn committed(warehouse: &Path) -> Vec<(PathBuf, Manifest)> {
    let dirs = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        !name.starts_with('.') && name != lifecycle::LOG_DIR
                    })
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut runs = Vec::new();
    for tier in dirs(warehouse) {
        for org in dirs(&tier) {
            for stream in dirs(&org) {
                runs.extend(in_stream_dir(&stream));
            }
        }
    }
    batches_of(runs)
}

/// The batches committed runs hold (a `for_each` run: one per organisation). An
/// organisation's batch that a later run computed again from the same inputs (its id is
/// the same) is the first run's: each batch is listed once.
pub fn batches_of(runs: Vec<(PathBuf, Manifest)>) -> Vec<(PathBuf, Manifest)> {
    let mut out: Vec<(PathBuf, Manifest)> = runs
        .into_iter()
        .flat_map(|(dir, run)| run.batches().into_iter().map(move |m| (dir.clone(), m)))
        .collect();
    out.sort_by(|a, b| (&a.1.created_at, &a.0).cmp(&(&b.1.created_at, &b.0)));
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, m)| seen.insert(m.batch_id.clone()));
    out
}

/// How many batch histories are read at once.
pub const READ_CONCURRENCY: usize = 32;

/// Every committed batch with its status and version, in the order tier, organisation,
/// stream, period, version.
pub async fn entries(warehouse: &Path, log: &Log) -> Result<Vec<Entry>, LifecycleError> {
    use futures::{StreamExt, TryStreamExt};
    // One history read per batch, many at once (thousands of batches on object storage).
    let mut out: Vec<Entry> = futures::stream::iter(committed(warehouse))
        .map(|(dir, manifest)| async move {
            let history = log.history(&manifest.batch_id).await?;
            Ok::<_, LifecycleError>(Entry {
                dir,
                manifest,
                status: lifecycle::status_of(&history),
                history,
                version: 0,
                stale: false,
            })
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let withdrawn: std::collections::HashSet<String> = out
        .iter()
        .filter(|e| matches!(e.status, Status::Superseded | Status::Voided))
        .map(|e| e.manifest.batch_id.clone())
        .collect();
    for e in &mut out {
        e.stale = e
            .manifest
            .inputs
            .iter()
            .any(|i| i.batch_id.as_ref().is_some_and(|b| withdrawn.contains(b)));
    }
    out.sort_by(|a, b| {
        let key = |e: &Entry| {
            (
                e.manifest.tier.clone(),
                e.manifest.organization.clone(),
                e.manifest.stream.clone(),
                e.manifest.period.label.clone(),
                e.manifest.created_at.clone(),
                e.manifest.batch_id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut version = 0;
    for i in 0..out.len() {
        let same = i > 0 && {
            let (a, b) = (&out[i - 1].manifest, &out[i].manifest);
            (&a.tier, &a.organization, &a.stream, &a.period.label)
                == (&b.tier, &b.organization, &b.stream, &b.period.label)
        };
        version = if same { version + 1 } else { 1 };
        out[i].version = version;
    }
    Ok(out)
}

/// The batch whose id is `id` or starts with it (as git takes an abbreviated commit).
pub fn find<'a>(entries: &'a [Entry], id: &str) -> Result<&'a Entry, FindError> {
    if let Some(e) = entries.iter().find(|e| e.id() == id) {
        return Ok(e);
    }
    let matches: Vec<&Entry> = entries
        .iter()
        .filter(|e| !id.is_empty() && e.id().starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(FindError::NotFound {
            id: id.to_string(),
            closest: entries
                .iter()
                .map(|e| (strsim::levenshtein(id, e.id()), e.id()))
                .filter(|(d, _)| *d <= id.len().max(4) / 3)
                .min()
                .map(|(_, c)| c.to_string()),
        }),
        many => Err(FindError::Ambiguous {
            id: id.to_string(),
            matches: many.iter().map(|e| e.id().to_string()).collect(),
        }),
    }
}
