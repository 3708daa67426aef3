//! The `cmdline` oracle: [`BootConfig::parse`] and the [`StrategyParams`] readers on
//! arbitrary text.
//!
//! Properties checked (each a panic, which libFuzzer reports as a crash):
//! - nothing panics;
//! - an error names a token that occurs in the input (a whitespace-separated word), its
//!   message quotes that token, and the parts it quotes (`value`, `rest`, `name`, `key`)
//!   occur in the token; it is the *first* bad token: every token before it parses;
//! - a successful parse has `swiotlb.nslabs` a non-zero multiple of 128 (at most 2^40)
//!   and `nareas` a power of two (at most 2^20);
//! - a successful parse agrees with Linux 6.12's `setup_io_tlb_npages()` (re-implemented
//!   here independently, `simple_strtoul` and all) applied to every `swiotlb=` token in
//!   turn (each sets only what it names; `noforce` beats `force`, as
//!   `swiotlb_init_remap()` checks `swiotlb_force_disable` first);
//! - a successful parse is reproduced exactly by parsing its canonical rendering;
//! - the `StrategyParams` readers (`check_known`, `get`, `number`, `size`, `boolean`)
//!   agree with independent reference readers and name the parameter's token on error;
//! - the strategies' own parameter parsers (`Dynamic`/`Magazine::config_from_boot`:
//!   size classes, rounds lists, caps, ...) fail only with a command-line error naming
//!   one of their `swiotlb.<strategy>.*` tokens, and legacy's replay of Linux's boot
//!   sizing (`LinuxSizing::replay`) gives whole segments, areas that each hold at least
//!   one, and a geometry `Legacy::new` accepts.

use std::fmt::Write as _;

use bounce_framework::cmdline::{parse_bool, parse_size, parse_ulong};
use bounce_framework::sim::SimGuest;
use bounce_framework::{BootConfig, CmdlineError, ForceMode, InitError, StrategyParams, SwiotlbParam};
use bounce_legacy::{Geometry, LinuxSizing, MAX_SLOTS};
use bounce_strategies::{Dynamic, Magazine};

/// The strategy names the target parses against (the boot-selected set).
pub const KNOWN: &[&str] = &["legacy", "dynamic", "magazine"];

/// Turns fuzzer bytes into text: the longest valid UTF-8 prefix.
pub fn text(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// Runs every check on `input`.
///
/// # Panics
/// When a property does not hold (that is the finding).
pub fn check(input: &str) {
    let tokens: Vec<&str> = input.split_ascii_whitespace().collect();
    match BootConfig::parse(input, KNOWN) {
        Err(e) => check_error(input, &tokens, &e),
        Ok(cfg) => check_ok(input, &tokens, &cfg),
    }
}

/// The token and the quoted parts of an error, or `None` for a variant this oracle does
/// not know (the enum is `#[non_exhaustive]`).
pub fn error_parts(e: &CmdlineError) -> Option<(&str, Vec<&str>)> {
    Some(match e {
        CmdlineError::BadNumber { token, value } => (token.as_str(), vec![value.as_str()]),
        CmdlineError::OutOfRange { token, .. } => (token.as_str(), vec![]),
        CmdlineError::Unexpected { token, rest, .. } => (token.as_str(), vec![rest.as_str()]),
        CmdlineError::UnknownStrategy { token, name, .. } => (token.as_str(), vec![name.as_str()]),
        CmdlineError::UnknownParam { token, param, strategy, .. } => {
            (token.as_str(), vec![param.as_str(), strategy.as_str()])
        }
        CmdlineError::Duplicate { token, key } => (token.as_str(), vec![key.as_str()]),
        _ => return None,
    })
}

fn check_error(input: &str, tokens: &[&str], e: &CmdlineError) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty error message for {input:?}");
    let Some((token, parts)) = error_parts(e) else { return };
    assert!(tokens.contains(&token), "error {e:?} names token {token:?}, which is not a token of {input:?}");
    assert!(msg.contains(token), "message {msg:?} does not quote the token {token:?}");
    for p in parts {
        assert!(token.contains(p), "error {e:?}: {p:?} does not occur in the token {token:?}");
    }
    match e {
        CmdlineError::UnknownStrategy { name, .. } => {
            assert!(!KNOWN.contains(&name.as_str()), "known strategy {name:?} reported unknown");
        }
        CmdlineError::UnknownParam { .. } => panic!("BootConfig::parse returned UnknownParam (a StrategyParams error)"),
        _ => {}
    }
    // The first bad token: the tokens before it parse, and adding it gives this error.
    if tokens.len() <= 64 {
        let first_bad = (0..tokens.len())
            .find(|&i| BootConfig::parse(&tokens[..=i].join(" "), KNOWN).is_err())
            .unwrap_or_else(|| panic!("{input:?} fails as a whole but every prefix of its tokens parses"));
        assert_eq!(tokens[first_bad], token, "{input:?}: the error names {token:?}, the first bad token is another");
        let again = BootConfig::parse(&tokens[..=first_bad].join(" "), KNOWN).unwrap_err();
        assert_eq!(&again, e, "{input:?}: the error depends on text after the bad token");
    }
}

