//! The worker threads: full-rate maps, syncs and unmaps with every byte checked
//! against the thread's model, the pressure floods and the mid-run audits.

use super::{
    catch_unwind, fill_pattern, first_difference, not_guard, panic_message, set_current_cpu, thread, thread_rng,
    AssertUnwindSafe, Counts, DmaAddr, DmaAttrs, DmaDirection, Entry, FailureReason, Instant, MapError, Mapping, Op,
    Ordering, PhysAddr, Platform, Problems, Quiet, RngExt, Sabotage, SgEntry, SgError, Shared, Strategy, VecDeque,
    Worker, BURST_ACTIVE, BURST_IDLE, FLOOD_BYTES, GUARD, GUARD_WINDOW, OVERFLOW_ONE_IN, PAGE_SIZE, PARTIAL_ONE_IN,
    REMOTE_ONE_IN, SG_MAX_ENTRIES, SG_ONE_IN,
};

impl<'a, S: Strategy> Worker<'a, S> {
    pub(super) fn new(sh: &'a Shared<S>, me: usize, regions: Vec<PhysAddr>, seed: u64) -> Self {
        Self {
            sh,
            me,
            rng: thread_rng(seed, "stress", me),
            regions,
            free: sh.plan.devices.iter().map(|d| (0..d.depth).rev().collect()).collect(),
            rings: sh.plan.devices.iter().map(|d| VecDeque::with_capacity(d.depth)).collect(),
            pos: 0,
            generation: 0,
            scratch: Vec::new(),
            counts: Counts::default(),
            problems: Problems::default(),
            corrupted: None,
        }
    }

    fn home(&self) -> usize {
        self.me % self.sh.cpus
    }

    fn problem(&mut self, what: &str) {
        self.problems.push(format!("thread {}: {what}", self.me));
    }

    /// The scratch buffer, at least `len` bytes long (zeroed allocations: `resize` is
    /// slow in debug builds, which the command-line tests run).
    fn take_scratch(&mut self, len: usize) -> Vec<u8> {
        let buf = std::mem::take(&mut self.scratch);
        if buf.len() >= len {
            buf
        } else {
            vec![0; len.next_power_of_two()]
        }
    }

    /// A fresh pattern (`which` 0: CPU data, 1: device data), unique per call.
    fn pattern(&mut self, len: usize, which: u64) -> Vec<u8> {
        self.generation += 1;
        let mut b = vec![0; len];
        fill_pattern(&mut b, self.me as u16, self.generation, which);
        b
    }

    fn next_op(&mut self) -> Op {
        let s = &self.sh.plan.streams[self.me];
        let op = s[self.pos];
        self.pos = (self.pos + 1) % s.len();
        op
    }

    /// `(offset, size)` of `n` buffers for `first`'s device: its own and those of the
    /// device's next ops in the stream (the workload's size mix).
    fn shapes(&self, first: Op, n: usize) -> Vec<(usize, usize)> {
        let s = &self.sh.plan.streams[self.me];
        let mut v = vec![(first.offset as usize, first.size as usize)];
        for i in self.pos..self.pos + 256 {
            if v.len() == n {
                break;
            }
            let o = s[i % s.len()];
            if o.device == first.device {
                v.push((o.offset as usize, o.size as usize));
            }
        }
        while v.len() < n {
            v.push(v[0]);
        }
        v
    }

    fn slot_start(&self, d: usize, slot: usize) -> PhysAddr {
        self.regions[d] + (slot * self.sh.slot_bytes[d]) as u64
    }

