//! Adaptive batch sizes (issue 7, item 4): the size of the next batch of a pass, from
//! how long the last batch transaction took against `safety.batch_target`.
//!
//! Why: a fixed size is wrong somewhere. A thousand keys of a sparse range commit in a
//! millisecond (round trips dominate, throughput suffers), while a thousand dense rows
//! with a foreign key each, on a busy server, can hold their row locks long enough for
//! a checkout at the circulation desk to wait. Measuring each transaction from BEGIN to
//! COMMIT and steering toward a target duration bounds lock time whatever the data.
//!
//! The control law is multiplicative and asymmetric. With `r = target / elapsed`:
//! - `r < 0.8` (slower than the target): the next size is `size × max(r, 0.5)`, so one
//!   batch slowed by a lock wait halves the next at once, and a run of slow ones keeps
//!   halving down to the floor;
//! - `r > 1.25` (faster): the next size is `size × min(√r, 1.25)`, at least one more:
//!   growth is damped (the square root approaches the target without overshooting it)
//!   and bounded per step, so cheap batches (few rows eligible in a range) cannot blow
//!   the size up in one go;
//! - in between, the size stays (no jitter around the target).
//!
//! The result is clamped to [`crate::config::Safety::batch_bounds`]. Only batches that
//! changed rows are measured: a range with nothing eligible costs one indexed read and
//! says nothing about what changing rows costs.

use std::time::Duration;

/// Below this share of the target a batch counts as fast; above its inverse, as slow.
const DEADBAND: f64 = 0.8;
/// The most one batch can shrink the next: to half.
const MAX_SHRINK: f64 = 0.5;
/// The most one batch can grow the next: by a quarter.
const MAX_GROWTH: f64 = 1.25;

/// The batch size of one pass, adapted batch by batch. A pure state machine (no clock,
/// no I/O): the engine measures, [`BatchSizer::record`] decides.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSizer {
    size: u32,
    min: u32,
    max: u32,
    target: Duration,
}

impl BatchSizer {
    /// A sizer that starts at `start` and stays within `[min, max]` (`min` at least 1;
    /// `start` is clamped into the bounds, and `max` raised to `min` if below it),
    /// steering each batch transaction toward `target` (a zero target is read as 1 ns).
    pub fn new(start: u32, (min, max): (u32, u32), target: Duration) -> BatchSizer {
        let min = min.max(1);
        let max = max.max(min);
        BatchSizer {
            size: start.clamp(min, max),
            min,
            max,
            target: target.max(Duration::from_nanos(1)),
        }
    }

    /// The sizer of `safety`: starts at `batch_size`, within
    /// [`crate::config::Safety::batch_bounds`], toward `batch_target`.
    pub fn of(safety: &crate::config::Safety) -> BatchSizer {
        BatchSizer::new(
            safety.batch_size,
            safety.batch_bounds(),
            safety.batch_target,
        )
    }

