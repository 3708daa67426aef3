//! The kccd engine: the background half of [`PoolSet`](super::PoolSet).
//!
//! [`PoolSet::run`] is the loop body of the refill thread (the kernel's kthread, the
//! [`ThreadRunner`](crate::ThreadRunner), or a test's [`StepRunner`](crate::StepRunner),
//! all through `Strategy::run_background`):
//!
//! 1. **Targets.** Under the demand policy each class's target is its floor (or a
//!    headroom in percent of what is out); with fixed watermarks the seed's demand boost
//!    (below) moves them.
//! 2. **Shrink.** Chunks whose buffers are all free are stamped the first time a run
//!    sees them so; one that stays free for the chunk idle time (`idle_ms`, a fiftieth
//!    of it with shells: [`CHUNK_IDLE_DIVISOR`]) is returned when its class keeps at
//!    least its high watermark of free buffers without it: detached from the pool (O(1)), then blanked (a shell) or
//!    removed from the index and converted back ([`SharedMemory::free_shared`]; a failed
//!    conversion quarantines those pages).
//! 3. **Grow.** While a class has fewer free buffers than its target, the neediest class
//!    (lowest free/target) gets one chunk: a blank shell reshaped, or a batch converted
//!    with **one** `set_decrypted` call ([`SharedMemory::alloc_shared`], which enforces
//!    the cap and quarantines on failure), carved into buffers and indexed outside every
//!    lock, then published under the pool lock in O(1). A run converts at most
//!    `max_batches_per_run` batches. A class that failed is retried after `retry_ms`.
//!    When the cap blocks a class below its low watermark, an idle chunk of a class
//!    above its target is returned first to make room.
//! 4. **Blank shells.** Their target is what the floor (`stock_bytes`) leaves after the
//!    classes' chunks, at least an eighth of the floor ([`BLANK_MIN_DIVISOR`]); maps
//!    that may wait (`DMA_ATTR_MAY_BLOCK`, [`Need::Waitable`]) leave the last quarter of
//!    that minimum to atomic maps. Built up to it when half are gone (one conversion
//!    for all), and converted back once idle for `idle_ms` beyond it and beyond what the recent peak of carved pages needed (the peak is remembered
//!    for the idle time), so a steady workload converts nothing.
//!
//! **Demand boost** (`adaptive`, the seed preset). Watermark refill is probabilistic: a
//! burst faster than the engine's latency empties a class however the watermarks are
//! set. So a class whose own requests found it empty or dipped into its reserve has its
//! target and high watermark doubled at the next run (up to 8-fold), and halved again
//! after `idle_ms` without such pressure: the ready margin follows the observed burst
//! size, and the extra memory is returned once the bursts stop.
//!
//! The map path never converts, never allocates and never blocks: it pops a ready
//! buffer (or reshapes a blank shell) or fails, and wakes the engine (without blocking)
//! when a pop leaves a class below its low watermark or a class's own request finds it
//! empty.

use super::{
    AllocContext, Arc, BackgroundReport, Chunk, GrowError, Ordering, PageCount, PageRequest, PhysAddr, Platform,
    PlatformError, PoolSet, DEFAULT_BATCH_PAGES, MAX_BUFFER_ALIGN, PAGE_SIZE,
};

impl<P: Platform> PoolSet<P> {
    /// Adds one chunk to `class` and publishes it. Returns the buffers added. With a
    /// stock the chunk is carved from it (converting a new block into the stock first
    /// when no free extent holds the chunk); without one, one batch is converted for the
    /// chunk alone (the seed's layout).
    ///
    /// Serialized with [`PoolSet::run`]: waits while a run is in progress.
    ///
    /// # Errors
    /// [`GrowError::Cap`] when the cap leaves no room, [`GrowError::Platform`] when the
    /// allocation, the conversion (pages quarantined) or the index insertion failed.
    ///
    /// # Context
    /// Process context; may sleep.
    pub fn grow(&self, class: usize) -> Result<usize, GrowError> {
        self.as_engine(|| self.grow_locked(class, self.platform.now_ns()))
    }

