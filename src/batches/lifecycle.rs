//! A batch's lifecycle: its data never changes; what happens to it (created by a run,
//! accepted or rejected in review, held and released, published to the organisations
//! below, voided, superseded by a new version) is an append-only log of events that is
//! never rewritten.
//!
//! Event `n` of batch `B` is the object `_log/B/<n>.json` of the warehouse, written with a
//! create-if-absent put (`PutMode::Create`, as Delta Lake writes its log): of two
//! processes changing one batch at once, exactly one writes event `n`, and the other gets
//! a conflict naming what won. The same code runs on a local folder and on object storage.
//! A put makes the whole object visible at once, so no event is ever half-written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Where the events live, under the warehouse.
pub const LOG_DIR: &str = "_log";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Written by a run, waiting for review.
    Ready,
    Accepted,
    Rejected,
    /// Kept from being published until released.
    Held,
    /// Visible to the organisations directly below.
    Published,
    /// Withdrawn after it was published.
    Voided,
    /// A newer version of the same stream and period replaced it.
    Superseded,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Held => "held",
            Status::Published => "published",
            Status::Voided => "voided",
            Status::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        ALL_STATUSES.into_iter().find(|s| s.name() == text)
    }
}

pub const ALL_STATUSES: [Status; 7] = [
    Status::Ready,
    Status::Accepted,
    Status::Rejected,
    Status::Held,
    Status::Published,
    Status::Voided,
    Status::Superseded,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A run committed the batch.
    Create,
    Accept,
    Reject,
    Hold,
    Release,
    Publish,
    Void,
    /// A run committed a newer version of the same stream and period.
    Supersede,
}

/// The actions a person takes (the others are the runs').
pub const REVIEW_ACTIONS: [Action; 6] = [
    Action::Accept,
    Action::Reject,
    Action::Hold,
    Action::Release,
    Action::Publish,
    Action::Void,
];

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Publish => "publish",
            Action::Void => "void",
            Action::Supersede => "supersede",
        }
    }

    /// Whether the action needs a reason (`--note`).
    pub fn needs_reason(self) -> bool {
        matches!(self, Action::Reject | Action::Void)
    }

    /// The status after this action from `from`, if it is allowed; `before_hold` is the
    /// status a held batch had before it was held (a release returns to it).
    pub fn next(self, from: Option<Status>, before_hold: Option<Status>) -> Option<Status> {
        use Status::*;
        match (self, from) {
            (Action::Create, None) => Some(Ready),
            (Action::Accept, Some(Ready)) => Some(Accepted),
            (Action::Reject, Some(Ready)) => Some(Rejected),
            (Action::Hold, Some(Ready | Accepted)) => Some(Held),
            (Action::Release, Some(Held)) => Some(before_hold.unwrap_or(Ready)),
            (Action::Publish, Some(Accepted)) => Some(Published),
            (Action::Void, Some(Published)) => Some(Voided),
            (Action::Supersede, Some(Ready | Accepted | Rejected | Held | Published)) => Some(Superseded),
            _ => None,
        }
    }
}

/// The review actions allowed from `status`.
pub fn allowed(status: Status) -> Vec<Action> {
    REVIEW_ACTIONS
        .into_iter()
        .filter(|a| a.next(Some(status), None).is_some())
        .collect()
}

/// One entry of a batch's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1 for the first event of the batch, then one more each.
    pub seq: u64,
    /// When (UTC, RFC 3339).
    pub at: String,
    /// Who: the organisation acting (`--as`) and the user, or the run.
    pub actor: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub batch: String,
    pub from: Option<Status>,
    pub to: Status,
    /// The batch that superseded this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Why a lifecycle step did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(
        "batch {batch} is {}: it cannot be {}{}",
        .status.name(),
        past(*.action),
        allowed_text(*.status)
    )]
    Refused {
        batch: String,
        status: Status,
        action: Action,
    },
    #[error("`{}` needs a reason: give it with --note", .0.name())]
    NeedsReason(Action),
    #[error(
        "batch {batch} was changed meanwhile: it is now {} ({} by {} at {}); look again and retry",
        .event.to.name(),
        .event.action.name(),
        .event.actor,
        .event.at
    )]
    Conflict { batch: String, event: Box<Event> },
    #[error("event {path} of the lifecycle log cannot be read: {why}")]
    BadEvent { path: String, why: String },
    #[error("the lifecycle log of batch {batch} misses event {missing} (it has {found})")]
    Gap { batch: String, missing: u64, found: u64 },
    #[error("lifecycle log: {0}")]
    Store(#[from] object_store::Error),
    #[error("{url}: {source}")]
    Warehouse { url: String, source: object_store::Error },
}

