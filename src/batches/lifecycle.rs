//! A batch's lifecycle: its data never changes; what happens to it (created by a run,
//! accepted or rejected in review, held and released, published to the organisations
//! below, voided, superseded by a new version) is an append-only log of events that is
//! never rewritten.
//!
//! The entry holding event `n` of batch `B` is the object `_log/B/<n>.json` of the
//! warehouse, and the first, which every batch has, `_log/B.00000001.json` (a folder per
//! batch cost as much to create as its first entry, 2,000 of them a run; batches logged
//! before have their first entry in the folder too). Each is written with a
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

/// The events of one entry of the log (an object whose name is the number of its first
/// event): one event, or several a writer recorded at once (a run's creation of a batch
/// and `review: auto`'s acceptance and publication). They are checked to be events
/// `first`, `first + 1`, ... of `batch`.
fn parse_entry(bytes: &[u8], path: &ObjectPath, batch: &str, first: u64) -> Result<Vec<Event>, LifecycleError> {
    let bad = |why: String| LifecycleError::BadEvent {
        path: path.to_string(),
        why,
    };
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        One(Box<Event>),
        Several(Vec<Event>),
    }
    let events = match serde_json::from_slice::<Entry>(bytes) {
        Ok(Entry::One(event)) => vec![*event],
        Ok(Entry::Several(events)) if !events.is_empty() => events,
        Ok(Entry::Several(_)) => return Err(bad("it holds no event".into())),
        // Read again as one event: serde's error for that names what is wrong.
        Err(_) => {
            return Err(bad(serde_json::from_slice::<Event>(bytes)
                .err()
                .map_or_else(String::new, |e| e.to_string())));
        }
    };
    for (i, event) in events.iter().enumerate() {
        let seq = first + i as u64;
        if event.seq != seq || event.batch != batch {
            return Err(LifecycleError::Gap {
                batch: batch.to_string(),
                missing: seq,
                found: event.seq,
            });
        }
    }
    Ok(events)
}

/// The number of the first event an entry holds, from its name (`00000007.json`).
fn entry_number(path: &ObjectPath) -> Result<u64, LifecycleError> {
    path.filename()
        .and_then(|name| name.strip_suffix(".json"))
        .and_then(|n| n.rsplit('.').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LifecycleError::BadEvent {
            path: path.to_string(),
            why: "its name is not the number of an event".into(),
        })
}

/// One step to record: what, by whom, why, and (a supersede) by which batch.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    pub action: Action,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    pub by: Option<&'a str>,
}

impl<'a> Step<'a> {
    pub fn new(action: Action, actor: &'a str) -> Self {
        Step {
            action,
            actor,
            reason: None,
            by: None,
        }
    }

    pub fn because(mut self, reason: Option<&'a str>) -> Self {
        self.reason = reason;
        self
    }
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

    /// Where the entry whose first event is `seq` is written (see the module's notes).
    fn event_path(batch: &str, seq: u64) -> ObjectPath {
        match seq {
            1 => ObjectPath::from(format!("{LOG_DIR}/{batch}.{seq:08}.json")),
            _ => ObjectPath::from(format!("{LOG_DIR}/{batch}/{seq:08}.json")),
        }
    }

    /// The batch whose log holds the entry at `path` (of a listing of the whole log).
    fn batch_of(path: &ObjectPath) -> Option<String> {
        let parts: Vec<_> = path.parts().collect();
        match parts.as_slice() {
            [_, first] => first
                .as_ref()
                .strip_suffix(".json")
                .and_then(|n| n.rsplit_once('.'))
                .map(|(batch, _)| batch.to_string()),
            [_, batch, _] => Some(batch.as_ref().to_string()),
            _ => None,
        }
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
        let mut events: Vec<Event> = Vec::with_capacity(paths.len() + 3);
        // The first entry lies beside the batch's folder: read at once, not looked for first.
        let first = Self::event_path(batch, 1);
        match self.store.get(&first).await {
            Ok(got) => self.read_entry(&mut events, &got.bytes().await?, &first, batch)?,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for path in &paths {
            let bytes = self.store.get(path).await?.bytes().await?;
            self.read_entry(&mut events, &bytes, path, batch)?;
        }
        Ok(events)
    }

    /// Add the events of the entry at `path` to the batch's `events` read so far: it must
    /// be the next entry, named by the number of the next event.
    fn read_entry(
        &self,
        events: &mut Vec<Event>,
        bytes: &[u8],
        path: &ObjectPath,
        batch: &str,
    ) -> Result<(), LifecycleError> {
        let next = events.len() as u64 + 1;
        let first = entry_number(path)?;
        if first != next {
            return Err(LifecycleError::Gap {
                batch: batch.to_string(),
                missing: next,
                found: first,
            });
        }
        events.extend(parse_entry(bytes, path, batch, first)?);
        Ok(())
    }

    /// Every batch's history, brought up to date in `known` (batch id -> its events so
    /// far): one listing of the whole log, then only the entries not read before. An
    /// entry is never rewritten, so what was read once stays true.
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
            if let Some(batch) = Self::batch_of(&path) {
                by_batch.entry(batch).or_default().push(path);
            }
        }
        // (batch, entry) of each entry not read yet: those numbered past the events known
        // (an entry is written whole, so one numbered within them was read whole).
        let mut unread = Vec::new();
        for (batch, mut paths) in by_batch {
            paths.sort_by_cached_key(|p| entry_number(p).unwrap_or(0));
            let read = known.get(&batch).map_or(0, Vec::len) as u64;
            for path in paths {
                if entry_number(&path)? > read {
                    unread.push((batch.clone(), path));
                }
            }
        }
        let keys = unread.iter().map(|(_, path)| path.to_string()).collect();
        let read = super::storage::read_many(&self.store, self.local.as_deref(), keys).await?;
        for ((batch, path), bytes) in unread.into_iter().zip(read) {
            let events = known.entry(batch.clone()).or_default();
            let Some(bytes) = bytes else {
                return Err(LifecycleError::Gap {
                    batch,
                    missing: events.len() as u64 + 1,
                    found: 0,
                });
            };
            self.read_entry(events, &bytes, &path, &batch)?;
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
        let step = Step {
            action,
            actor,
            reason,
            by,
        };
        let mut events = self.append_after(&history, batch, &[step]).await?;
        Ok(events.remove(0))
    }

