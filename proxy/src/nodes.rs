//! A cluster's `nodes` (`[[cluster]] nodes`): the only nodes of it that distgate knows, so
//! the only ones it proxies to and mirrors into other clusters.
//!
//! EPMD carries alive names only (`name`, never `name@host`), so lookups, mirrors and NAMES
//! are judged on the name part of each pattern; the whole pattern is judged on the name a
//! target presents in the handshake (see [`crate::link::LinkParams::target_nodes`]).

use distgate_config::{Glob, NodePattern};
use std::fmt;

/// Compiled `nodes` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFilter {
    patterns: Vec<NodePattern>,
    /// The name part of each pattern.
    alive: Vec<Glob>,
}

impl NodeFilter {
    pub fn new(patterns: &[NodePattern]) -> Result<NodeFilter, String> {
        let alive = patterns
            .iter()
            .map(|p| {
                let name = p.as_str().split('@').next().unwrap_or_default();
                Glob::parse(name).map_err(|e| format!("nodes pattern {p}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(NodeFilter { patterns: patterns.to_vec(), alive })
    }

    /// Whether a node with this alive name may be one distgate knows (its host is not known
    /// yet).
    pub fn knows_alive(&self, alive: &str) -> bool {
        !alive.contains('@') && self.alive.iter().any(|g| g.matches(alive))
    }

    /// Whether distgate knows the node `name@host`.
    pub fn knows(&self, node: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(node))
    }
}

impl fmt::Display for NodeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.patterns.iter().map(NodePattern::as_str).collect();
        write!(f, "[{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pats: &[&str]) -> NodeFilter {
        let pats: Vec<NodePattern> = pats.iter().map(|p| NodePattern::parse(p).unwrap()).collect();
        NodeFilter::new(&pats).unwrap()
    }

    #[test]
    fn alive_names_are_judged_on_the_name_part_full_names_on_the_whole_pattern() {
        let f = filter(&["core*@*", "db@10.0.0.*"]);
        for yes in ["core", "core1", "db"] {
            assert!(f.knows_alive(yes), "{yes}");
        }
        for no in ["web", "db1", "xcore", "core@h", ""] {
            assert!(!f.knows_alive(no), "{no}");
        }
        assert!(f.knows("core7@anyhost"));
        assert!(f.knows("db@10.0.0.3"));
        assert!(!f.knows("db@10.0.1.3"), "the host part counts once it is known");
        assert!(!f.knows("web@10.0.0.3"));
        assert_eq!(f.to_string(), "[core*@*, db@10.0.0.*]");
    }
}