fn past(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Accept => "accepted",
        Action::Reject => "rejected",
        Action::Hold => "held",
        Action::Release => "released",
        Action::Publish => "published",
        Action::Void => "voided",
        Action::Supersede => "superseded",
    }
}

fn allowed_text(status: Status) -> String {
    let next: Vec<&str> = allowed(status).into_iter().map(Action::name).collect();
    if next.is_empty() {
        "; nothing more can happen to it".into()
    } else {
        format!("; what it can be now: {}", next.join(", "))
    }
}

/// The status a history leaves a batch in (a committed batch with no event yet is ready:
/// its run may have been stopped between the commit and the first event).
pub fn status_of(history: &[Event]) -> Status {
    history.last().map_or(Status::Ready, |e| e.to)
}

/// Event `seq` of `batch`, checked to be that event.
async fn read_event(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    batch: &str,
    seq: u64,
) -> Result<Event, LifecycleError> {
    let bytes = store.get(path).await?.bytes().await?;
    parse_event(&bytes, path, batch, seq)
}

/// An event's bytes, checked to be event `seq` of `batch`.
fn parse_event(bytes: &[u8], path: &ObjectPath, batch: &str, seq: u64) -> Result<Event, LifecycleError> {
    let event: Event = serde_json::from_slice(bytes).map_err(|e| LifecycleError::BadEvent {
        path: path.to_string(),
        why: e.to_string(),
    })?;
    if event.seq != seq || event.batch != batch {
        return Err(LifecycleError::Gap {
            batch: batch.to_string(),
            missing: seq,
            found: event.seq,
        });
    }
    Ok(event)
}

/// The lifecycle log of a warehouse.
pub struct Log {
    store: Arc<dyn ObjectStore>,
    /// The warehouse's folder, when it is on this machine (read in bulk there).
    local: Option<std::path::PathBuf>,
}

impl Log {
    /// The log of a warehouse on a local disk.
    pub fn local(warehouse: &Path) -> Result<Self, LifecycleError> {
        Ok(Log::open(&super::StoreLocation::local(warehouse)))
    }

    /// The log of a warehouse, local or in an object store.
    pub fn open(warehouse: &super::StoreLocation) -> Self {
        Log {
            store: warehouse.store(),
            local: warehouse.local_dir().map(Path::to_path_buf),
        }
    }