    /// Record `steps` on the batch, one after the other, as one entry of its log that
    /// follows `history` (read before): all of them or none. If another process appended
    /// to the batch since, this one records nothing and says what happened instead
    /// ([`LifecycleError::Conflict`]); a step its status at that point does not allow is
    /// [`LifecycleError::Refused`].
    pub async fn append_after(
        &self,
        history: &[Event],
        batch: &str,
        steps: &[Step<'_>],
    ) -> Result<Vec<Event>, LifecycleError> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut events: Vec<Event> = Vec::with_capacity(steps.len());
        for step in steps {
            let so_far: Vec<&Event> = history.iter().chain(&events).collect();
            events.push(next_event(&so_far, batch, step, &at)?);
        }
        let Some(first) = events.first().map(|e| e.seq) else {
            return Ok(events);
        };
        let path = Self::event_path(batch, first);
        let body = match events.as_slice() {
            [one] => serde_json::to_vec_pretty(one),
            several => serde_json::to_vec_pretty(several),
        }
        .map_err(|e| LifecycleError::BadEvent {
            path: path.to_string(),
            why: e.to_string(),
        })?;
        let put = self
            .store
            .put_opts(&path, PutPayload::from(body), PutOptions::from(PutMode::Create))
            .await;
        match put {
            Ok(_) => Ok(events),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let now = self.history(batch).await?;
                let winner = now.get(first as usize - 1).cloned().unwrap_or_else(|| events.remove(0));
                Err(LifecycleError::Conflict {
                    batch: batch.to_string(),
                    event: Box::new(winner),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The event that `step` is after `history`, if the batch's status then allows it.
fn next_event(history: &[&Event], batch: &str, step: &Step<'_>, at: &str) -> Result<Event, LifecycleError> {
    let action = step.action;
    if action.needs_reason() && step.reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(LifecycleError::NeedsReason(action));
    }
    let last = history.last().map(|e| e.to);
    let from = match (action, last) {
        (Action::Create, None) => None,
        _ => Some(last.unwrap_or(Status::Ready)),
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
    Ok(Event {
        seq: history.len() as u64 + 1,
        at: at.to_string(),
        actor: step.actor.to_string(),
        action,
        reason: step.reason.map(str::to_string),
        batch: batch.to_string(),
        from,
        to,
        by: step.by.map(str::to_string),
    })
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

    fn log_in(dir: &Path) -> Log {
        Log::local(dir).unwrap()
    }

    /// A run's creation and `review: auto`'s acceptance and publication are one entry of
    /// the log (one object, named by its first event), read back as three events; the
    /// next step is the next entry, numbered after them.
    #[tokio::test]
    async fn several_steps_are_one_entry_of_the_log_and_read_back_as_events() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_in(tmp.path());
        let steps = [
            Step::new(Action::Create, "run"),
            Step::new(Action::Accept, "auto").because(Some("reconciles")),
            Step::new(Action::Publish, "auto"),
        ];
        let events = log.append_after(&[], "b1", &steps).await.unwrap();
        let seqs: Vec<(u64, Status)> = events.iter().map(|e| (e.seq, e.to)).collect();
        assert_eq!(
            seqs,
            [(1, Status::Ready), (2, Status::Accepted), (3, Status::Published)]
        );
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&tmp.path().join("_log")), ["b1.00000001.json"]);
        let void = log
            .append("b1", Action::Void, "finance", Some("wrong rates"), None)
            .await
            .unwrap();
        assert_eq!(
            (void.seq, void.from, void.to),
            (4, Some(Status::Published), Status::Voided)
        );
        assert_eq!(names(&tmp.path().join("_log")), ["b1", "b1.00000001.json"]);
        assert_eq!(names(&tmp.path().join("_log/b1")), ["00000004.json"]);
        let history = log.history("b1").await.unwrap();
        let actions: Vec<(&str, &str)> = history.iter().map(|e| (e.action.name(), e.actor.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("create", "run"),
                ("accept", "auto"),
                ("publish", "auto"),
                ("void", "finance")
            ]
        );
        assert_eq!(history[1].reason.as_deref(), Some("reconciles"));

        // Brought up to date entry by entry: what was known is not read again.
        let mut known = HashMap::new();
        log.append_after(&[], "b2", &steps[..1]).await.unwrap();
        log.histories(&mut known).await.unwrap();
        assert_eq!(known["b1"].len(), 4);
        assert_eq!(known["b2"].len(), 1);
        let b2 = log.history("b2").await.unwrap();
        log.append_after(&b2, "b2", &steps[1..]).await.unwrap();
        log.histories(&mut known).await.unwrap();
        assert_eq!(known["b2"], log.history("b2").await.unwrap());
        assert_eq!(known["b2"].len(), 3);
        assert_eq!(known["b1"].len(), 4);
    }

    /// Batches logged before the first entry was a file of its own have it in their
    /// folder: their history reads the same, and goes on in the folder.
    #[tokio::test]
    async fn a_first_entry_in_the_batchs_folder_is_read_as_before() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_in(tmp.path());
        log.append_after(&[], "old", &[Step::new(Action::Create, "run")])
            .await
            .unwrap();
        std::fs::create_dir_all(tmp.path().join("_log/old")).unwrap();
        std::fs::rename(
            tmp.path().join("_log/old.00000001.json"),
            tmp.path().join("_log/old/00000001.json"),
        )
        .unwrap();
        assert_eq!(log.history("old").await.unwrap().len(), 1);
        let next = log
            .append("old", Action::Accept, "finance", Some("checked"), None)
            .await
            .unwrap();
        assert_eq!(next.seq, 2);
        assert!(tmp.path().join("_log/old/00000002.json").exists());
        let mut known = HashMap::new();
        log.histories(&mut known).await.unwrap();
        assert_eq!(known["old"], log.history("old").await.unwrap());
        assert_eq!(known["old"].len(), 2);
    }

    /// All the steps of an entry or none: a step the status does not allow refuses the
    /// whole entry; of two writers that read the same history, one writes the entry and
    /// the other is told what won.
    #[tokio::test]
    async fn an_entry_is_written_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_in(tmp.path());
        let refused = log
            .append_after(
                &[],
                "b",
                &[Step::new(Action::Create, "run"), Step::new(Action::Publish, "auto")],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                LifecycleError::Refused {
                    status: Status::Ready,
                    action: Action::Publish,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(log.history("b").await.unwrap().is_empty());
        assert!(!tmp.path().join("_log").exists());

        let first = log
            .append_after(&[], "b", &[Step::new(Action::Create, "one")])
            .await
            .unwrap();
        let lost = log
            .append_after(
                &[],
                "b",
                &[Step::new(Action::Create, "two"), Step::new(Action::Accept, "two")],
            )
            .await
            .unwrap_err();
        match lost {
            LifecycleError::Conflict { event, .. } => assert_eq!(*event, first[0]),
            other => panic!("{other}"),
        }
        assert_eq!(log.history("b").await.unwrap(), first);
    }

    /// An entry is read only at its place: one whose name is not the next event's number,
    /// or whose events are not numbered from it, is a gap in the log, not skipped.
    #[tokio::test]
    async fn an_entry_out_of_place_is_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_in(tmp.path());
        let steps = [Step::new(Action::Create, "run"), Step::new(Action::Accept, "auto")];
        log.append_after(&[], "b", &steps).await.unwrap();
        // Event 3 written as if it were event 2's entry.
        let two = std::fs::read_to_string(tmp.path().join("_log/b.00000001.json")).unwrap();
        std::fs::create_dir_all(tmp.path().join("_log/b")).unwrap();
        std::fs::write(tmp.path().join("_log/b/00000002.json"), &two).unwrap();
        let e = log.history("b").await.unwrap_err();
        assert_eq!(e.to_string(), "the lifecycle log of batch b misses event 3 (it has 2)");
        std::fs::remove_file(tmp.path().join("_log/b/00000002.json")).unwrap();
        std::fs::write(tmp.path().join("_log/b/00000003.json"), &two).unwrap();
        let e = log.history("b").await.unwrap_err();
        assert_eq!(e.to_string(), "the lifecycle log of batch b misses event 3 (it has 1)");
    }
}
