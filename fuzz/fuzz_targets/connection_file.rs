//! Parses connection files; what parses must survive a write and re-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::connection::ConnectionInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = ConnectionInfo::from_json(data) else {
        return;
    };
    let again = ConnectionInfo::from_json(&info.to_json_pretty()).expect("re-read own output");
    // Named fields must match exactly. `extra` keeps the same keys; its numbers are not compared
    // because a float may not survive a decimal round trip bit for bit.
    let named = |i: &ConnectionInfo| {
        (
            [
                i.shell_port,
                i.iopub_port,
                i.stdin_port,
                i.control_port,
                i.hb_port,
            ],
            [i.ip.clone(), i.key.clone(), i.transport.clone()],
            [i.signature_scheme.clone(), i.kernel_name.clone()],
        )
    };
    assert_eq!(named(&info), named(&again));
    assert!(info.extra.keys().eq(again.extra.keys()));
});