    /// A log in any object store (the warehouse's root).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Log { store, local: None }
    }

    fn event_path(batch: &str, seq: u64) -> ObjectPath {
        ObjectPath::from(format!("{LOG_DIR}/{batch}/{seq:08}.json"))
    }

    /// Every event of the batch, in order.
    pub async fn history(&self, batch: &str) -> Result<Vec<Event>, LifecycleError> {
        let prefix = ObjectPath::from(format!("{LOG_DIR}/{batch}"));
        let mut paths: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        paths.retain(|p| p.extension() == Some("json"));
        paths.sort();
        let mut events = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            events.push(read_event(&self.store, path, batch, i as u64 + 1).await?);
        }
        Ok(events)
    }

    /// Every batch's history, brought up to date in `known` (batch id -> its events so
    /// far): one listing of the whole log, then only the events not read before. An
    /// event is never rewritten, so what was read once stays true.
    pub async fn histories(&self, known: &mut HashMap<String, Vec<Event>>) -> Result<(), LifecycleError> {
        let prefix = ObjectPath::from(LOG_DIR);
        let listed: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let mut by_batch: BTreeMap<String, Vec<ObjectPath>> = BTreeMap::new();
        for path in listed.into_iter().filter(|p| p.extension() == Some("json")) {
            let batch = path.parts().nth(1).map(|p| p.as_ref().to_string());
            if let Some(batch) = batch {
                by_batch.entry(batch).or_default().push(path);
            }
        }
        // (batch, event path, its sequence number) of each event not read yet.
        let mut unread = Vec::new();
        for (batch, mut paths) in by_batch {
            paths.sort();
            let read = known.get(&batch).map_or(0, Vec::len);
            for (i, path) in paths.into_iter().enumerate().skip(read) {
                unread.push((batch.clone(), path, i as u64 + 1));
            }
        }
        let keys = unread.iter().map(|(_, path, _)| path.to_string()).collect();
        let read = super::storage::read_many(&self.store, self.local.as_deref(), keys).await?;
        for ((batch, path, seq), bytes) in unread.into_iter().zip(read) {
            let Some(bytes) = bytes else {
                return Err(LifecycleError::Gap {
                    batch,
                    missing: seq,
                    found: 0,
                });
            };
            let event = parse_event(&bytes, &path, &batch, seq)?;
            known.entry(event.batch.clone()).or_default().push(event);
        }
        Ok(())
    }

    pub async fn status(&self, batch: &str) -> Result<Status, LifecycleError> {
        Ok(status_of(&self.history(batch).await?))
    }

    /// Record `action` on the batch, if its current status allows it. Of two processes
    /// appending to one batch at once, one wins; the other gets [`LifecycleError::Conflict`].
    pub async fn append(
        &self,
        batch: &str,
        action: Action,
        actor: &str,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<Event, LifecycleError> {
        let history = self.history(batch).await?;
        self.append_after(&history, batch, action, actor, reason, by).await
    }

    /// [`Log::append`] to a history read before: if another process appended to the
    /// batch since, this one does not, and says what happened instead.
    pub async fn append_after(
        &self,
        history: &[Event],
        batch: &str,
        action: Action,
        actor: &str,
        reason: Option<&str>,
        by: Option<&str>,
    ) -> Result<Event, LifecycleError> {
        if action.needs_reason() && reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(LifecycleError::NeedsReason(action));
        }
        let from = match (action, history.last()) {
            (Action::Create, None) => None,
            _ => Some(status_of(history)),
        };
        let before_hold = history
            .iter()
            .rev()
            .find(|e| e.action == Action::Hold)
            .and_then(|e| e.from);
        let Some(to) = action.next(from, before_hold) else {
            return Err(LifecycleError::Refused {
                batch: batch.to_string(),
                status: from.unwrap_or(Status::Ready),
                action,
            });
        };
        let event = Event {
            seq: history.len() as u64 + 1,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            actor: actor.to_string(),
            action,
            reason: reason.map(str::to_string),
            batch: batch.to_string(),
            from,
            to,
            by: by.map(str::to_string),
        };
        let body = serde_json::to_vec_pretty(&event).map_err(|e| LifecycleError::BadEvent {
            path: Self::event_path(batch, event.seq).to_string(),
            why: e.to_string(),
        })?;
        let put = self
            .store
            .put_opts(
                &Self::event_path(batch, event.seq),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => Ok(event),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let now = self.history(batch).await?;
                let winner = now.get(event.seq as usize - 1).cloned().unwrap_or(event);
                Err(LifecycleError::Conflict {
                    batch: batch.to_string(),
                    event: Box::new(winner),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_is_allowed_or_refused_as_the_table_says() {
        use Action::*;
        use Status::*;
        // (from, action, to): every allowed step; everything else is refused.
        let allowed_steps = [
            (Ready, Accept, Accepted),
            (Ready, Reject, Rejected),
            (Ready, Hold, Held),
            (Accepted, Hold, Held),
            (Held, Release, Ready),
            (Accepted, Publish, Published),
            (Published, Void, Voided),
            (Ready, Supersede, Superseded),
            (Accepted, Supersede, Superseded),
            (Rejected, Supersede, Superseded),
            (Held, Supersede, Superseded),
            (Published, Supersede, Superseded),
        ];
        for from in ALL_STATUSES {
            for action in [Create, Accept, Reject, Hold, Release, Publish, Void, Supersede] {
                let expected = allowed_steps
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|s| s.2);
                assert_eq!(action.next(Some(from), None), expected, "{from:?} --{action:?}->");
            }
        }
        assert_eq!(Create.next(None, None), Some(Ready));
        // A release returns to where the hold began.
        assert_eq!(Release.next(Some(Held), Some(Accepted)), Some(Accepted));
        assert_eq!(allowed(Ready), vec![Accept, Reject, Hold]);
        assert!(allowed(Voided).is_empty());
    }
}
