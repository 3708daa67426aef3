//! Runners: what drives the engine.
//!
//! Everything goes through one closure returning a [`BackgroundReport`], normally
//! `Strategy::run_background` (the kernel's kthread, in a later issue, calls the same).
//!
//! - [`StepRunner`]: deterministic, for tests. It keeps a virtual clock that the test
//!   advances, and calls the work closure with it (strategies expose a
//!   `run_background_at(now)` for this), so idle-time rules are tested without sleeping.
//! - `ThreadRunner` (feature `std`): a std thread that waits for a wake-up (with a
//!   short timeout, so idle memory is also noticed without one), runs the work until it
//!   reports nothing more, and stops and joins on `ThreadRunner::stop` or drop.

use bounce_framework::BackgroundReport;

/// A deterministic runner with a virtual clock (nanoseconds).
pub struct StepRunner<F: FnMut(u64) -> BackgroundReport> {
    work: F,
    now: u64,
    steps: u64,
    total: BackgroundReport,
}

impl<F: FnMut(u64) -> BackgroundReport> StepRunner<F> {
    /// A runner calling `work(now)`; the clock starts at 1 ns.
    pub fn new(work: F) -> Self {
        Self { work, now: 1, steps: 0, total: BackgroundReport::default() }
    }

    /// The virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves the virtual clock forward.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now = self.now.saturating_add(ms.saturating_mul(1_000_000));
    }

    /// One engine run at the current virtual time.
    pub fn step(&mut self) -> BackgroundReport {
        let r = (self.work)(self.now);
        self.steps += 1;
        self.total.merge(&r);
        r
    }

    /// Runs until a run reports no more work, at most `max` runs; the merged report.
    pub fn run_until_idle(&mut self, max: usize) -> BackgroundReport {
        let mut all = BackgroundReport::default();
        for _ in 0..max {
            let r = self.step();
            all.merge(&r);
            if !r.more {
                all.more = false;
                return all;
            }
        }
        all
    }

    /// Runs so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Everything done so far.
    pub fn total(&self) -> BackgroundReport {
        self.total
    }
}

#[cfg(feature = "std")]
mod thread {
    extern crate std as std_crate;
    use std_crate as std;

    use std::string::String;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use bounce_framework::BackgroundReport;

    /// Options of a [`ThreadRunner`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RunnerOptions {
        /// The thread's name.
        pub name: String,
        /// The longest wait for a wake-up before running anyway (idle shrinking,
        /// retries after failures, a stop request).
        pub tick: Duration,
        /// Most consecutive runs while they report more work, before waiting again.
        pub max_burst: usize,
    }

    impl Default for RunnerOptions {
        /// `kccd`, a 5 ms tick, bursts of up to 64 runs.
        fn default() -> Self {
            Self { name: "kccd".into(), tick: Duration::from_millis(5), max_burst: 64 }
        }
    }

    /// What a [`ThreadRunner`] did.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RunnerTotals {
        /// Waits that ended with a wake-up.
        pub wakes: u64,
        /// Engine runs.
        pub runs: u64,
        /// Merged reports.
        pub report: BackgroundReport,
    }

    /// A std thread driving the engine (see the module documentation).
    pub struct ThreadRunner {
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<RunnerTotals>>,
    }

    impl ThreadRunner {
        /// Spawns a thread that loops: `wait(tick)` (true when woken), then `work()`
        /// repeated while it reports more (at most `max_burst` times).
        ///
        /// # Errors
        /// The OS error when the thread cannot be spawned.
        pub fn spawn<W, S>(mut work: W, mut wait: S, options: RunnerOptions) -> std::io::Result<Self>
        where
            W: FnMut() -> BackgroundReport + Send + 'static,
            S: FnMut(Duration) -> bool + Send + 'static,
        {
            let RunnerOptions { name, tick, max_burst } = options;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let handle = std::thread::Builder::new().name(name).spawn(move || {
                let mut totals = RunnerTotals::default();
                while !flag.load(Ordering::Acquire) {
                    if wait(tick) {
                        totals.wakes += 1;
                    }
                    for _ in 0..max_burst.max(1) {
                        if flag.load(Ordering::Acquire) {
                            break;
                        }
                        let r = work();
                        totals.runs += 1;
                        totals.report.merge(&r);
                        if !r.more {
                            break;
                        }
                    }
                }
                totals
            })?;
            Ok(Self { stop, handle: Some(handle) })
        }

        /// A runner for a strategy (or anything with a `run_background`): waits on the
        /// simulated guest's refill wake-ups.
        ///
        /// # Errors
        /// The OS error when the thread cannot be spawned.
        #[cfg(feature = "sim")]
        pub fn for_sim<W>(guest: bounce_framework::sim::SimGuest, work: W) -> std::io::Result<Self>
        where
            W: FnMut() -> BackgroundReport + Send + 'static,
        {
            Self::spawn(work, move |t| guest.wait_for_wake(t), RunnerOptions::default())
        }

        /// Asks the thread to stop, joins it and returns what it did.
        pub fn stop(mut self) -> RunnerTotals {
            self.join()
        }

        fn join(&mut self) -> RunnerTotals {
            self.stop.store(true, Ordering::Release);
            match self.handle.take() {
                Some(h) => match h.join() {
                    Ok(t) => t,
                    Err(p) => std::panic::resume_unwind(p),
                },
                None => RunnerTotals::default(),
            }
        }
    }

    impl Drop for ThreadRunner {
        fn drop(&mut self) {
            if self.handle.is_some() {
                // Do not double-panic while unwinding from a test failure.
                if std::thread::panicking() {
                    self.stop.store(true, Ordering::Release);
                    if let Some(h) = self.handle.take() {
                        let _ = h.join();
                    }
                } else {
                    self.join();
                }
            }
        }
    }

    impl core::fmt::Debug for ThreadRunner {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("ThreadRunner").field("running", &self.handle.is_some()).finish_non_exhaustive()
        }
    }
}

#[cfg(feature = "std")]
pub use thread::{RunnerOptions, RunnerTotals, ThreadRunner};
