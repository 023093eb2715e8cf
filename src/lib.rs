//! groupsync copies a source user's contact group to many destination users and keeps the copies
//! right. The library holds everything; the binary only parses the command line.
//!
//! # Layout
//! - [`card`]: vCard parsing and writing, the tag properties, managed fields, digests, filters.
//! - [`backend`]: the provider trait and its implementations (in-memory, vdir, CardDAV, Google).
//! - [`plan`]: the pure planner (snapshots + job + ledger → ordered plan).
//! - [`engine`]: the executor that reads, plans, checks safety limits and applies.
//! - [`store`]: the SQLite state database (ledger, history, change log, trash).
//! - [`config`], [`job`]: `groupsync.toml` and the job files.
//! - [`feeds`]: which jobs feed which; a set of jobs that would copy in a circle is refused.
//! - [`lock`]: the state lock that keeps two runs apart; [`mutex`]: the one way a mutex is locked.
//! - [`procstat`]: peak memory and CPU time, for the benchmark programs.
//! - [`cli`]: the commands, one file each.

pub mod backend;
pub mod card;
pub mod cli;
pub mod config;
pub mod engine;
pub mod feeds;
pub mod job;
pub mod lock;
pub mod metrics;
pub mod mutex;
pub mod notify;
pub mod plan;
pub mod procstat;
pub mod schedule;
pub mod serve;
pub mod store;
