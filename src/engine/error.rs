//! Job-level failures: what stops a job before any destination is written, and which of them
//! are the configuration's fault (exit code 2).

use crate::backend::BackendError;
use crate::store::StoreError;

/// Job-level failures: nothing was written to any destination.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("source user {0:?} not found")]
    SourceUser(String),
    #[error("source group {group:?} not found for user {user:?}")]
    SourceGroup { user: String, group: String },
    #[error("reading source group {group:?} of {user:?}: {source}")]
    SourceRead {
        user: String,
        group: String,
        #[source]
        source: BackendError,
    },
    #[error(
        "job {job:?} has tag {found} in its file but was created with tag {expected}; a job's tag must never be edited"
    )]
    TagChanged {
        job: String,
        expected: String,
        found: String,
    },
    #[error(
        "tag {tag} of job {job:?} already belongs to job {other:?}; every job needs its own tag"
    )]
    TagInUse {
        job: String,
        tag: String,
        other: String,
    },
    #[error("{source}; nothing was changed (reading the dynamic destinations)")]
    Destinations {
        set: String,
        #[source]
        source: BackendError,
    },
    /// Destinations named in the job file that cannot be synced as configured: unknown users,
    /// or users the provider refuses the credentials for. Checked before anything is written.
    #[error(
        "job {job:?} names destinations that cannot be synced: {}; nothing was changed. Fix the job file (or the credentials) and run again",
        problems.join("; ")
    )]
    BadDestinations { job: String, problems: Vec<String> },
    /// The target group's name cannot be made at this provider.
    #[error("job {job:?}: target_group {group:?}: {why}; nothing was changed")]
    BadGroupName {
        job: String,
        group: String,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::SourceRead { source, .. } | JobError::Destinations { source, .. } => {
                source.is_retryable()
            }
            JobError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// True when the job's configuration is at fault (exit code 2): the job file names what
    /// does not exist or cannot be, or the provider refuses the credentials. Nothing was
    /// changed, and running again as it is will fail the same way.
    pub fn is_config(&self) -> bool {
        match self {
            JobError::SourceUser(_)
            | JobError::SourceGroup { .. }
            | JobError::TagChanged { .. }
            | JobError::TagInUse { .. }
            | JobError::BadDestinations { .. }
            | JobError::BadGroupName { .. } => true,
            JobError::SourceRead { source, .. } | JobError::Destinations { source, .. } => {
                matches!(source, BackendError::Auth(_))
            }
            JobError::Store(_) => false,
        }
    }
}
