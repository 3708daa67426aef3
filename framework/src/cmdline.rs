//! The boot command line.
//!
//! Recognised tokens (everything else on a kernel command line is ignored):
//!
//! | token | meaning |
//! |---|---|
//! | `swiotlb=<slots>[,<areas>][,force\|noforce]` | Linux's parameter, parsed as `setup_io_tlb_npages()` does: numbers in C notation (`0x` hex, leading `0` octal), slots rounded up to a multiple of 128 (`IO_TLB_SEGSIZE`), areas rounded up to a power of two. Given more than once, each token sets only what it names, as in Linux (see [`SwiotlbParam::merge`]). |
//! | `swiotlb.strategy=<name>[,<device>:<name>]...` | the strategy to boot (`legacy`, `dynamic`, `magazine`, or any name the caller registers), then optional per-device routes: each `<device>:<name>` sends the device named `<device>` (its `dev_name()`, e.g. `virtio1` or `0000:00:05.0`; the last `:` separates the strategy) to its own strategy instance ([`Route`]) |
//! | `swiotlb.scrub=on\|off` | clear bounce buffers before they return to a free list |
//! | `swiotlb.<strategy>.<param>=<value>` | a strategy's own parameter; the strategy validates it with [`StrategyParams`] |
//!
//! Where Linux silently ignores junk (`swiotlb=12abc`, `swiotlb=64,2,forse`), this parser
//! returns a [`CmdlineError`] naming the token: a mistyped boot parameter should not
//! quietly change nothing.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::addr::IO_TLB_SEGSIZE;
use crate::dma::DEVICE_NAME_MAX;
use crate::error::CmdlineError;

/// `force` / `noforce` of `swiotlb=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForceMode {
    /// `force`: bounce every mapping (`swiotlb_force_bounce`).
    Force,
    /// `noforce`: disable swiotlb (`swiotlb_force_disable`).
    NoForce,
}

/// The parsed `swiotlb=` parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwiotlbParam {
    /// Slots, rounded up to a multiple of 128 (`default_nslabs`).
    pub nslabs: Option<usize>,
    /// Areas, rounded up to a power of two (`default_nareas`).
    pub nareas: Option<usize>,
    /// `force` or `noforce`.
    pub force: Option<ForceMode>,
}

impl SwiotlbParam {
    /// Applies a later `swiotlb=` token on top of `self`, as Linux's
    /// `setup_io_tlb_npages()` does: it runs once per token and sets only the globals
    /// the token names. So `swiotlb=65536 swiotlb=force` is 65536 slots *and* `force`;
    /// a slot or area count given again replaces the earlier one. `force` and `noforce`
    /// set two separate flags that nothing clears, and Linux checks
    /// `swiotlb_force_disable` first (`swiotlb_init_remap()`), so a `noforce` anywhere
    /// wins over any `force`.
    #[must_use]
    pub fn merge(self, later: SwiotlbParam) -> SwiotlbParam {
        let force = match (self.force, later.force) {
            (Some(ForceMode::NoForce), _) | (_, Some(ForceMode::NoForce)) => Some(ForceMode::NoForce),
            (earlier, None) => earlier,
            (_, f @ Some(ForceMode::Force)) => f,
        };
        SwiotlbParam { nslabs: later.nslabs.or(self.nslabs), nareas: later.nareas.or(self.nareas), force }
    }
}

/// One `swiotlb.<strategy>.<param>=<value>` token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// The strategy named.
    pub strategy: String,
    /// The parameter name.
    pub key: String,
    /// The raw value.
    pub value: String,
    /// The whole token, for error messages.
    pub token: String,
}

/// The route target that leaves a device to the platform's own bounce buffering
/// (Linux's swiotlb in the guest): accepted by [`BootConfig::parse_with_native`].
pub const NATIVE_ROUTE: &str = "linux";

/// The lane of a device routed to [`NATIVE_ROUTE`]: no strategy instance serves it.
pub const NATIVE_LANE: usize = usize::MAX;

