//! Record the distribution traffic of a scripted exchange between two real
//! nodes: A dials B through a [`Relay`], runs a script, and the relay's
//! [`Capture`] of that one connection is returned.

use std::time::Duration;

use crate::node::{Node, NodeOptions};
use crate::relay::{Capture, Relay};

/// Limit for the script itself (generous: small, busy CI machines).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Limit for the barrier round trip and for the connection to close.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Traffic exercising what a proxy must handle; run it with
/// [`capture_scenario`]. It sends, from A to B (details in
/// `erl/dg_scenario.erl`, function `rich/1`):
///
/// * 300 fresh atoms in batches of 100, each batch twice (atom cache: new
///   entries, then references), plus non-ASCII and 255-character atoms;
/// * a 1 MiB binary (fragmented by OTP into 64 KiB fragments);
/// * local funs with and without free variables, a local fun naming a
///   local function, export funs (`fun lists:map/2`), and an erl_eval
///   closure (a fun defined in the script itself);
/// * `spawn/4` and `spawn/2` on B (SPAWN_REQUEST / SPAWN_REPLY);
/// * `erlang:monitor` + `demonitor` of a remote process, and a monitor
///   that fires (PAYLOAD_MONITOR_P_EXIT);
/// * `link` + `exit/2` (LINK, EXIT2, and the EXIT coming back), `link` +
///   `unlink` (UNLINK_ID / UNLINK_ID_ACK);
/// * sends to a registered name on B (`{dg_sink, B} ! ...`: REG_SEND);
/// * `rpc:call` (erpc: SPAWN_REQUEST + reply), which also ends the script
///   with a synchronous round trip.
///
/// Its value is `#{b => B, sink_count => 11}` (11 messages reached `dg_sink`).
///
/// Control messages seen in the capture with OTP 25 (checked by
/// `tests/capture.rs`): A→B LINK 1, REG_SEND 6, MONITOR_P 19, DEMONITOR_P 20,
/// SEND_SENDER 22, PAYLOAD_EXIT2 26, SPAWN_REQUEST 29, UNLINK_ID 35; B→A
/// REG_SEND 6, SEND_SENDER 22, PAYLOAD_EXIT 24, PAYLOAD_MONITOR_P_EXIT 28,
/// SPAWN_REPLY 31, UNLINK_ID_ACK 36. A→B is about 1 MiB (the binary goes
/// as one first fragment, `131 69`, plus continuations, `131 70`).
pub const RICH_SCENARIO: &str = "\
%% A closure made by erl_eval itself, as a shell would send it.
{dg_sink, B} ! {shell_fun, fun(X) -> X * 2 end},
dg_scenario:rich(B).";

/// The outcome of [`run_scenario`].
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// The recorded A↔B connection.
    pub capture: Capture,
    /// `~0tp` of the script's value on A.
    pub result: String,
    /// Node names of A (dialler) and B (acceptor).
    pub a: String,
    pub b: String,
    /// How many connections the relay accepted (normally 1; only the first
    /// is in `capture`).
    pub connections: usize,
}

/// Runs `script` and returns the capture. See [`run_scenario`].
pub fn capture_scenario(script: &str) -> Capture {
    run_scenario(script).capture
}

/// Starts node B (with a registered sink process `dg_sink` that accepts any
/// message), a [`Relay`] in front of B, and node A, which reaches B only
/// through the relay (`DG_PORT_<b>` = relay port). Then evaluates `script`
/// on A — an Erlang expression sequence in which the variable `B` is bound to
/// B's node name (an atom) — followed by a synchronous `erpc:call` to B, so
/// every message the script sent has reached B before A is stopped. Returns
/// once the relayed connection has closed in both directions.
///
/// The script must make A talk to B (any send to B connects); panics, with
/// both nodes' output, on any failure or timeout.
pub fn run_scenario(script: &str) -> ScenarioRun {
    let mut b = Node::start("dgb");
    b.eval("dg_scenario:start_sink().");
    let relay = Relay::start(b.addr())
        .unwrap_or_else(|e| panic!("testkit: cannot start relay in front of {}: {e}", b.name()));
    let mut a = Node::start_with(
        "dga",
        NodeOptions {
            peers: vec![(b.alive().to_string(), relay.port())],
            ..NodeOptions::default()
        },
    );
    a.eval(&format!("B = {}.", b.atom()));

    let result = match a.try_eval_timeout(script, SCRIPT_TIMEOUT) {
        Ok(v) => v,
        Err(e) => scenario_failed(&format!("script failed: {e}"), script, &a, &b),
    };
    // Barrier: replies come back over the same connection after everything
    // the script sent, so once this returns B has seen all of it.
    if let Err(e) = a.try_eval_timeout("B = erpc:call(B, erlang, node, [], 30000).", SETTLE_TIMEOUT)
    {
        scenario_failed(
            &format!("barrier round trip to B failed: {e}"),
            script,
            &a,
            &b,
        );
    }
    if relay.connection_count() == 0 {
        scenario_failed("never connected to B through the relay", script, &a, &b);
    }

    // Stop A (closes its end of the connection), then wait for the relay to
    // see both directions end before taking the final snapshot.
    a.stop(SETTLE_TIMEOUT);
    if !relay.wait_closed(SETTLE_TIMEOUT) {
        scenario_failed(
            "connection through the relay did not close after A stopped",
            script,
            &a,
            &b,
        );
    }
    b.stop(SETTLE_TIMEOUT);

    let connections = relay.connection_count();
    let capture = relay.capture(0).unwrap_or_default();
    ScenarioRun {
        capture,
        result,
        a: a.name().to_string(),
        b: b.name().to_string(),
        connections,
    }
}

fn scenario_failed(what: &str, script: &str, a: &Node, b: &Node) -> ! {
    panic!(
        "testkit: scenario {what}\n--- script ---\n{script}\n--- A ({}) output ---\n{}\n\
         --- B ({}) output ---\n{}",
        a.name(),
        a.output(),
        b.name(),
        b.output()
    )
}
