//! `[policy.NAME]`: what distgate does with funs and control messages on a route.
//!
//! This module holds the policy's *configuration* and the small pure lookups over it (which
//! action applies to a module, which op is allowed, which mapping names a fun). Judging frames
//! is the policy engine's job (`proxy/src/policy/`); the meaning of each key is documented in
//! docs/config.md, which is the contract between the two.

use std::collections::BTreeMap;

use toml::de::DeValue;

use crate::decode::{join, keyword_enum, parse_str, type_error, Cx, Table};
use crate::pattern::{Glob, MfPattern, Mfa};
use crate::schema::check_name;

keyword_enum! {
    /// What to do with a fun the target cluster cannot run.
    pub enum FunAction ("fun action") {
        /// Forward it unchanged (the far side raises `badfun` if it is called).
        Pass = "pass",
        /// Replace a local fun by `fun M:F/A` when provably the same function (no free
        /// variables and the lambda names an exported function, or a `fun_map` entry);
        /// otherwise do `rewrite_fallback`.
        Rewrite = "rewrite",
        /// Substitute the documented marker term naming the fun.
        Replace = "replace",
        /// Drop the whole message (the stream stays intact).
        Drop = "drop",
        /// Close the link.
        Close = "close",
    }
}

keyword_enum! {
    /// A starting set of control rules.
    pub enum Preset ("preset") {
        /// No rules beyond those written.
        None = "none",
        /// Block the dangerous shapes (system messages, supervisor child calls, remote code
        /// loading, io requests, spawn of arbitrary MFAs); an absent allow-list allows nothing.
        Untrusted = "untrusted",
    }
}

keyword_enum! {
    /// What to do with a control message the rules deny. A denied `spawn_request` is always
    /// answered with a `SPAWN_REPLY` error as well, so the caller does not hang.
    pub enum DenyAction ("deny action") {
        Drop = "drop",
        Close = "close",
    }
}

keyword_enum! {
    /// Control message kinds, by family: each name covers the op and its trace-token (`_TT`)
    /// twin. Codes are OTP's (`dist.h`); see [`ControlOp::codes`].
    pub enum ControlOp ("control op") {
        Link = "link",
        Send = "send",
        Exit = "exit",
        Unlink = "unlink",
        NodeLink = "node_link",
        RegSend = "reg_send",
        GroupLeader = "group_leader",
        Exit2 = "exit2",
        Monitor = "monitor",
        Demonitor = "demonitor",
        MonitorExit = "monitor_exit",
        SendSender = "send_sender",
        PayloadExit = "payload_exit",
        PayloadExit2 = "payload_exit2",
        PayloadMonitorExit = "payload_monitor_exit",
        SpawnRequest = "spawn_request",
        SpawnReply = "spawn_reply",
        AliasSend = "alias_send",
        UnlinkId = "unlink_id",
        UnlinkIdAck = "unlink_id_ack",
        AltactSigSend = "altact_sig_send",
    }
}

impl ControlOp {
    /// The distribution op numbers this family covers (plain, then `_TT`).
    pub fn codes(self) -> &'static [u8] {
        use ControlOp::*;
        match self {
            Link => &[1],
            Send => &[2, 12],
            Exit => &[3, 13],
            Unlink => &[4],
            NodeLink => &[5],
            RegSend => &[6, 16],
            GroupLeader => &[7],
            Exit2 => &[8, 18],
            Monitor => &[19],
            Demonitor => &[20],
            MonitorExit => &[21],
            SendSender => &[22, 23],
            PayloadExit => &[24, 25],
            PayloadExit2 => &[26, 27],
            PayloadMonitorExit => &[28],
            SpawnRequest => &[29, 30],
            SpawnReply => &[31, 32],
            AliasSend => &[33, 34],
            UnlinkId => &[35],
            UnlinkIdAck => &[36],
            AltactSigSend => &[37],
        }
    }

    /// The family of an op number; `None` for numbers OTP does not define.
    pub fn from_code(code: u8) -> Option<ControlOp> {
        ControlOp::NAMES.iter().filter_map(|n| ControlOp::from_name(n)).find(|op| op.codes().contains(&code))
    }
}

