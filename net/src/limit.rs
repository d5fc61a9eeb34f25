//! The bound on connections carried at once, so a flood of clients cannot
//! take a relay past its file descriptors or memory: a connection is carried
//! only while it holds a [`Permit`]; beyond the bound it is refused (the
//! caller resets it) and counted. Refusals come in bursts, and the log should
//! say so once per burst, not once per client: the first refusal of a burst
//! is marked, and the admission that ends it reports how many were refused.
//! Pure bookkeeping, no I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Client connections carried at once unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The bound and its counts; clones share them.
#[derive(Clone, Debug)]
pub struct Limit(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    max: usize,
    active: AtomicUsize,
    refusals: Mutex<Refusals>,
}

#[derive(Debug, Default)]
struct Refusals {
    /// Refused since the last admission: nonzero while a burst lasts.
    in_burst: u64,
    /// Refused since start.
    total: u64,
}

/// A connection over the bound.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// The bound.
    pub max: usize,
    /// The first refusal since a connection was last admitted: the one to log.
    pub first_in_burst: bool,
}

/// A carried connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    limit: Limit,
    /// Connections refused in the burst this admission ended.
    pub ended_burst: Option<u64>,
}

impl Limit {
    /// Carries at most `max` connections at once (at least one).
    pub fn new(max: usize) -> Limit {
        Limit(Arc::new(Inner {
            max: max.max(1),
            active: AtomicUsize::new(0),
            refusals: Mutex::new(Refusals::default()),
        }))
    }

    /// The bound that fits `open_files` descriptors when each connection
    /// holds `per_connection` of them and `reserve` are kept for everything
    /// else: `wanted`, or less when the descriptors cannot cover it.
    pub fn fitting(
        wanted: usize,
        open_files: Option<u64>,
        per_connection: usize,
        reserve: usize,
    ) -> usize {
        let Some(files) = open_files else { return wanted };
        let room = usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(reserve);
        wanted.min(room / per_connection.max(1)).max(1)
    }

    /// Takes a place, or says the connection is over the bound.
    pub fn try_admit(&self) -> Result<Permit, Refused> {
        let admitted = self
            .0
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0.max).then_some(n + 1)
            })
            .is_ok();
        let mut r = self.0.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if admitted {
            let ended = std::mem::take(&mut r.in_burst);
            Ok(Permit { limit: self.clone(), ended_burst: (ended > 0).then_some(ended) })
        } else {
            r.in_burst += 1;
            r.total += 1;
            Err(Refused { max: self.0.max, first_in_burst: r.in_burst == 1 })
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Connections carried now.
    pub fn active(&self) -> usize {
        self.0.active.load(Ordering::Acquire)
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.0.refusals.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admissions up to the bound, refusals beyond it, a burst marked at
    /// its first refusal and summed up by the admission that ends it.
    #[test]
    fn the_bound_holds_and_bursts_are_told_once() {
        let l = Limit::new(2);
        let a = l.try_admit().unwrap();
        let b = l.try_admit().unwrap();
        assert_eq!((a.ended_burst, b.ended_burst), (None, None));
        let refusals: Vec<bool> =
            (0..3).map(|_| l.try_admit().unwrap_err().first_in_burst).collect();
        assert_eq!(refusals, [true, false, false]);
        assert_eq!((l.active(), l.refused()), (2, 3));
        drop(a);
        let c = l.try_admit().unwrap();
        assert_eq!(c.ended_burst, Some(3));
        assert_eq!(l.try_admit().unwrap_err(), Refused { max: 2, first_in_burst: true });
        drop((b, c));
        assert_eq!(l.active(), 0);
        assert_eq!(l.try_admit().unwrap().ended_burst, Some(1));
        assert_eq!(l.refused(), 4);
    }

    #[test]
    fn the_bound_fits_the_descriptors() {
        let cases = [
            // wanted, open files, per connection, reserve -> bound
            (4096, None, 2, 64, 4096),
            (4096, Some(1_048_576), 2, 64, 4096),
            (4096, Some(1024), 2, 64, 480),
            (4096, Some(10), 2, 64, 1),
            (100, Some(u64::MAX), 2, 64, 100),
        ];
        for (wanted, files, per, reserve, want) in cases {
            assert_eq!(Limit::fitting(wanted, files, per, reserve), want, "{files:?}");
        }
    }
}
