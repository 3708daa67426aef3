//! The checks after the last drain: audit, quarantine and shared pages against the
//! guest, every counter against what the threads counted.

use super::{bytes, Bouncer, Counts, FailureReason, Problems, SimGuest, Strategy, PAGE_SIZE};

/// Compares what the bouncer, the pool, the strategy and the guest report after the
/// drain with what the threads counted.
pub(super) fn final_checks<S: Strategy>(
    bouncer: &Bouncer<SimGuest, S>,
    guest: &SimGuest,
    device_names: &[String],
    c: &Counts,
    p: &mut Problems,
) -> String {
    let snap = bouncer.stats();
    let pool = bouncer.pool_stats();
    let sim = guest.stats();
    let pairs = [
        ("maps", snap.maps, c.maps),
        ("unmaps", snap.unmaps, c.unmaps),
        ("syncs for the CPU", snap.syncs_for_cpu, c.syncs_for_cpu),
        ("syncs for the device", snap.syncs_for_device, c.syncs_for_device),
        ("bytes to bounce", snap.bytes_to_bounce, c.bytes_to_bounce),
        ("bytes from bounce", snap.bytes_from_bounce, c.bytes_from_bounce),
        ("clamped overflows", snap.overflows_clamped, c.overflows_clamped),
    ];
    for (what, stats, threads) in pairs {
        if stats != threads {
            p.push(format!("statistics: BounceStats counts {stats} {what}, the threads made {threads}"));
        }
    }
    for r in FailureReason::ALL {
        let (stats, threads) = (snap.failures_of(r), c.failures[r as usize]);
        if stats != threads {
            p.push(format!(
                "statistics: BounceStats counts {stats} `{}` failures, the threads saw {threads}",
                r.name()
            ));
        }
    }
    if snap.maps != snap.unmaps {
        p.push(format!("{} maps but {} unmaps after the drain", snap.maps, snap.unmaps));
    }
    // Per device: the devices' counters add up to the totals, and each device ends with
    // as many unmaps as maps and nothing in flight.
    let devices = bouncer.device_stats();
    let sum = |f: fn(&bounce_framework::BounceSnapshot) -> u64| devices.iter().map(|d| f(&d.stats)).sum::<u64>();
    for (what, per_device, total) in [
        ("maps", sum(|s| s.maps), snap.maps),
        ("unmaps", sum(|s| s.unmaps), snap.unmaps),
        ("bytes to bounce", sum(|s| s.bytes_to_bounce), snap.bytes_to_bounce),
        ("bytes from bounce", sum(|s| s.bytes_from_bounce), snap.bytes_from_bounce),
    ] {
        if per_device != total {
            p.push(format!("statistics: the devices count {per_device} {what} between them, the totals {total}"));
        }
    }
    // Each plan device's counters against what the threads counted for it.
    for (i, name) in device_names.iter().enumerate().take(super::MAX_DEVICES) {
        let (maps, unmaps) =
            devices.iter().find(|d| d.name() == name.as_str()).map_or((0, 0), |d| (d.stats.maps, d.stats.unmaps));
        if (maps, unmaps) != (c.maps_by_device[i], c.unmaps_by_device[i]) {
            p.push(format!(
                "statistics: device {name} counts {maps} maps and {unmaps} unmaps, the threads made {} and {}",
                c.maps_by_device[i], c.unmaps_by_device[i]
            ));
        }
    }
    for d in &devices {
        if d.stats.maps != d.stats.unmaps || d.stats.inflight_bytes != 0 {
            p.push(format!(
                "device {}: {} maps, {} unmaps, {} bytes in flight after the drain",
                d.name(),
                d.stats.maps,
                d.stats.unmaps,
                d.stats.inflight_bytes
            ));
        }
    }
    if snap.inflight_bytes != 0 {
        p.push(format!("{} bytes still in flight after the drain", snap.inflight_bytes));
    }
    if pool.used_bytes != 0 {
        p.push(format!("the pool reports {} bytes used after the drain", pool.used_bytes));
    }
    let q = pool.conversions.quarantined_pages;
    if sim.unknown_pages != q {
        p.push(format!("the guest has {} pages in unknown state, the strategy quarantined {q}", sim.unknown_pages));
    }
    if sim.shared_pages * PAGE_SIZE as u64 != pool.conversions.shared_bytes {
        p.push(format!(
            "the guest has {} shared pages, the strategy says {} bytes are shared",
            sim.shared_pages, pool.conversions.shared_bytes
        ));
    }
    if snap.inflight_bytes_peak > pool.conversions.shared_bytes_peak {
        p.push(format!(
            "{} bytes were in flight at once, more than the {} bytes ever shared",
            snap.inflight_bytes_peak, pool.conversions.shared_bytes_peak
        ));
    }
    match bouncer.strategy().audit() {
        Ok(r) => {
            let mut bad = Vec::new();
            if r.live_mappings != 0 {
                bad.push(format!("{} live mappings", r.live_mappings));
            }
            if r.used_bytes != 0 {
                bad.push(format!("{} bytes used", r.used_bytes));
            }
            if r.quarantined_pages != q {
                bad.push(format!("{} quarantined pages where the pool statistics say {q}", r.quarantined_pages));
            }
            if bad.is_empty() {
                format!(
                    "ok: nothing live or used, {} free and {} owned, {} pages quarantined",
                    bytes(r.free_bytes as u64),
                    bytes(r.owned_bytes as u64),
                    r.quarantined_pages
                )
            } else {
                let s = format!("failed: after the drain the audit finds {}", bad.join(", "));
                p.push(format!("audit {s}"));
                s
            }
        }
        Err(e) => {
            p.push(e.to_string());
            format!("failed: {}", e.0)
        }
    }
}
