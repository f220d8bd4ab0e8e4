//! The distribution handshake: message codecs, flags and digests.
//!
//! Every handshake message travels with a 2-byte length prefix. distgate terminates both legs of
//! a link: towards the dialling node it plays the target (accept side), towards the target it
//! plays the dialling node (connect side). The state machine that sequences the two legs lives in
//! [`crate::link`]; this module only knows the messages.

use md5::{Digest, Md5};

/// Distribution flags (`dist.hrl`).
pub mod flag {
    pub const PUBLISHED: u64 = 0x1;
    pub const ATOM_CACHE: u64 = 0x2;
    pub const EXTENDED_REFERENCES: u64 = 0x4;
    pub const DIST_MONITOR: u64 = 0x8;
    pub const FUN_TAGS: u64 = 0x10;
    pub const DIST_MONITOR_NAME: u64 = 0x20;
    pub const HIDDEN_ATOM_CACHE: u64 = 0x40;
    pub const NEW_FUN_TAGS: u64 = 0x80;
    pub const EXTENDED_PIDS_PORTS: u64 = 0x100;
    pub const EXPORT_PTR_TAG: u64 = 0x200;
    pub const BIT_BINARIES: u64 = 0x400;
    pub const NEW_FLOATS: u64 = 0x800;
    pub const UNICODE_IO: u64 = 0x1000;
    pub const DIST_HDR_ATOM_CACHE: u64 = 0x2000;
    pub const SMALL_ATOM_TAGS: u64 = 0x4000;
    pub const UTF8_ATOMS: u64 = 0x10000;
    pub const MAP_TAG: u64 = 0x20000;
    pub const BIG_CREATION: u64 = 0x40000;
    pub const SEND_SENDER: u64 = 0x80000;
    pub const BIG_SEQTRACE_LABELS: u64 = 0x100000;
    pub const EXIT_PAYLOAD: u64 = 0x400000;
    pub const FRAGMENTS: u64 = 0x800000;
    pub const HANDSHAKE_23: u64 = 0x1000000;
    pub const UNLINK_ID: u64 = 0x2000000;
    pub const MANDATORY_25_DIGEST: u64 = 0x4000000;
    pub const SPAWN: u64 = 1 << 32;
    pub const NAME_ME: u64 = 1 << 33;
    pub const V4_NC: u64 = 1 << 34;
    pub const ALIAS: u64 = 1 << 35;

    /// Every flag whose traffic distgate's codec understands. Flags outside this set are
    /// removed from what each leg is offered, so both legs negotiate only what distgate can read
    /// (e.g. OTP 28's ALTACT_SIG is decoded, but OTP 29's NATIVE_RECORDS is not offered).
    /// `PUBLISHED` is also removed on both legs of a hidden link (`LinkParams::hidden`).
    pub const SUPPORTED: u64 = PUBLISHED
        | ATOM_CACHE
        | EXTENDED_REFERENCES
        | DIST_MONITOR
        | FUN_TAGS
        | DIST_MONITOR_NAME
        | HIDDEN_ATOM_CACHE
        | NEW_FUN_TAGS
        | EXTENDED_PIDS_PORTS
        | EXPORT_PTR_TAG
        | BIT_BINARIES
        | NEW_FLOATS
        | UNICODE_IO
        | DIST_HDR_ATOM_CACHE
        | SMALL_ATOM_TAGS
        | UTF8_ATOMS
        | MAP_TAG
        | BIG_CREATION
        | SEND_SENDER
        | BIG_SEQTRACE_LABELS
        | EXIT_PAYLOAD
        | FRAGMENTS
        | HANDSHAKE_23
        | UNLINK_ID
        | MANDATORY_25_DIGEST
        | SPAWN
        | NAME_ME
        | V4_NC
        | ALIAS
        | (1 << 37); // ALTACT_SIG (OTP 28): op 37 is decoded by the codec