/// Device routes as (device name, lane index) pairs: [`BootConfig::lanes`]'s second
/// half, [`Bouncer::with_lanes`](crate::Bouncer::with_lanes)'s input.
pub type LaneRoutes = Vec<(String, usize)>;

/// One per-device entry of `swiotlb.strategy=<default>,<device>:<strategy>,...`: the
/// device named `device` maps through its own instance of `strategy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The device's name (`dev_name()`), at most [`DEVICE_NAME_MAX`] bytes.
    pub device: String,
    /// The strategy that serves it.
    pub strategy: String,
}

/// Everything bounce takes from the boot command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// `swiotlb=`.
    pub swiotlb: SwiotlbParam,
    /// `swiotlb.strategy=`; `None` runs the platform default (Linux's own swiotlb in the
    /// kernel).
    pub strategy: Option<String>,
    /// The per-device routes after the default strategy in `swiotlb.strategy=`, in
    /// command-line order (no device twice).
    pub routes: Vec<Route>,
    /// `swiotlb.scrub=`.
    pub scrub: bool,
    /// Strategy parameters in command-line order.
    pub params: Vec<Param>,
}

/// Parses an unsigned number as the kernel's `simple_strtoul(s, &end, 0)` does, but
/// requiring the whole string to be the number: `0x`/`0X` hex, leading `0` octal,
/// decimal otherwise. `None` for anything else or on overflow.
pub fn parse_ulong(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses a size as the kernel's `memparse()`: a number (C notation) with an optional
/// `K`, `M`, `G`, `T` suffix (either case). `None` when malformed or on overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        b't' | b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let v = parse_ulong(num)?;
    v.checked_mul(1u64 << shift)
}

/// Parses a boolean as the kernel's `kstrtobool()`: `1 y Y on`, `0 n N off`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "y" | "Y" | "yes" | "on" | "On" | "ON" => Some(true),
        "0" | "n" | "N" | "no" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// The longest run of leading ASCII digits and hex letters after an optional `0x`: what
/// `simple_strtoul` would consume.
fn number_prefix(s: &str) -> usize {
    let bytes = s.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'0' && (bytes[1] == b'x' || bytes[1] == b'X') {
        2 + bytes[2..].iter().take_while(|b| b.is_ascii_hexdigit()).count()
    } else {
        bytes.iter().take_while(|b| b.is_ascii_digit()).count()
    }
}

fn bad_number(token: &str, value: &str) -> CmdlineError {
    CmdlineError::BadNumber { token: token.to_string(), value: value.to_string() }
}

fn out_of_range(token: &str, reason: impl Into<String>) -> CmdlineError {
    CmdlineError::OutOfRange { token: token.to_string(), reason: reason.into() }
}

