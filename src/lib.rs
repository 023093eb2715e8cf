//! groupsync copies a source user's contact group to many destination users and keeps the copies
//! right. The library holds everything; the binary only parses the command line. The rules a run
//! keeps are written in `docs/design.md`; how data flows through these modules, in
//! `ARCHITECTURE.md`.
//!
//! # Layout
//! - [`card`]: vCard parsing and writing, the tag properties, managed fields, digests, filters.
//! - [`backend`]: the provider trait ([`backend::Backend`], one [`backend::Capabilities`] value)
//!   and its providers, each a folder of the same rooms (`mod.rs` forwarding, `read.rs`,
//!   `write.rs`, `groups.rs`, the wire client and the mapping): [`backend::memory`],
//!   [`backend::vdir`], [`backend::carddav`], [`backend::google`]; [`backend::counting`] counts
//!   calls by method around any of them.
//! - [`plan`]: the pure planner (source, destination, job, ledger → ordered plan), by what it
//!   reads (`source`, `dest`, `ledger`) and how it decides (`decide`).
//! - [`engine`]: the executor, one file a phase of a run (resolve, source, pool, destination,
//!   delta, probe, snapshot, apply, record, trash, finish).
//! - [`store`]: the SQLite state database, one file a table (jobs, runs, destinations, ledger,
//!   source, log, trash) and the migrations.
//! - [`config`], [`job`]: `groupsync.toml` (every provider's keys in `config::backend`) and the
//!   job files.
//! - [`feeds`]: which jobs feed which; a set of jobs that would copy in a circle is refused.
//! - [`schedule`], [`serve`]: cron patterns and time zones; the daemon that runs jobs on them.
//! - [`metrics`], [`notify`]: Prometheus text from the state; webhook and email after a run.
//! - [`private`]: the state's files are the owner's alone (0600, folders 0700).
//! - [`lock`]: the state lock that keeps two runs apart; [`mutex`]: the one way a mutex is locked.
//! - [`procstat`]: peak memory and CPU time, and the allocator's settings.
//! - [`cli`]: the commands, one file each; `cli::backend` builds a provider from its
//!   configuration.

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
pub mod private;
pub mod procstat;
pub mod schedule;
pub mod serve;
pub mod shard;
pub mod store;
