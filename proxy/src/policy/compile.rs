//! A `[policy.NAME]` compiled for the forwarding path: every lookup the engine makes per
//! message is a table index or a hash lookup, built once here when the configuration is
//! (re)loaded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use distgate_config::{ControlOp, DenyAction, FunAction, Glob, MfPattern, Mfa, Policy, Preset};

/// Registered names a message to which is never allowed under the `untrusted` preset,
/// whatever `reg_send_allow` says: they stop the node or load code.
pub const UNTRUSTED_NAMES: &[&[u8]] = &[b"init", b"code_server", b"erl_prim_loader"];

use crate::fasthash::{FastMap, KeyMap};
/// module → lambda name → (arity if given, target).
type FunMap = FastMap<String, FastMap<String, Vec<(Option<u8>, Mfa)>>>;

/// A `*` pattern split once into its literal pieces, matched on an atom's UTF-8 bytes
/// without allocating (the configuration's `Glob::matches` collects its pieces on every
/// call). Same semantics: `*` matches any run of characters, the empty one included (on
/// UTF-8, a byte-wise match of literal pieces is a character-wise match).
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `*`.
    Any,
    /// `prefix*`.
    Prefix(Vec<u8>),
    /// `*suffix`.
    Suffix(Vec<u8>),
    /// Anything else: the pieces between stars (`pieces.len() == stars + 1`).
    Pieces(Vec<Vec<u8>>),
}

impl Pattern {
    pub fn new(g: &Glob) -> Pattern {
        let pieces: Vec<Vec<u8>> = g.as_str().split('*').map(|p| p.as_bytes().to_vec()).collect();
        match pieces.as_slice() {
            [a, b] if a.is_empty() && b.is_empty() => Pattern::Any,
            [a, b] if b.is_empty() => Pattern::Prefix(a.clone()),
            [a, b] if a.is_empty() => Pattern::Suffix(b.clone()),
            _ => Pattern::Pieces(pieces),
        }
    }