    /// The size of the next batch: keys of a key range, or the row limit of a table
    /// without a key.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Records that a batch of the current size took `elapsed` from BEGIN to COMMIT,
    /// and returns the size of the next batch (see the module doc for the law).
    pub fn record(&mut self, elapsed: Duration) -> u32 {
        let used = f64::from(self.size);
        // A batch measured as 0 s (a coarse clock) is simply fast.
        let secs = elapsed.as_secs_f64().max(1e-6);
        let r = self.target.as_secs_f64() / secs;
        let next = if r < DEADBAND {
            // Slow: shrink at once, by at most half; always by at least one key.
            let shrunk = (used * r.max(MAX_SHRINK)).floor();
            shrunk.min(used - 1.0)
        } else if r > 1.0 / DEADBAND {
            // Fast: grow gently, by at most a quarter; always by at least one key, so
            // that a size of 1 or 2 can grow at all.
            let grown = (used * r.sqrt().min(MAX_GROWTH)).ceil();
            grown.max(used + 1.0)
        } else {
            used
        };
        self.size = next.clamp(f64::from(self.min), f64::from(self.max)) as u32;
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_slow_batch_shrinks_the_next_at_once_by_at_most_half() {
        let mut s = BatchSizer::new(1000, (100, 10_000), TARGET);
        // Twice the target: half.
        assert_eq!(s.record(ms(200)), 500);
        // A lock wait of 30 s: still only half, not to the floor in one step.
        assert_eq!(s.record(ms(30_000)), 250);
        // 150 ms: r = 2/3, the size shrinks in proportion.
        let mut t = BatchSizer::new(1000, (100, 10_000), TARGET);
        assert_eq!(t.record(ms(150)), 666, "1000 × 100/150, rounded down");
    }

    #[test]
    fn fast_batches_grow_the_size_gradually() {
        let mut s = BatchSizer::new(1000, (100, 10_000), TARGET);
        // 1 ms: r = 100, but growth is capped at a quarter a batch.
        assert_eq!(s.record(ms(1)), 1250);
        assert_eq!(s.record(ms(1)), 1563);
        // Close below the target (r = 100/64 = 1.5625, √r = 1.25): a quarter.
        assert_eq!(s.record(ms(64)), 1954);
        // Nearer (r = 100/70, √r = 1.195): by a fifth.
        assert_eq!(s.record(ms(70)), 2336);
        // Within the deadband (80 to 125 ms): unchanged.
        assert_eq!(s.record(ms(90)), 2336);
        assert_eq!(s.record(ms(110)), 2336);
        assert_eq!(s.record(ms(81)), 2336);
    }

    #[test]
    fn growth_from_tiny_sizes_is_at_least_one_key() {
        let mut s = BatchSizer::new(1, (1, 10), TARGET);
        let sizes: Vec<u32> = (0..12).map(|_| s.record(ms(1))).collect();
        assert_eq!(sizes, [2, 3, 4, 5, 7, 9, 10, 10, 10, 10, 10, 10]);
    }

    #[test]
    fn the_bounds_hold_whatever_the_measurements() {
        let mut s = BatchSizer::new(1000, (100, 5000), TARGET);
        for _ in 0..50 {
            s.record(Duration::ZERO);
        }
        assert_eq!(s.size(), 5000, "fast batches stop at the upper bound");
        for _ in 0..50 {
            s.record(Duration::from_secs(3600));
        }
        assert_eq!(s.size(), 100, "slow batches stop at the lower bound");
        // A floor of 1 cannot go to 0.
        let mut one = BatchSizer::new(3, (1, 3), TARGET);
        for _ in 0..5 {
            one.record(Duration::from_secs(10));
        }
        assert_eq!(one.size(), 1);
        // Out-of-order bounds and a start outside them are made sane.
        assert_eq!(BatchSizer::new(50_000, (0, 7), TARGET).size(), 7);
        assert_eq!(BatchSizer::new(0, (5, 2), TARGET).size(), 5);
    }

    #[test]
    fn fixed_bounds_mean_a_fixed_size() {
        let mut s = BatchSizer::new(7, (7, 7), TARGET);
        for d in [ms(0), ms(1), ms(100), ms(10_000)] {
            assert_eq!(s.record(d), 7);
        }
    }

    #[test]
    fn it_settles_near_the_target_on_a_linear_cost() {
        // A batch costs 2 ms + 0.05 ms a key: the target of 100 ms fits 1960 keys.
        let cost = |n: u32| Duration::from_secs_f64((2.0 + 0.05 * f64::from(n)) / 1000.0);
        let mut s = BatchSizer::new(100, (10, 10_000), TARGET);
        for _ in 0..40 {
            let n = s.size();
            s.record(cost(n));
        }
        let n = s.size();
        let took = cost(n).as_secs_f64() * 1000.0;
        assert!(
            (80.0..=125.0).contains(&took),
            "settled at {n} keys, {took:.1} ms a batch"
        );
        // And a lock wait in the middle halves it, then it grows back.
        s.record(Duration::from_secs(2));
        assert!(s.size() <= n / 2 + 1, "{} after a 2 s batch", s.size());
        for _ in 0..40 {
            let n = s.size();
            s.record(cost(n));
        }
        let back = cost(s.size()).as_secs_f64() * 1000.0;
        assert!((80.0..=125.0).contains(&back), "{back:.1} ms");
    }
}
