//! Reviewing batches: list them, look at one and its history, and move it along its
//! lifecycle, as an organisation (`--as ORG`) or with the warehouse's full view.
//!
//! Acting as an organisation, a batch it may not see (another organisation's, not
//! published to it) is "not found", exactly as a batch that does not exist; it may act
//! only on its own batches.

use super::StoreLocation;
use super::catalog::{self, Entry, FindError};
use super::lifecycle::{Action, Event, LifecycleError, Log, Status};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Find(#[from] FindError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("batch {batch} belongs to `{owner}`: only `{owner}` can {} it (acting as `{acting}`)", .action.name())]
    NotOwner {
        batch: String,
        owner: String,
        acting: String,
        action: Action,
    },
    #[error("`{}` is done by runs, not in review", .0.name())]
    NotAReviewAction(Action),
    #[error(transparent)]
    Diff(#[from] super::diff::DiffError),
    #[error("reconcile: {0}")]
    Reconcile(String),
}

/// Which batches to list (each filter, when given, must match).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub tier: Option<String>,
    pub organization: Option<String>,
    pub stream: Option<String>,
    pub period: Option<String>,
    pub status: Option<Status>,
}

impl Filter {
    fn admits(&self, e: &Entry) -> bool {
        let m = &e.manifest;
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.tier, &m.tier)
            && eq(&self.organization, &m.organization)
            && eq(&self.stream, &m.stream)
            && eq(&self.period, &m.period.label)
            && self.status.is_none_or(|s| s == e.status)
    }
}

/// A warehouse seen by one reviewer.
pub struct Reviewer {
    warehouse: StoreLocation,
    log: Log,
    /// The organisation acting (`--as`); `None`: the whole warehouse.
    organization: Option<String>,
    /// Who the log names for what this reviewer does.
    actor: String,
}

impl Reviewer {
    pub fn open(warehouse: impl Into<StoreLocation>, organization: Option<String>) -> Result<Self, ReviewError> {
        let warehouse: StoreLocation = warehouse.into();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let actor = match &organization {
            Some(org) => format!("{org} ({user})"),
            None => user,
        };
        Ok(Reviewer {
            log: Log::open(&warehouse),
            warehouse,
            organization,
            actor,
        })
    }

    /// The batches this reviewer may see that match `filter`.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Entry>, ReviewError> {
        Ok(self.visible().await?.into_iter().filter(|e| filter.admits(e)).collect())
    }

    async fn visible(&self) -> Result<Vec<Entry>, ReviewError> {
        let all = catalog::entries(&self.warehouse, &self.log).await?;
        Ok(all
            .into_iter()
            .filter(|e| e.visible_to(self.organization.as_deref()))
            .collect())
    }

    /// The batch `id` (or the one whose id starts with it), if this reviewer may see it.
    pub async fn find(&self, id: &str) -> Result<Entry, ReviewError> {
        let visible = self.visible().await?;
        Ok(catalog::find(&visible, id)?.clone())
    }

    pub async fn history(&self, id: &str) -> Result<(Entry, Vec<Event>), ReviewError> {
        let e = self.find(id).await?;
        let history = self.log.history(e.id()).await?;
        Ok((e, history))
    }

    /// [`Reviewer::act`] on every batch that `filter` matches and whose status allows the
    /// step (batches it would refuse for their status are left as they are); one
    /// outcome each, with the catalog read once, so thousands of batches take seconds.
    pub async fn act_on_all(
        &self,
        filter: &Filter,
        action: Action,
        note: Option<&str>,
    ) -> Result<Vec<Result<Event, ReviewError>>, ReviewError> {
        use futures::StreamExt;
        self.check_action(action)?;
        let allowed: Vec<Entry> = self
            .list(filter)
            .await?
            .into_iter()
            .filter(|e| action.next(Some(e.status), Some(e.status)).is_some())
            .collect();
        // Each batch has its own history: the steps go many at once.
        Ok(futures::stream::iter(&allowed)
            .map(|e| self.act_on(e, action, note))
            .buffered(catalog::READ_CONCURRENCY)
            .collect()
            .await)
    }

    fn check_action(&self, action: Action) -> Result<(), ReviewError> {
        if matches!(action, Action::Create | Action::Supersede) {
            return Err(ReviewError::NotAReviewAction(action));
        }
        Ok(())
    }

    async fn act_on(&self, e: &Entry, action: Action, note: Option<&str>) -> Result<Event, ReviewError> {
        if let Some(org) = &self.organization
            && org != &e.manifest.organization
        {
            return Err(ReviewError::NotOwner {
                batch: e.id().to_string(),
                owner: e.manifest.organization.clone(),
                acting: org.clone(),
                action,
            });
        }
        Ok(self.log.append(e.id(), action, &self.actor, note, None).await?)
    }

    /// How batch `b` differs from batch `a` (both visible to this reviewer), rows matched
    /// on `keys`.
    pub async fn diff(
        &self,
        a: &str,
        b: &str,
        keys: &[String],
    ) -> Result<(Entry, Entry, super::diff::Diff), ReviewError> {
        let (a, b) = (self.find(a).await?, self.find(b).await?);
        let d = super::diff::diff(&a, &b, keys).await?;
        Ok((a, b, d))
    }

    /// `billflow reconcile`: the published batches of `period` this reviewer sees, against
    /// their data files and what the batches built from them read.
    pub async fn reconcile(&self, period: &str) -> Result<super::reconcile::Report, ReviewError> {
        let all = catalog::entries(&self.warehouse, &self.log).await?;
        let visible: Vec<Entry> = all
            .into_iter()
            .filter(|e| e.visible_to(self.organization.as_deref()))
            .collect();
        super::reconcile::reconcile(&visible, period)
            .await
            .map_err(|e| ReviewError::Reconcile(e.strip_backtrace()))
    }

    /// Move the batch along its lifecycle.
    pub async fn act(&self, id: &str, action: Action, note: Option<&str>) -> Result<Event, ReviewError> {
        self.check_action(action)?;
        let e = self.find(id).await?;
        self.act_on(&e, action, note).await
    }
}
