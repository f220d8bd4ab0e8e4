//! The live source: distgate joins a node of the cluster as a **hidden** node, asks which
//! modules are loaded with their MD5s, and fetches object code for the versions the registry
//! does not know yet (their lambda tables and exports come from parsing it).
//!
//! A minimal, blocking distribution client (std::net, a timeout on every read and write):
//!
//! 1. the node's address, given or asked of its EPMD ([`epmd::port_please`]);
//! 2. the connect side of the handshake ([`crate::handshake`]'s codecs), version 6, under
//!    `own_name` with the cluster cookie and [`LIVE_FLAGS`]: the OTP 25 mandatory set and what
//!    the codec decodes, **without** `PUBLISHED` (so the node lists us in `nodes(hidden)`, not
//!    in `nodes()`, and `global` ignores us);
//! 3. frames split with [`frame::split`] and decoded with the codec's [`Decoder`]
//!    (pass-through `112` frames, and `131 68` / fragments when those flags are negotiated);
//!    a tick is answered with a tick;
//! 4. calls through the node's `rex` server: a `REG_SEND` `{6, Pid, '', rex}` carrying
//!    `{'$gen_call', {Pid, Ref}, {call, M, F, Args, user}}`, answered by `{Ref, Result}` sent
//!    to our pid. Replies are read in place with a [`Reader`] (walker + views); nothing the
//!    peer sends can panic the client, and every size is bounded by [`LiveLimits`].
//!
//! What is asked, without sending any code (only external funs `fun M:F/A`, which name
//! functions the node already has):
//! - `code:all_loaded()` for the module names;
//! - `lists:zipwith(fun erlang:get_module_info/2, Mods, [md5, …])` for their MD5s in one
//!   call (if a module is unloaded in between, the call fails and each module is asked on its
//!   own with `erlang:get_module_info(M, md5)`);
//! - for each (module, MD5) the registry does not know: `lists:map(fun
//!   code:get_object_code/1, Batch)`, parsed with [`Beam::parse`]. The object code comes from
//!   the node's code path, which is not necessarily what is loaded (`code:load_binary`, a file
//!   replaced on disk): when its MD5 differs, the file the module was loaded from
//!   (`code:which/1`) is read with `file:read_file/1` and checked the same way. A version
//!   whose object code cannot be found is reported, not guessed.
//!
//! One connection per refresh: connect, ask, close. Nothing stays connected between
//! refreshes, so there is no idle connection to keep alive and a node restart costs nothing.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use distgate_codec::beam::{self, Beam};
use distgate_codec::control::Control;
use distgate_codec::frame::{self, Split};
use distgate_codec::message::{Decoded, Decoder, FragLimits, Framing, Refs};
use distgate_codec::print::{self, AtomRefs};
use distgate_codec::rewrite::{encode_atom, encode_export, encode_int};
use distgate_codec::tag;
use distgate_codec::term::{self, Atom, Term, Walker};
use distgate_config::Cookie;

use super::{Limits, LoadError, LoadErrorKind, LoadReport, Md5, ModuleVersion, Snapshot, SnapshotBuilder};
use crate::epmd;
use crate::handshake::{self, flag};

/// What the live client offers in its `send_name`: OTP 25's mandatory set, plus what the codec
/// decodes and the client copes with. No `PUBLISHED`: a hidden node. No atom cache
/// (`DIST_HDR_ATOM_CACHE`), but `FRAGMENTS`: large replies (object code) arrive as `131 69` /
/// `131 70` fragments, reassembled by the codec's decoder under [`LiveLimits::max_frame`], and
/// small ones as `131 68` frames with no atom-cache refs. Both directions then carry a
/// distribution header (the runtime refuses pass-through frames once either flag is
/// negotiated). Without both flags (see [`LiveLimits::flags`]) every frame is pass-through
/// (`112 131 Control 131 Payload`); with the atom cache, `131 68` headers define cache entries.
/// The decoder reads all of these.
pub const LIVE_FLAGS: u64 = flag::MANDATORY_25
    | flag::UNICODE_IO
    | flag::SMALL_ATOM_TAGS
    | flag::SEND_SENDER
    | flag::BIG_SEQTRACE_LABELS
    | flag::EXIT_PAYLOAD
    | flag::FRAGMENTS
    | flag::UNLINK_ID
    | flag::ALIAS;

/// Bounds and timeouts for one live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// TCP connect, and each EPMD exchange.
    pub connect_timeout: Duration,
    /// Each handshake read, and every write.
    pub io_timeout: Duration,
    /// Waiting for one call's reply (ticks keep arriving meanwhile and are answered).
    pub call_timeout: Duration,
    /// Largest frame accepted, and bytes buffered for fragments in flight.
    pub max_frame: usize,
    /// Modules whose object code is asked for in one call.
    pub batch: usize,
    /// Flags offered in `send_name` (`PUBLISHED` is always removed: the client is hidden).
    pub flags: u64,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            max_frame: 256 << 20,
            batch: 16,
            flags: LIVE_FLAGS,
        }
    }
}

/// Where the node listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveAddr {
    /// Its distribution port, known.
    Direct(SocketAddr),
    /// Ask this EPMD (`PORT_PLEASE2` for the name's part before `@`); the node is dialled on
    /// the EPMD's IP address.
    Epmd(SocketAddr),
}

impl fmt::Display for LiveAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveAddr::Direct(a) => write!(f, "{a}"),
            LiveAddr::Epmd(a) => write!(f, "epmd {a}"),
        }
    }
}

/// Why a live session failed. Never carries the cookie.
#[derive(Debug)]
pub enum LiveError {
    /// The EPMD could not be asked.
    Epmd { epmd: SocketAddr, error: io::Error },
    /// The EPMD does not know the name.
    NotRegistered { name: String, epmd: SocketAddr },
    /// The node's distribution version is below 6 (pre-OTP 23).
    TooOld { highest: u16 },
    /// TCP connect failed.
    Connect { addr: SocketAddr, error: io::Error },
    /// A read or write failed.
    Io { during: &'static str, error: io::Error },
    /// Nothing arrived in time.
    Timeout { during: String, after: Duration },
    /// The node closed the connection.
    Closed { during: &'static str },
    /// The node refused us in its status message (`nok`, `not_allowed`, …).
    Refused(String),
    /// The cookies differ: the node dropped the connection after our challenge reply, or its
    /// challenge ack does not match our cookie.
    BadCookie { node: String, detail: &'static str },
    /// A handshake message that makes no sense, or a node other than the one asked for.
    Handshake(String),
    /// A frame the codec refuses.
    Decode(String),
    /// The call raised on the node (`{badrpc, Reason}`; the reason printed, shortened).
    Rpc { call: String, reason: String },
    /// The reply does not have the expected shape.
    Reply { call: String, what: String },
    /// A loaded version whose object code could not be found or read.
    Module { module: String, md5: Md5, what: String },
    /// The cluster's nodes could not be listed (no EPMD to ask).
    Discovery(String),
    /// Preloaded modules (part of the runtime's image) whose `.beam` in
    /// `code:lib_dir(erts)/ebin` is missing or is not the version the runtime carries (some
    /// distributions rebuild those files): their versions stay unknown.
    Preloaded { modules: Vec<String> },
}

impl fmt::Display for LiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveError::Epmd { epmd, error } => write!(f, "epmd {epmd}: {error}"),
            LiveError::NotRegistered { name, epmd } => write!(f, "{name} is not registered with epmd {epmd}"),
            LiveError::TooOld { highest } => {
                write!(f, "the node speaks distribution version {highest}; version 6 (OTP 23+) is required")
            }
            LiveError::Connect { addr, error } => write!(f, "connect {addr}: {error}"),
            LiveError::Io { during, error } => write!(f, "{during}: {error}"),
            LiveError::Timeout { during, after } => write!(f, "{during}: nothing within {after:?}"),
            LiveError::Closed { during } => write!(f, "{during}: the node closed the connection"),
            LiveError::Refused(s) => write!(f, "refused by the node: {s}"),
            LiveError::BadCookie { node, detail } => write!(f, "wrong cookie for {node}: {detail}"),
            LiveError::Handshake(s) => write!(f, "handshake: {s}"),
            LiveError::Decode(s) => write!(f, "undecodable frame: {s}"),
            LiveError::Rpc { call, reason } => write!(f, "{call} failed on the node: {reason}"),
            LiveError::Reply { call, what } => write!(f, "{call}: unexpected reply: {what}"),
            LiveError::Module { module, md5, what } => write!(f, "module {module} (md5 {}): {what}", beam::hex(md5)),
            LiveError::Discovery(s) => write!(f, "{s}"),
            LiveError::Preloaded { modules } => write!(
                f,
                "{} preloaded modules have no matching object code on the node (the runtime's built-in copies \
                 differ from code:lib_dir(erts)/ebin); their versions stay unknown: {}",
                modules.len(),
                modules.join(", ")
            ),
        }
    }
}

