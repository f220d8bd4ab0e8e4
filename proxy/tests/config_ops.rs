//! The configuration's control-op names against the codec's op table: every op the codec
//! knows has exactly one family name in `allow_ops` / `deny_ops`, and the family is the one
//! its OTP name says (`SEND_TT` → `send`, `MONITOR_P_EXIT` → `monitor_exit`).

use distgate_codec::control::op_name;
use distgate_config::ControlOp;

#[test]
fn every_codec_op_has_its_family() {
    let mut covered = 0;
    for code in 0..=u8::MAX {
        let name = op_name(code);
        match ControlOp::from_code(code) {
            None => assert_eq!(name, "UNKNOWN", "op {code} ({name}) has no family in the configuration"),
            Some(family) => {
                assert_ne!(name, "UNKNOWN", "the configuration names op {code}, which the codec does not know");
                let expected = name.to_lowercase().replace("_tt", "").replace("monitor_p", "monitor");
                assert_eq!(family.as_str(), expected, "op {code} ({name})");
                covered += 1;
            }
        }
    }
    assert!(covered >= 30, "{covered}");
}
