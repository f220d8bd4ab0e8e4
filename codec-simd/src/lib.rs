//! distgate-codec: the External Term Format and distribution framing, decoded in place.