/// One `[policy.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub preset: Preset,
    /// Decide and log, but forward everything unchanged.
    pub dry_run: bool,
    /// A local fun whose module version the target does not have.
    pub unknown_fun: FunAction,
    /// An export fun `fun M:F/A` the target does not export (when the registry knows).
    pub unknown_export: FunAction,
    /// What `rewrite` does when the rewrite is not provably the same function. Never
    /// `Rewrite`.
    pub rewrite_fallback: FunAction,
    /// Audit lines per second at most (excess is counted, not logged); 0: counters only.
    pub audit_per_second: u32,
    /// Per-module overrides, in file order; the first matching pattern applies.
    pub modules: Vec<ModuleRule>,
    /// Explicit rewrites: a lambda (by module and lambda name) → an exported function.
    pub fun_map: Vec<FunMapping>,
    pub control: ControlRules,
}

impl Policy {
    /// The first module rule matching `module`.
    pub fn module_rule(&self, module: &str) -> Option<&ModuleRule> {
        self.modules.iter().find(|r| r.pattern.matches(module))
    }

    pub fn unknown_fun_for(&self, module: &str) -> FunAction {
        self.module_rule(module).and_then(|r| r.unknown_fun).unwrap_or(self.unknown_fun)
    }

    pub fn unknown_export_for(&self, module: &str) -> FunAction {
        self.module_rule(module).and_then(|r| r.unknown_export).unwrap_or(self.unknown_export)
    }

    /// The export a lambda is mapped to. `lambda` is the lambda's function name as in the
    /// module's FunT chunk (`-f/1-fun-0-`), `arity` its arity (free variables included).
    pub fn mapping(&self, module: &str, lambda: &str, arity: u8) -> Option<&Mfa> {
        self.fun_map
            .iter()
            .find(|m| m.fun.module == module && m.fun.function == lambda && m.fun.arity.is_none_or(|a| a == arity))
            .map(|m| &m.target)
    }
}

/// One entry of `[policy.NAME.modules]`: `"PATTERN" = { unknown_fun = …, unknown_export = … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRule {
    pub pattern: Glob,
    pub unknown_fun: Option<FunAction>,
    pub unknown_export: Option<FunAction>,
}

/// One entry of `[policy.NAME.fun_map]`: `"m:'-f/1-fun-0-'" = "m:f/1"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunMapping {
    /// The lambda: module, lambda name, and arity if given.
    pub fun: Mfa,
    /// The export to rewrite it to; arity always given.
    pub target: Mfa,
}

/// `[policy.NAME.control]`. For the allow-lists, `None` means the key is absent: no
/// restriction, or under `preset = "untrusted"` nothing allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRules {
    /// Only these op families pass; `None`: all.
    pub allow_ops: Option<Vec<ControlOp>>,
    /// These op families never pass.
    pub deny_ops: Vec<ControlOp>,
    /// `spawn_request` of these `M:F[/A]` only.
    pub spawn_allow: Option<Vec<MfPattern>>,
    /// `reg_send` to these registered names only.
    pub reg_send_allow: Option<Vec<Glob>>,
    /// `rpc` through `rex` and `erpc` (`spawn_request` of `erpc:execute_call`) to these
    /// `M:F[/A]` only.
    pub rpc_allow: Option<Vec<MfPattern>>,
    pub on_deny: DenyAction,
}

impl Default for ControlRules {
    fn default() -> Self {
        ControlRules {
            allow_ops: None,
            deny_ops: Vec::new(),
            spawn_allow: None,
            reg_send_allow: None,
            rpc_allow: None,
            on_deny: DenyAction::Drop,
        }
    }
}

impl ControlRules {
    /// Whether `allow_ops` / `deny_ops` let op number `code` through. Unknown numbers pass
    /// only when no `allow_ops` list is given (the codec decides whether it can parse them).
    pub fn op_allowed(&self, code: u8) -> bool {
        let family = ControlOp::from_code(code);
        let allowed = match (&self.allow_ops, family) {
            (None, _) => true,
            (Some(list), Some(op)) => list.contains(&op),
            (Some(_), None) => false,
        };
        allowed && !family.is_some_and(|op| self.deny_ops.contains(&op))
    }
}

