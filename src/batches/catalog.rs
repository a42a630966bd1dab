//! The batches of a warehouse as a reviewer sees them: each committed batch with its
//! manifest, its status (from the lifecycle log), its version among the batches of its
//! stream and period, and who may see it.

use std::collections::HashMap;

use object_store::path::Path as ObjectPath;

use super::lifecycle::{self, LifecycleError, Log, Status};
use super::{Manifest, StoreLocation};

/// One committed batch.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The warehouse it is in.
    pub root: StoreLocation,
    /// Its directory, as a key of the warehouse (`tier/org/stream/batch_id`; a `for_each`
    /// run's directory for an organisation's batch).
    pub key: String,
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

    /// Where the batch's directory is: a folder, or a URL.
    pub fn dir(&self) -> String {
        self.root.url_of(&self.key)
    }

    /// The batch's Parquet files, as keys of the warehouse.
    pub fn data_keys(&self) -> Vec<(String, u64)> {
        self.manifest
            .files
            .iter()
            .filter(|f| f.path.ends_with(".parquet"))
            .map(|f| (format!("{}/{}", self.key, self.manifest.file_path(f)), f.bytes))
            .collect()
    }

    /// The batch's Parquet files (paths or URLs, as DataFusion takes them).
    pub fn data_files(&self) -> Vec<String> {
        self.data_keys().iter().map(|(k, _)| self.root.url_of(k)).collect()
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

/// The folders directly under `key` (`None`: the warehouse's top), by name. Hidden ones
/// (staging) and the lifecycle log are not batches' folders.
async fn folders(root: &StoreLocation, key: Option<&str>) -> Result<Vec<String>, object_store::Error> {
    let prefix = key.map(ObjectPath::from);
    let listed = root.store().list_with_delimiter(prefix.as_ref()).await?;
    let mut out: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|name| !name.starts_with('.') && name != lifecycle::LOG_DIR)
        .map(|name| match key {
            Some(k) => format!("{k}/{name}"),
            None => name,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The committed batch directories of one stream (`tier/org/stream`) with their
/// manifests, by key. A directory with no manifest, or one that is not billflow's, is
/// not a batch; a store that cannot be read is an error.
pub async fn in_stream(root: &StoreLocation, stream_key: &str) -> Result<Vec<(String, Manifest)>, object_store::Error> {
    let dirs = folders(root, Some(stream_key)).await?;
    read_manifests(root, dirs).await
}

/// The manifests of the directories `dirs`, each with its directory; a directory whose
/// manifest is missing or is not billflow's is not a batch (and is left out).
async fn read_manifests(
    root: &StoreLocation,
    dirs: Vec<String>,
) -> Result<Vec<(String, Manifest)>, object_store::Error> {
    let keys = dirs.iter().map(|d| format!("{d}/{}", super::MANIFEST)).collect();
    let read = super::storage::read_many(&root.store(), root.local_dir(), keys).await?;
    Ok(dirs
        .into_iter()
        .zip(read)
        .filter_map(|(dir, bytes)| Some((dir, serde_json::from_slice(&bytes?).ok()?)))
        .collect())
}

/// Every committed batch directory of the warehouse
/// (`<tier>/<organisation>/<stream>/<batch id>/batch.json`) with its manifest, those of
/// directories not in `known` read and added to it: one listing of each tier's keys.
async fn committed_with(
    root: &StoreLocation,
    known: &mut HashMap<String, Manifest>,
) -> Result<Vec<(String, Manifest)>, object_store::Error> {
    use futures::TryStreamExt;
    let mut dirs = Vec::new();
    for tier in folders(root, None).await? {
        let listed: Vec<ObjectPath> = root
            .store()
            .list(Some(&ObjectPath::from(tier.as_str())))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        // `tier/organisation/stream/batch/batch.json`, outside hidden (staging) folders.
        dirs.extend(listed.iter().filter_map(|key| {
            let parts: Vec<&str> = key.as_ref().split('/').collect();
            let batch_dir =
                parts.len() == 5 && parts[4] == super::MANIFEST && !parts.iter().any(|p| p.starts_with('.'));
            batch_dir.then(|| parts[..4].join("/"))
        }));
    }
    dirs.sort();
    let unread: Vec<String> = dirs.iter().filter(|d| !known.contains_key(*d)).cloned().collect();
    known.extend(read_manifests(root, unread).await?);
    let runs = dirs
        .into_iter()
        .filter_map(|d| known.get(&d).cloned().map(|m| (d, m)))
        .collect();
    Ok(batches_of(runs))
}

/// The batches committed runs hold (a `for_each` run: one per organisation). An
/// organisation's batch that a later run computed again from the same inputs (its id is
/// the same) is the first run's: each batch is listed once.
pub fn batches_of(runs: Vec<(String, Manifest)>) -> Vec<(String, Manifest)> {
    let mut out: Vec<(String, Manifest)> = runs
        .into_iter()
        .flat_map(|(dir, run)| run.batches().into_iter().map(move |m| (dir.clone(), m)))
        .collect();
    out.sort_by(|a, b| (&a.1.created_at, &a.0).cmp(&(&b.1.created_at, &b.0)));
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, m)| seen.insert(m.batch_id.clone()));
    out
}

pub use super::storage::READ_CONCURRENCY;

/// What one read of the catalog keeps for the next: the manifests of committed batch
/// directories (a committed batch is never replaced) and the lifecycle events read (an
/// event is never rewritten). A reader that reads the catalog again and again (the
/// server, before every statement) then reads only what is new.
#[derive(Debug, Default)]
pub struct Cache {
    manifests: HashMap<String, Manifest>,
    events: HashMap<String, Vec<lifecycle::Event>>,
}

/// Every committed batch with its status and version, in the order tier, organisation,
/// stream, period, version.
pub async fn entries(root: &StoreLocation, log: &Log) -> Result<Vec<Entry>, LifecycleError> {
    entries_with(root, log, &mut Cache::default()).await
}

/// [`entries`], reading only what `cache` does not hold yet: a listing of each tier and
/// one of the log, then the new manifests and events.
pub async fn entries_with(root: &StoreLocation, log: &Log, cache: &mut Cache) -> Result<Vec<Entry>, LifecycleError> {
    let found = committed_with(root, &mut cache.manifests)
        .await
        .map_err(|source| LifecycleError::Warehouse {
            url: root.to_string(),
            source,
        })?;
    log.histories(&mut cache.events).await?;
    let mut out: Vec<Entry> = found
        .into_iter()
        .map(|(key, manifest)| {
            let history = cache.events.get(&manifest.batch_id).cloned().unwrap_or_default();
            Entry {
                root: root.clone(),
                key,
                manifest,
                status: lifecycle::status_of(&history),
                history,
                version: 0,
                stale: false,
            }
        })
        .collect();
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
