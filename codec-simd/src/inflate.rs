//! Compressed terms (`131 80 UncompressedSize:32 zlib…`), inflated under a cap.
//!
//! The declared size is checked against the cap before a byte is reserved, and the stream must
//! produce exactly that many bytes: a zlib bomb costs at most `cap` bytes of memory.

use crate::error::{Error, ErrorKind, Result};

/// Inflate `zlib` into `out` (cleared first), requiring exactly `declared` bytes.
pub fn inflate_exact(zlib: &[u8], declared: usize, cap: usize, out: &mut Vec<u8>) -> Result<()> {
    if declared > cap {
        return Err(Error::new(0, ErrorKind::InflateTooLarge { declared: declared as u64, cap }));
    }
    out.clear();
    out.resize(declared, 0);
    // Decompress into a fixed slice: the output can never grow past `declared`.
    let mut state = miniz_oxide::inflate::core::DecompressorOxide::new();
    use miniz_oxide::inflate::core::inflate_flags::*;
    let flags = TINFL_FLAG_PARSE_ZLIB_HEADER | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _in_used, out_used) =
        miniz_oxide::inflate::core::decompress(&mut state, zlib, out, 0, flags);
    match status {
        miniz_oxide::inflate::TINFLStatus::Done if out_used == declared => Ok(()),
        _ => {
            out.clear();
            Err(Error::new(0, ErrorKind::InflateFailed))
        }
    }
}