    #[inline]
    pub fn matches(&self, name: &[u8]) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => name.starts_with(p),
            Pattern::Suffix(s) => name.ends_with(s),
            Pattern::Pieces(pieces) => Pattern::matches_pieces(pieces, name),
        }
    }

    fn matches_pieces(pieces: &[Vec<u8>], name: &[u8]) -> bool {
        let (first, rest) = match pieces.split_first() {
            Some(x) => x,
            None => return name.is_empty(),
        };
        let Some(mut tail) = name.strip_prefix(first.as_slice()) else { return false };
        let Some((last, middle)) = rest.split_last() else { return tail.is_empty() };
        // The leftmost match of each middle piece is optimal for `*`-only patterns.
        for piece in middle {
            let at = if piece.is_empty() { Some(0) } else { tail.windows(piece.len()).position(|w| w == piece.as_slice()) };
            match at {
                Some(i) => tail = &tail[i + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last)
    }
}

/// A set of names (registered names): literal names looked up (see [`KeyMap`]), patterns with
/// `*` tried in order.
#[derive(Debug, Default)]
pub struct NameSet {
    exact: KeyMap<()>,
    globs: Vec<Pattern>,
}

impl NameSet {
    fn new(list: &[Glob]) -> NameSet {
        let mut s = NameSet::default();
        for g in list {
            if g.is_literal() {
                s.exact.entry(g.as_str().as_bytes(), || ());
            } else {
                s.globs.push(Pattern::new(g));
            }
        }
        s
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.exact.get(name).is_some() || self.globs.iter().any(|g| g.matches(name))
    }
}

/// One `M:F[/A]` pattern, matched without allocating.
#[derive(Debug, Clone)]
struct Mf {
    module: Pattern,
    function: Pattern,
    arity: Option<u8>,
}

impl Mf {
    fn new(p: &MfPattern) -> Mf {
        Mf { module: Pattern::new(&p.module), function: Pattern::new(&p.function), arity: p.arity }
    }
    fn matches(&self, module: &[u8], function: &[u8], arity: Option<u8>) -> bool {
        self.module.matches(module)
            && self.function.matches(function)
            && match (self.arity, arity) {
                (Some(want), got) => got == Some(want),
                (None, _) => true,
            }
    }
}

/// A set of `M:F[/A]` patterns: patterns with a literal module are found by their module
/// (see [`KeyMap`]), the others are tried in order.
#[derive(Debug, Default)]
pub struct MfSet {
    by_module: KeyMap<Vec<Mf>>,
    wild: Vec<Mf>,
}

impl MfSet {
    fn new(list: &[MfPattern]) -> MfSet {
        let mut s = MfSet::default();
        for p in list {
            if p.module.is_literal() {
                s.by_module.entry(p.module.as_str().as_bytes(), Vec::new).push(Mf::new(p));
            } else {
                s.wild.push(Mf::new(p));
            }
        }
        s
    }

    pub fn contains(&self, module: &[u8], function: &[u8], arity: Option<u8>) -> bool {
        self.by_module.get(module).is_some_and(|v| v.iter().any(|p| p.matches(module, function, arity)))
            || self.wild.iter().any(|p| p.matches(module, function, arity))
    }
}

/// An allow-list: absent (anything), or a list (possibly empty: nothing).
#[derive(Debug)]
pub enum Allow<T> {
    Any,
    Only(T),
}

impl Allow<NameSet> {
    pub fn allows(&self, name: &[u8]) -> bool {
        match self {
            Allow::Any => true,
            Allow::Only(s) => s.contains(name),
        }
    }
}

impl Allow<MfSet> {
    pub fn allows(&self, module: &[u8], function: &[u8], arity: Option<u8>) -> bool {
        match self {
            Allow::Any => true,
            Allow::Only(s) => s.contains(module, function, arity),
        }
    }
    pub fn is_any(&self) -> bool {
        matches!(self, Allow::Any)
    }
}

/// Audit lines allowed per second, shared by every link using the policy.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    epoch: Instant,
    /// High 32 bits: the second (since `epoch`) the count is for; low 32: lines in it.
    state: AtomicU64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit { per_second, epoch: Instant::now(), state: AtomicU64::new(0) }
    }

    /// Whether any line may be logged at all (`audit_per_second = 0`: counters only).
    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }

    /// Take one line's allowance at `now`; false when this second's allowance is spent.
    pub fn allow(&self, now: Instant) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let sec = now.saturating_duration_since(self.epoch).as_secs() as u32;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (win, used) = ((cur >> 32) as u32, cur as u32);
            let next_used = if win == sec { used + 1 } else { 1 };
            if win == sec && used >= self.per_second {
                return false;
            }
            let next = ((sec as u64) << 32) | next_used as u64;
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now_cur) => cur = now_cur,
            }
        }
    }
}

/// A policy ready for the forwarding path. Built from the configuration's [`Policy`].
#[derive(Debug)]
pub struct Compiled {
    pub name: String,
    pub dry_run: bool,
    pub untrusted: bool,
    pub unknown_fun: FunAction,
    pub unknown_export: FunAction,
    pub rewrite_fallback: FunAction,
    modules_exact: FastMap<String, (Option<FunAction>, Option<FunAction>)>,
    modules_glob: Vec<(Pattern, Option<FunAction>, Option<FunAction>)>,
    fun_map: FunMap,
    /// Op number → allowed by `allow_ops` / `deny_ops` (and the preset).
    ops: [bool; 256],
    pub spawn_allow: Allow<MfSet>,
    pub reg_send_allow: Allow<NameSet>,
    pub rpc_allow: Allow<MfSet>,
    pub on_deny: DenyAction,
    /// True when no control rule can deny anything: control messages need no look.
    pub control_open: bool,
    /// False when every fun action is `pass`: funs need no look (no walk for them at all).
    pub funs_matter: bool,
    pub audit: RateLimit,
}

