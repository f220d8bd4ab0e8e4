//! EPMD: the request/response codec, a client for upstream EPMDs, and distgate's responder.
//!
//! Every request is `Len:16` then the request. A node's registration (ALIVE2) lives as long as
//! its TCP connection; PORT_PLEASE2 and NAMES get one answer and the connection closes.
//!
//! distgate answers EPMD for each cluster side it serves: a side's own nodes register with its
//! responder; a name asked for that belongs to another side (found in that side's responder
//! table or through that side's upstream EPMD) is answered with a distgate port dedicated to
//! that remote node, so the dialler connects to distgate without knowing it. EPMD is control
//! plane: a thread per connection with timeouts, never on the forwarding path.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const ALIVE2_REQ: u8 = 120;
pub const ALIVE2_X_RESP: u8 = 118;
pub const ALIVE2_RESP: u8 = 121;
pub const PORT_PLEASE2_REQ: u8 = 122;
pub const PORT2_RESP: u8 = 119;
pub const NAMES_REQ: u8 = 110;

/// Node type in ALIVE2 / PORT2_RESP.
pub const NORMAL_NODE: u8 = 77;
pub const HIDDEN_NODE: u8 = 72;

/// What a node registers, and what PORT_PLEASE2 returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub port: u16,
    pub node_type: u8,
    pub protocol: u8,
    pub highest: u16,
    pub lowest: u16,
    pub name: String,
    pub extra: Vec<u8>,
}

impl NodeInfo {
    /// Encode from PortNo onward (the shared tail of ALIVE2_REQ and PORT2_RESP).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(self.node_type);
        out.push(self.protocol);
        out.extend_from_slice(&self.highest.to_be_bytes());
        out.extend_from_slice(&self.lowest.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.extra.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.extra);
    }

    pub fn parse(b: &[u8]) -> Result<NodeInfo, String> {
        let u16_at = |at: usize| -> Result<u16, String> {
            b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or_else(|| format!("truncated at byte {at}"))
        };
        let port = u16_at(0)?;
        let node_type = *b.get(2).ok_or("truncated at byte 2")?;
        let protocol = *b.get(3).ok_or("truncated at byte 3")?;
        let highest = u16_at(4)?;
        let lowest = u16_at(6)?;
        let nlen = u16_at(8)? as usize;
        let name = b.get(10..10 + nlen).ok_or("name runs past the end")?;
        let name = std::str::from_utf8(name).map_err(|_| "name is not UTF-8")?.to_string();
        if name.is_empty() || name.contains('@') {
            return Err(format!("bad node name {name:?}"));
        }
        let elen = u16_at(10 + nlen)? as usize;
        let extra = b.get(12 + nlen..12 + nlen + elen).ok_or("extra runs past the end")?.to_vec();
        Ok(NodeInfo { port, node_type, protocol, highest, lowest, name, extra })
    }
}

/// A request to an EPMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Alive2(NodeInfo),
    PortPlease2(String),
    Names,
}

impl Request {
    /// Parse a request body (after its 2-byte length).
    pub fn parse(b: &[u8]) -> Result<Request, String> {
        match b.first() {
            Some(&ALIVE2_REQ) => Ok(Request::Alive2(NodeInfo::parse(&b[1..])?)),
            Some(&PORT_PLEASE2_REQ) => {
                let name = std::str::from_utf8(&b[1..]).map_err(|_| "name is not UTF-8")?;
                if name.is_empty() || name.len() > 255 {
                    return Err("bad node name length".into());
                }
                Ok(Request::PortPlease2(name.to_string()))
            }
            Some(&NAMES_REQ) if b.len() == 1 => Ok(Request::Names),
            Some(t) => Err(format!("unsupported request {t}")),
            None => Err("empty request".into()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Request::Alive2(info) => {
                body.push(ALIVE2_REQ);
                info.encode(&mut body);
            }
            Request::PortPlease2(name) => {
                body.push(PORT_PLEASE2_REQ);
                body.extend_from_slice(name.as_bytes());
            }
            Request::Names => body.push(NAMES_REQ),
        }
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}

/// Read one length-prefixed request from a stream.
pub fn read_request(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let n = u16::from_be_bytes(len) as usize;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Most bytes of a PORT2_RESP: the fixed fields, a 255-byte name, 64 KiB of extra.
const MAX_PORT2_RESP: u64 = 16 + 255 + (64 << 10);
/// Most bytes of a NAMES reply: some 25 000 nodes' lines.
pub const MAX_NAMES_RESP: u64 = 1 << 20;

/// An upstream EPMD's whole reply (it closes after one), refused past `cap` bytes: the
/// upstream may be another data centre's distgate, and no answer may cost unbounded memory.
fn read_reply(s: &mut TcpStream, cap: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut resp = Vec::new();
    s.take(cap + 1).read_to_end(&mut resp)?;
    if resp.len() as u64 > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what} reply over {cap} bytes")));
    }
    Ok(resp)
}

/// Ask an EPMD (real or distgate) where `name` listens. `Ok(None)`: not registered there.
pub fn port_please(addr: SocketAddr, name: &str, timeout: Duration) -> io::Result<Option<NodeInfo>> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&Request::PortPlease2(name.to_string()).encode())?;
    let resp = read_reply(&mut s, MAX_PORT2_RESP, "PORT2_RESP")?;
    match resp.as_slice() {
        [PORT2_RESP, 0, rest @ ..] => NodeInfo::parse(rest).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        [PORT2_RESP, _, ..] => Ok(None),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "bad PORT2_RESP")),
    }
}