    /// What OTP 25 refuses to connect without.
    pub const MANDATORY_25: u64 = EXTENDED_REFERENCES
        | FUN_TAGS
        | EXTENDED_PIDS_PORTS
        | UTF8_ATOMS
        | NEW_FUN_TAGS
        | BIG_CREATION
        | NEW_FLOATS
        | MAP_TAG
        | EXPORT_PTR_TAG
        | BIT_BINARIES
        | HANDSHAKE_23;
}

/// A handshake message that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeError(pub String);

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, HandshakeError> {
    Err(HandshakeError(msg.into()))
}

/// Split one 2-byte-length-prefixed handshake message off the front of `buf`.
/// Returns the message body and the bytes consumed, or `None` when incomplete.
pub fn split(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    let body = buf.get(2..2 + len)?;
    Some((body, 2 + len))
}

/// Append a handshake message with its length prefix.
pub fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, HandshakeError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => err("message too short"),
    }
}
fn be_u32(b: &[u8], at: usize) -> Result<u32, HandshakeError> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => err("message too short"),
    }
}
fn be_u64(b: &[u8], at: usize) -> Result<u64, HandshakeError> {
    Ok(((be_u32(b, at)? as u64) << 32) | be_u32(b, at + 4)? as u64)
}
fn name_at(b: &[u8], at: usize, len: usize) -> Result<String, HandshakeError> {
    let s = b.get(at..at + len).ok_or(HandshakeError("name runs past the message".into()))?;
    let s = std::str::from_utf8(s).map_err(|_| HandshakeError("node name is not UTF-8".into()))?;
    if s.is_empty() || s.len() > 1023 {
        return err("node name is empty or too long");
    }
    Ok(s.to_string())
}

/// `send_name`: the dialler introduces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendName {
    pub flags: u64,
    /// `None` for the old `'n'` form (the creation comes later in the complement).
    pub creation: Option<u32>,
    pub name: String,
}

impl SendName {
    pub fn parse(b: &[u8]) -> Result<Self, HandshakeError> {
        match b.first() {
            Some(b'N') => {
                let flags = be_u64(b, 1)?;
                let creation = be_u32(b, 9)?;
                let n = be_u16(b, 13)? as usize;
                Ok(SendName { flags, creation: Some(creation), name: name_at(b, 15, n)? })
            }
            Some(b'n') => {
                let _version = be_u16(b, 1)?;
                let flags = be_u32(b, 3)? as u64;
                let name = name_at(b, 7, b.len().saturating_sub(7))?;
                Ok(SendName { flags, creation: None, name })
            }
            _ => err("expected send_name ('N' or 'n')"),
        }
    }
    /// Encode in the new `'N'` form (distgate always speaks version 6 upstream).
    pub fn encode(&self, creation: u32, out: &mut Vec<u8>) {
        let mut b = Vec::with_capacity(15 + self.name.len());
        b.push(b'N');
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&creation.to_be_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        frame(out, &b);
    }
}

/// The acceptor's challenge (`'N'` form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u64,
    pub challenge: u32,
    pub creation: u32,
    pub name: String,
}

impl Challenge {
    pub fn parse(b: &[u8]) -> Result<Self, HandshakeError> {
        match b.first() {
            Some(b'N') => {
                let flags = be_u64(b, 1)?;
                let challenge = be_u32(b, 9)?;
                let creation = be_u32(b, 13)?;
                let n = be_u16(b, 17)? as usize;
                Ok(Challenge { flags, challenge, creation, name: name_at(b, 19, n)? })
            }
            Some(b'n') => err("old-style challenge ('n') from a pre-OTP-23 node is not supported"),
            _ => err("expected a challenge ('N')"),
        }
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = Vec::with_capacity(19 + self.name.len());
        b.push(b'N');
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.challenge.to_be_bytes());
        b.extend_from_slice(&self.creation.to_be_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        frame(out, &b);
    }
}