pub(crate) fn decode_policies(cx: &mut Cx, t: Table<'_>) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    let base = t.path.clone();
    for (name, key_span, v) in t.entries(cx) {
        let path = join(&base, &name);
        if let Err(m) = check_name(&name) {
            cx.error(key_span.start, &path, format!("policy name: {m}"), None);
            continue;
        }
        let DeValue::Table(map) = v.get_ref() else {
            type_error(cx, &path, v, "a table ([policy.NAME])");
            continue;
        };
        let table = Table::new(path.clone(), format!("[{path}]"), v.span(), map);
        if let Some(p) = decode_policy(cx, name.clone(), table) {
            out.insert(name, p);
        }
    }
    out
}

fn decode_policy(cx: &mut Cx, name: String, mut t: Table<'_>) -> Option<Policy> {
    let preset = t.get::<Preset>(cx, "preset").unwrap_or(Preset::None);
    let dry_run = t.get::<bool>(cx, "dry_run").unwrap_or(false);
    let unknown_fun = t.get::<FunAction>(cx, "unknown_fun").unwrap_or(FunAction::Pass);
    let unknown_export = t.get::<FunAction>(cx, "unknown_export").unwrap_or(FunAction::Pass);
    let rewrite_fallback = t
        .get_checked::<FunAction>(cx, "rewrite_fallback", |a| {
            if *a == FunAction::Rewrite {
                Err("cannot be 'rewrite' (it is what happens when rewriting is impossible)".into())
            } else {
                Ok(())
            }
        })
        .unwrap_or(FunAction::Replace);
    let audit_per_second = t.get::<u32>(cx, "audit_per_second").unwrap_or(100);
    let modules = t.table(cx, "modules").map(|m| decode_modules(cx, m)).unwrap_or_default();
    let fun_map = t.table(cx, "fun_map").map(|m| decode_fun_map(cx, m)).unwrap_or_default();
    let control = t.table(cx, "control").map(|c| decode_control(cx, c)).unwrap_or_default();
    t.finish(cx);
    Some(Policy {
        name,
        preset,
        dry_run,
        unknown_fun,
        unknown_export,
        rewrite_fallback,
        audit_per_second,
        modules,
        fun_map,
        control,
    })
}

fn decode_modules(cx: &mut Cx, t: Table<'_>) -> Vec<ModuleRule> {
    let base = t.path.clone();
    let header = t.header.clone();
    let mut rules: Vec<(ModuleRule, String)> = Vec::new();
    for (key, key_span, v) in t.entries(cx) {
        let path = join(&base, &key);
        let pattern = match Glob::parse(&key) {
            Ok(g) => g,
            Err(m) => {
                cx.error(key_span.start, &path, format!("{path}: invalid module pattern: {m}"), None);
                continue;
            }
        };
        let DeValue::Table(map) = v.get_ref() else {
            type_error(cx, &path, v, "a table such as { unknown_fun = \"drop\" }");
            continue;
        };
        let mut rt = Table::new(path.clone(), format!("{header} entry {key:?}"), v.span(), map);
        let unknown_fun = rt.get::<FunAction>(cx, "unknown_fun");
        let unknown_export = rt.get::<FunAction>(cx, "unknown_export");
        let empty = rt.span_of("unknown_fun").is_none() && rt.span_of("unknown_export").is_none();
        rt.finish(cx);
        if empty && map.is_empty() {
            cx.error(
                v.span().start,
                &path,
                format!("{path}: sets nothing"),
                Some("give unknown_fun and/or unknown_export".into()),
            );
        }
        // First match wins, so a later exact name that an earlier pattern already matches
        // would never apply: almost certainly the entries are in the wrong order.
        if let Some((earlier, _)) =
            rules.iter().find(|(r, _)| pattern.is_literal() && r.pattern.matches(pattern.as_str()))
        {
            cx.error(
                key_span.start,
                &path,
                format!(
                    "{path}: never applies: the earlier pattern '{}' already matches '{}'",
                    earlier.pattern.as_str(),
                    pattern.as_str()
                ),
                Some("the first matching pattern wins; put the more specific one first".into()),
            );
        }
        rules.push((ModuleRule { pattern, unknown_fun, unknown_export }, path));
    }
    rules.into_iter().map(|(r, _)| r).collect()
}