/// Parses the value of `swiotlb=` (the part after `=`), following
/// `setup_io_tlb_npages()`.
///
/// # Errors
/// [`CmdlineError`] for malformed numbers, zero or oversize values and unknown trailing
/// text.
pub fn parse_swiotlb_value(token: &str, value: &str) -> Result<SwiotlbParam, CmdlineError> {
    let mut p = SwiotlbParam::default();
    let mut rest = value;
    // if (isdigit(*str)) default_nslabs = ALIGN(simple_strtoul(str, &str, 0), IO_TLB_SEGSIZE);
    if rest.starts_with(|c: char| c.is_ascii_digit()) {
        let n = number_prefix(rest);
        let num = &rest[..n];
        let v = parse_ulong(num).ok_or_else(|| bad_number(token, num))?;
        if v == 0 {
            return Err(out_of_range(token, "the slot count must be at least 1"));
        }
        let aligned = v.div_ceil(IO_TLB_SEGSIZE as u64).checked_mul(IO_TLB_SEGSIZE as u64);
        let slots = aligned
            .filter(|&s| s <= (1u64 << 40))
            .ok_or_else(|| out_of_range(token, "the slot count is larger than any pool (at most 2^40 slots)"))?;
        p.nslabs = Some(slots as usize);
        rest = &rest[n..];
    }
    if let Some(r) = rest.strip_prefix(',') {
        rest = r;
    }
    // if (isdigit(*str)) swiotlb_adjust_nareas(simple_strtoul(str, &str, 0));
    if rest.starts_with(|c: char| c.is_ascii_digit()) {
        let n = number_prefix(rest);
        let num = &rest[..n];
        let v = parse_ulong(num).ok_or_else(|| bad_number(token, num))?;
        if v == 0 {
            // Linux ignores 0 (swiotlb_adjust_nareas returns false); say so instead.
            return Err(out_of_range(token, "the area count must be at least 1"));
        }
        if v > 1 << 20 {
            return Err(out_of_range(token, "the area count is too large (at most 1048576)"));
        }
        p.nareas = Some((v as usize).next_power_of_two());
        rest = &rest[n..];
    }
    if let Some(r) = rest.strip_prefix(',') {
        rest = r;
    }
    match rest {
        "" => {}
        "force" => p.force = Some(ForceMode::Force),
        "noforce" => p.force = Some(ForceMode::NoForce),
        other => {
            return Err(CmdlineError::Unexpected {
                token: token.to_string(),
                rest: other.to_string(),
                expected: "`force`, `noforce` or nothing after the numbers",
            })
        }
    }
    Ok(p)
}

/// One `<device>:<strategy>` entry of `swiotlb.strategy=` (the strategy name is not
/// checked here). The device is everything before the last `:`, so PCI names such as
/// `0000:00:05.0` need no quoting.
fn parse_route(token: &str, entry: &str) -> Result<Route, CmdlineError> {
    let bad = |expected| CmdlineError::Unexpected { token: token.to_string(), rest: entry.to_string(), expected };
    let Some((device, strategy)) = entry.rsplit_once(':') else {
        return Err(bad("`<device>:<strategy>` after the default strategy"));
    };
    if device.is_empty() {
        return Err(bad("a device name before `:`"));
    }
    if strategy.is_empty() {
        return Err(bad("a strategy name after `<device>:`"));
    }
    if device.len() > DEVICE_NAME_MAX {
        return Err(CmdlineError::OutOfRange {
            token: token.to_string(),
            reason: alloc::format!("device name `{device}` is longer than {DEVICE_NAME_MAX} bytes"),
        });
    }
    Ok(Route { device: device.to_string(), strategy: strategy.to_string() })
}

impl BootConfig {
    /// The strategy instances (*lanes*) the command line asks for and the routes between
    /// them: one configuration per lane, the default strategy's first, then one per
    /// further strategy the routes name (each that strategy's own command line, routes
    /// removed), and each route as (device, lane). A route naming the default strategy
    /// takes lane 0; devices routed to the same strategy share its lane.
    pub fn lanes(&self) -> (Vec<BootConfig>, LaneRoutes) {
        let one = |strategy: Option<String>| BootConfig { strategy, routes: Vec::new(), ..self.clone() };
        let mut lanes = alloc::vec![one(self.strategy.clone())];
        let mut routes = Vec::with_capacity(self.routes.len());
        for r in &self.routes {
            if r.strategy == NATIVE_ROUTE {
                routes.push((r.device.clone(), NATIVE_LANE));
                continue;
            }
            let lane =
                lanes.iter().position(|l| l.strategy.as_deref() == Some(r.strategy.as_str())).unwrap_or_else(|| {
                    lanes.push(one(Some(r.strategy.clone())));
                    lanes.len() - 1
                });
            routes.push((r.device.clone(), lane));
        }
        (lanes, routes)
    }

    /// The strategy `device` maps through: its route's, else the default
    /// (`None`: the platform default).
    pub fn strategy_for(&self, device: &str) -> Option<&str> {
        self.routes.iter().find(|r| r.device == device).map(|r| r.strategy.as_str()).or(self.strategy.as_deref())
    }

