//! [`StripedCounters`]: counters that every session thread adds to on every statement without
//! sharing a cache line. One shared atomic would bounce its line between cores on each
//! statement; here each thread writes only a row of its own, and a scrape sums the rows into
//! the exported series.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use prometheus::IntCounter;

/// Threads that get a row of their own; any further ones share one with atomic adds.
const OWN_ROWS: usize = 16;

/// Process-wide, so a row index names one thread in every instance.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Relaxed);
}

/// One thread's counters, on cache lines of their own.
#[repr(align(128))]
struct Row<const N: usize>([AtomicU64; N]);

impl<const N: usize> Row<N> {
    fn new() -> Self {
        Row(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `N` counters, each exported as one [`IntCounter`] that a scrape brings up to date.
pub(crate) struct StripedCounters<const N: usize> {
    /// Row `i` is written only by the thread numbered `i`.
    own: Box<[Row<N>]>,
    /// For threads numbered past the last own row.
    shared: Row<N>,
    exported: [IntCounter; N],
    /// Scrapes that overlap must not both add the same difference.
    publishing: Mutex<()>,
}

impl<const N: usize> StripedCounters<N> {
    pub(crate) fn new(exported: [IntCounter; N]) -> Self {
        StripedCounters {
            own: (0..OWN_ROWS).map(|_| Row::new()).collect(),
            shared: Row::new(),
            exported,
            publishing: Mutex::new(()),
        }
    }

    /// Adds one to counter `index`.
    pub(crate) fn inc(&self, index: usize) {
        // A thread already tearing down its thread-locals counts in the shared row.
        let thread = THREAD.try_with(|t| *t).unwrap_or(usize::MAX);
        match self.own.get(thread) {
            Some(row) => {
                // This thread is the row's only writer: a plain load and store, no locked
                // instruction.
                let counter = &row.0[index];
                counter.store(counter.load(Relaxed) + 1, Relaxed);
            }
            None => {
                self.shared.0[index].fetch_add(1, Relaxed);
            }
        }
    }

    /// Brings every exported counter up to the sum of its rows.
    pub(crate) fn publish(&self) {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        for (index, exported) in self.exported.iter().enumerate() {
            let total: u64 = self
                .own
                .iter()
                .chain(std::iter::once(&self.shared))
                .map(|row| row.0[index].load(Relaxed))
                .sum();
            // Rows only grow, and only this method adds to the exported counter.
            exported.inc_by(total.saturating_sub(exported.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_at_publish() {
        let exported: [IntCounter; 2] =
            std::array::from_fn(|i| IntCounter::new(format!("c{i}"), "test").unwrap());
        let striped = StripedCounters::new(exported.clone());
        // More threads than own rows, so the shared row is exercised too.
        std::thread::scope(|scope| {
            for _ in 0..OWN_ROWS + 8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        striped.inc(1);
                    }
                    striped.inc(0);
                });
            }
        });
        assert_eq!(exported[1].get(), 0, "published only on a scrape");
        striped.publish();
        striped.publish();
        assert_eq!(exported[0].get(), (OWN_ROWS + 8) as u64);
        assert_eq!(exported[1].get(), 1000 * (OWN_ROWS + 8) as u64);
        striped.inc(0);
        striped.publish();
        assert_eq!(exported[0].get(), (OWN_ROWS + 9) as u64);
    }
}