impl Compiled {
    pub fn new(p: &Policy) -> Compiled {
        let untrusted = p.preset == Preset::Untrusted;
        let c = &p.control;
        let mut ops = [false; 256];
        for (code, slot) in ops.iter_mut().enumerate() {
            *slot = c.op_allowed(code as u8);
        }
        if untrusted {
            // GROUP_LEADER makes a process of the target send its io to a process of the
            // sender: the io-request half of the preset.
            for &code in ControlOp::GroupLeader.codes() {
                ops[code as usize] = false;
            }
        }
        // Absent allow-lists: anything, or nothing under `untrusted`.
        let names = |l: &Option<Vec<Glob>>| match (l, untrusted) {
            (Some(l), _) => Allow::Only(NameSet::new(l)),
            (None, true) => Allow::Only(NameSet::default()),
            (None, false) => Allow::Any,
        };
        let mfs = |l: &Option<Vec<MfPattern>>| match (l, untrusted) {
            (Some(l), _) => Allow::Only(MfSet::new(l)),
            (None, true) => Allow::Only(MfSet::default()),
            (None, false) => Allow::Any,
        };
        let mut modules_exact = FastMap::default();
        let mut modules_glob = Vec::new();
        for r in &p.modules {
            if r.pattern.is_literal() {
                // Validation refuses a literal shadowed by an earlier pattern, so looking
                // literals up first keeps "first match wins".
                modules_exact.entry(r.pattern.as_str().to_string()).or_insert((r.unknown_fun, r.unknown_export));
            } else {
                modules_glob.push((Pattern::new(&r.pattern), r.unknown_fun, r.unknown_export));
            }
        }
        let mut fun_map = FunMap::default();
        for m in &p.fun_map {
            fun_map
                .entry(m.fun.module.clone())
                .or_default()
                .entry(m.fun.function.clone())
                .or_default()
                .push((m.fun.arity, m.target.clone()));
        }
        let spawn_allow = mfs(&c.spawn_allow);
        let reg_send_allow = names(&c.reg_send_allow);
        let rpc_allow = mfs(&c.rpc_allow);
        let control_open = !untrusted
            && ops.iter().all(|&a| a)
            && matches!(spawn_allow, Allow::Any)
            && matches!(reg_send_allow, Allow::Any)
            && matches!(rpc_allow, Allow::Any);
        let funs_matter = p.unknown_fun != FunAction::Pass
            || p.unknown_export != FunAction::Pass
            || p.modules.iter().any(|r| {
                r.unknown_fun.is_some_and(|a| a != FunAction::Pass) || r.unknown_export.is_some_and(|a| a != FunAction::Pass)
            });
        Compiled {
            name: p.name.clone(),
            dry_run: p.dry_run,
            untrusted,
            unknown_fun: p.unknown_fun,
            unknown_export: p.unknown_export,
            rewrite_fallback: p.rewrite_fallback,
            modules_exact,
            modules_glob,
            fun_map,
            ops,
            spawn_allow,
            reg_send_allow,
            rpc_allow,
            on_deny: c.on_deny,
            control_open,
            funs_matter,
            audit: RateLimit::new(p.audit_per_second),
        }
    }

    /// Compile the body of a `[policy.NAME]` table given as TOML text, checked as distgate
    /// checks a configuration file (tests, benchmarks, tools). Sub-tables are written
    /// `[policy.NAME.control]` etc.
    pub fn parse(name: &str, body: &str) -> Result<Compiled, String> {
        let src = format!(
            "[[cluster]]\nname = \"a\"\ncookie = \"unused\"\nlisten = \"127.0.0.1:4370\"\n\
             [[route]]\nfrom = \"a\"\nto = \"a\"\npolicy = \"{name}\"\n[policy.{name}]\n{body}"
        );
        let cfg = distgate_config::parse(&src, &format!("policy {name}")).map_err(|e| e.to_string())?;
        let p = cfg.policy_for("a", "a").ok_or("no policy")?;
        Ok(Compiled::new(p))
    }

    fn module_rule(&self, module: &str) -> Option<(Option<FunAction>, Option<FunAction>)> {
        if let Some(r) = self.modules_exact.get(module) {
            return Some(*r);
        }
        self.modules_glob.iter().find(|(g, _, _)| g.matches(module.as_bytes())).map(|(_, f, e)| (*f, *e))
    }

    /// What to do with a local fun of `module` the target cannot run.
    pub fn unknown_fun_for(&self, module: &str) -> FunAction {
        self.module_rule(module).and_then(|r| r.0).unwrap_or(self.unknown_fun)
    }

    /// What to do with an export fun of `module` the target does not export.
    pub fn unknown_export_for(&self, module: &str) -> FunAction {
        self.module_rule(module).and_then(|r| r.1).unwrap_or(self.unknown_export)
    }

    /// The `fun_map` target of lambda `lambda` (FunT name) of `module`, whose FunT arity
    /// (free variables included) is `arity`.
    pub fn mapping(&self, module: &str, lambda: &str, arity: u8) -> Option<&Mfa> {
        self.fun_map
            .get(module)?
            .get(lambda)?
            .iter()
            .find(|(a, _)| a.is_none_or(|a| a == arity))
            .map(|(_, t)| t)
    }

