//! Tests of `bounce stress` itself: a correct strategy passes, and each sabotage is
//! caught.

use super::*;
use bounce_framework::sim::PlatformKind;

use crate::registry::fixture::Classes;

fn cfg() -> StressConfig {
    StressConfig {
        machine: Machine { platform: PlatformKind::Plain, memory: 256 << 20, boot: BootConfig::default(), lanes: None },
        duration: Duration::from_millis(400),
        threads: 2,
        seed: 3,
        faults: false,
        sabotage: None,
    }
}

#[test]
fn a_correct_strategy_passes_and_every_kind_of_operation_ran() {
    let r = run_one(&cfg(), "fixture", Classes::from_boot).unwrap();
    assert!(r.pass, "{}", text(&r));
    let c = r.counts;
    for (what, n) in [
        ("singles", c.singles),
        ("sg lists", c.sg_lists),
        ("syncs for the CPU", c.syncs_for_cpu),
        ("syncs for the device", c.syncs_for_device),
        ("partial syncs", c.partial_syncs),
        ("clamped overflows", c.overflows_clamped),
        ("bytes from bounce", c.bytes_from_bounce),
        ("device writes", c.device_writes),
        ("remote unmaps", c.remote_unmaps),
        ("pressure checks", c.pressure_checks),
    ] {
        assert!(n > 0, "no {what}:\n{}", text(&r));
    }
    assert_eq!(c.maps, c.unmaps);
    // Every pressure check ends in a refusal (the fixture cannot grow) and a
    // too-large map.
    assert_eq!(r.failures.get("too_large").copied(), Some(c.pressure_checks), "{}", text(&r));
    assert!(r.failures.get("exhausted").copied().unwrap_or(0) >= c.pressure_checks);
    assert!(r.audit.starts_with("ok"), "{}", r.audit);
}

#[test]
fn a_strategy_that_hands_one_buffer_to_two_mappings_fails() {
    let r = run_one(&cfg(), "broken", Classes::broken_from_boot).unwrap();
    assert!(!r.pass, "{}", text(&r));
    assert!(r.problems > 0);
    assert!(r.violations.iter().any(|v| v.contains("the device read")), "{:?}", r.violations);
}

#[test]
fn gate_releases_everyone_and_can_be_abandoned() {
    let g = Gate::new(3);
    thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| (0..50).all(|_| g.wait()))).collect();
        assert!(hs.into_iter().all(|h| h.join().unwrap()));
    });
    let g = Gate::new(2);
    thread::scope(|s| {
        let h = s.spawn(|| g.wait());
        thread::sleep(Duration::from_millis(20));
        g.abort();
        assert!(!h.join().unwrap());
    });
    assert!(!g.wait());
}
