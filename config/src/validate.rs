//! Checks across keys and sections, once every value has decoded: names unique, references
//! resolved, addresses not claimed twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::decode::{suggest, Cx};
use crate::schema::Config;

pub(crate) fn validate(cx: &mut Cx, config: &Config) {
    clusters(cx, config);
    addresses(cx, config);
    routes(cx, config);
}

fn clusters(cx: &mut Cx, config: &Config) {
    if config.clusters.is_empty() {
        cx.error(
            0,
            "cluster",
            "no [[cluster]] in the file: distgate needs at least one".into(),
            Some("add one with name, a cookie source and listen (docs/config.md; examples in deploy/examples/)".into()),
        );
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in config.clusters.iter().enumerate() {
        if let Some(first) = seen.insert(&c.name, i) {
            seen.insert(&c.name, first);
            let path = format!("cluster[{i}].name");
            cx.error_at_key(
                &path,
                0,
                format!("{path}: duplicate cluster name '{}' (also cluster[{first}])", c.name),
                None,
            );
        }
    }
}

fn addresses(cx: &mut Cx, config: &Config) {
    // Everything distgate binds, with the key that asks for it.
    let mut binds: Vec<(SocketAddr, String)> =
        config.clusters.iter().enumerate().map(|(i, c)| (c.listen, format!("cluster[{i}].listen"))).collect();
    if config.metrics.enabled {
        binds.push((config.metrics.listen, "metrics.listen".into()));
    }
    for (j, (addr, path)) in binds.iter().enumerate() {
        if let Some((other, first)) = binds[..j].iter().find(|(a, _)| same_socket(*a, *addr)) {
            let what = if other == addr {
                format!("address {addr} is already used by {first}")
            } else {
                format!("address {addr} collides with {other} ({first})")
            };
            cx.error_at_key(path, 0, format!("{path}: {what}"), None);
        }
    }
    // Per-node port ranges are opened on the cluster's listen IP: they must not collide with
    // each other or with a fixed port on the same IP.
    for (i, c) in config.clusters.iter().enumerate() {
        let Some(range) = c.node_ports else { continue };
        let path = format!("cluster[{i}].node_ports");
        for (addr, other) in &binds {
            if same_ip(addr.ip(), c.listen.ip()) && range.contains(addr.port()) {
                cx.error_at_key(&path, 0, format!("{path}: range {range} contains {addr}, used by {other}"), None);
            }
        }
        for (j, d) in config.clusters[..i].iter().enumerate() {
            if let Some(other) = d.node_ports {
                if same_ip(d.listen.ip(), c.listen.ip()) && other.overlaps(&range) {
                    cx.error_at_key(
                        &path,
                        0,
                        format!("{path}: range {range} overlaps cluster[{j}].node_ports ({other})"),
                        None,
                    );
                }
            }
        }
    }
}

/// Whether two listeners would fight over a port: the same IP, or a wildcard address that
/// covers the other (0.0.0.0:P takes P on every IPv4 address; [::] is dual-stack by default
/// on Linux, so it takes IPv4 too).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let covers = |w: IpAddr, x: IpAddr| w.is_unspecified() && (w.is_ipv6() || x.is_ipv4());
    a == b || covers(a, b) || covers(b, a)
}

fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && same_ip(a.ip(), b.ip())
}

fn routes(cx: &mut Cx, config: &Config) {
    let clusters: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    let policies: Vec<&str> = config.policies.keys().map(String::as_str).collect();
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        for (key, name) in [("from", &r.from), ("to", &r.to)] {
            if !clusters.contains(&name.as_str()) {
                let path = format!("route[{i}].{key}");
                cx.error_at_key(
                    &path,
                    0,
                    format!("{path}: no cluster named '{name}'"),
                    unknown_name_help(name, &clusters, "clusters"),
                );
            }
        }
        if let Some(p) = &r.policy {
            if !policies.contains(&p.as_str()) {
                let path = format!("route[{i}].policy");
                let help = unknown_name_help(p, &policies, "policies")
                    .or_else(|| Some(format!("define it as [policy.{p}], or leave the key out to forward unjudged")));
                cx.error_at_key(&path, 0, format!("{path}: no policy named '{p}'"), help);
            }
        }
        if let Some(first) = seen.get(&(r.from.as_str(), r.to.as_str())) {
            let path = format!("route[{i}]");
            cx.error_at_key(
                &path,
                0,
                format!("{path}: a second route from '{}' to '{}' (also route[{first}])", r.from, r.to),
                Some("one route per direction: it carries that direction's policy".into()),
            );
        } else {
            seen.insert((&r.from, &r.to), i);
        }
    }
}

/// "did you mean 'x'?", or the list of names when there are few, or nothing.
fn unknown_name_help(name: &str, known: &[&str], what: &str) -> Option<String> {
    if let Some(s) = suggest(name, known.iter().copied()) {
        return Some(format!("did you mean '{s}'?"));
    }
    match known.len() {
        0 => None,
        1..=8 => Some(format!("{what}: {}", known.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", "))),
        _ => None,
    }
}