    /// Checks the original buffer around `[orig, orig + size)` in its slot: the model's
    /// bytes inside (the guard byte when `model` is `None`), the guard byte around.
    fn check_original(&mut self, d: usize, slot: usize, orig: PhysAddr, size: usize, model: Option<&[u8]>, when: &str) {
        let start = self.slot_start(d, slot);
        let end = start + self.sh.slot_bytes[d] as u64;
        let lo = PhysAddr(orig.0.saturating_sub(GUARD_WINDOW as u64).max(start.0));
        let hi = PhysAddr((orig.0 + (size + GUARD_WINDOW) as u64).min(end.0));
        let n = (hi.0 - lo.0) as usize;
        let mut buf = self.take_scratch(n);
        self.sh.guest.read(lo, &mut buf[..n]);
        let inner = (orig.0 - lo.0) as usize;
        let bad = not_guard(&buf[..inner]).map(|i| (i, GUARD)).or_else(|| {
            let mid = &buf[inner..inner + size];
            match model {
                Some(m) => first_difference(mid, m).map(|i| (inner + i, m[i])),
                None => not_guard(mid).map(|i| (inner + i, GUARD)),
            }
            .or_else(|| not_guard(&buf[inner + size..n]).map(|i| (inner + size + i, GUARD)))
        });
        if let Some((i, want)) = bad {
            let at = lo + i as u64;
            let what = if at >= orig && at < orig + size as u64 && model.is_some() {
                format!("byte {} of the mapping", at.0 - orig.0)
            } else {
                "a byte no mapping covers".into()
            };
            let dev = self.sh.plan.devices[d].device.name().to_string();
            self.problem(&format!(
                "{dev}: the original buffer at {at} ({what}, slot {slot}) holds {:#04x} {when}; the model says {want:#04x}",
                buf[i]
            ));
        }
        self.scratch = buf;
    }

    /// The device reads `want.len()` bytes at `dma`; they must equal `want`.
    fn device_check(&mut self, d: usize, dma: DmaAddr, want: &[u8], when: &str) {
        let mut buf = self.take_scratch(want.len());
        let got = &mut buf[..want.len()];
        self.counts.device_reads += 1;
        let dev = &self.sh.devices[d];
        match dev.read(&*self.sh.bouncer, dma, got) {
            Ok(()) => {
                if let Some(i) = first_difference(got, want) {
                    let name = dev.device().name().to_string();
                    self.problem(&format!(
                        "{name}: the device read {} bytes at {dma} {when} and byte {i} is {:#04x}, not the {:#04x} the CPU or device wrote",
                        want.len(),
                        got[i],
                        want[i]
                    ));
                }
            }
            Err(e) => self.problem(&format!("device read {when} refused: {e}")),
        }
        self.scratch = buf;
    }

    /// The device writes `data` at offset `a` of `e`'s bounce buffer; the model follows.
    fn device_write(&mut self, d: usize, e: &mut Entry, a: usize, data: &[u8]) {
        self.counts.device_writes += 1;
        match self.sh.devices[d].write(&*self.sh.bouncer, e.dma + a as u64, data) {
            Ok(()) => e.dev[a..a + data.len()].copy_from_slice(data),
            Err(err) => self.problem(&format!("device write refused: {err}")),
        }
    }

    /// Returns an entry's slot: the guard byte back over its bytes.
    fn release_slot(&mut self, d: usize, e: &Entry) {
        self.sh.guest.fill(e.orig, GUARD, e.size);
        self.free[d].push(e.slot);
    }

    /// One request: make room in the device's ring (unmapping the oldest), then map a
    /// buffer or a scatter-gather list.
    fn step(&mut self) {
        let op = self.next_op();
        let d = usize::from(op.device);
        let n = if self.rng.random_ratio(1, SG_ONE_IN) { self.rng.random_range(2..=SG_MAX_ENTRIES) } else { 1 };
        let n = n.min(self.sh.plan.devices[d].depth);
        while self.free[d].len() < n {
            let Some(old) = self.rings[d].pop_front() else { break };
            self.unmap(old);
        }
        let shapes = self.shapes(op, n.min(self.free[d].len()));
        self.map(d, op.dir, n > 1, &shapes);
    }

