//! The splice pipes, a bounded pool per process. A pipe's capacity is charged
//! to its user's pipe quota (`fs.pipe-user-pages-soft`, 16384 pages by
//! default) from creation to close, whether it holds data or not; past the
//! quota the kernel shrinks every new pipe of that user, shells included. So
//! a relay direction takes a pipe only while it moves one chunk, returns it
//! empty, and copies through a buffer when the pool is used up: however many
//! connections are open, this process holds at most [`MAX_PIPES`] pipes, an
//! eighth of the default quota.

use crate::sys;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// Capacity of each pipe: the most one splice moves.
pub(super) const PIPE_SIZE: usize = 256 * 1024;

/// Pipes this process holds at most: 32 x 64 pages = 2048 pages.
pub(super) const MAX_PIPES: usize = 32;

struct Pool {
    /// Empty pipes ready for use.
    free: Vec<(OwnedFd, OwnedFd)>,
    /// Pipes that exist, free or taken.
    open: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), open: 0 });

/// A pipe taken from the pool. Dropped empty, it goes back; dropped holding
/// bytes (a relay that ended mid-chunk), it is closed.
pub(super) struct Pipe {
    ends: Option<(OwnedFd, OwnedFd)>,
    /// Bytes spliced in and not yet out.
    pub held: usize,
}

impl Pipe {
    /// An empty pipe, or `None` when the pool is used up (or the kernel
    /// refuses a new pipe).
    pub fn take() -> Option<Pipe> {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ends) = pool.free.pop() {
            return Some(Pipe { ends: Some(ends), held: 0 });
        }
        if pool.open >= MAX_PIPES {
            return None;
        }
        let ends = sys::pipe(PIPE_SIZE).ok()?;
        pool.open += 1;
        Some(Pipe { ends: Some(ends), held: 0 })
    }

    /// The read end.
    pub fn r(&self) -> BorrowedFd<'_> {
        self.ends.as_ref().expect("a pipe until dropped").0.as_fd()
    }

    /// The write end.
    pub fn w(&self) -> BorrowedFd<'_> {
        self.ends.as_ref().expect("a pipe until dropped").1.as_fd()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        match (self.ends.take(), self.held) {
            (Some(ends), 0) => pool.free.push(ends),
            _ => pool.open -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool never holds more than its bound, reuses what comes back
    /// empty, and closes what comes back holding bytes.
    #[test]
    fn the_pool_is_bounded_and_reuses_empty_pipes() {
        let taken: Vec<Pipe> = std::iter::from_fn(Pipe::take).take(MAX_PIPES + 5).collect();
        // Other tests of this process may hold a few pipes at this moment.
        assert!(taken.len() <= MAX_PIPES, "{} pipes taken", taken.len());
        assert!(Pipe::take().is_none(), "the pool is used up");
        let mut taken = taken;
        let mut full = taken.pop().unwrap();
        full.held = 1;
        drop(full);
        let again = Pipe::take().expect("a pipe closed while full makes room for a new one");
        drop(again);
        drop(taken);
        assert!(Pipe::take().is_some());
    }
}