impl std::error::Error for LiveError {}

fn io_err(during: &'static str, e: io::Error, after: Duration) -> LiveError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LiveError::Timeout { during: during.into(), after },
        io::ErrorKind::UnexpectedEof => LiveError::Closed { during },
        _ => LiveError::Io { during, error: e },
    }
}

// ---------------------------------------------------------------------------------------------
// Writing terms

/// A pid of ours (`NEW_PID_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidExt<'a> {
    pub node: &'a str,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
}

/// A reference of ours (`NEWER_REFERENCE_EXT`, three id words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefExt<'a> {
    pub node: &'a str,
    pub creation: u32,
    pub ids: [u32; 3],
}

impl RefExt<'_> {
    /// The id words as they appear on the wire.
    pub fn id_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        for (i, w) in self.ids.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        b
    }
}

/// The terms the live client writes. Encoded without a version byte; atoms always inline
/// (`SMALL_ATOM_UTF8_EXT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Etf<'a> {
    Atom(&'a str),
    Int(i64),
    Binary(&'a [u8]),
    Tuple(Vec<Etf<'a>>),
    /// A proper list (`[]` when empty).
    List(Vec<Etf<'a>>),
    Pid(PidExt<'a>),
    Ref(RefExt<'a>),
    /// `fun M:F/A`.
    Export { module: &'a str, function: &'a str, arity: u8 },
}

impl Etf<'_> {
    /// Appends the encoding. Recursive: only for the client's own, shallow terms.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Etf::Atom(a) => encode_atom(a, out),
            Etf::Int(i) => encode_int(*i, out),
            Etf::Binary(b) => {
                out.push(tag::BINARY);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            Etf::Tuple(v) => {
                if v.len() <= 255 {
                    out.extend_from_slice(&[tag::SMALL_TUPLE, v.len() as u8]);
                } else {
                    out.push(tag::LARGE_TUPLE);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                }
                v.iter().for_each(|t| t.encode(out));
            }
            Etf::List(v) => {
                if !v.is_empty() {
                    out.push(tag::LIST);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    v.iter().for_each(|t| t.encode(out));
                }
                out.push(tag::NIL);
            }
            Etf::Pid(p) => {
                out.push(tag::NEW_PID);
                encode_atom(p.node, out);
                out.extend_from_slice(&p.id.to_be_bytes());
                out.extend_from_slice(&p.serial.to_be_bytes());
                out.extend_from_slice(&p.creation.to_be_bytes());
            }
            Etf::Ref(r) => {
                out.push(tag::NEWER_REFERENCE);
                out.extend_from_slice(&(r.ids.len() as u16).to_be_bytes());
                encode_atom(r.node, out);
                out.extend_from_slice(&r.creation.to_be_bytes());
                out.extend_from_slice(&r.id_bytes());
            }
            Etf::Export { module, function, arity } => encode_export(module, function, *arity, out),
        }
    }

    /// The encoding as a versioned term (`131 …`), as `term_to_binary/1` would give it.
    pub fn to_versioned(&self) -> Vec<u8> {
        let mut out = vec![tag::VERSION];
        self.encode(&mut out);
        out
    }
}


// ---------------------------------------------------------------------------------------------
// Reading replies

struct MsgRefs<'r, 'a>(&'r Refs<'a>);

impl AtomRefs for MsgRefs<'_, '_> {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.0.resolve(idx)
    }
}

/// Reads a decoded term in place: headers through the walker, subterms skipped by walking
/// them, atoms resolved through the message's cache refs. Nothing is copied unless asked for.
/// Errors are descriptions of what was found instead.
pub struct Reader<'a, 'r> {
    buf: &'a [u8],
    refs: &'r dyn AtomRefs,
    walker: &'r mut Walker,
}

/// Printed terms in error messages are cut to this many bytes.
const SHOW_MAX: usize = 300;

impl<'a, 'r> Reader<'a, 'r> {
    /// `walker` must allow as many cache refs as `refs` resolves ([`Walker::set_cache_refs`]).
    pub fn new(buf: &'a [u8], refs: &'r dyn AtomRefs, walker: &'r mut Walker) -> Self {
        Reader { buf, refs, walker }
    }

    /// The header of the term at `at` and where its children (or the next term) start.
    pub fn head(&self, at: usize) -> Result<(Term<'a>, usize), String> {
        self.walker.read_header(self.buf, at).map_err(|e| e.to_string())
    }

    /// Where the term at `at` ends.
    pub fn end(&mut self, at: usize) -> Result<usize, String> {
        self.walker.walk(self.buf, at, &mut term::Skip).map_err(|e| e.to_string())
    }

    fn text(&self, a: Atom<'a>) -> Option<String> {
        match a {
            Atom::Utf8(b) => std::str::from_utf8(b).ok().map(str::to_string),
            Atom::Latin1(b) => Some(b.iter().map(|&c| c as char).collect()),
            Atom::CacheRef(i) => self.refs.resolve(i).map(str::to_string),
        }
    }

    /// The atom at `at`, if it is one.
    pub fn atom(&self, at: usize) -> Option<String> {
        match self.head(at).ok()?.0 {
            Term::Atom(a) => self.text(a),
            _ => None,
        }
    }

    /// If the term at `at` is a tuple: its arity and where its first element starts.
    pub fn tuple(&self, at: usize) -> Option<(u32, usize)> {
        match self.head(at).ok()? {
            (Term::Tuple(n), first) => Some((n, first)),
            _ => None,
        }
    }

    /// The `n`th element (0-based) of the tuple at `at`.
    pub fn element(&mut self, at: usize, n: u32) -> Result<usize, String> {
        let (arity, mut p) = self.tuple(at).ok_or_else(|| format!("expected a tuple, got {}", self.show(at)))?;
        if n >= arity {
            return Err(format!("expected a tuple of more than {n} elements, got {}", self.show(at)));
        }
        for _ in 0..n {
            p = self.end(p)?;
        }
        Ok(p)
    }

    /// The bytes of the binary at `at`, if it is one.
    pub fn binary(&self, at: usize) -> Option<&'a [u8]> {
        match self.head(at).ok()?.0 {
            Term::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// A charlist (`[]`, `STRING_EXT`, or a list of character codes) or a UTF-8 binary.
    pub fn string(&mut self, at: usize) -> Option<String> {
        match self.head(at).ok()? {
            (Term::Nil, _) => Some(String::new()),
            (Term::String(b), _) => Some(b.iter().map(|&c| c as char).collect()),
            (Term::Binary(b), _) => std::str::from_utf8(b).ok().map(str::to_string),
            (Term::List(_), _) => {
                let mut s = String::new();
                self.each(at, |r, p| {
                    let c = match r.head(p)?.0 {
                        Term::SmallInt(c) => c as u32,
                        Term::Int(c) => c as u32,
                        _ => return Err("not a character".into()),
                    };
                    s.push(char::from_u32(c).ok_or("not a character")?);
                    Ok(())
                })
                .ok()?;
                Some(s)
            }
            _ => None,
        }
    }

    /// Calls `f` with the offset of each element of the proper list at `at`; returns where
    /// the list ends. A `STRING_EXT` is not a list of terms and is refused here.
    pub fn each(&mut self, at: usize, mut f: impl FnMut(&mut Self, usize) -> Result<(), String>) -> Result<usize, String> {
        match self.head(at)? {
            (Term::Nil, end) => Ok(end),
            (Term::List(n), mut p) => {
                for _ in 0..n {
                    f(self, p)?;
                    p = self.end(p)?;
                }
                match self.head(p)? {
                    (Term::Nil, end) => Ok(end),
                    _ => Err("an improper list".into()),
                }
            }
            _ => Err(format!("expected a list, got {}", self.show(at))),
        }
    }

    /// The term at `at` as `~w` would print it, cut to a few hundred characters.
    pub fn show(&mut self, at: usize) -> String {
        match print::format_term(self.buf, at, self.refs, self.walker) {
            Ok((mut s, _)) => {
                if s.len() > SHOW_MAX {
                    let mut cut = SHOW_MAX;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                    s.push('…');
                }
                s
            }
            Err(e) => format!("(unprintable: {e})"),
        }
    }

    /// Is the term at `at` exactly this reference of ours?
    fn is_ref(&self, at: usize, r: &RefExt<'_>) -> bool {
        match self.head(at) {
            Ok((Term::Ref(x), _)) => {
                x.tag == tag::NEWER_REFERENCE
                    && x.creation == r.creation
                    && x.ids == r.id_bytes()
                    && self.text(x.node).as_deref() == Some(r.node)
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The session

/// What a session saw, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Ticks received (each answered with a tick).
    pub ticks: u64,
    /// Messages by framing: `112` pass-through, `131 68`, reassembled from fragments.
    pub pass_through: u64,
    pub dist_header: u64,
    pub fragmented: u64,
    /// Fragment frames (each part of a fragmented message).
    pub fragments: u64,
    /// Messages that were not replies to the call in progress.
    pub ignored: u64,
    /// Calls answered.
    pub calls: u64,
}

/// A connected hidden node: handshake done, ready for calls.
pub struct Session {
    stream: TcpStream,
    peer: String,
    peer_creation: u32,
    flags: u64,
    own_name: String,
    creation: u32,
    ref_words: [u32; 2],
    next_ref: u32,
    decoder: Decoder,
    walker: Walker,
    rbuf: Vec<u8>,
    limits: LiveLimits,
    stats: SessionStats,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("own_name", &self.own_name)
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("stats", &self.stats)
            .finish()
    }
}

/// Where `node` listens, from `addr` or its EPMD.
pub fn resolve(node: &str, addr: &LiveAddr, timeout: Duration) -> Result<SocketAddr, LiveError> {
    match *addr {
        LiveAddr::Direct(a) => Ok(a),
        LiveAddr::Epmd(epmd) => {
            let alive = node.split('@').next().unwrap_or(node);
            match epmd::port_please(epmd, alive, timeout) {
                Ok(Some(info)) if info.highest < 6 => Err(LiveError::TooOld { highest: info.highest }),
                Ok(Some(info)) => Ok(SocketAddr::new(epmd.ip(), info.port)),
                Ok(None) => Err(LiveError::NotRegistered { name: alive.to_string(), epmd }),
                Err(error) => Err(LiveError::Epmd { epmd, error }),
            }
        }
    }
}

fn random_u32() -> Option<u32> {
    handshake::random_challenge()
}

fn check_name(name: &str, what: &str) -> Result<(), LiveError> {
    let ok = match name.split_once('@') {
        Some((a, h)) => !a.is_empty() && !h.is_empty() && name.chars().count() <= 255 && !h.contains('@'),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(LiveError::Handshake(format!("{what} {name:?} is not a node name (alive@host, at most 255 characters)")))
    }
}

/// A node's name part alone (see [`Session::connect`]).
fn check_alive(alive: &str) -> Result<(), LiveError> {
    if alive.is_empty() || alive.chars().count() > 255 {
        return Err(LiveError::Handshake(format!("the node {alive:?} is not a node name (1 to 255 characters)")));
    }
    Ok(())
}

/// Every node registered with the EPMD at `epmd` (`NAMES`): its name part and where it
/// listens (the EPMD's IP address, the port it registered).
pub fn epmd_nodes(epmd: SocketAddr, timeout: Duration) -> Result<Vec<(String, SocketAddr)>, LiveError> {
    let names = epmd::names(epmd, timeout).map_err(|error| LiveError::Epmd { epmd, error })?;
    Ok(names.into_iter().map(|(n, port)| (n, SocketAddr::new(epmd.ip(), port))).collect())
}

/// Reads one 2-byte-length-prefixed handshake message.
fn read_hs(s: &mut TcpStream, during: &'static str, timeout: Duration) -> Result<Vec<u8>, LiveError> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| io_err(during, e, timeout))?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).map_err(|e| io_err(during, e, timeout))?;
    Ok(body)
}

impl Session {
    /// Connects to `node` as the hidden node `own_name` and does the handshake. `node` is
    /// `alive@host`, or `alive` alone to accept whatever host the node names itself with (a
    /// node found through EPMD `NAMES`, which lists no hosts).
    pub fn connect(node: &str, addr: &LiveAddr, cookie: &Cookie, own_name: &str, limits: &LiveLimits) -> Result<Session, LiveError> {
        let alive_only = !node.contains('@');
        if alive_only {
            check_alive(node)?;
        } else {
            check_name(node, "the node")?;
        }
        check_name(own_name, "our own name")?;
        let sa = resolve(node, addr, limits.connect_timeout)?;
        let mut s = TcpStream::connect_timeout(&sa, limits.connect_timeout)
            .map_err(|error| LiveError::Connect { addr: sa, error })?;
        let io = limits.io_timeout;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(io))?;
            s.set_write_timeout(Some(io))
        };
        setup(&s).map_err(|error| LiveError::Io { during: "socket setup", error })?;

        let no_entropy = || LiveError::Handshake("the system has no random number source".into());
        let creation = random_u32().ok_or_else(no_entropy)?.max(4);
        let offered = limits.flags & !flag::PUBLISHED;
        let mut out = Vec::new();
        handshake::SendName { flags: offered, creation: Some(creation), name: own_name.into() }.encode(creation, &mut out);
        s.write_all(&out).map_err(|e| io_err("sending our name", e, io))?;

        let status = read_hs(&mut s, "waiting for the handshake status", io)?;
        match status.strip_prefix(b"s") {
            Some(b"ok") | Some(b"ok_simultaneous") => {}
            Some(b"alive") => {
                // An older connection under our name is still up: replace it.
                out.clear();
                handshake::encode_status(b"true", &mut out);
                s.write_all(&out).map_err(|e| io_err("answering status alive", e, io))?;
            }
            Some(b"not_allowed") => {
                return Err(LiveError::Refused(format!("not_allowed: the node does not accept {own_name} (net_kernel:allow/1)")))
            }
            Some(b"nok") => return Err(LiveError::Refused("nok: the node is connecting to us at the same time".into())),
            Some(other) => return Err(LiveError::Refused(String::from_utf8_lossy(other).chars().take(64).collect())),
            None => return Err(LiveError::Handshake("expected a status message ('s')".into())),
        }

        let body = read_hs(&mut s, "waiting for the challenge", io)?;
        let ch = handshake::Challenge::parse(&body).map_err(|e| LiveError::Handshake(e.0))?;
        let same = match ch.name.split_once('@') {
            Some((alive, host)) if alive_only => alive == node && !host.is_empty(),
            _ => ch.name == node,
        };
        if !same {
            return Err(LiveError::Handshake(format!("asked for {node}, but the node is {}", ch.name)));
        }
        let missing = flag::MANDATORY_25 & !ch.flags;
        if missing != 0 {
            return Err(LiveError::Handshake(format!("the node lacks mandatory distribution flags {missing:#x}")));
        }
        let ours = random_u32().ok_or_else(no_entropy)?;
        out.clear();
        handshake::encode_reply(ours, &handshake::digest(cookie.expose().as_bytes(), ch.challenge), &mut out);
        s.write_all(&out).map_err(|e| io_err("sending the challenge reply", e, io))?;

        let ack = match read_hs(&mut s, "waiting for the challenge ack", io) {
            Ok(b) => b,
            Err(LiveError::Closed { .. }) => {
                return Err(LiveError::BadCookie {
                    node: ch.name.clone(),
                    detail: "the node closed the connection after our challenge reply",
                })
            }
            Err(LiveError::Io { error, .. })
                if matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                return Err(LiveError::BadCookie {
                    node: ch.name.clone(),
                    detail: "the node reset the connection after our challenge reply",
                })
            }
            Err(e) => return Err(e),
        };
        let digest = handshake::parse_ack(&ack).map_err(|e| LiveError::Handshake(e.0))?;
        if !handshake::digest_eq(&digest, &handshake::digest(cookie.expose().as_bytes(), ours)) {
            return Err(LiveError::BadCookie { node: ch.name.clone(), detail: "the node's challenge ack does not match our cookie" });
        }

        let ref_words = [random_u32().ok_or_else(no_entropy)?, random_u32().ok_or_else(no_entropy)?];
        let frag = FragLimits { max_bytes: limits.max_frame, max_sequences: 64 };
        // Replies are shallow; a small depth limit bounds the walker's stack.
        let tl = term::Limits { max_depth: 256, max_inflated: limits.max_frame };
        Ok(Session {
            stream: s,
            peer: ch.name,
            peer_creation: ch.creation,
            flags: offered & ch.flags,
            own_name: own_name.into(),
            creation,
            ref_words,
            next_ref: 0,
            decoder: Decoder::new(tl, frag),
            walker: Walker::new(tl),
            rbuf: Vec::new(),
            limits: *limits,
            stats: SessionStats::default(),
        })
    }

    /// The node's name, as it gave it in its challenge.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn peer_creation(&self) -> u32 {
        self.peer_creation
    }

    /// Our name on this connection.
    pub fn own_name(&self) -> &str {
        &self.own_name
    }

    /// The negotiated flags (ours and the node's).
    pub fn flags(&self) -> u64 {
        self.flags
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Our pid: the sender of every call, and where replies go.
    pub fn pid(&self) -> PidExt<'_> {
        PidExt { node: &self.own_name, id: 1, serial: 0, creation: self.creation }
    }

    fn new_ref(&mut self) -> [u32; 3] {
        self.next_ref = self.next_ref.wrapping_add(1);
        // The first word of a reference holds 18 bits in the runtime.
        [self.next_ref & 0x3ffff, self.ref_words[0], self.ref_words[1]]
    }

    /// Sends `payload` to the process registered as `name` on the node (`REG_SEND`).
    pub fn reg_send(&mut self, name: &str, payload: &Etf<'_>) -> Result<(), LiveError> {
        let ctrl = Etf::Tuple(vec![Etf::Int(6), Etf::Pid(self.pid()), Etf::Atom(""), Etf::Atom(name)]);
        let mut f = vec![0u8; 4];
        if self.flags & (flag::DIST_HDR_ATOM_CACHE | flag::FRAGMENTS) != 0 {
            // With either flag the runtime requires a distribution header (`erts_prepare_dist_ext`
            // refuses pass-through frames then): one with no atom-cache refs, and the terms
            // without version bytes.
            f.extend_from_slice(&[tag::VERSION, tag::DIST_HEADER, 0]);
            ctrl.encode(&mut f);
        } else {
            f.extend_from_slice(&[tag::PASS_THROUGH, tag::VERSION]);
            ctrl.encode(&mut f);
            f.push(tag::VERSION);
        }
        payload.encode(&mut f);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&f).map_err(|e| io_err("sending a message", e, self.limits.io_timeout))
    }

    /// Reads until a whole frame is at the front of the buffer (answering ticks); its length.
    fn read_frame(&mut self, deadline: Instant, during: &str) -> Result<usize, LiveError> {
        loop {
            match frame::split(&self.rbuf, self.limits.max_frame) {
                Err(e) => return Err(LiveError::Decode(e.to_string())),
                Ok(Split::Tick) => {
                    self.rbuf.drain(..4);
                    self.stats.ticks += 1;
                    self.stream
                        .write_all(&[0, 0, 0, 0])
                        .map_err(|e| io_err("answering a tick", e, self.limits.io_timeout))?;
                }
                Ok(Split::Frame { len }) => return Ok(len),
                Ok(Split::Need(need)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(LiveError::Timeout { during: during.into(), after: self.limits.call_timeout });
                    }
                    self.stream
                        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .map_err(|error| LiveError::Io { during: "socket setup", error })?;
                    let start = self.rbuf.len();
                    let chunk = need.clamp(64 << 10, 1 << 20);
                    self.rbuf.resize(start + chunk, 0);
                    let r = self.stream.read(&mut self.rbuf[start..]);
                    let n = *r.as_ref().unwrap_or(&0);
                    self.rbuf.truncate(start + n);
                    match r {
                        Ok(0) => return Err(LiveError::Closed { during: "reading a reply" }),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(match io_err("reading a reply", e, self.limits.call_timeout) {
                                LiveError::Timeout { after, .. } => LiveError::Timeout { during: during.into(), after },
                                other => other,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Calls `module:function(args)` through the node's `rex` server and hands the result
    /// term to `parse`. `{badrpc, Reason}` becomes [`LiveError::Rpc`]; anything else
    /// `parse` refuses becomes [`LiveError::Reply`].
    pub fn call<T>(
        &mut self,
        module: &str,
        function: &str,
        args: Vec<Etf<'_>>,
        parse: impl FnOnce(&mut Reader<'_, '_>, usize) -> Result<T, String>,
    ) -> Result<T, LiveError> {
        let what = format!("{module}:{function}/{}", args.len());
        let ids = self.new_ref();
        let own = self.own_name.clone();
        let r = RefExt { node: &own, creation: self.creation, ids };
        let pid = PidExt { node: &own, ..self.pid() };
        let req = Etf::Tuple(vec![
            Etf::Atom("$gen_call"),
            Etf::Tuple(vec![Etf::Pid(pid), Etf::Ref(r)]),
            Etf::Tuple(vec![Etf::Atom("call"), Etf::Atom(module), Etf::Atom(function), Etf::List(args), Etf::Atom("user")]),
        ]);
        self.reg_send("rex", &req)?;
        let deadline = Instant::now() + self.limits.call_timeout;
        let mut parse = Some(parse);
        loop {
            let len = self.read_frame(deadline, &format!("waiting for the reply to {what}"))?;
            let outcome = {
                let data = &self.rbuf[4..4 + len];
                match self.decoder.decode(data) {
                    Err(e) => Some(Err(LiveError::Decode(e.to_string()))),
                    Ok(Decoded::Tick) => None,
                    Ok(Decoded::Fragment { .. } | Decoded::Streamed { .. }) => {
                        self.stats.fragments += 1;
                        None
                    }
                    Ok(Decoded::Message(m)) => {
                        match m.framing {
                            Framing::PassThrough => self.stats.pass_through += 1,
                            Framing::DistHeader => self.stats.dist_header += 1,
                            Framing::Fragmented { fragments, .. } => {
                                self.stats.fragmented += 1;
                                self.stats.fragments += (fragments == 1) as u64;
                            }
                            // Only on streamed frames, which this decoder never makes.
                            Framing::StreamStart { .. } => {}
                        }
                        let to_us = matches!(
                            m.control,
                            Control::Send { .. } | Control::SendSender { .. } | Control::SendTt { .. } | Control::SendSenderTt { .. }
                        );
                        let reply = match (to_us, m.payload.clone()) {
                            (true, Some(p)) => {
                                self.walker.set_cache_refs(m.refs.table().map(|t| t.nrefs));
                                let refs = MsgRefs(&m.refs);
                                let mut rd = Reader::new(m.bytes, &refs, &mut self.walker);
                                match reply_result(&mut rd, p.start, &r) {
                                    None => None,
                                    Some(Err(e)) => Some(Err(LiveError::Reply { call: what.clone(), what: e })),
                                    Some(Ok(at)) => Some(match badrpc(&mut rd, at) {
                                        Some(reason) => Err(LiveError::Rpc { call: what.clone(), reason }),
                                        None => match parse.take() {
                                            Some(f) => f(&mut rd, at).map_err(|e| LiveError::Reply { call: what.clone(), what: e }),
                                            None => Err(LiveError::Reply { call: what.clone(), what: "answered twice".into() }),
                                        },
                                    }),
                                }
                            }
                            _ => None,
                        };
                        self.stats.ignored += reply.is_none() as u64;
                        reply
                    }
                }
            };
            self.rbuf.drain(..4 + len);
            if let Some(r) = outcome {
                self.stats.calls += 1;
                return r;
            }
        }
    }

    /// Every loaded module with its MD5 (`code:all_loaded/0`, then
    /// `erlang:get_module_info(M, md5)` for all of them in one call).
    pub fn loaded_modules(&mut self) -> Result<Vec<(String, Md5)>, LiveError> {
        let names = self.call("code", "all_loaded", vec![], |r, at| {
            let mut v = Vec::new();
            r.each(at, |r, e| {
                let m = r.element(e, 0)?;
                v.push(r.atom(m).ok_or_else(|| format!("expected {{Module, File}}, got {}", r.show(e)))?);
                Ok(())
            })?;
            Ok(v)
        })?;
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(1000) {
            let mods: Vec<Etf<'_>> = chunk.iter().map(|m| Etf::Atom(m)).collect();
            let keys = vec![Etf::Atom("md5"); chunk.len()];
            let f = Etf::Export { module: "erlang", function: "get_module_info", arity: 2 };
            match self.call("lists", "zipwith", vec![f, Etf::List(mods), Etf::List(keys)], md5_list) {
                Ok(md5s) if md5s.len() == chunk.len() => out.extend(chunk.iter().cloned().zip(md5s)),
                Ok(md5s) => {
                    return Err(LiveError::Reply {
                        call: "lists:zipwith/3".into(),
                        what: format!("{} MD5s for {} modules", md5s.len(), chunk.len()),
                    })
                }
                // A module unloaded since code:all_loaded(): ask one by one, skip the gone.
                Err(LiveError::Rpc { .. }) => {
                    for m in chunk {
                        if let Some(md5) = self.module_md5(m)? {
                            out.push((m.clone(), md5));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `erlang:get_module_info(Module, md5)`; `None` when the module is not loaded.
    pub fn module_md5(&mut self, module: &str) -> Result<Option<Md5>, LiveError> {
        match self.call("erlang", "get_module_info", vec![Etf::Atom(module), Etf::Atom("md5")], md5_of) {
            Ok(m) => Ok(Some(m)),
            Err(LiveError::Rpc { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `code:get_object_code/1` for each module: `(binary, file)`, or `None` (`error`).
    pub fn object_code(&mut self, modules: &[&str]) -> Result<Vec<Option<ObjectCode>>, LiveError> {
        let mods = modules.iter().map(|m| Etf::Atom(m)).collect();
        let f = Etf::Export { module: "code", function: "get_object_code", arity: 1 };
        self.call("lists", "map", vec![f, Etf::List(mods)], |r, at| {
            let mut v = Vec::new();
            r.each(at, |r, e| {
                if r.atom(e).as_deref() == Some("error") {
                    v.push(None);
                    return Ok(());
                }
                let bin = r.element(e, 1)?;
                let bin = r.binary(bin).ok_or_else(|| format!("expected {{Module, Binary, File}}, got {}", r.show(e)))?;
                let file = r.element(e, 2)?;
                let file = r.string(file).unwrap_or_default();
                v.push(Some((bin.to_vec(), file)));
                Ok(())
            })?;
            Ok(v)
        })
    }

    /// `code:which/1` for each module: where it was loaded from.
    pub fn loaded_files(&mut self, modules: &[&str]) -> Result<Vec<LoadedFrom>, LiveError> {
        let mods = modules.iter().map(|m| Etf::Atom(m)).collect();
        let f = Etf::Export { module: "code", function: "which", arity: 1 };
        self.call("lists", "map", vec![f, Etf::List(mods)], |r, at| {
            let mut v = Vec::new();
            r.each(at, |r, e| {
                v.push(match r.atom(e) {
                    Some(a) if a == "preloaded" => LoadedFrom::Preloaded,
                    Some(a) => LoadedFrom::Other(a),
                    None => r.string(e).map_or_else(|| LoadedFrom::Other(r.show(e)), LoadedFrom::File),
                });
                Ok(())
            })?;
            Ok(v)
        })
    }

    /// `code:lib_dir(erts)`: where the node's preloaded modules' `.beam` files are kept (in
    /// `ebin`), though that directory is not on the code path.
    pub fn erts_dir(&mut self) -> Result<String, LiveError> {
        self.call("code", "lib_dir", vec![Etf::Atom("erts")], |r, at| r.string(at).ok_or_else(|| r.show(at)))
    }

    /// `file:read_file/1` on the node for each path: the contents, or the reason printed.
    pub fn read_files(&mut self, paths: &[&str]) -> Result<Vec<Result<Vec<u8>, String>>, LiveError> {
        let files = paths.iter().map(|p| Etf::Binary(p.as_bytes())).collect();
        let f = Etf::Export { module: "file", function: "read_file", arity: 1 };
        self.call("lists", "map", vec![f, Etf::List(files)], |r, at| {
            let mut v = Vec::new();
            r.each(at, |r, e| {
                let tagged = r.element(e, 0)?;
                let value = r.element(e, 1)?;
                v.push(match (r.atom(tagged).as_deref(), r.binary(value)) {
                    (Some("ok"), Some(b)) => Ok(b.to_vec()),
                    _ => Err(r.show(e)),
                });
                Ok(())
            })?;
            Ok(v)
        })
    }

    /// Closes the connection (the node sees our hidden node go down).
    pub fn close(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// `code:get_object_code/1`'s binary and the file it was read from.
pub type ObjectCode = (Vec<u8>, String);

/// Where a module was loaded from (`code:which/1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadedFrom {
    File(String),
    /// Part of the runtime's image; its `.beam` is normally in `code:lib_dir(erts)/ebin`.
    Preloaded,
    /// `cover_compiled`, `non_existing`, or anything else.
    Other(String),
}

/// `{Ref, Result}` with our `Ref`: where `Result` starts. `None`: not our reply.
fn reply_result(rd: &mut Reader<'_, '_>, at: usize, r: &RefExt<'_>) -> Option<Result<usize, String>> {
    let (2, first) = rd.tuple(at)? else { return None };
    if !rd.is_ref(first, r) {
        return None;
    }
    Some(rd.end(first))
}

/// `{badrpc, Reason}`: the reason, printed.
fn badrpc(rd: &mut Reader<'_, '_>, at: usize) -> Option<String> {
    let (2, first) = rd.tuple(at)? else { return None };
    if rd.atom(first).as_deref() != Some("badrpc") {
        return None;
    }
    let reason = rd.end(first).ok()?;
    Some(rd.show(reason))
}

fn md5_of(r: &mut Reader<'_, '_>, at: usize) -> Result<Md5, String> {
    r.binary(at).and_then(|b| <Md5>::try_from(b).ok()).ok_or_else(|| format!("expected a 16-byte MD5, got {}", r.show(at)))
}

fn md5_list(r: &mut Reader<'_, '_>, at: usize) -> Result<Vec<Md5>, String> {
    let mut v = Vec::new();
    r.each(at, |r, e| {
        v.push(md5_of(r, e)?);
        Ok(())
    })?;
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Loading into the registry

/// A parsed object code, if its MD5 is the one loaded.
fn version_from(bin: &[u8], module: &str, md5: &Md5, origin: String, limits: &Limits) -> Result<ModuleVersion, String> {
    if bin.len() as u64 > limits.max_file {
        return Err(format!("{} bytes, over the limit of {}", bin.len(), limits.max_file));
    }
    let mut scratch = Vec::new();
    let b = beam::image(bin, &mut scratch, limits.max_image).and_then(Beam::parse).map_err(|e| format!("{origin}: {e}"))?;
    if b.module() != module {
        return Err(format!("{origin} holds module {}", b.module()));
    }
    if b.md5() != *md5 {
        return Err(format!("{origin} has md5 {}, not the loaded one", beam::hex(&b.md5())));
    }
    Ok(ModuleVersion::from_beam(&b, origin.into()))
}

/// The label errors from a live source carry (`LoadError::path`).
pub fn label(node: &str) -> PathBuf {
    PathBuf::from(format!("live {node}"))
}

/// Reads a node's loaded modules into `builder`: versions already in `builder` are skipped,
/// versions `known` has are copied from it, and the object code of the others is fetched and
/// parsed. Errors (the session's, or one per version whose code cannot be had) go to `report`;
/// `report.files` counts the object-code binaries parsed.
#[allow(clippy::too_many_arguments)]
pub fn load(
    builder: &mut SnapshotBuilder,
    known: Option<&Snapshot>,
    node: &str,
    addr: &LiveAddr,
    cookie: &Cookie,
    own_name: &str,
    limits: &Limits,
    report: &mut LoadReport,
) {
    let lbl = label(node);
    let fail = |e: LiveError| LoadError::new(&lbl, LoadErrorKind::Live(e));
    let mut s = match Session::connect(node, addr, cookie, own_name, &limits.live) {
        Ok(s) => s,
        Err(e) => return report.errors.push(fail(e)),
    };
    if let Err(e) = load_from(&mut s, builder, known, limits, report) {
        report.errors.push(fail(e));
    }
    s.close();
}

/// [`load`] over an open session.
pub fn load_from(
    s: &mut Session,
    builder: &mut SnapshotBuilder,
    known: Option<&Snapshot>,
    limits: &Limits,
    report: &mut LoadReport,
) -> Result<(), LiveError> {
    let lbl = label(s.peer());
    let loaded = s.loaded_modules()?;
    let mut missing: Vec<&(String, Md5)> = Vec::new();
    for entry in &loaded {
        let (m, md5) = entry;
        if builder.contains(m, md5) {
            continue;
        }
        match known.and_then(|k| k.knows(m, md5)) {
            Some(v) => report.added += builder.add(v.clone()) as usize,
            None => missing.push(entry),
        }
    }
    let node = s.peer().to_string();
    let mut retry: Vec<&(String, Md5)> = Vec::new();
    for batch in missing.chunks(limits.live.batch.max(1)) {
        let names: Vec<&str> = batch.iter().map(|(m, _)| m.as_str()).collect();
        let codes = s.object_code(&names)?;
        for (entry, code) in batch.iter().zip(codes.into_iter().chain(std::iter::repeat(None))) {
            let (m, md5) = *entry;
            match code.map(|(bin, file)| version_from(&bin, m, md5, format!("{node}:{file}"), limits)) {
                Some(Ok(v)) => {
                    report.files += 1;
                    report.added += builder.add(v) as usize;
                }
                _ => retry.push(*entry),
            }
        }
    }
    // Not on the code path, or another version there: the file it was loaded from (for a
    // preloaded module, the runtime's own ebin directory).
    let mut erts_ebin: Option<String> = None;
    let mut preloaded_missing: Vec<String> = Vec::new();
    for batch in retry.chunks(limits.live.batch.max(1)) {
        let names: Vec<&str> = batch.iter().map(|(m, _)| m.as_str()).collect();
        let from = s.loaded_files(&names)?;
        if erts_ebin.is_none() && from.contains(&LoadedFrom::Preloaded) {
            erts_ebin = Some(format!("{}/ebin", s.erts_dir()?));
        }
        let preloaded: Vec<bool> = from.iter().map(|f| *f == LoadedFrom::Preloaded).collect();
        let files: Vec<Result<String, String>> = from
            .into_iter()
            .zip(&names)
            .map(|(f, m)| match (f, &erts_ebin) {
                (LoadedFrom::File(p), _) => Ok(p),
                (LoadedFrom::Preloaded, Some(dir)) => Ok(format!("{dir}/{m}.beam")),
                (LoadedFrom::Preloaded, None) => Err("preloaded".into()),
                (LoadedFrom::Other(a), _) => Err(a),
            })
            .collect();
        let paths: Vec<&str> = files.iter().flatten().map(String::as_str).collect();
        let mut contents = if paths.is_empty() { Vec::new() } else { s.read_files(&paths)? }.into_iter();
        for (i, (entry, file)) in batch.iter().zip(files.iter().map(Some).chain(std::iter::repeat(None))).enumerate() {
            let (m, md5) = *entry;
            let what = match file {
                None => "code:which/1 gave no answer".to_string(),
                Some(Err(which)) => format!("no object code: not on the node's code path, and code:which/1 says {which}"),
                Some(Ok(path)) => match contents.next() {
                    Some(Ok(bin)) => match version_from(&bin, m, md5, format!("{node}:{path}"), limits) {
                        Ok(v) => {
                            report.files += 1;
                            report.added += builder.add(v) as usize;
                            continue;
                        }
                        Err(e) => format!("no matching object code: {e}"),
                    },
                    Some(Err(reason)) => format!("cannot read {path} on the node: {reason}"),
                    None => format!("no answer for {path}"),
                },
            };
            if preloaded.get(i) == Some(&true) {
                preloaded_missing.push(m.clone());
                continue;
            }
            let e = LiveError::Module { module: m.clone(), md5: *md5, what };
            report.errors.push(LoadError::new(&lbl, LoadErrorKind::Live(e)));
        }
    }
    if !preloaded_missing.is_empty() {
        preloaded_missing.sort_unstable();
        let e = LiveError::Preloaded { modules: preloaded_missing };
        report.errors.push(LoadError::new(&lbl, LoadErrorKind::Live(e)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Refreshing in the background: moved to `super::refresh`, re-exported here.

pub use super::refresh::{spawn_refresher, spawn_refresher_with, Refresher};

#[cfg(test)]
mod tests {
    use super::*;
    use distgate_codec::print::format_term;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    fn printed(t: &Etf<'_>) -> String {
        let mut b = Vec::new();
        t.encode(&mut b);
        let mut w = Walker::default();
        let (s, end) = format_term(&b, 0, &(), &mut w).unwrap();
        assert_eq!(end, b.len());
        s
    }

    #[test]
    fn encoder_writes_what_the_walker_reads() {
        let pid = PidExt { node: "dg@h", id: 1, serial: 2, creation: 7 };
        let r = RefExt { node: "dg@h", creation: 7, ids: [1, 2, 3] };
        let t = Etf::Tuple(vec![
            Etf::Atom("$gen_call"),
            Etf::Tuple(vec![Etf::Pid(pid), Etf::Ref(r)]),
            Etf::List(vec![Etf::Int(0), Etf::Int(255), Etf::Int(256), Etf::Int(-1), Etf::Int(1 << 40), Etf::Int(i64::MIN)]),
            Etf::List(vec![]),
            Etf::Atom(""),
            Etf::Binary(b"ab"),
            Etf::Export { module: "erlang", function: "get_module_info", arity: 2 },
        ]);
        let s = printed(&t);
        assert!(s.starts_with("{'$gen_call',{#Pid<'dg@h'.1.2.7>,#Ref<'dg@h'.7.3.2.1>},"), "{s}");
        assert!(s.contains("[0,255,256,-1,1099511627776,-9223372036854775808],[],'',<<97,98>>,fun erlang:get_module_info/2}"), "{s}");
        // Exact bytes of the small pieces.
        let mut b = Vec::new();
        Etf::Pid(pid).encode(&mut b);
        assert_eq!(b, [88, 119, 4, b'd', b'g', b'@', b'h', 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 7]);
        b.clear();
        Etf::Ref(r).encode(&mut b);
        assert_eq!(b, [90, 0, 3, 119, 4, b'd', b'g', b'@', b'h', 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        let big = Etf::Tuple(vec![Etf::Int(1); 300]);
        assert!(printed(&big).starts_with("{1,1,"));
        assert_eq!(Etf::List(vec![]).to_versioned(), [131, 106]);
    }

    /// Reads `bytes` (a term) with a fresh reader.
    fn with_reader<T>(bytes: &[u8], f: impl FnOnce(&mut Reader<'_, '_>) -> T) -> T {
        let mut w = Walker::default();
        let mut r = Reader::new(bytes, &(), &mut w);
        f(&mut r)
    }

    #[test]
    fn reader_finds_replies_and_refuses_wrong_shapes() {
        let r = RefExt { node: "dg@h", creation: 7, ids: [1, 2, 3] };
        let other = RefExt { ids: [1, 2, 4], ..r };
        let md5 = [7u8; 16];
        let reply = |rf: RefExt<'static>, res: Etf<'static>| {
            let mut b = Vec::new();
            Etf::Tuple(vec![Etf::Ref(rf), res]).encode(&mut b);
            b
        };
        let ok = reply(r, Etf::List(vec![Etf::Binary(&[7; 16]), Etf::Binary(&[7; 16])]));
        with_reader(&ok, |rd| {
            let at = reply_result(rd, 0, &r).unwrap().unwrap();
            assert_eq!(badrpc(rd, at), None);
            assert_eq!(md5_list(rd, at).unwrap(), vec![md5, md5]);
        });
        let not_ours = reply(other, Etf::Atom("x"));
        with_reader(&not_ours, |rd| assert!(reply_result(rd, 0, &r).is_none()));
        let bad = reply(r, Etf::Tuple(vec![Etf::Atom("badrpc"), Etf::Tuple(vec![Etf::Atom("EXIT"), Etf::Atom("undef")])]));
        with_reader(&bad, |rd| {
            let at = reply_result(rd, 0, &r).unwrap().unwrap();
            assert_eq!(badrpc(rd, at).as_deref(), Some("{'EXIT',undef}"));
        });
        // Wrong shapes are errors naming what was found.
        let short = reply(r, Etf::List(vec![Etf::Binary(&[1; 15])]));
        with_reader(&short, |rd| {
            let at = reply_result(rd, 0, &r).unwrap().unwrap();
            let e = md5_list(rd, at).unwrap_err();
            assert!(e.contains("16-byte MD5"), "{e}");
        });
        let mut improper = vec![tag::LIST, 0, 0, 0, 1, tag::SMALL_INTEGER, 1, tag::SMALL_INTEGER, 2];
        with_reader(&improper, |rd| assert!(rd.each(0, |_, _| Ok(())).unwrap_err().contains("improper")));
        improper.truncate(4);
        with_reader(&improper, |rd| assert!(rd.each(0, |_, _| Ok(())).is_err()));
        // Strings in their three forms.
        let mut b = vec![tag::STRING, 0, 2, b'a', b'b'];
        with_reader(&b, |rd| assert_eq!(rd.string(0).as_deref(), Some("ab")));
        b.clear();
        Etf::List(vec![Etf::Int(0x263a), Etf::Int(b'x' as i64)]).encode(&mut b);
        with_reader(&b, |rd| assert_eq!(rd.string(0).as_deref(), Some("\u{263a}x")));
        with_reader(&[tag::NIL], |rd| assert_eq!(rd.string(0).as_deref(), Some("")));
        // Long terms are shortened when shown.
        b.clear();
        Etf::List(vec![Etf::Atom("abcdefghij"); 100]).encode(&mut b);
        with_reader(&b, |rd| assert!(rd.show(0).chars().count() <= SHOW_MAX + 1));
    }

    #[test]
    fn reader_never_panics_on_mutated_replies() {
        let r = RefExt { node: "dg@h", creation: 7, ids: [1, 2, 3] };
        let mut b = Vec::new();
        let item = |m| Etf::Tuple(vec![Etf::Atom(m), Etf::Binary(b"FOR1"), Etf::List(vec![Etf::Int(b'/' as i64)])]);
        Etf::Tuple(vec![Etf::Ref(r), Etf::List(vec![item("a"), Etf::Atom("error"), item("b")])]).encode(&mut b);
        let mut seed = 0x9e3779b97f4a7c15u64;
        for i in 0..20_000 {
            let mut m = b.clone();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % m.len();
            m[at] = (seed >> 32) as u8;
            if i % 3 == 0 {
                m.truncate((seed >> 40) as usize % m.len());
            }
            with_reader(&m, |rd| {
                if let Some(Ok(at)) = reply_result(rd, 0, &r) {
                    let _ = rd.each(at, |rd, e| {
                        let _ = rd.element(e, 2).map(|p| rd.string(p));
                        let _ = rd.element(e, 1).map(|p| rd.binary(p));
                        let _ = rd.show(e);
                        Ok(())
                    });
                    let _ = badrpc(rd, at);
                }
            });
        }
    }

    /// A fake node for handshake failures: runs `script` on the accepted connection.
    fn fake_node(script: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                script(s);
            }
        });
        (addr, t)
    }

    fn read_msg(s: &mut TcpStream) -> Vec<u8> {
        read_hs(s, "test", Duration::from_secs(5)).unwrap()
    }

    fn challenge(s: &mut TcpStream, name: &str, flags: u64) {
        let mut out = Vec::new();
        handshake::encode_status(b"ok", &mut out);
        handshake::Challenge { flags, challenge: 42, creation: 9, name: name.into() }.encode(&mut out);
        s.write_all(&out).unwrap();
    }

    /// Deadlines generous enough for a loaded CI host: a call that is answered (with a reply, a
    /// tick, garbage) must never run into them. Tests of a timeout set a short one themselves.
    fn limits() -> LiveLimits {
        LiveLimits { io_timeout: Duration::from_secs(30), call_timeout: Duration::from_secs(30), ..LiveLimits::default() }
    }

    #[test]
    fn handshake_failures_are_clear_errors() {
        let cookie = Cookie::new("secret").unwrap();
        // The node drops us after our reply: a wrong cookie.
        let (addr, t) = fake_node(|mut s| {
            let name = read_msg(&mut s);
            let sn = handshake::SendName::parse(&name).unwrap();
            assert_eq!(sn.flags & flag::PUBLISHED, 0, "hidden");
            assert_eq!(sn.flags & flag::MANDATORY_25, flag::MANDATORY_25);
            assert_eq!(sn.name, "dg@127.0.0.1");
            challenge(&mut s, "n@127.0.0.1", !0);
            let reply = read_msg(&mut s);
            let (_, d) = handshake::parse_reply(&reply).unwrap();
            assert_ne!(d, handshake::digest(b"other", 42));
        });
        let e = Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(matches!(e, LiveError::BadCookie { .. }), "{e}");
        assert!(e.to_string().starts_with("wrong cookie for n@127.0.0.1"), "{e}");
        t.join().unwrap();

        // A node with another name.
        let (addr, _) = fake_node(|mut s| {
            read_msg(&mut s);
            challenge(&mut s, "other@127.0.0.1", !0);
            let _ = read_msg(&mut s);
        });
        let e = Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(e.to_string().contains("but the node is other@127.0.0.1"), "{e}");
        // Asked by its name part alone (found through EPMD NAMES): any host, but that name.
        let (addr, _) = fake_node(|mut s| {
            read_msg(&mut s);
            challenge(&mut s, "other@127.0.0.1", !0);
            let _ = read_msg(&mut s);
        });
        let e = Session::connect("n", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(e.to_string().contains("asked for n, but the node is other@127.0.0.1"), "{e}");
        let (addr, t) = fake_node(|mut s| {
            read_msg(&mut s);
            challenge(&mut s, "n@somewhere.example", !0);
            let _ = read_msg(&mut s);
        });
        let e = Session::connect("n", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(e.to_string().starts_with("wrong cookie for n@somewhere.example"), "past the name check: {e}");
        t.join().unwrap();

        // not_allowed.
        let (addr, _) = fake_node(|mut s| {
            read_msg(&mut s);
            let mut out = Vec::new();
            handshake::encode_status(b"not_allowed", &mut out);
            s.write_all(&out).unwrap();
        });
        let e = Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(matches!(e, LiveError::Refused(_)), "{e}");

        // An ack with a digest of another cookie.
        let (addr, _) = fake_node(|mut s| {
            read_msg(&mut s);
            challenge(&mut s, "n@127.0.0.1", !0);
            let reply = read_msg(&mut s);
            let (theirs, _) = handshake::parse_reply(&reply).unwrap();
            let mut out = Vec::new();
            handshake::encode_ack(&handshake::digest(b"other", theirs), &mut out);
            s.write_all(&out).unwrap();
        });
        let e = Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap_err();
        assert!(matches!(e, LiveError::BadCookie { detail, .. } if detail.contains("ack")), "{e}");

        // Silence (far longer than the 200 ms the session waits): a timeout, not a hang.
        let (addr, _) = fake_node(|s| {
            thread::sleep(Duration::from_secs(30));
            drop(s)
        });
        let l = LiveLimits { io_timeout: Duration::from_millis(200), ..limits() };
        let e = Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &l).unwrap_err();
        assert!(matches!(e, LiveError::Timeout { .. }), "{e}");

        // Bad names never reach the network.
        for (node, own) in [("nohost@", "dg@h"), ("", "dg@h"), ("n@h", "dg")] {
            let e = Session::connect(node, &LiveAddr::Direct(addr), &cookie, own, &limits()).unwrap_err();
            assert!(e.to_string().contains("not a node name"), "{node} {own}: {e}");
        }
    }

    /// A fake node that completes the handshake, then plays `script` (frames).
    fn connected(script: impl FnOnce(TcpStream) + Send + 'static) -> Session {
        let cookie = Cookie::new("secret").unwrap();
        let (addr, _) = fake_node(move |mut s| {
            read_msg(&mut s);
            challenge(&mut s, "n@127.0.0.1", !flag::DIST_HDR_ATOM_CACHE);
            let reply = read_msg(&mut s);
            let (theirs, d) = handshake::parse_reply(&reply).unwrap();
            assert_eq!(d, handshake::digest(b"secret", 42));
            let mut out = Vec::new();
            handshake::encode_ack(&handshake::digest(b"secret", theirs), &mut out);
            s.write_all(&out).unwrap();
            script(s);
        });
        Session::connect("n@127.0.0.1", &LiveAddr::Direct(addr), &cookie, "dg@127.0.0.1", &limits()).unwrap()
    }

    fn read_frame_raw(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut b = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn ticks_are_answered_and_garbage_is_an_error() {
        let (tx, rx) = mpsc::channel();
        let mut s = connected(move |mut s| {
            // The call arrives as a REG_SEND to rex, behind a distribution header with no
            // atom-cache refs (FRAGMENTS is negotiated).
            let f = read_frame_raw(&mut s);
            assert_eq!(&f[..3], &[131, 68, 0]);
            let mut d = Decoder::default();
            match d.decode(&f) {
                Ok(Decoded::Message(m)) => assert!(matches!(m.control, Control::RegSend { .. })),
                _ => panic!("{f:?}"),
            }
            s.write_all(&[0, 0, 0, 0]).unwrap();
            // Our tick comes back.
            let mut t = [9u8; 4];
            s.read_exact(&mut t).unwrap();
            tx.send(t).unwrap();
            // A frame the codec refuses.
            s.write_all(&[0, 0, 0, 2, 200, 1]).unwrap();
            thread::sleep(Duration::from_millis(500));
        });
        assert_eq!(s.flags() & flag::PUBLISHED, 0);
        let e = s.call("code", "all_loaded", vec![], |_, _| Ok(())).unwrap_err();
        assert!(matches!(e, LiveError::Decode(_)), "{e}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), [0, 0, 0, 0]);
        assert_eq!(s.stats().ticks, 1);

        // An oversized frame is refused before it is buffered; silence is a timeout.
        let mut s = connected(|mut s| {
            read_frame_raw(&mut s);
            s.write_all(&[0x7f, 0, 0, 0]).unwrap();
            thread::sleep(Duration::from_millis(500));
        });
        let e = s.call("code", "all_loaded", vec![], |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("frame"), "{e}");
        // (The fake stays silent far longer than the call's 300 ms.)
        let mut s = connected(|mut s| {
            read_frame_raw(&mut s);
            thread::sleep(Duration::from_secs(30));
        });
        s.limits.call_timeout = Duration::from_millis(300);
        let e = s.call("code", "all_loaded", vec![], |_, _| Ok(())).unwrap_err();
        assert!(matches!(e, LiveError::Timeout { .. }), "{e}");
    }
}
