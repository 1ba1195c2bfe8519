//! The user ids of runs as root: claimed per machine with a lock file each (so that no two Troupe
//! processes run code under one id, and a sweep never touches another process's run), and handed out one
//! per run slot.

use std::path::PathBuf;
use std::sync::Arc;

use super::types::SandboxError;
use super::{process, Inner};
use crate::config::SandboxSettings;

/// A per-run user id, returned to the free list when dropped.
pub(super) struct UidSlot {
    inner: Arc<Inner>,
    pub(super) uid: Option<u32>,
}

impl UidSlot {
    /// Takes a free user id of the sandbox (`None` when not root, or none is free).
    pub(super) fn take(inner: &Arc<Inner>) -> UidSlot {
        let uid = inner.free_uids.lock().ok().and_then(|mut free| free.pop());
        UidSlot {
            inner: Arc::clone(inner),
            uid,
        }
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let (Some(uid), Ok(mut free)) = (self.uid, self.inner.free_uids.lock()) {
            free.push(uid);
        }
    }
}

/// Where the per-user-id lock files live: `/run/lock` (shared by every process on the machine), else the
/// temporary directory.
fn lock_dir() -> PathBuf {
    let run_lock = PathBuf::from("/run/lock");
    if run_lock.is_dir() {
        run_lock
    } else {
        std::env::temp_dir()
    }
}

/// The user ids a sandbox running as root claimed, and the locks that hold them.
#[derive(Default)]
pub(super) struct UidClaims {
    /// The ids, lowest last (slots are popped).
    pub(super) uids: Vec<u32>,
    /// Their locks.
    pub(super) locks: Vec<std::fs::File>,
}

/// How long a claim that found every id held keeps trying: a lock is also held, for a moment, by any child
/// forked from the process that holds it until that child's exec closes the inherited descriptor, so a
/// process that has just let its ids go may still seem to hold them.
const CLAIM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Claims the user ids `uid_base .. uid_base + parallel_runs` with an exclusive lock file each, so that no
/// two Troupe processes on the machine run code under one id (the sweep after a run kills whatever runs
/// under its id). Ids another process holds are skipped; none left (for [`CLAIM_PATIENCE`]) is a refusal.
pub(super) fn claim_uids(settings: &SandboxSettings) -> Result<UidClaims, SandboxError> {
    let deadline = std::time::Instant::now() + CLAIM_PATIENCE;
    loop {
        let (claims, held) = claim_free_uids(settings)?;
        if !claims.uids.is_empty() {
            return Ok(finish(claims, held));
        }
        if std::time::Instant::now() >= deadline {
            return Err(SandboxError::Unavailable(format!(
                "every sandbox user id ({}..{}) is in use by another Troupe process on this machine; \
                 give each one its own sandbox.uid_base",
                settings.uid_base,
                u64::from(settings.uid_base) + settings.parallel_runs as u64
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One pass over the ids: the claimed ones with their locks, and the ids another process holds.
fn claim_free_uids(settings: &SandboxSettings) -> Result<(UidClaims, Vec<u32>), SandboxError> {
    let dir = lock_dir();
    let mut claims = UidClaims::default();
    let mut held = Vec::new();
    for slot in 0..settings.parallel_runs {
        let Some(uid) = u32::try_from(slot)
            .ok()
            .and_then(|slot| settings.uid_base.checked_add(slot))
        else {
            break;
        };
        let path = dir.join(format!("troupe-sandbox-uid-{uid}.lock"));
        match process::try_lock_file(&path) {
            Ok(Some(lock)) => {
                claims.uids.push(uid);
                claims.locks.push(lock);
            }
            Ok(None) => held.push(uid),
            Err(error) => {
                return Err(SandboxError::Unavailable(format!(
                    "cannot claim sandbox user id {uid} ({}): {error}",
                    path.display()
                )))
            }
        }
    }
    Ok((claims, held))
}

/// Warns about the ids left to another process and orders the claimed ones for popping.
fn finish(mut claims: UidClaims, held: Vec<u32>) -> UidClaims {
    if !held.is_empty() {
        tracing::warn!(
            ?held,
            claimed = claims.uids.len(),
            "some sandbox user ids are in use by another Troupe process; fewer runs at once"
        );
    }
    // Slots are taken from the end: the lowest id first.
    claims.uids.reverse();
    claims
}