    /// Whether op number `op` passes `allow_ops` / `deny_ops` (and the preset).
    #[inline]
    pub fn op_allowed(&self, op: u8) -> bool {
        self.ops[op as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Compiled {
        Compiled::parse("p", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn module_rules_first_match_wins_and_fall_back_to_defaults() {
        let p = policy(
            "unknown_fun = \"drop\"\n[policy.p.modules]\n\"m\" = { unknown_export = \"close\" }\n\
             \"my_*\" = { unknown_fun = \"rewrite\" }\n\"*\" = { unknown_fun = \"replace\" }\n",
        );
        // The literal entry matches first and sets no unknown_fun: the default applies.
        assert_eq!(p.unknown_fun_for("m"), FunAction::Drop);
        assert_eq!(p.unknown_export_for("m"), FunAction::Close);
        assert_eq!(p.unknown_fun_for("my_app"), FunAction::Rewrite);
        assert_eq!(p.unknown_fun_for("other"), FunAction::Replace);
        assert_eq!(p.unknown_export_for("other"), FunAction::Pass);
    }

    #[test]
    fn allow_lists_absent_mean_any_or_nothing_under_untrusted() {
        let open = policy("");
        assert!(open.control_open);
        assert!(open.spawn_allow.allows(b"os", b"cmd", Some(1)));
        let closed = policy("preset = \"untrusted\"\n");
        assert!(!closed.control_open);
        assert!(!closed.spawn_allow.allows(b"os", b"cmd", Some(1)));
        assert!(!closed.reg_send_allow.allows(b"anything"));
        assert!(!closed.op_allowed(7), "group_leader is denied by the preset");
        assert!(closed.op_allowed(2));
        let listed = policy(
            "preset = \"untrusted\"\n[policy.p.control]\nspawn_allow = [\"m:f/1\", \"lists:*\"]\n\
             reg_send_allow = [\"dg_*\", \"net_kernel\"]\nrpc_allow = [\"*:node\"]\ndeny_ops = [\"exit2\"]\n",
        );
        assert!(listed.spawn_allow.allows(b"m", b"f", Some(1)));
        assert!(!listed.spawn_allow.allows(b"m", b"f", Some(2)));
        assert!(listed.spawn_allow.allows(b"lists", b"reverse", Some(1)));
        assert!(listed.reg_send_allow.allows(b"dg_sink") && listed.reg_send_allow.allows(b"net_kernel"));
        assert!(!listed.reg_send_allow.allows(b"rex"));
        assert!(listed.rpc_allow.allows(b"erlang", b"node", Some(0)));
        assert!(!listed.op_allowed(8) && !listed.op_allowed(18));
    }

    #[test]
    fn fun_map_by_module_lambda_and_optional_arity() {
        let p = policy(
            "[policy.p.fun_map]\n\"m:'-f/1-fun-0-'/1\" = \"m:g/1\"\n\"m:'-h/0-fun-0-'\" = \"m:h2/0\"\n",
        );
        assert_eq!(p.mapping("m", "-f/1-fun-0-", 1).map(|t| t.to_string()), Some("m:g/1".into()));
        assert_eq!(p.mapping("m", "-f/1-fun-0-", 2), None);
        assert!(p.mapping("m", "-h/0-fun-0-", 7).is_some());
        assert_eq!(p.mapping("n", "-h/0-fun-0-", 0), None);
    }

    #[test]
    fn patterns_match_as_the_configuration_globs_do() {
        let names = ["", "a", "ab", "abc", "my_app", "my_app_sup", "xmy_", "rex", "a*b", "aXbXc"];
        for pat in ["*", "a", "a*", "*c", "a*c", "my_*", "*_sup", "a*b*c", "*a*", "rex", "**x"] {
            let Ok(g) = Glob::parse(pat) else { continue };
            let p = Pattern::new(&g);
            for n in names {
                assert_eq!(p.matches(n.as_bytes()), g.matches(n), "{pat} vs {n:?}");
            }
        }
    }

    #[test]
    fn rate_limit_per_second() {
        let r = RateLimit::new(3);
        let t0 = r.epoch;
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + std::time::Duration::from_secs(1)));
        assert!(!RateLimit::new(0).allow(t0));
    }
}