fn check_swiotlb(p: &SwiotlbParam, what: &str) {
    if let Some(n) = p.nslabs {
        assert!(
            n >= 128 && n.is_multiple_of(128) && n <= 1 << 40,
            "{what}: nslabs {n} is not a multiple of 128 in range"
        );
    }
    if let Some(a) = p.nareas {
        assert!(a.is_power_of_two() && a <= 1 << 20, "{what}: nareas {a} is not a power of two in range");
    }
}

fn check_ok(input: &str, tokens: &[&str], cfg: &BootConfig) {
    check_swiotlb(&cfg.swiotlb, input);
    let swiotlb_tokens: Vec<&str> =
        tokens.iter().filter_map(|t| if *t == "swiotlb" { Some("") } else { t.strip_prefix("swiotlb=") }).collect();
    if swiotlb_tokens.is_empty() {
        assert_eq!(cfg.swiotlb, SwiotlbParam::default(), "{input:?}: swiotlb set without a swiotlb token");
    }
    let linux = swiotlb_tokens.iter().fold(LinuxSwiotlb::default(), |l, v| l.apply(v));
    assert_eq!(
        linux.as_param(),
        cfg.swiotlb,
        "{input:?}: differs from Linux's setup_io_tlb_npages() applied to every swiotlb= token in turn"
    );
    if let Some(s) = &cfg.strategy {
        assert!(KNOWN.contains(&s.as_str()), "{input:?}: unknown strategy {s:?} accepted");
        let mut value = s.clone();
        for r in &cfg.routes {
            let _ = write!(value, ",{}:{}", r.device, r.strategy);
        }
        assert!(
            tokens.contains(&format!("swiotlb.strategy={value}").as_str()),
            "{input:?}: strategy and routes {value:?} from nowhere"
        );
    } else {
        assert!(cfg.routes.is_empty(), "{input:?}: routes without a strategy");
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        assert!(KNOWN.contains(&r.strategy.as_str()), "{input:?}: route to unknown strategy {r:?} accepted");
        assert!(
            !r.device.is_empty() && r.device.len() <= bounce_framework::DEVICE_NAME_MAX && !r.device.contains(','),
            "{input:?}: bad device name in {r:?} accepted"
        );
        assert!(!cfg.routes[..i].iter().any(|q| q.device == r.device), "{input:?}: device routed twice: {r:?}");
        assert_eq!(cfg.strategy_for(&r.device), Some(r.strategy.as_str()), "{input:?}: strategy_for");
    }
    let scrub_token = tokens.iter().rev().find_map(|t| t.strip_prefix("swiotlb.scrub="));
    assert_eq!(cfg.scrub, scrub_token.and_then(parse_bool).unwrap_or(false), "{input:?}: scrub");
    for (i, p) in cfg.params.iter().enumerate() {
        assert_eq!(p.token, format!("swiotlb.{}.{}={}", p.strategy, p.key, p.value), "{input:?}: param token");
        assert!(tokens.contains(&p.token.as_str()), "{input:?}: param token {:?} not in the input", p.token);
        assert!(KNOWN.contains(&p.strategy.as_str()) && !p.key.is_empty(), "{input:?}: param {p:?}");
        assert!(
            !cfg.params[..i].iter().any(|q| q.strategy == p.strategy && q.key == p.key),
            "{input:?}: duplicate parameter {p:?} accepted"
        );
    }
    // The canonical rendering parses back to the same configuration.
    let canon = render(cfg);
    let back = BootConfig::parse(&canon, KNOWN).unwrap_or_else(|e| panic!("{input:?}: rendering {canon:?}: {e}"));
    assert_eq!(&back, cfg, "{input:?}: rendering {canon:?} parses to something else");
    for s in KNOWN {
        check_params(input, cfg, &cfg.params_for(s), s);
    }
    check_strategy_configs(input, tokens, cfg);
}

