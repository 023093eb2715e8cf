//! The state lock: an exclusive lock on `<state>.lock`, held for the whole of a command that
//! writes, so two runs on one state never overlap. A second run waits briefly, then gives up with
//! a message naming the holder. The operating system releases the lock when the process dies, so
//! a killed run never leaves a stale lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    pub path: PathBuf,
}

/// Another process holds the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another groupsync process ({holder}) is working on {path}; waited {waited:?}. Try again when it has finished"
    )]
    Busy {
        path: String,
        holder: String,
        waited: Duration,
    },
    #[error("lock file: {0}")]
    Private(#[from] crate::private::NotPrivate),
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Takes the lock next to the state database, waiting up to `wait`.
pub fn acquire(state: &Path, wait: Duration) -> Result<StateLock, LockError> {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    let path = state.with_file_name(name);
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    // Owner-only, like the database it guards (it names the holder's pid).
    let mut file = crate::private::open_rw(&path)?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if start.elapsed() >= wait {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() {
                        "pid unknown".to_string()
                    } else {
                        format!("pid {holder}")
                    };
                    return Err(LockError::Busy {
                        path: path.display().to_string(),
                        holder,
                        waited: wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(StateLock { _file: file, path })
}
