//! Unit tests of the command-line and environment parser (kept apart: the parser alone is
//! long enough).

use super::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse(&args, &|k| env.get(k).cloned())? {
        Action::Run(c) => Ok(*c),
        other => panic!("expected Run, got {other:?}"),
    }
}

#[test]
fn both_option_forms_and_equals() {
    let c = run(&["--kernel-id", "k1", "--port-range=0..0", "--", "k"], &[]).unwrap();
    assert_eq!(c.kernel_id, "k1");
    let c = run(&["--RemoteProcessProxy.kernel-id=k2", "--", "k"], &[]).unwrap();
    assert_eq!(c.kernel_id, "k2");
}

#[test]
fn plain_form_wins_over_legacy_when_it_has_a_value() {
    let c = run(
        &[
            "--RemoteProcessProxy.kernel-id",
            "legacy",
            "--kernel-id",
            "plain",
            "--",
            "k",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.kernel_id, "plain");
    let c = run(
        &[
            "--RemoteProcessProxy.kernel-id",
            "legacy",
            "--kernel-id",
            "",
            "--",
            "k",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.kernel_id, "legacy");
}

#[test]
fn placeholders_and_empty_values_are_absent() {
    let c = run(
        &[
            "--kernel-id",
            "k",
            "--port-range",
            "{port_range}",
            "--transport-encryption",
            "{transport_encryption}",
            "--",
            "k",
        ],
        &[("PORT_RANGE", "{port_range}")],
    )
    .unwrap();
    assert_eq!(c.port_range, PortRange::Unrestricted);
    assert_eq!(c.transport_encryption, None);
    let e = run(&["--kernel-id", "{kernel_id}", "--", "k"], &[]).unwrap_err();
    assert!(e.option.contains("--kernel-id"), "{e}");
}

#[test]
fn flag_followed_by_option_has_no_value() {
    let e = run(&["--kernel-id", "--port-range", "0..0", "--", "k"], &[]).unwrap_err();
    assert!(e.option.contains("--kernel-id"));
}

#[test]
fn unknown_options_warn() {
    let c = run(
        &[
            "--kernel-id",
            "k",
            "--frobnicate",
            "x",
            "--zap=1",
            "--",
            "k",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        c.warnings.iter().filter(|w| w.contains("unknown")).count(),
        2
    );
}

#[test]
fn environment_like_bootstrap_kernel_sh() {
    let c = run(
        &[],
        &[
            ("KERNEL_ID", "env-id"),
            ("EG_RESPONSE_ADDRESS", "127.0.0.1:8877"),
            ("EG_PORT_RANGE", "40000..41000"),
            ("KERNEL_LANGUAGE", "python"),
            ("KERNEL_SPARK_CONTEXT_INIT_MODE", "lazy"),
        ],
    );
    // No public key: the response address cannot be served.
    let e = c.unwrap_err();
    assert!(e.option.contains("--public-key"), "{e}");
}

#[test]
fn response_address_forms() {
    let ok = |s: &str| parse_response_address(s).unwrap();
    assert_eq!(ok("10.0.0.1:8877").host, "10.0.0.1");
    assert_eq!(ok("gw.example:8877").host, "gw.example");
    let v6 = ok("[fd00::1]:8877");
    assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", 8877));
    assert_eq!(v6.to_string(), "[fd00::1]:8877");
    for bad in [
        "",
        "host",
        "host:",
        ":8877",
        "fd00::1:8877",
        "[fd00::1]",
        "h:0",
        "h:70000",
    ] {
        assert!(parse_response_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn invalid_port_range_names_the_option() {
    let e = run(
        &["--kernel-id", "k", "--port-range", "9..3", "--", "k"],
        &[],
    )
    .unwrap_err();
    assert!(e.option.contains("--port-range"));
    assert!(e.problem.contains("LOWER..UPPER"));
}

#[test]
fn spark_submit_primary_resource_is_ignored() {
    let c = run(
        &["/opt/dummy.py", "--kernel-id", "k", "--", "k"],
        &[("PYSPARK_GATEWAY_PORT", "4000")],
    )
    .unwrap();
    assert!(c.spark_submit && c.exit_with_parent);
    assert!(c.connection_file.ends_with("kernel-k.json"));
}

#[test]
fn eg_bootstrap_script_as_an_argument_is_ignored() {
    let c = run(
        &["/usr/local/bin/bootstrap-kernel.sh"],
        &[("KERNEL_ID", "k")],
    )
    .unwrap();
    assert_eq!(c.connection_file, PathBuf::from("/tmp/kernel-k.json"));
    assert!(c.warnings.iter().any(|w| w.contains("bootstrap-kernel.sh")));
}

#[test]
fn log_levels_follow_python_numbers() {
    assert_eq!(
        parse_log_level(Some("10".into())).unwrap(),
        log::LevelFilter::Debug
    );
    assert_eq!(
        parse_log_level(Some("WARNING".into())).unwrap(),
        log::LevelFilter::Warn
    );
    assert!(parse_log_level(Some("loud".into())).is_err());
}

#[test]
fn transport_encryption_policies() {
    let te = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--kernel-id", "k"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "k"]);
        run(&all, env).map(|c| c.transport_encryption)
    };
    use TransportEncryption::{Auto, Required};
    assert_eq!(
        te(&["--transport-encryption", "auto"], &[]).unwrap(),
        Some(Auto)
    );
    assert_eq!(
        te(&["--transport-encryption=REQUIRED"], &[]).unwrap(),
        Some(Required)
    );
    assert_eq!(te(&["--transport-encryption", "none"], &[]).unwrap(), None);
    assert_eq!(te(&["--transport-encryption", ""], &[]).unwrap(), None);
    assert_eq!(
        te(&[], &[("TRANSPORT_ENCRYPTION", "required")]).unwrap(),
        Some(Required)
    );
    assert_eq!(
        te(&[], &[("TRANSPORT_ENCRYPTION", "{transport_encryption}")]).unwrap(),
        None
    );
    // The option wins over the environment.
    assert_eq!(
        te(
            &["--transport-encryption", "auto"],
            &[("TRANSPORT_ENCRYPTION", "required")]
        )
        .unwrap(),
        Some(Auto)
    );
    let e = te(&["--transport-encryption", "curve"], &[]).unwrap_err();
    assert!(e.option.contains("--transport-encryption"), "{e}");
    assert!(
        e.problem.contains("`curve`") && e.problem.contains("none, auto, required"),
        "{e}"
    );
}