/// The strategies' own readers of a parsed command line.
fn check_strategy_configs(input: &str, tokens: &[&str], cfg: &BootConfig) {
    let results = [
        ("dynamic", Dynamic::<SimGuest>::config_from_boot(cfg).map(drop)),
        ("magazine", Magazine::<SimGuest>::config_from_boot(cfg).map(drop)),
    ];
    for (name, r) in results {
        match r {
            Ok(()) => {}
            Err(InitError::Cmdline(e)) => {
                let Some((token, parts)) = error_parts(&e) else { continue };
                assert!(tokens.contains(&token), "{input:?}: {name} config error {e:?} names no token of the input");
                assert!(
                    token.starts_with(&format!("swiotlb.{name}.")),
                    "{input:?}: {name} config error names {token:?}"
                );
                for p in parts {
                    assert!(token.contains(p), "{input:?}: {name} config error {e:?}: {p:?} is not in the token");
                }
            }
            Err(other) => panic!("{input:?}: {name}::config_from_boot failed with a non-command-line error: {other}"),
        }
    }
    for (cpus, ram, coco) in [(1, 64 << 20, false), (2, 8 << 30, true), (3, 1 << 40, true), (1000, 512 << 20, false)] {
        let s = LinuxSizing::replay(&cfg.swiotlb, cpus, ram, coco);
        let what = format!("{input:?}: LinuxSizing::replay on {cpus} CPUs, {ram} bytes, coco {coco}: {s:?}");
        assert!(s.nslabs >= 128 && s.nslabs.is_multiple_of(128), "{what}: slots are not whole segments");
        assert!(s.nareas >= 1 && s.nareas * 128 <= s.nslabs, "{what}: an area without a whole segment");
        if s.nslabs <= MAX_SLOTS {
            if let Err(e) = Geometry::new(s.nslabs, s.nareas) {
                panic!("{what}: Legacy refuses the geometry Linux's sizing gives: {e}");
            }
        }
    }
}

/// A command line that [`BootConfig::parse`] must turn into `cfg`.
pub fn render(cfg: &BootConfig) -> String {
    let mut out = String::new();
    let sw = &cfg.swiotlb;
    if *sw != SwiotlbParam::default() {
        out.push_str("swiotlb=");
        if let Some(n) = sw.nslabs {
            let _ = write!(out, "{n}");
        }
        if let Some(a) = sw.nareas {
            let _ = write!(out, ",{a}");
        }
        match sw.force {
            Some(ForceMode::Force) => out.push_str(",force"),
            Some(ForceMode::NoForce) => out.push_str(",noforce"),
            None => {}
        }
        out.push(' ');
    }
    if let Some(s) = &cfg.strategy {
        let _ = write!(out, "swiotlb.strategy={s}");
        for r in &cfg.routes {
            let _ = write!(out, ",{}:{}", r.device, r.strategy);
        }
        out.push(' ');
    }
    let _ = write!(out, "swiotlb.scrub={} ", if cfg.scrub { "on" } else { "off" });
    for p in &cfg.params {
        let _ = write!(out, "{} ", p.token);
    }
    out
}