    fn map(&mut self, d: usize, dir: DmaDirection, sg: bool, shapes: &[(usize, usize)]) {
        let sh = self.sh;
        let dev = sh.plan.devices[d].device;
        let mut entries = Vec::with_capacity(shapes.len());
        for &(offset, size) in shapes {
            let Some(slot) = self.free[d].pop() else { break };
            let orig = self.slot_start(d, slot) + offset as u64;
            self.check_original(d, slot, orig, size, None, "before its map");
            let cpu = self.pattern(size, 0);
            sh.guest.write(orig, &cpu);
            entries.push(Entry { slot, orig, size, dma: DmaAddr(0), cpu, dev: Vec::new() });
        }
        if entries.is_empty() {
            return;
        }
        self.counts.requests += 1;
        let r = if sg {
            let mut list: Vec<SgEntry> = entries.iter().map(|e| SgEntry::new(e.orig, e.size)).collect();
            match sh.bouncer.map_sg(&dev, &mut list, dir, DmaAttrs::NO_WARN) {
                Ok(n) => {
                    if n != list.len() {
                        self.problem(&format!("map_sg of {} entries reported {n}", list.len()));
                    }
                    for (e, s) in entries.iter_mut().zip(&list) {
                        e.dma = s.dma_address;
                        if s.dma_length != e.size {
                            self.problem(&format!("map_sg set dma_length {} for {} bytes", s.dma_length, e.size));
                        }
                    }
                    Ok(())
                }
                Err(SgError { index, error }) => Err((index, error)),
            }
        } else {
            match sh.bouncer.map_single(&dev, entries[0].orig, entries[0].size, dir, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    entries[0].dma = dma;
                    Ok(())
                }
                Err(e) => Err((0, e)),
            }
        };
        if let Err((rolled_back, error)) = r {
            self.map_failed(d, dir, entries, rolled_back, &error);
            return;
        }
        let n = entries.len() as u64;
        self.counts.mapped(d, n);
        self.counts.bytes_to_bounce += entries.iter().map(|e| e.size as u64).sum::<u64>();
        if sg {
            self.counts.sg_lists += 1;
            self.counts.sg_entries += n;
        } else {
            self.counts.singles += 1;
        }
        for e in &mut entries {
            // Map copies in for every direction (CVE-2022-0854): the device sees what
            // the CPU wrote.
            e.dev.clone_from(&e.cpu);
            self.device_check(d, e.dma, &e.dev, "right after the map");
            if dir.from_device() {
                let w = self.pattern(e.size, 1);
                self.device_write(d, e, 0, &w);
            }
        }
        self.rings[d].push_back(Mapping { device: d, dir, sg, entries });
    }

    /// A refused map: counted by reason; allowed when the pool is exhausted or capped
    /// (or the request is over the strategy's stated maximum); the originals untouched.
    fn map_failed(&mut self, d: usize, dir: DmaDirection, entries: Vec<Entry>, rolled_back: usize, error: &MapError) {
        let reason = error.reason();
        self.counts.failures[reason as usize] += 1;
        // Entries of a list mapped before the failing one were unmapped again (without
        // a copy back).
        self.counts.mapped(d, rolled_back as u64);
        self.counts.unmapped(d, rolled_back as u64);
        self.counts.bytes_to_bounce +=
            entries[..rolled_back.min(entries.len())].iter().map(|e| e.size as u64).sum::<u64>();
        let dev = self.sh.plan.devices[d].device;
        let size = entries.get(rolled_back).map_or(0, |e| e.size);
        let allowed = matches!(reason, FailureReason::Exhausted | FailureReason::Cap)
            || (reason == FailureReason::TooLarge && size > self.sh.bouncer.max_mapping_size(&dev));
        if !allowed {
            self.problem(&format!(
                "{}: a map of {size} bytes ({dir}) failed, and not for lack of memory: {error}",
                dev.name()
            ));
        }
        for e in entries {
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after a refused map");
            self.release_slot(d, &e);
        }
    }

    fn unmap(&mut self, mut m: Mapping) {
        let sh = self.sh;
        let d = m.device;
        if self.rng.random_ratio(1, PARTIAL_ONE_IN) {
            self.partial_sync(&mut m);
        }
        if m.sg && self.rng.random_ratio(1, 3) {
            self.sg_sync(&mut m);
        }
        // Nobody else wrote this bounce buffer while it was live.
        for e in &m.entries {
            self.device_check(d, e.dma, &e.dev, "before the unmap");
        }
        let remote = sh.cpus > 1 && self.rng.random_ratio(1, REMOTE_ONE_IN);
        if remote {
            let other = (self.home() + self.rng.random_range(1..sh.cpus)) % sh.cpus;
            set_current_cpu(Some(other));
            self.counts.remote_unmaps += 1;
        }
        let dev = sh.plan.devices[d].device;
        let r = if m.sg {
            let mut list = m.sg_list();
            sh.bouncer.unmap_sg(&dev, &mut list, m.dir, DmaAttrs::empty())
        } else {
            let e = &m.entries[0];
            sh.bouncer.unmap_single(&dev, e.dma, e.size, m.dir, DmaAttrs::empty())
        };
        if remote {
            set_current_cpu(Some(self.home()));
        }
        match r {
            Ok(()) => {
                self.counts.unmapped(d, m.entries.len() as u64);
                if m.dir.from_device() {
                    self.counts.bytes_from_bounce += m.bytes();
                    for e in &mut m.entries {
                        e.cpu.copy_from_slice(&e.dev);
                    }
                }
            }
            Err(e) => self.problem(&format!("{}: unmap of {} ({}) refused: {e}", dev.name(), m.entries[0].dma, m.dir)),
        }
        for e in m.entries {
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after its unmap");
            self.release_slot(d, &e);
        }
    }

    /// A sync of part of one buffer, for the CPU or for the device; one in
    /// [`OVERFLOW_ONE_IN`] asks for more than the mapping holds (the bouncer clamps).
    fn partial_sync(&mut self, m: &mut Mapping) {
        let sh = self.sh;
        let (d, dir) = (m.device, m.dir);
        let dev = sh.plan.devices[d].device;
        let i = self.rng.random_range(0..m.entries.len());
        let e = &mut m.entries[i];
        let a = self.rng.random_range(0..e.size);
        let len = self.rng.random_range(1..=e.size - a);
        let overflow = self.rng.random_ratio(1, OVERFLOW_ONE_IN);
        let asked = if overflow { e.size - a + self.rng.random_range(1..=PAGE_SIZE) } else { len };
        let copied = asked.min(e.size - a);
        let at = e.dma + a as u64;
        self.counts.partial_syncs += 1;
        if self.rng.random_bool(0.5) {
            if dir.from_device() {
                let w = self.pattern(len, 1);
                self.device_write(d, e, a, &w);
            }
            if let Err(err) = sh.bouncer.sync_single_for_cpu(&dev, at, asked, dir) {
                self.problem(&format!("{}: sync_single_for_cpu({at}, {asked}, {dir}) refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_cpu += 1;
            if dir.from_device() {
                self.counts.overflows_clamped += u64::from(overflow);
                self.counts.bytes_from_bounce += copied as u64;
                e.cpu[a..a + copied].copy_from_slice(&e.dev[a..a + copied]);
            }
            self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after a partial sync for the CPU");
        } else {
            if dir.to_device() {
                let w = self.pattern(len, 0);
                sh.guest.write(e.orig + a as u64, &w);
                e.cpu[a..a + len].copy_from_slice(&w);
            }
            if let Err(err) = sh.bouncer.sync_single_for_device(&dev, at, asked, dir) {
                self.problem(&format!("{}: sync_single_for_device({at}, {asked}, {dir}) refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_device += 1;
            if dir.to_device() {
                self.counts.overflows_clamped += u64::from(overflow);
                self.counts.bytes_to_bounce += copied as u64;
                e.dev[a..a + copied].copy_from_slice(&e.cpu[a..a + copied]);
            }
            self.device_check(d, e.dma, &e.dev, "after a partial sync for the device");
        }
    }

    /// `sync_sg_for_cpu` or `sync_sg_for_device` over a whole list.
    fn sg_sync(&mut self, m: &mut Mapping) {
        let sh = self.sh;
        let (d, dir) = (m.device, m.dir);
        let dev = sh.plan.devices[d].device;
        let list = m.sg_list();
        let n = m.entries.len() as u64;
        if self.rng.random_bool(0.5) {
            if dir.from_device() {
                for e in &mut m.entries {
                    let w = self.pattern(e.size, 1);
                    self.device_write(d, e, 0, &w);
                }
            }
            if let Err(err) = sh.bouncer.sync_sg_for_cpu(&dev, &list, dir) {
                self.problem(&format!("{}: sync_sg_for_cpu of {n} entries refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_cpu += n;
            if dir.from_device() {
                self.counts.bytes_from_bounce += m.bytes();
                for e in &mut m.entries {
                    e.cpu.copy_from_slice(&e.dev);
                }
            }
            for e in &m.entries {
                self.check_original(d, e.slot, e.orig, e.size, Some(&e.cpu), "after sync_sg_for_cpu");
            }
        } else {
            if dir.to_device() {
                for e in &mut m.entries {
                    let w = self.pattern(e.size, 0);
                    sh.guest.write(e.orig, &w);
                    e.cpu = w;
                }
            }
            if let Err(err) = sh.bouncer.sync_sg_for_device(&dev, &list, dir) {
                self.problem(&format!("{}: sync_sg_for_device of {n} entries refused: {err}", dev.name()));
                return;
            }
            self.counts.syncs_for_device += n;
            if dir.to_device() {
                self.counts.bytes_to_bounce += m.bytes();
                for e in &mut m.entries {
                    e.dev.copy_from_slice(&e.cpu);
                }
            }
        }
    }

    fn drain(&mut self) {
        for d in 0..self.rings.len() {
            while let Some(m) = self.rings[d].pop_front() {
                self.unmap(m);
            }
        }
    }

    /// A refused map must leave the counters, the pool and the audit as they were.
    fn check_unchanged(&mut self, before: &Quiet, reason: FailureReason, live: usize, what: &str) {
        let b = &*self.sh.bouncer;
        let after = Quiet::read(b);
        let mut want = *before;
        want.failures[reason as usize] += 1;
        if after != want {
            self.problem(&format!(
                "{what} changed the state: before {before:?} (+1 {}), after {after:?}",
                reason.name()
            ));
        }
        self.check_audit(live, after.used_bytes, &format!("after {what}"));
    }

    /// The strategy's audit (kccd held) must count `live` mappings using `used` bytes.
    fn check_audit(&mut self, live: usize, used: usize, when: &str) {
        match self.sh.audit() {
            Ok(r) if r.live_mappings == live && r.used_bytes == used => {}
            Ok(r) => self.problem(&format!(
                "{when}: the audit counts {} live mappings using {} bytes; {live} are live using {used} bytes",
                r.live_mappings, r.used_bytes
            )),
            Err(e) => self.problem(&format!("{when}: {e}")),
        }
    }

    /// Run by one thread while the others are parked: a too-large map, then the largest
    /// mappings until the pool refuses one; every refusal must change nothing. Then the
    /// audit must find nothing in flight.
    fn pressure_check(&mut self) {
        let sh = self.sh;
        let b = &*sh.bouncer;
        let d = (0..sh.slot_bytes.len()).max_by_key(|&d| sh.slot_bytes[d]).unwrap_or(0);
        let dev = sh.plan.devices[d].device;
        // The lowest slot: the too-large map reads past it into the (idle) next ones.
        let Some(i) = (0..self.free[d].len()).min_by_key(|&i| self.free[d][i]) else { return };
        let slot = self.free[d].swap_remove(i);
        self.counts.pressure_checks += 1;
        let orig = self.slot_start(d, slot);
        let region_end = self.regions[d] + (sh.plan.devices[d].depth * sh.slot_bytes[d]) as u64;
        let max = b.max_mapping_size(&dev);
        if orig + (max as u64 + 1) <= region_end {
            let before = Quiet::read(b);
            self.counts.requests += 1;
            match b.map_single(&dev, orig, max + 1, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    self.problem(&format!(
                        "{}: a map of {} bytes was accepted; the maximum is {max}",
                        dev.name(),
                        max + 1
                    ));
                    self.counts.mapped(d, 1);
                    self.counts.bytes_to_bounce += max as u64 + 1;
                    if b.unmap_single(&dev, dma, max + 1, DmaDirection::ToDevice, DmaAttrs::empty()).is_ok() {
                        self.counts.unmapped(d, 1);
                    }
                }
                Err(e) => {
                    self.counts.failures[e.reason() as usize] += 1;
                    if e.reason() != FailureReason::TooLarge {
                        self.problem(&format!("{}: a map over the maximum failed with `{e}`", dev.name()));
                    }
                    self.check_unchanged(&before, e.reason(), 0, "a too-large map");
                }
            }
            // A refused map reads nothing and writes nothing.
            self.check_original(d, slot, orig, sh.slot_bytes[d], None, "after a too-large map");
        }
        let size = max.min(sh.slot_bytes[d]);
        let cpu = self.pattern(size, 0);
        sh.guest.write(orig, &cpu);
        let mut live: Vec<DmaAddr> = Vec::new();
        while live.len() * size < FLOOD_BYTES {
            let before = Quiet::read(b);
            self.counts.requests += 1;
            match b.map_single(&dev, orig, size, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
                Ok(dma) => {
                    self.counts.mapped(d, 1);
                    self.counts.bytes_to_bounce += size as u64;
                    // The first in full, then both ends of each (the flood maps one
                    // original; the copies are the bouncer's, checked all run long).
                    if live.is_empty() || size <= 2 * GUARD_WINDOW {
                        self.device_check(d, dma, &cpu, "during the pressure check");
                    } else {
                        let end = size - GUARD_WINDOW;
                        self.device_check(d, dma, &cpu[..GUARD_WINDOW], "during the pressure check");
                        self.device_check(d, dma + end as u64, &cpu[end..], "during the pressure check");
                    }
                    live.push(dma);
                }
                Err(e) => {
                    let reason = e.reason();
                    self.counts.failures[reason as usize] += 1;
                    if !matches!(reason, FailureReason::Exhausted | FailureReason::Cap) {
                        self.problem(&format!("{}: a map under pressure failed with `{e}`", dev.name()));
                    }
                    self.check_unchanged(&before, reason, live.len(), "a map refused under pressure");
                    break;
                }
            }
        }
        self.counts.pressure_maps += live.len() as u64;
        for dma in live {
            match b.unmap_single(&dev, dma, size, DmaDirection::ToDevice, DmaAttrs::empty()) {
                Ok(()) => self.counts.unmapped(d, 1),
                Err(e) => {
                    self.problem(&format!("{}: unmap of {dma} after the pressure check refused: {e}", dev.name()));
                }
            }
        }
        self.check_original(d, slot, orig, size, Some(&cpu), "after the pressure check");
        sh.guest.fill(orig, GUARD, size);
        self.free[d].push(slot);
        self.check_audit(0, 0, "mid-run, with nothing in flight");
        if sh.sabotage == Some(Sabotage::Corrupt) && self.corrupted.is_none() {
            // Sabotage for the tests: one stray byte in an idle original buffer. The
            // slot leaves circulation, so only the final sweep can find the byte (a
            // later map of the slot would report it first, with other words).
            let last = self.regions.len() - 1;
            if !self.free[last].is_empty() {
                let slot = self.free[last].remove(0);
                let at = self.slot_start(last, slot) + 100;
                sh.guest.write(at, &[!GUARD]);
                self.corrupted = Some(last);
            }
        }
    }

    /// After the last drain: every slot free, every original byte the guard byte.
    fn final_sweep(&mut self) {
        const CHUNK: usize = 1 << 20;
        for d in 0..self.regions.len() {
            let depth = self.sh.plan.devices[d].depth;
            let name = self.sh.plan.devices[d].device.name().to_string();
            // The sabotaged slot is idle, only out of circulation.
            let idle = self.free[d].len() + usize::from(self.corrupted == Some(d));
            if idle != depth || !self.rings[d].is_empty() {
                self.problem(&format!("{name}: {} buffers still in use after the drain", depth - idle));
            }
            let total = depth * self.sh.slot_bytes[d];
            let mut buf = self.take_scratch(CHUNK);
            let mut bad = None;
            let mut off = 0;
            while off < total && bad.is_none() {
                let n = CHUNK.min(total - off);
                self.sh.guest.read(self.regions[d] + off as u64, &mut buf[..n]);
                bad = not_guard(&buf[..n]).map(|i| (off + i, buf[i]));
                off += n;
            }
            self.scratch = buf;
            if let Some((at, got)) = bad {
                let slot_bytes = self.sh.slot_bytes[d];
                self.problem(&format!(
                    "{name}: after the run the original buffer slot {} holds {got:#04x} at byte {}; nothing maps it, so the model says {GUARD:#04x}",
                    at / slot_bytes,
                    at % slot_bytes
                ));
            }
        }
    }

    fn cycles(&mut self) {
        let sh = self.sh;
        loop {
            if !sh.gate.wait() {
                break;
            }
            let until = (Instant::now() + BURST_ACTIVE).min(sh.end);
            while Instant::now() < until {
                for _ in 0..16 {
                    self.step();
                }
            }
            self.drain();
            if !sh.gate.wait() {
                break;
            }
            if self.me == 0 {
                self.pressure_check();
                if Instant::now() + BURST_IDLE >= sh.end {
                    sh.stop.store(true, Ordering::Release);
                }
            }
            if !sh.gate.wait() || sh.stop.load(Ordering::Acquire) {
                break;
            }
            thread::sleep(BURST_IDLE);
        }
        self.drain();
        self.final_sweep();
    }

    pub(super) fn run(mut self) -> (Counts, Problems) {
        set_current_cpu(Some(self.home()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.cycles())) {
            self.problem(&format!("panicked: {}", panic_message(&*p)));
            self.sh.gate.abort();
            // Give the mappings back, so the audit reports the panic and not its fallout.
            if catch_unwind(AssertUnwindSafe(|| self.drain())).is_err() {
                self.problem("panicked again while unmapping after the first panic");
            }
        }
        self.sh.done.fetch_add(1, Ordering::Release);
        set_current_cpu(None);
        (self.counts, self.problems)
    }
}
