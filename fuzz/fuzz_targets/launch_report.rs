//! Parses decrypted launch reports; what parses must render and re-parse to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::payload::LaunchReport;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = LaunchReport::from_json(data) else {
        return;
    };
    for id in [report.pid, report.pgid].into_iter().flatten() {
        assert!(id > 0);
    }
    assert_ne!(report.comm_port, Some(0));
    let again = LaunchReport::from_json(&report.to_json()).expect("re-read own output");
    assert_eq!(again.kernel_id, report.kernel_id);
    assert_eq!(
        (again.pid, again.pgid, again.comm_port),
        (report.pid, report.pgid, report.comm_port)
    );
    assert_eq!(again.connection.shell_port, report.connection.shell_port);
    assert_eq!(again.connection.key, report.connection.key);
    assert!(
        report
            .connection
            .extra
            .keys()
            .eq(again.connection.extra.keys())
    );
});