fn check_params(input: &str, cfg: &BootConfig, sp: &StrategyParams<'_>, strategy: &str) {
    let mine: Vec<_> = cfg.params.iter().filter(|p| p.strategy == strategy).collect();
    let keys: Vec<&str> = mine.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(sp.check_known(&keys), Ok(()), "{input:?}: check_known with every given key");
    match (mine.first(), sp.check_known(&[])) {
        (None, r) => assert_eq!(r, Ok(()), "{input:?}: check_known with no parameters given"),
        (Some(first), Err(CmdlineError::UnknownParam { token, strategy: s, param, .. })) => {
            assert_eq!((&token, s.as_str(), &param), (&first.token, strategy, &first.key), "{input:?}: check_known");
        }
        (Some(_), r) => panic!("{input:?}: check_known(&[]) with parameters given returned {r:?}"),
    }
    for p in &mine {
        let got = sp.get(&p.key).unwrap_or_else(|| panic!("{input:?}: get({:?}) lost the parameter", p.key));
        assert_eq!(got, *p);
        let names_token = |e: &CmdlineError| error_parts(e).is_some_and(|(t, _)| t == p.token);
        // number(): C-notation integer, whole string, no overflow.
        let want = ref_strtoul_whole(&p.value);
        assert_eq!(parse_ulong(&p.value), want, "{input:?}: parse_ulong({:?})", p.value);
        for (min, max) in [(0, u64::MAX), (1, 1024), (4096, 1 << 30)] {
            match (sp.number(&p.key, min, max), want) {
                (Ok(Some(v)), Some(w)) => assert!(v == w && (min..=max).contains(&v), "{input:?}: number {v}"),
                (Err(CmdlineError::BadNumber { token, value }), None) => {
                    assert!(token == p.token && value == p.value, "{input:?}: number error");
                }
                (Err(e @ CmdlineError::OutOfRange { .. }), Some(w)) => {
                    assert!(!(min..=max).contains(&w) && names_token(&e), "{input:?}: {e}");
                }
                (r, w) => panic!("{input:?}: number({:?}, {min}, {max}) = {r:?}, reference {w:?}", p.key),
            }
        }
        // size(): the same with an optional K/M/G/T suffix.
        let want = ref_memparse(&p.value);
        assert_eq!(parse_size(&p.value), want, "{input:?}: parse_size({:?})", p.value);
        match (sp.size(&p.key, 0, u64::MAX), want) {
            (Ok(Some(v)), Some(w)) => assert_eq!(v, w),
            (Err(e @ CmdlineError::BadNumber { .. }), None) => assert!(names_token(&e), "{input:?}: {e}"),
            (r, w) => panic!("{input:?}: size({:?}) = {r:?}, reference {w:?}", p.key),
        }
        // boolean(): kstrtobool's words.
        let want = ref_bool(&p.value);
        match (sp.boolean(&p.key), want) {
            (Ok(Some(v)), Some(w)) => assert_eq!(v, w),
            (Err(e @ CmdlineError::Unexpected { .. }), None) => assert!(names_token(&e), "{input:?}: {e}"),
            (r, w) => panic!("{input:?}: boolean({:?}) = {r:?}, reference {w:?}", p.key),
        }
    }
    // No key contains whitespace (tokens are split on it) or `=` (the key ends there).
    assert_eq!(sp.get("no such=key"), None);
    assert_eq!(sp.number("no such=key", 0, 1), Ok(None));
}

/// Linux's `_parse_integer_fixup_radix()` + `_parse_integer()` as `simple_strtoul(s,
/// &end, 0)` runs them: the value (wrapping on overflow, as Linux does) and the bytes
/// consumed, plus whether it overflowed.
pub fn ref_simple_strtoul(s: &[u8]) -> (u64, usize, bool) {
    let mut i = 0;
    let base: u64 = if s.first() == Some(&b'0') {
        if s.get(1).is_some_and(|c| c.eq_ignore_ascii_case(&b'x')) && s.get(2).is_some_and(u8::is_ascii_hexdigit) {
            i = 2;
            16
        } else {
            8
        }
    } else {
        10
    };
    let (mut v, mut overflow) = (0u64, false);
    while let Some(&c) = s.get(i) {
        let d = match c {
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'f' => u64::from(c - b'a' + 10),
            b'A'..=b'F' => u64::from(c - b'A' + 10),
            _ => break,
        };
        if d >= base {
            break;
        }
        let (m, o1) = v.overflowing_mul(base);
        let (a, o2) = m.overflowing_add(d);
        overflow |= o1 || o2;
        v = a;
        i += 1;
    }
    (v, i, overflow)
}

/// What `parse_ulong` promises: `simple_strtoul` consuming the whole non-empty string
/// without overflow (a bare `0x` is no number: Linux reads its `0` and stops at the `x`).
pub fn ref_strtoul_whole(s: &str) -> Option<u64> {
    let (v, n, overflow) = ref_simple_strtoul(s.as_bytes());
    (n > 0 && n == s.len() && !overflow).then_some(v)
}

/// `memparse()` restricted to what `parse_size` documents: a whole number with an
/// optional single `K`/`M`/`G`/`T` suffix, no overflow.
pub fn ref_memparse(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&s[..s.len() - 1], 10),
        b'm' => (&s[..s.len() - 1], 20),
        b'g' => (&s[..s.len() - 1], 30),
        b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    ref_strtoul_whole(num)?.checked_mul(1 << shift)
}

/// The words `parse_bool` documents.
pub fn ref_bool(s: &str) -> Option<bool> {
    const YES: &[&str] = &["1", "y", "Y", "yes", "on", "On", "ON"];
    const NO: &[&str] = &["0", "n", "N", "no", "off", "Off", "OFF"];
    if YES.contains(&s) {
        Some(true)
    } else if NO.contains(&s) {
        Some(false)
    } else {
        None
    }
}