    /// Parses a whole kernel command line. `known_strategies` lists the names
    /// `swiotlb.strategy=` and `swiotlb.<strategy>.*` may use.
    ///
    /// # Errors
    /// The first [`CmdlineError`], naming the offending token.
    pub fn parse(cmdline: &str, known_strategies: &[&str]) -> Result<Self, CmdlineError> {
        Self::parse_inner(cmdline, known_strategies, None)
    }

    /// As [`BootConfig::parse`], on a platform with bounce buffering of its own (the
    /// Linux guest): a route may also name [`NATIVE_ROUTE`] (`linux`), which leaves that
    /// device to the platform's own swiotlb ([`NATIVE_LANE`] in [`BootConfig::lanes`]).
    /// The default strategy must still be one of `known_strategies`.
    ///
    /// # Errors
    /// As [`BootConfig::parse`].
    pub fn parse_with_native(cmdline: &str, known_strategies: &[&str]) -> Result<Self, CmdlineError> {
        Self::parse_inner(cmdline, known_strategies, Some(NATIVE_ROUTE))
    }

    fn parse_inner(cmdline: &str, known_strategies: &[&str], native: Option<&str>) -> Result<Self, CmdlineError> {
        let mut cfg = Self::default();
        let mut seen_scrub = false;
        let known = || known_strategies.join(", ");
        for token in cmdline.split_ascii_whitespace() {
            let (key, value) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (token, None),
            };
            if key == "swiotlb" {
                let v = value.unwrap_or("");
                cfg.swiotlb = cfg.swiotlb.merge(parse_swiotlb_value(token, v)?);
                continue;
            }
            let Some(sub) = key.strip_prefix("swiotlb.") else { continue };
            let Some(value) = value else {
                return Err(CmdlineError::Unexpected {
                    token: token.to_string(),
                    rest: String::new(),
                    expected: "`=<value>`",
                });
            };
            match sub {
                "strategy" => {
                    if cfg.strategy.is_some() {
                        return Err(CmdlineError::Duplicate { token: token.to_string(), key: key.to_string() });
                    }
                    let mut entries = value.split(',');
                    let default = entries.next().unwrap_or_default();
                    let unknown = |name: &str| CmdlineError::UnknownStrategy {
                        token: token.to_string(),
                        name: name.to_string(),
                        known: known(),
                    };
                    if !known_strategies.contains(&default) {
                        return Err(unknown(default));
                    }
                    for entry in entries {
                        let route = parse_route(token, entry)?;
                        if !known_strategies.contains(&route.strategy.as_str())
                            && native != Some(route.strategy.as_str())
                        {
                            return Err(unknown(&route.strategy));
                        }
                        if cfg.routes.iter().any(|r| r.device == route.device) {
                            return Err(CmdlineError::Duplicate { token: token.to_string(), key: route.device });
                        }
                        cfg.routes.push(route);
                    }
                    cfg.strategy = Some(default.to_string());
                }
                "scrub" => {
                    if seen_scrub {
                        return Err(CmdlineError::Duplicate { token: token.to_string(), key: key.to_string() });
                    }
                    seen_scrub = true;
                    cfg.scrub = parse_bool(value).ok_or_else(|| CmdlineError::Unexpected {
                        token: token.to_string(),
                        rest: value.to_string(),
                        expected: "`on` or `off`",
                    })?;
                }
                _ => {
                    let Some((strategy, param)) = sub.split_once('.') else {
                        return Err(CmdlineError::Unexpected {
                            token: token.to_string(),
                            rest: sub.to_string(),
                            expected: "`strategy`, `scrub` or `<strategy>.<param>` after `swiotlb.`",
                        });
                    };
                    if !known_strategies.contains(&strategy) {
                        return Err(CmdlineError::UnknownStrategy {
                            token: token.to_string(),
                            name: strategy.to_string(),
                            known: known(),
                        });
                    }
                    if param.is_empty() {
                        return Err(CmdlineError::Unexpected {
                            token: token.to_string(),
                            rest: String::new(),
                            expected: "a parameter name after the strategy",
                        });
                    }
                    if cfg.params.iter().any(|p| p.strategy == strategy && p.key == param) {
                        return Err(CmdlineError::Duplicate { token: token.to_string(), key: key.to_string() });
                    }
                    cfg.params.push(Param {
                        strategy: strategy.to_string(),
                        key: param.to_string(),
                        value: value.to_string(),
                        token: token.to_string(),
                    });
                }
            }
        }
        Ok(cfg)
    }

    /// The parameters addressed to `strategy`.
    pub fn params_for(&self, strategy: &str) -> StrategyParams<'_> {
        StrategyParams {
            strategy: strategy.to_string(),
            params: self.params.iter().filter(|p| p.strategy == strategy).collect(),
        }
    }
}