fn decode_fun_map(cx: &mut Cx, t: Table<'_>) -> Vec<FunMapping> {
    let base = t.path.clone();
    let mut out: Vec<FunMapping> = Vec::new();
    for (key, key_span, v) in t.entries(cx) {
        let path = join(&base, &key);
        let fun = match Mfa::parse(&key) {
            Ok(f) => Some(f),
            Err(m) => {
                cx.error(
                    key_span.start,
                    &path,
                    format!("{path}: invalid fun: {m}"),
                    Some("write the lambda as module:'lambda name', e.g. \"m:'-f/1-fun-0-'\"".into()),
                );
                None
            }
        };
        let target = parse_str(cx, &path, v, "an exported function such as \"m:f/1\"", |s| {
            let mfa = Mfa::parse(s).map_err(|m| (format!("invalid target: {m}"), None))?;
            if mfa.arity.is_none() {
                return Err((format!("target '{s}' needs an arity"), Some(format!("write \"{s}/N\""))));
            }
            Ok(mfa)
        });
        if let (Some(fun), Some(target)) = (fun, target) {
            if out.iter().any(|m| m.fun == fun) {
                cx.error(key_span.start, &path, format!("{path}: '{fun}' is mapped twice"), None);
                continue;
            }
            out.push(FunMapping { fun, target });
        }
    }
    out
}

fn decode_control(cx: &mut Cx, mut t: Table<'_>) -> ControlRules {
    let allow_ops = t.get::<Vec<ControlOp>>(cx, "allow_ops");
    let deny_ops = t.get::<Vec<ControlOp>>(cx, "deny_ops").unwrap_or_default();
    if let Some(allow) = &allow_ops {
        if let Some(both) = deny_ops.iter().find(|op| allow.contains(op)) {
            let path = t.key_path("deny_ops");
            cx.error_at_key(&path, t.span.start, format!("{path}: '{both}' is both allowed and denied"), None);
        }
    }
    let rules = ControlRules {
        allow_ops,
        deny_ops,
        spawn_allow: t.get::<Vec<MfPattern>>(cx, "spawn_allow"),
        reg_send_allow: t.get::<Vec<Glob>>(cx, "reg_send_allow"),
        rpc_allow: t.get::<Vec<MfPattern>>(cx, "rpc_allow"),
        on_deny: t.get::<DenyAction>(cx, "on_deny").unwrap_or(DenyAction::Drop),
    };
    t.finish(cx);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_code_has_one_family() {
        let mut seen = std::collections::BTreeSet::new();
        for name in ControlOp::NAMES {
            let op = ControlOp::from_name(name).unwrap();
            for &c in op.codes() {
                assert!(seen.insert(c), "code {c} in two families");
                assert_eq!(ControlOp::from_code(c), Some(op));
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [(1..=8).collect::<Vec<u8>>(), (12..=13).collect(), vec![16], (18..=37).collect()].concat()
        );
        assert_eq!(ControlOp::from_code(9), None);
    }

    #[test]
    fn op_rules() {
        let mut r = ControlRules::default();
        assert!(r.op_allowed(29));
        r.deny_ops = vec![ControlOp::SpawnRequest];
        assert!(!r.op_allowed(29) && !r.op_allowed(30) && r.op_allowed(2));
        r.allow_ops = Some(vec![ControlOp::Send, ControlOp::RegSend]);
        assert!(r.op_allowed(2) && r.op_allowed(12) && r.op_allowed(16));
        assert!(!r.op_allowed(1) && !r.op_allowed(99));
    }
}