/// Linux 6.12's swiotlb boot state as `setup_io_tlb_npages()` leaves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinuxSwiotlb {
    /// `default_nslabs` if a parameter set it.
    pub nslabs: Option<u64>,
    /// `default_nareas` if a parameter set it.
    pub nareas: Option<u64>,
    /// `swiotlb_force_bounce`.
    pub force_bounce: bool,
    /// `swiotlb_force_disable`.
    pub force_disable: bool,
}

impl LinuxSwiotlb {
    /// Applies one `swiotlb=<value>` as `setup_io_tlb_npages(value)` does.
    #[must_use]
    pub fn apply(mut self, value: &str) -> Self {
        let s = value.as_bytes();
        let mut i = 0;
        if s.first().is_some_and(u8::is_ascii_digit) {
            let (v, n, _) = ref_simple_strtoul(s);
            self.nslabs = Some(v.wrapping_add(127) & !127);
            i = n;
        }
        if s.get(i) == Some(&b',') {
            i += 1;
        }
        if s.get(i).is_some_and(u8::is_ascii_digit) {
            let (v, n, _) = ref_simple_strtoul(&s[i..]);
            // swiotlb_adjust_nareas(unsigned int nareas): 0 is ignored.
            let a = u64::from(v as u32);
            if a != 0 {
                self.nareas = Some(a.next_power_of_two());
            }
            i += n;
        }
        if s.get(i) == Some(&b',') {
            i += 1;
        }
        match &value[i..] {
            "force" => self.force_bounce = true,
            "noforce" => self.force_disable = true,
            _ => {}
        }
        self
    }

    /// The same facts as a [`SwiotlbParam`] (only meaningful where the parse
    /// succeeded). With both flags set Linux does not bounce: `swiotlb_init_remap()`
    /// returns on `swiotlb_force_disable` before it looks at `swiotlb_force_bounce`.
    pub fn as_param(&self) -> SwiotlbParam {
        SwiotlbParam {
            nslabs: self.nslabs.map(|n| n as usize),
            nareas: self.nareas.map(|a| a as usize),
            force: if self.force_disable {
                Some(ForceMode::NoForce)
            } else if self.force_bounce {
                Some(ForceMode::Force)
            } else {
                None
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_strtoul_matches_linux_examples() {
        assert_eq!(ref_simple_strtoul(b"0x1fz"), (31, 4, false));
        assert_eq!(ref_simple_strtoul(b"0x"), (0, 1, false));
        assert_eq!(ref_simple_strtoul(b"0778"), (63, 3, false));
        assert_eq!(ref_simple_strtoul(b"12abc"), (12, 2, false));
        assert!(ref_simple_strtoul(b"99999999999999999999999").2);
        assert_eq!(ref_strtoul_whole("0x"), None);
        assert_eq!(ref_strtoul_whole("010"), Some(8));
        assert_eq!(ref_memparse("0x10M"), Some(16 << 20));
    }

    #[test]
    fn linux_state_accumulates() {
        let l = ["65536", "force"].iter().fold(LinuxSwiotlb::default(), |l, v| l.apply(v));
        assert_eq!((l.nslabs, l.force_bounce), (Some(65536), true));
        let l = LinuxSwiotlb::default().apply("08");
        assert_eq!((l.nslabs, l.nareas), (Some(0), Some(8)), "Linux reads `08` as slot 0 and 8 areas");
        let l = ["noforce", "force"].iter().fold(LinuxSwiotlb::default(), |l, v| l.apply(v));
        assert_eq!(l.as_param().force, Some(ForceMode::NoForce), "swiotlb_force_disable wins");
    }

    #[test]
    fn checks_pass_on_good_and_bad_lines() {
        for s in [
            "",
            "console=ttyS0 swiotlb=65536,4,force root=/dev/vda",
            "swiotlb=,4 swiotlb.strategy=magazine swiotlb.magazine.size=0x10 swiotlb.magazine.cap=64M",
            "swiotlb=12abc",
            "swiotlb.strategy=legacy swiotlb.strategy=legacy",
            "swiotlb.dynamic.cap=1 swiotlb.dynamic.cap=2",
            "swiotlb.scrub=maybe quiet",
            "swiotlb",
            "swiotlb=65536 swiotlb=force",
            "swiotlb=force swiotlb=,4 swiotlb=noforce swiotlb=1024",
            "swiotlb.strategy=legacy,virtio1:magazine,0000:00:05.0:dynamic",
            "swiotlb.strategy=legacy,virtio1:magazine,virtio1:dynamic",
            "swiotlb.strategy=legacy,virtio1 swiotlb.strategy=magazine,:legacy",
        ] {
            check(s);
        }
    }
}