/// The complement (`'c'`), sent after an old `'n'` send_name.
pub fn parse_complement(b: &[u8]) -> Result<(u32, u32), HandshakeError> {
    if b.first() != Some(&b'c') {
        return err("expected complement ('c')");
    }
    Ok((be_u32(b, 1)?, be_u32(b, 5)?))
}

/// `challenge_reply`: the dialler's own challenge and its digest of ours.
pub fn parse_reply(b: &[u8]) -> Result<(u32, [u8; 16]), HandshakeError> {
    if b.first() != Some(&b'r') || b.len() != 21 {
        return err("expected challenge_reply ('r', 21 bytes)");
    }
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[5..21]);
    Ok((be_u32(b, 1)?, d))
}

pub fn encode_reply(challenge: u32, digest: &[u8; 16], out: &mut Vec<u8>) {
    let mut b = [0u8; 21];
    b[0] = b'r';
    b[1..5].copy_from_slice(&challenge.to_be_bytes());
    b[5..].copy_from_slice(digest);
    frame(out, &b);
}

/// `challenge_ack`: the acceptor's digest of the dialler's challenge.
pub fn parse_ack(b: &[u8]) -> Result<[u8; 16], HandshakeError> {
    if b.first() != Some(&b'a') || b.len() != 17 {
        return err("expected challenge_ack ('a', 17 bytes)");
    }
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[1..17]);
    Ok(d)
}

pub fn encode_ack(digest: &[u8; 16], out: &mut Vec<u8>) {
    let mut b = [0u8; 17];
    b[0] = b'a';
    b[1..].copy_from_slice(digest);
    frame(out, &b);
}

/// A status message (`'s'` + text, or `named:`).
pub fn encode_status(text: &[u8], out: &mut Vec<u8>) {
    let mut b = Vec::with_capacity(1 + text.len());
    b.push(b's');
    b.extend_from_slice(text);
    frame(out, &b);
}

/// The digest: MD5 of the cookie text followed by the decimal text of the challenge.
pub fn digest(cookie: &[u8], challenge: u32) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(cookie);
    h.update(challenge.to_string().as_bytes());
    h.finalize().into()
}

/// Compare digests without an early exit (the cookie is a secret).
pub fn digest_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random 32-bit challenge from the operating system's generator; `None` only when the OS
/// has no entropy source, in which case the link is refused rather than use a guessable value.
pub fn random_challenge() -> Option<u32> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).ok()?;
    Some(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_otp() {
        // dist_util:gen_digest(1234, "cookie") = erlang:md5(["cookie" | "1234"])
        let d = digest(b"cookie", 1234);
        let mut h = Md5::new();
        h.update(b"cookie1234");
        let want: [u8; 16] = h.finalize().into();
        assert_eq!(d, want);
        assert!(digest_eq(&d, &want));
        assert!(!digest_eq(&d, &[0; 16]));
    }

    #[test]
    fn send_name_round_trips_and_old_form_parses() {
        let s = SendName { flags: 0x0d07df7fbc, creation: Some(7), name: "a@h".into() };
        let mut out = Vec::new();
        s.encode(7, &mut out);
        let (body, n) = split(&out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(SendName::parse(body).unwrap(), s);
        let old = [b'n', 0, 5, 0, 0x7f, 0xfd, 0xfc, b'x', b'@', b'y'];
        let p = SendName::parse(&old).unwrap();
        assert_eq!((p.flags, p.creation, p.name.as_str()), (0x7ffdfc, None, "x@y"));
    }

    #[test]
    fn truncated_messages_are_errors() {
        let c = Challenge { flags: 1, challenge: 2, creation: 3, name: "b@h".into() };
        let mut out = Vec::new();
        c.encode(&mut out);
        let body = &out[2..];
        assert_eq!(Challenge::parse(body).unwrap(), c);
        for cut in 0..body.len() {
            assert!(Challenge::parse(&body[..cut]).is_err());
            assert!(SendName::parse(&body[..cut]).is_err() || cut > 15);
        }
        assert!(parse_reply(b"r123").is_err());
        assert!(parse_ack(b"a").is_err());
    }
}