/// NAMES from an EPMD: `(name, port)` pairs.
pub fn names(addr: SocketAddr, timeout: Duration) -> io::Result<Vec<(String, u16)>> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&Request::Names.encode())?;
    let resp = read_reply(&mut s, MAX_NAMES_RESP, "NAMES")?;
    let text = resp.get(4..).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short NAMES reply"))?;
    Ok(parse_names(&String::from_utf8_lossy(text)))
}

/// Parse NAMES text lines (`name NAME at port PORT`).
pub fn parse_names(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("name ")?;
            let (name, port) = rest.rsplit_once(" at port ")?;
            Some((name.to_string(), port.trim().parse().ok()?))
        })
        .collect()
}

/// The first address of a configured `host:port` (an `upstream_epmd`).
pub fn resolve_host_port(hp: &distgate_config::HostPort) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    (hp.host.as_str(), hp.port)
        .to_socket_addrs()
        .map_err(|e| format!("upstream_epmd {hp}: {e}"))?
        .next()
        .ok_or_else(|| format!("upstream_epmd {hp} has no address"))
}

/// Register `info` with an EPMD; the registration lasts while the returned stream is open.
pub fn alive2(addr: SocketAddr, info: &NodeInfo, timeout: Duration) -> io::Result<(TcpStream, u32)> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&Request::Alive2(info.clone()).encode())?;
    let mut head = [0u8; 2];
    s.read_exact(&mut head)?;
    let creation = match head {
        [ALIVE2_X_RESP, 0] => {
            let mut c = [0u8; 4];
            s.read_exact(&mut c)?;
            u32::from_be_bytes(c)
        }
        [ALIVE2_RESP, 0] => {
            let mut c = [0u8; 2];
            s.read_exact(&mut c)?;
            u16::from_be_bytes(c) as u32
        }
        _ => return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} refused by {addr}", info.name))),
    };
    s.set_read_timeout(None)?;
    Ok((s, creation))
}

/// Encode the answer to ALIVE2 (the extended form for version 6 nodes).
pub fn alive2_response(ok: bool, creation: u32, highest: u16) -> Vec<u8> {
    let result = if ok { 0 } else { 1 };
    if highest >= 6 {
        let mut v = vec![ALIVE2_X_RESP, result];
        v.extend_from_slice(&creation.to_be_bytes());
        v
    } else {
        let mut v = vec![ALIVE2_RESP, result];
        v.extend_from_slice(&(creation as u16).to_be_bytes());
        v
    }
}

/// Encode the answer to PORT_PLEASE2.
pub fn port2_response(info: Option<&NodeInfo>) -> Vec<u8> {
    match info {
        Some(i) => {
            let mut v = vec![PORT2_RESP, 0];
            i.encode(&mut v);
            v
        }
        None => vec![PORT2_RESP, 1],
    }
}

/// Encode the answer to NAMES.
pub fn names_response(epmd_port: u16, names: &[(String, u16)]) -> Vec<u8> {
    let mut v = (epmd_port as u32).to_be_bytes().to_vec();
    for (n, p) in names {
        v.extend_from_slice(format!("name {n} at port {p}\n").as_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let info = NodeInfo { port: 4000, node_type: NORMAL_NODE, protocol: 0, highest: 6, lowest: 5, name: "a".into(), extra: vec![] };
        for r in [Request::Alive2(info.clone()), Request::PortPlease2("b".into()), Request::Names] {
            let enc = r.encode();
            assert_eq!(Request::parse(&enc[2..]).unwrap(), r);
        }
        let resp = port2_response(Some(&info));
        assert_eq!(NodeInfo::parse(&resp[2..]).unwrap(), info);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(Request::parse(&[]).is_err());
        assert!(Request::parse(&[ALIVE2_REQ, 0, 1]).is_err());
        assert!(Request::parse(&[PORT_PLEASE2_REQ]).is_err());
        assert!(Request::parse(&[99]).is_err());
        let info = NodeInfo { port: 1, node_type: 77, protocol: 0, highest: 6, lowest: 6, name: "x".into(), extra: vec![1] };
        let mut b = vec![ALIVE2_REQ];
        info.encode(&mut b);
        for cut in 1..b.len() {
            assert!(Request::parse(&b[..cut]).is_err(), "cut {cut}");
        }
    }

    /// An upstream that answers NAMES with more than the cap (and keeps going) is an error
    /// once the cap is passed, not an ever-growing buffer.
    #[test]
    fn an_endless_reply_is_refused_at_the_cap() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let line = b"name x at port 1\n".repeat(4096);
            // Until the client stops reading and closes.
            while s.write_all(&line).is_ok() {}
        });
        let e = names(addr, Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(&format!("NAMES reply over {MAX_NAMES_RESP} bytes")), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn names_text_parses() {
        assert_eq!(parse_names("name a at port 1\nname b c at port 22\njunk\n"), vec![("a".into(), 1), ("b c".into(), 22)]);
    }
}
