//! Splitting a distribution byte stream (after the handshake) into frames.
//!
//! Each frame is `Len:32` then `Len` bytes; `Len = 0` is a tick. The splitter is stateless: it
//! looks at the front of whatever the driver has buffered and says how much is a whole frame,
//! so a frame that arrives unchanged can be forwarded from the very buffer it arrived in.

use crate::error::{DistErrorKind, Error, Result};

/// What the front of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Not a whole frame yet: at least `need` more bytes are required.
    Need(usize),
    /// A tick: 4 bytes of zero length.
    Tick,
    /// A whole frame: the data is `buf[4..4 + len]`; the frame takes `4 + len` bytes.
    Frame { len: usize },
}

impl Split {
    /// Bytes this item takes at the front of the buffer (0 for `Need`).
    #[inline]
    pub fn consumed(&self) -> usize {
        match *self {
            Split::Need(_) => 0,
            Split::Tick => 4,
            Split::Frame { len } => 4 + len,
        }
    }
}

/// Classify the front of `buf`. A frame longer than `max_frame` is an error before any of it
/// is buffered, so a peer cannot make the link hold more than `max_frame` bytes for one frame.
#[inline]
pub fn split(buf: &[u8], max_frame: usize) -> Result<Split> {
    let Some(hdr) = buf.get(..4) else { return Ok(Split::Need(4 - buf.len())) };
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if len == 0 {
        return Ok(Split::Tick);
    }
    if len > max_frame {
        return Err(Error::dist(0, DistErrorKind::FrameTooLarge { len: len as u64, max: max_frame }));
    }
    let have = buf.len() - 4;
    if have < len {
        return Ok(Split::Need(len - have));
    }
    Ok(Split::Frame { len })
}

/// One item of a complete capture: its offset in the stream and the frame data (empty: tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub offset: usize,
    pub data: Option<&'a [u8]>,
}

/// Iterate over a complete captured stream. A trailing partial frame is an error
/// (`Truncated`), because a capture should end on a frame boundary.
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_frame: usize,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8], max_frame: usize) -> Self {
        Frames { buf, pos: 0, max_frame }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Item<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let offset = self.pos;
        match split(rest, self.max_frame) {
            Err(e) => {
                self.pos = self.buf.len();
                Some(Err(e.shifted(offset)))
            }
            Ok(Split::Need(need)) => {
                self.pos = self.buf.len();
                Some(Err(Error::new(offset, crate::ErrorKind::Truncated { need })))
            }
            Ok(Split::Tick) => {
                self.pos += 4;
                Some(Ok(Item { offset, data: None }))
            }
            Ok(Split::Frame { len }) => {
                self.pos += 4 + len;
                Some(Ok(Item { offset, data: Some(&rest[4..4 + len]) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_frames_and_partials() {
        assert_eq!(split(&[0, 0], 100).unwrap(), Split::Need(2));
        assert_eq!(split(&[0, 0, 0, 0, 9], 100).unwrap(), Split::Tick);
        assert_eq!(split(&[0, 0, 0, 3, 1, 2], 100).unwrap(), Split::Need(1));
        assert_eq!(split(&[0, 0, 0, 2, 1, 2, 7], 100).unwrap(), Split::Frame { len: 2 });
        let e = split(&[0, 0, 1, 0], 100).unwrap_err();
        assert_eq!(e.label(), "frame_too_large");
    }

    #[test]
    fn iterates_a_capture_and_flags_a_cut_frame() {
        let cap = [0, 0, 0, 0, 0, 0, 0, 1, 42, 0, 0, 0, 5, 1];
        let items: Vec<_> = Frames::new(&cap, 100).collect();
        assert_eq!(items[0], Ok(Item { offset: 0, data: None }));
        assert_eq!(items[1], Ok(Item { offset: 4, data: Some(&[42][..]) }));
        assert_eq!(items[2].unwrap_err().offset, 9);
    }
}