    /// Runs `f` with the engine flag held, waiting while a run is in progress: engine
    /// work outside [`PoolSet::run`] (the boot fill, a test's `grow`) is serialized with
    /// it, as the stock requires.
    fn as_engine<R>(&self, f: impl FnOnce() -> R) -> R {
        while self.running.swap(true, Ordering::Acquire) {
            core::hint::spin_loop();
        }
        let r = f();
        self.running.store(false, Ordering::Release);
        r
    }

    /// [`PoolSet::grow`] with the engine flag held.
    fn grow_locked(&self, class: usize, now: u64) -> Result<usize, GrowError> {
        let c = self.table.get(class);
        if self.shellable(class) {
            let shell = match self.take_blank() {
                Some(s) => s,
                // A class that ran dry gets its shell from a conversion of one shell, so
                // it is served as soon as possible; otherwise convert for the keep too.
                None => self.make_shell(now, self.pools[class].ready() > 0).inspect_err(|_| {
                    self.grow_failures.fetch_add(1, Ordering::Relaxed);
                })?,
            };
            shell.reshape(class, c);
            self.pools[class].publish(shell);
            self.grow_batches.fetch_add(1, Ordering::Relaxed);
            return Ok(c.chunk_buffers);
        }
        let pages = PageCount(c.chunk_pages);
        let base = if self.stock_keep == 0 {
            let req = PageRequest { pages, context: AllocContext::MaySleep, limit: self.limit };
            self.shared.alloc_shared(req)
        } else {
            // A class larger than a shell: its own chunk, carved from the stock.
            self.take_stock(c.chunk_pages, c.align_pages(), self.stock_keep.saturating_sub(self.stock.pages()), now)
        }
        .inspect_err(|_| {
            self.grow_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        // Everything below runs outside the pool lock: records, free stack, index.
        let Ok(chunk) = self.index.insert(base, c.chunk_pages, Some((class, c)), 0) else {
            self.grow_failures.fetch_add(1, Ordering::Relaxed);
            if self.stock_keep == 0 {
                // Pages that fail to convert back are quarantined inside; report the
                // index failure either way.
                let _ = self.shared.free_shared(base, pages);
            } else {
                self.stock.give(base, pages.get(), now);
            }
            return Err(GrowError::Platform(PlatformError::AllocFailed { pages: pages.get() }));
        };
        self.pools[class].publish(chunk);
        self.grow_batches.fetch_add(1, Ordering::Relaxed);
        Ok(c.chunk_buffers)
    }

    /// Builds a blank shell from the stock (see [`PoolSet::take_stock`]; with `batch`
    /// the block converted holds the missing blank shells too), indexes it and returns
    /// it (not yet on the blank list).
    fn make_shell(&self, now: u64, batch: bool) -> Result<Arc<Chunk>, GrowError> {
        let align = MAX_BUFFER_ALIGN / PAGE_SIZE;
        let shells = if batch { self.blank_target().saturating_sub(self.blank_shells()).max(1) } else { 1 };
        let base = self.take_stock(self.shell_pages, align, shells * self.shell_pages, now)?;
        self.index.insert(base, self.shell_pages, None, self.shell_capacity).map_err(|_| {
            self.stock.give(base, self.shell_pages, now);
            GrowError::Platform(PlatformError::AllocFailed { pages: self.shell_pages })
        })
    }

    /// Takes `pages` pages aligned to `align` pages from the stock. When no free extent
    /// holds them, first converts a block into the stock: `want` pages (bounded by the
    /// cap's room), never less than the request with its alignment slack.
    fn take_stock(&self, pages: usize, align: usize, want: usize, now: u64) -> Result<PhysAddr, GrowError> {
        if let Some(a) = self.stock.take(pages, align) {
            return Ok(a);
        }
        let need = pages + align - 1;
        let block = (want + align - 1).min(self.shared.room_bytes() / PAGE_SIZE).max(need);
        self.stock.refill(&self.shared, block, self.limit, now)?;
        self.stock.take(pages, align).ok_or(GrowError::Platform(PlatformError::AllocFailed { pages }))
    }

    /// Grows `class` until it has at least `ready` free buffers (boot fill).
    ///
    /// # Errors
    /// The first [`GrowError`].
    pub fn fill(&self, class: usize, ready: usize) -> Result<(), GrowError> {
        while self.pools[class].ready() < ready {
            self.grow(class)?;
        }
        Ok(())
    }

    /// Free buffers class `i` holds at boot: under the demand policy nothing for a class
    /// of shells (the floor is blank shells any class takes on its first map) and its
    /// floor for a larger class; its emergency reserve with fixed watermarks.
    pub fn boot_fill(&self, i: usize) -> usize {
        let c = self.table.get(i);
        match (self.demand, self.shellable(i)) {
            // The whole floor waits in blank shells: the class's first map reshapes one.
            (true, true) => 0,
            (true, false) => c.target,
            (false, _) => c.reserve,
        }
    }

    /// Fills every class to its boot level ([`PoolSet::boot_fill`]), so maps succeed
    /// before the engine first runs. With a stock, the floors and the stock's keep are
    /// converted as one block first (one conversion call where the platform allows).
    ///
    /// # Errors
    /// The first [`GrowError`].
    pub fn fill_reserves(&self) -> Result<(), GrowError> {
        if self.stock_keep > 0 {
            // The classes' floors and the blank shells share the floor: one block for
            // whichever is larger.
            let mut classes = 0;
            for (i, c) in self.table.classes().iter().enumerate() {
                let chunks = self.boot_fill(i).saturating_sub(self.pools[i].ready()).div_ceil(c.chunk_buffers);
                classes += chunks * (c.chunk_pages + c.align_pages() - 1);
            }
            let pages = self.stock_keep.max(classes) + MAX_BUFFER_ALIGN / PAGE_SIZE;
            let pages = pages.min(self.shared.room_bytes() / PAGE_SIZE);
            if pages > self.stock.pages() {
                self.as_engine(|| {
                    self.stock.refill(&self.shared, pages - self.stock.pages(), self.limit, self.platform.now_ns())
                })?;
            }
        }
        (0..self.table.len()).try_for_each(|i| self.fill(i, self.boot_fill(i)))?;
        // Blank shells are room for fluctuations, not a requirement: the cap may leave
        // none (the engine retries later).
        self.as_engine(|| {
            while self.blank_shells() < self.blank_target() {
                match self.make_shell(self.platform.now_ns(), true) {
                    Ok(s) => self.put_blank(s, self.platform.now_ns()),
                    Err(GrowError::Cap { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// Returns a detached chunk: a shell goes back to the blank shells; otherwise out
    /// of the index, to the stock when there is one, else converted back and freed (or
    /// quarantined when the conversion fails).
    pub(super) fn retire(&self, chunk: &Arc<Chunk>) {
        self.shrink_batches.fetch_add(1, Ordering::Relaxed);
        // When the chunk became idle (the engine's stamp), for the idle time that
        // follows it as a blank shell or in the stock.
        let since = match chunk.empty_since() {
            0 => self.platform.now_ns(),
            t => t,
        };
        if chunk.is_shell() {
            // Blank again, still indexed and shared: the next class that needs a chunk
            // (on the map path or in the engine) reshapes it.
            chunk.blank();
            self.put_blank(Arc::clone(chunk), since);
            return;
        }
        let (base, pages) = (chunk.base(), chunk.pages());
        self.index.remove(chunk);
        if self.stock_keep > 0 {
            // Back to the stock, free since the chunk became idle: no conversion now.
            self.stock.give(base, pages.get(), since);
            return;
        }
        if let Err(e) = self.shared.free_shared(base, pages) {
            self.platform.log(
                bounce_framework::LogLevel::Error,
                format_args!("bounce-pools: returning {} pages at {base}: {e}", pages.get()),
            );
        }
    }

    /// Blank shells beyond which idle ones are returned: the target, or the minimum plus
    /// what the recent peak of carved pages needed above what is carved now if more (so
    /// memory that a peak used stays shared for the whole idle time).
    fn blank_keep_now(&self, now: u64) -> usize {
        let extra = self.carved_window_peak(now).saturating_sub(self.carved_pages());
        self.blank_target().max(self.blank_min + extra.div_ceil(self.shell_pages.max(1)))
    }

    /// Blank shells the engine builds up to: what the floor leaves after the classes'
    /// chunks, never fewer than the minimum. At boot and when idle the floor is mostly
    /// blank shells (any class can take them on the map path); under load the classes
    /// hold it and only the minimum waits blank.
    pub(super) fn blank_target(&self) -> usize {
        let carved = self.carved_pages().div_ceil(self.shell_pages.max(1));
        self.blank_min.max(self.floor_shells.saturating_sub(carved))
    }

    /// The blank shells' part of a run: build shells up to the keep when fewer than
    /// half are left (converting one block for all of them), or unindex blank shells
    /// idle for `idle_ms` beyond [`PoolSet::blank_keep_now`] and convert them back.
    fn tend_blanks(&self, now: u64) {
        if self.blank_shells() <= self.blank_target() / 2 {
            if self.retry_stock.load(Ordering::Relaxed) > now {
                return;
            }
            while self.blank_shells() < self.blank_target() {
                match self.make_shell(now, true) {
                    Ok(s) => self.put_blank(s, now),
                    Err(e) => {
                        self.grow_failures.fetch_add(1, Ordering::Relaxed);
                        self.retry_stock.store(now.saturating_add(self.retry_ns).max(1), Ordering::Relaxed);
                        if !matches!(e, GrowError::Cap { .. }) {
                            self.platform.log(
                                bounce_framework::LogLevel::Warn,
                                format_args!("bounce-pools: building blank shells: {e}"),
                            );
                        }
                        break;
                    }
                }
            }
        } else {
            let keep = self.blank_keep_now(now);
            while self.blank_shells() > keep {
                let victim = {
                    let mut b = self.blanks.lock();
                    match b.front().get() {
                        Some(c) if now.saturating_sub(c.empty_since()) >= self.idle_ns => {
                            self.blank_count.fetch_sub(1, Ordering::Relaxed);
                            b.pop_front()
                        }
                        _ => None,
                    }
                };
                let Some(shell) = victim else { break };
                let (base, pages, since) = (shell.base(), shell.pages().get(), shell.empty_since());
                self.index.remove(&shell);
                self.stock.give(base, pages, since);
            }
        }
        // Stock (returned shells, with the alignment slack next to them) goes back once it
        // has been idle; slack alone (less than a shell) waits for a shell to go with, so
        // it costs no conversion call of its own.
        if self.stock.pages() < self.shell_pages {
            return;
        }
        let (_, r) = self.stock.shrink(&self.shared, 0, now, self.idle_ns);
        if let Err(e) = r {
            self.platform
                .log(bounce_framework::LogLevel::Error, format_args!("bounce-pools: returning idle stock: {e}"));
        }
    }

    /// Whether the blank shells want tending at `now`.
    fn blanks_pending(&self, now: u64) -> bool {
        if self.shell_pages == 0 {
            return false;
        }
        let n = self.blank_shells();
        (n <= self.blank_target() / 2 && self.retry_stock.load(Ordering::Relaxed) <= now && self.floor_shells > 0)
            || (n > self.blank_keep_now(now)
                && self
                    .blanks
                    .lock()
                    .front()
                    .get()
                    .is_some_and(|c| now.saturating_sub(c.empty_since()) >= self.idle_ns))
            || (self.stock.pages() >= self.shell_pages && self.stock.shrink_pending(0, now, self.idle_ns))
    }

    /// Pages carved into class chunks now (committed minus blank shells and the stock).
    fn carved_pages(&self) -> usize {
        (self.shared.shared_bytes() / PAGE_SIZE)
            .saturating_sub(self.stock.pages())
            .saturating_sub(self.blank_shells() * self.shell_pages)
    }

    /// The most pages carved over the recent window (two buckets of half the idle time)
    /// as a run at `now` sees it: once the current bucket has ended, its predecessor
    /// leaves the window. Never below the held peak ([`PoolSet::held_peak_after`]).
    fn carved_window_peak(&self, now: u64) -> usize {
        let cur = self.carved_peak[0].load(Ordering::Relaxed);
        let bucket = (self.idle_ns / 2).max(1);
        if now.saturating_sub(self.carved_bucket.load(Ordering::Relaxed)) >= bucket {
            cur.max(self.carved_pages()).max(self.held_peak_after(cur))
        } else {
            cur.max(self.carved_peak[1].load(Ordering::Relaxed)).max(self.held_peak.load(Ordering::Relaxed))
        }
    }

    /// The held peak once a bucket whose peak was `closed` pages ends: a steady load's
    /// buckets peak a little above or below each other, and converting back what the
    /// last bucket did not need only to convert it again at the next high is the
    /// shrink/grow oscillation. So the peak of earlier buckets is held while every
    /// bucket since reached at least three quarters of it, and released by the first
    /// bucket below that (the load fell or ended: memory goes back one idle time later,
    /// as without the hold).
    fn held_peak_after(&self, closed: usize) -> usize {
        let held = self.held_peak.load(Ordering::Relaxed);
        if closed.saturating_mul(4) >= held.saturating_mul(3) {
            held.max(closed)
        } else {
            closed
        }
    }

    /// Folds the pages carved now into the window.
    fn note_carved(&self, now: u64) {
        let carved = self.carved_pages();
        let bucket = (self.idle_ns / 2).max(1);
        if now.saturating_sub(self.carved_bucket.load(Ordering::Relaxed)) >= bucket {
            let cur = self.carved_peak[0].swap(carved, Ordering::Relaxed);
            self.carved_peak[1].store(cur, Ordering::Relaxed);
            self.held_peak.store(self.held_peak_after(cur), Ordering::Relaxed);
            self.carved_bucket.store(now, Ordering::Relaxed);
        } else {
            self.carved_peak[0].fetch_max(carved, Ordering::Relaxed);
        }
    }

    /// Runs the demand policy of every class (its targets follow what is out; the
    /// set's blank shells remember the recent peak for the idle time). Nothing under
    /// fixed watermarks.
    fn update_demand(&self) {
        if !self.demand {
            return;
        }
        for p in &*self.pools {
            p.update_demand(self.headroom_pct);
        }
    }

    fn wants_growth(&self, i: usize, now: u64) -> bool {
        let c = self.table.get(i);
        // Under the demand policy a class of shells keeps its floor once it is in use
        // (its first map reshapes a blank shell); before that the floor waits blank.
        let in_use = !self.demand || !self.shellable(i) || self.pools[i].has_chunks();
        in_use
            && self.pools[i].ready() < self.pools[i].effective_target()
            && self.retry_at[i].load(Ordering::Relaxed) <= now
            && (self.shared.fits_cap(c.chunk_bytes() + if self.stock_keep == 0 { 0 } else { MAX_BUFFER_ALIGN })
                || (self.shellable(i) && self.blank_shells() > 0)
                || self.stock.largest_extent() >= c.chunk_pages + c.align_pages() - 1)
    }

    /// The class to grow next: the lowest free/target ratio among those that want and
    /// can grow.
    fn neediest(&self, now: u64) -> Option<usize> {
        (0..self.table.len())
            .filter(|&i| self.wants_growth(i, now))
            .min_by_key(|&i| (self.pools[i].ready() as u128 * 1_000_000) / self.pools[i].effective_target() as u128)
    }

    /// Under cap pressure: returns one completely free chunk of a class above its
    /// target so an urgent class can grow. Whether one was returned.
    fn reclaim_for(&self, urgent: usize, now: u64) -> bool {
        for d in (0..self.table.len()).filter(|&d| d != urgent) {
            if let Some(ch) = self.pools[d].take_idle(now, 0, self.pools[d].effective_target()) {
                self.retire(&ch);
                self.cap_reclaims.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// One run of the engine at time `now` (nanoseconds on the platform clock, or a
    /// test's virtual clock: idle times are measured in it). See the module
    /// documentation. Concurrent calls return at once while another run is in
    /// progress.
    ///
    /// # Context
    /// Process context; may sleep (conversions).
    pub fn run(&self, now: u64) -> BackgroundReport {
        let mut report = BackgroundReport::default();
        if self.running.swap(true, Ordering::Acquire) {
            return report;
        }
        let t0 = self.platform.now_ns();
        let c0 = self.shared.stats();
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.update_demand();
        // Demand boosts, then shrink: idle chunks above the high watermark.
        for pool in &*self.pools {
            if self.adaptive {
                pool.adapt(now, self.idle_ns);
            }
            while let Some(ch) = pool.take_idle(now, self.chunk_idle_ns, pool.effective_high()) {
                self.retire(&ch);
            }
        }
        // Grow.
        let mut batches = 0;
        let mut carved = 0;
        loop {
            let Some(i) = self.neediest(now) else {
                // Blocked by the cap: make room for the most urgent class below its
                // low watermark, if another class has idle memory above its target.
                let urgent = (0..self.table.len()).find(|&i| {
                    self.pools[i].ready() < self.pools[i].wake_below()
                        && self.retry_at[i].load(Ordering::Relaxed) <= now
                        && !self.shared.fits_cap(self.table.get(i).chunk_bytes())
                });
                match urgent {
                    Some(u) if self.reclaim_for(u, now) => continue,
                    _ => break,
                }
            };
            // A run converts at most `max_batches` batches; carving from the stock is
            // bounded by as many default batches' worth of pages.
            let spent = if self.stock_keep == 0 { batches } else { carved / DEFAULT_BATCH_PAGES };
            if spent >= self.max_batches {
                report.more = true;
                break;
            }
            batches += 1;
            match self.grow_locked(i, now) {
                Ok(n) => {
                    report.buffers_added += n as u64;
                    carved += self.table.get(i).chunk_pages;
                }
                // Another grower took the room first: re-evaluate.
                Err(GrowError::Cap { .. }) => {}
                Err(e) => {
                    self.retry_at[i].store(now.saturating_add(self.retry_ns).max(1), Ordering::Relaxed);
                    self.platform.log(
                        bounce_framework::LogLevel::Warn,
                        format_args!("bounce-pools: growing the {}-byte class: {e}", self.table.get(i).size),
                    );
                }
            }
        }
        self.note_carved(now);
        if self.shell_pages != 0 {
            self.tend_blanks(now);
        }
        let c1 = self.shared.stats();
        report.pages_quarantined = c1.quarantined_pages - c0.quarantined_pages;
        report.pages_grown = c1.pages_decrypted - c0.pages_decrypted;
        report.pages_shrunk = c1.pages_encrypted - c0.pages_encrypted;
        self.busy_ns.fetch_add(self.platform.now_ns().saturating_sub(t0), Ordering::Relaxed);
        self.running.store(false, Ordering::Release);
        report
    }

    /// Whether [`PoolSet::run`] at `now` has work: a class below its target that may
    /// grow (not waiting to retry, room under the cap), or an idle chunk to return.
    ///
    /// # Context
    /// Any context; takes each pool lock briefly, never allocates.
    pub fn pending(&self, now: u64) -> bool {
        (0..self.table.len()).any(|i| self.wants_growth(i, now))
            || self.pools.iter().any(|p| p.has_idle(now, self.chunk_idle_ns, p.effective_high()))
            || self.blanks_pending(now)
    }
}