/// The `swiotlb.<strategy>.*` parameters of one strategy, with typed readers.
#[derive(Clone, Debug, Default)]
pub struct StrategyParams<'a> {
    strategy: String,
    params: Vec<&'a Param>,
}

impl<'a> StrategyParams<'a> {
    /// Checks every given parameter is one of `known`.
    ///
    /// # Errors
    /// [`CmdlineError::UnknownParam`] for the first unknown one.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CmdlineError> {
        for p in &self.params {
            if !known.contains(&p.key.as_str()) {
                return Err(CmdlineError::UnknownParam {
                    token: p.token.clone(),
                    strategy: self.strategy.clone(),
                    param: p.key.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }

    /// The raw parameter, if given.
    pub fn get(&self, key: &str) -> Option<&'a Param> {
        self.params.iter().copied().find(|p| p.key == key)
    }

    /// A number (C notation), checked against `min..=max`.
    ///
    /// # Errors
    /// [`CmdlineError::BadNumber`] or [`CmdlineError::OutOfRange`].
    pub fn number(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, CmdlineError> {
        let Some(p) = self.get(key) else { return Ok(None) };
        let v = parse_ulong(&p.value).ok_or_else(|| bad_number(&p.token, &p.value))?;
        check_range(p, v, min, max)
    }

    /// A size with an optional K/M/G/T suffix, checked against `min..=max` bytes.
    ///
    /// # Errors
    /// [`CmdlineError::BadNumber`] or [`CmdlineError::OutOfRange`].
    pub fn size(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, CmdlineError> {
        let Some(p) = self.get(key) else { return Ok(None) };
        let v = parse_size(&p.value).ok_or_else(|| bad_number(&p.token, &p.value))?;
        check_range(p, v, min, max)
    }

    /// A boolean (`on`/`off`, `1`/`0`, `y`/`n`).
    ///
    /// # Errors
    /// [`CmdlineError::Unexpected`] for anything else.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, CmdlineError> {
        let Some(p) = self.get(key) else { return Ok(None) };
        parse_bool(&p.value).map(Some).ok_or_else(|| CmdlineError::Unexpected {
            token: p.token.clone(),
            rest: p.value.clone(),
            expected: "`on` or `off`",
        })
    }
}

fn check_range(p: &Param, v: u64, min: u64, max: u64) -> Result<Option<u64>, CmdlineError> {
    if v < min || v > max {
        return Err(out_of_range(&p.token, alloc::format!("{} must be between {min} and {max}", p.key)));
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["legacy", "dynamic", "magazine"];

    fn sw(v: &str) -> Result<SwiotlbParam, CmdlineError> {
        parse_swiotlb_value("swiotlb=", v)
    }

    #[test]
    fn swiotlb_param_follows_setup_io_tlb_npages() {
        assert_eq!(sw("32768").unwrap(), SwiotlbParam { nslabs: Some(32768), nareas: None, force: None });
        // ALIGN(n, IO_TLB_SEGSIZE)
        assert_eq!(sw("1000").unwrap().nslabs, Some(1024));
        assert_eq!(sw("1").unwrap().nslabs, Some(128));
        // C notation
        assert_eq!(sw("0x8000").unwrap().nslabs, Some(32768));
        assert_eq!(sw("0100").unwrap().nslabs, Some(128)); // octal 64 -> 128
                                                           // areas round up to a power of two
        assert_eq!(sw("65536,3").unwrap().nareas, Some(4));
        assert_eq!(
            sw("65536,8,force").unwrap(),
            SwiotlbParam { nslabs: Some(65536), nareas: Some(8), force: Some(ForceMode::Force) }
        );
        assert_eq!(sw("force").unwrap().force, Some(ForceMode::Force));
        assert_eq!(sw("noforce").unwrap().force, Some(ForceMode::NoForce));
        assert_eq!(
            sw("1024,force").unwrap(),
            SwiotlbParam { nslabs: Some(1024), nareas: None, force: Some(ForceMode::Force) }
        );
        assert_eq!(sw(",4").unwrap().nareas, Some(4));
        assert_eq!(sw("").unwrap(), SwiotlbParam::default());
    }

    #[test]
    fn swiotlb_param_errors_name_the_token() {
        let e = sw("12abc").unwrap_err();
        assert!(matches!(e, CmdlineError::Unexpected { ref rest, .. } if rest == "abc"), "{e}");
        assert!(e.to_string().contains("swiotlb="));
        assert!(matches!(sw("64,2,forse"), Err(CmdlineError::Unexpected { .. })));
        assert!(matches!(sw("0"), Err(CmdlineError::OutOfRange { .. })));
        assert!(matches!(sw("64,0"), Err(CmdlineError::OutOfRange { .. })));
        assert!(matches!(sw("0x"), Err(CmdlineError::BadNumber { .. })));
        assert!(matches!(sw("09"), Err(CmdlineError::BadNumber { .. })));
        assert!(matches!(sw("99999999999999999999999"), Err(CmdlineError::BadNumber { .. })));
        assert!(matches!(sw("1099511627777"), Err(CmdlineError::OutOfRange { .. })));
    }

    #[test]
    fn full_cmdline() {
        let c = BootConfig::parse(
            "console=ttyS0 swiotlb=65536,4,force root=/dev/vda swiotlb.strategy=dynamic swiotlb.dynamic.classes=512:256,2048:64 swiotlb.scrub=on quiet",
            KNOWN,
        )
        .unwrap();
        assert_eq!(c.swiotlb.nslabs, Some(65536));
        assert_eq!(c.swiotlb.nareas, Some(4));
        assert_eq!(c.strategy.as_deref(), Some("dynamic"));
        assert!(c.scrub);
        let p = c.params_for("dynamic");
        assert_eq!(p.get("classes").unwrap().value, "512:256,2048:64");
        assert!(c.params_for("magazine").get("classes").is_none());
        // a later count replaces an earlier one, as in Linux
        let c = BootConfig::parse("swiotlb=1024 swiotlb=2048", KNOWN).unwrap();
        assert_eq!(c.swiotlb.nslabs, Some(2048));
        assert_eq!(BootConfig::parse("", KNOWN).unwrap(), BootConfig::default());
    }

    #[test]
    fn per_device_routes_parse_and_bad_entries_name_the_token() {
        let c = BootConfig::parse("swiotlb.strategy=legacy,virtio1:magazine,0000:00:05.0:dynamic", KNOWN).unwrap();
        assert_eq!(c.strategy.as_deref(), Some("legacy"));
        let route = |d: &str, s: &str| Route { device: d.into(), strategy: s.into() };
        assert_eq!(c.routes, [route("virtio1", "magazine"), route("0000:00:05.0", "dynamic")]);
        assert_eq!(c.strategy_for("virtio1"), Some("magazine"));
        assert_eq!(c.strategy_for("0000:00:05.0"), Some("dynamic"));
        assert_eq!(c.strategy_for("nvme0"), Some("legacy"));
        let (lanes, routes) = c.lanes();
        let names: Vec<_> = lanes.iter().map(|l| l.strategy.as_deref().unwrap()).collect();
        assert_eq!(names, ["legacy", "magazine", "dynamic"]);
        assert!(lanes.iter().all(|l| l.routes.is_empty()));
        assert_eq!(routes, [("virtio1".into(), 1), ("0000:00:05.0".into(), 2)]);
        let c = BootConfig::parse("swiotlb.strategy=dynamic,a:dynamic,b:magazine,c:magazine", KNOWN).unwrap();
        assert_eq!(c.lanes().0.len(), 2);
        assert_eq!(c.lanes().1, [("a".into(), 0), ("b".into(), 1), ("c".into(), 1)]);
        // `linux` routes only where the platform has a swiotlb of its own, never as the
        // default.
        let native = "swiotlb.strategy=magazine,vda:linux,vdb:magazine";
        assert!(BootConfig::parse(native, KNOWN).unwrap_err().to_string().contains("unknown strategy `linux`"));
        let c = BootConfig::parse_with_native(native, KNOWN).unwrap();
        assert_eq!(c.lanes().0.len(), 1);
        assert_eq!(c.lanes().1, [("vda".into(), NATIVE_LANE), ("vdb".into(), 0)]);
        assert!(BootConfig::parse_with_native("swiotlb.strategy=linux", KNOWN).is_err());
        // The single-name form is unchanged; a route may name the default strategy.
        assert!(BootConfig::parse("swiotlb.strategy=dynamic", KNOWN).unwrap().routes.is_empty());
        assert_eq!(BootConfig::parse("swiotlb.strategy=magazine,a:magazine", KNOWN).unwrap().routes.len(), 1);
        let err = |s: &str| BootConfig::parse(s, KNOWN).unwrap_err().to_string();
        assert_eq!(
            err("swiotlb.strategy=legacy,virtio1:slab"),
            "`swiotlb.strategy=legacy,virtio1:slab`: unknown strategy `slab` (known: legacy, dynamic, magazine)"
        );
        assert_eq!(
            err("swiotlb.strategy=legacy,virtio1"),
            "`swiotlb.strategy=legacy,virtio1`: unexpected `virtio1` (expected `<device>:<strategy>` after the default strategy)"
        );
        assert!(err("swiotlb.strategy=legacy,:dynamic").contains("a device name before `:`"));
        assert!(err("swiotlb.strategy=legacy,virtio1:").contains("a strategy name after `<device>:`"));
        assert!(err("swiotlb.strategy=legacy,").contains("`<device>:<strategy>`"));
        assert!(err("swiotlb.strategy=,virtio1:legacy").contains("unknown strategy ``"));
        assert_eq!(
            err("swiotlb.strategy=legacy,vda:dynamic,vda:magazine"),
            "`swiotlb.strategy=legacy,vda:dynamic,vda:magazine`: `vda` is given more than once"
        );
        let long = "d".repeat(DEVICE_NAME_MAX + 1);
        assert!(err(&alloc::format!("swiotlb.strategy=legacy,{long}:dynamic")).contains("longer than 32 bytes"));
        let max = "d".repeat(DEVICE_NAME_MAX);
        assert!(BootConfig::parse(&alloc::format!("swiotlb.strategy=legacy,{max}:dynamic"), KNOWN).is_ok());
    }

    /// Regression (fuzz finding `regressions/cmdline/swiotlb-twice`): each `swiotlb=`
    /// token sets only what it names, as `setup_io_tlb_npages()` runs once per token.
    #[test]
    fn repeated_swiotlb_tokens_merge_field_by_field_as_in_linux() {
        let p = |s: &str| BootConfig::parse(s, KNOWN).unwrap().swiotlb;
        let param = |nslabs, nareas, force| SwiotlbParam { nslabs, nareas, force };
        assert_eq!(p("swiotlb=65536 swiotlb=force"), param(Some(65536), None, Some(ForceMode::Force)));
        assert_eq!(p("swiotlb=force swiotlb=65536"), param(Some(65536), None, Some(ForceMode::Force)));
        assert_eq!(p("swiotlb=65536,8 swiotlb=,2"), param(Some(65536), Some(2), None));
        assert_eq!(p("swiotlb=65536,8,force swiotlb=1024"), param(Some(1024), Some(8), Some(ForceMode::Force)));
        assert_eq!(p("swiotlb=1024 quiet swiotlb= swiotlb=,4"), param(Some(1024), Some(4), None));
        // `noforce` sets swiotlb_force_disable, which Linux checks before
        // swiotlb_force_bounce: it wins in either order.
        assert_eq!(p("swiotlb=noforce swiotlb=4096,force").force, Some(ForceMode::NoForce));
        assert_eq!(p("swiotlb=force swiotlb=noforce").force, Some(ForceMode::NoForce));
        assert_eq!(p("swiotlb=force swiotlb=force").force, Some(ForceMode::Force));
        // A bad later token is still an error naming it, whatever came before.
        assert!(matches!(
            BootConfig::parse("swiotlb=65536 swiotlb=12abc", KNOWN),
            Err(CmdlineError::Unexpected { token, .. }) if token == "swiotlb=12abc"
        ));
    }

    #[test]
    fn cmdline_errors() {
        let e = BootConfig::parse("swiotlb.strategy=fancy", KNOWN).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`swiotlb.strategy=fancy`: unknown strategy `fancy` (known: legacy, dynamic, magazine)"
        );
        assert!(matches!(
            BootConfig::parse("swiotlb.strategy=legacy swiotlb.strategy=dynamic", KNOWN),
            Err(CmdlineError::Duplicate { .. })
        ));
        assert!(matches!(BootConfig::parse("swiotlb.fancy.x=1", KNOWN), Err(CmdlineError::UnknownStrategy { .. })));
        assert!(matches!(BootConfig::parse("swiotlb.scrub=maybe", KNOWN), Err(CmdlineError::Unexpected { .. })));
        assert!(matches!(BootConfig::parse("swiotlb.bogus=1", KNOWN), Err(CmdlineError::Unexpected { .. })));
        assert!(matches!(BootConfig::parse("swiotlb.strategy", KNOWN), Err(CmdlineError::Unexpected { .. })));
        assert!(matches!(BootConfig::parse("swiotlb.dynamic.=1", KNOWN), Err(CmdlineError::Unexpected { .. })));
        assert!(matches!(
            BootConfig::parse("swiotlb.dynamic.cap=1 swiotlb.dynamic.cap=2", KNOWN),
            Err(CmdlineError::Duplicate { .. })
        ));
    }

    #[test]
    fn strategy_params() {
        let c =
            BootConfig::parse("swiotlb.magazine.size=0x10 swiotlb.magazine.cap=64M swiotlb.magazine.trim=off", KNOWN)
                .unwrap();
        let p = c.params_for("magazine");
        assert_eq!(p.number("size", 1, 1024).unwrap(), Some(16));
        assert_eq!(p.size("cap", 0, u64::MAX).unwrap(), Some(64 << 20));
        assert_eq!(p.boolean("trim").unwrap(), Some(false));
        assert_eq!(p.number("absent", 0, 1).unwrap(), None);
        assert!(matches!(p.number("size", 32, 64), Err(CmdlineError::OutOfRange { .. })));
        assert!(matches!(p.number("cap", 0, 10), Err(CmdlineError::BadNumber { .. })));
        assert!(p.check_known(&["size", "cap", "trim"]).is_ok());
        let e = p.check_known(&["size", "cap"]).unwrap_err();
        assert!(e.to_string().contains("swiotlb.magazine.trim=off"), "{e}");
    }

    #[test]
    fn number_forms() {
        assert_eq!(parse_ulong("0"), Some(0));
        assert_eq!(parse_ulong("010"), Some(8));
        assert_eq!(parse_ulong("0x1F"), Some(31));
        assert_eq!(parse_ulong("-1"), None);
        assert_eq!(parse_ulong(""), None);
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("0x10M"), Some(16 << 20));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
