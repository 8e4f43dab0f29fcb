//! How the listener is reached: TLS (`--certfile`, `--keyfile`, `--client-ca`) and the path
//! prefix every route is served under (`--base-url`).
//!
//! Both have Enterprise Gateway's variables as second names (`EG_CERTFILE`, `EG_KEYFILE`,
//! `EG_CLIENT_CA`, `EG_BASE_URL`), read when the gateway-lite ones are absent. The TLS files
//! are read and checked here, at start ([`super::tls`]), so a wrong file is a configuration
//! error naming its option, not a failure at every handshake.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::Args;
use super::settings::ConfigError;
use super::tls::{TlsFile, TlsFiles, server_config};

const CERTFILE: &str = "--certfile (env GATEWAY_LITE_CERTFILE)";
const EG_CERTFILE: &str = "EG_CERTFILE (--certfile)";
const KEYFILE: &str = "--keyfile (env GATEWAY_LITE_KEYFILE)";
const EG_KEYFILE: &str = "EG_KEYFILE (--keyfile)";
const CLIENT_CA: &str = "--client-ca (env GATEWAY_LITE_CLIENT_CA)";
const EG_CLIENT_CA: &str = "EG_CLIENT_CA (--client-ca)";

/// The gateway-lite value, else Enterprise Gateway's, with the option to name in errors.
fn either<'a, T>(
    ours: &'a Option<T>,
    eg: &'a Option<T>,
    names: (&'static str, &'static str),
) -> Option<(&'a T, &'static str)> {
    match (ours, eg) {
        (Some(v), _) => Some((v, names.0)),
        (None, Some(v)) => Some((v, names.1)),
        (None, None) => None,
    }
}

fn path_of<'a>(
    ours: &'a Option<PathBuf>,
    eg: &'a Option<PathBuf>,
    names: (&'static str, &'static str),
) -> Option<(&'a Path, &'static str)> {
    let given = |p: &'a Option<PathBuf>| p.as_deref().filter(|p| !p.as_os_str().is_empty());
    match (given(ours), given(eg)) {
        (Some(p), _) => Some((p, names.0)),
        (None, Some(p)) => Some((p, names.1)),
        (None, None) => None,
    }
}

/// The TLS server configuration, when `--certfile` and `--keyfile` are given (both or
/// neither); a key file other users can read is warned about.
pub(super) fn tls(
    args: &Args,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    let cert = path_of(&args.certfile, &args.eg_certfile, (CERTFILE, EG_CERTFILE));
    let key = path_of(&args.keyfile, &args.eg_keyfile, (KEYFILE, EG_KEYFILE));
    let ca = path_of(
        &args.client_ca,
        &args.eg_client_ca,
        (CLIENT_CA, EG_CLIENT_CA),
    );
    let ((cert, cert_option), (key, key_option)) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            return match ca {
                Some((_, option)) => Err(ConfigError {
                    option,
                    problem: "a client CA needs TLS: give --certfile and --keyfile too".into(),
                }),
                None => Ok(None),
            };
        }
        (c, _) => {
            let (given, missing) = if c.is_some() {
                ("--certfile", "--keyfile")
            } else {
                ("--keyfile", "--certfile")
            };
            return Err(ConfigError {
                option: "--certfile and --keyfile (env GATEWAY_LITE_CERTFILE, GATEWAY_LITE_KEYFILE)",
                problem: format!(
                    "{given} was given without {missing}: give both (the certificate and its private key, in PEM), or neither for plain HTTP"
                ),
            });
        }
    };
    let files = TlsFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: ca.map(|(p, _)| p.to_path_buf()),
    };
    let config = server_config(&files).map_err(|e| ConfigError {
        option: match e.file() {
            TlsFile::Cert => cert_option,
            TlsFile::Key => key_option,
            TlsFile::ClientCa => ca.map_or(CLIENT_CA, |(_, o)| o),
        },
        problem: e.to_string(),
    })?;
    if let Ok(meta) = std::fs::metadata(key)
        && meta.permissions().mode() & 0o077 != 0
    {
        warnings.push(format!(
            "the TLS key {} can be read by other users; chmod 600 it",
            key.display()
        ));
    }
    Ok(Some(config))
}

/// The base URL, normalised to start and end with `/` (`/` when absent).
pub(super) fn base_url(args: &Args) -> Result<String, ConfigError> {
    let Some((text, option)) = either(
        &args.base_url,
        &args.eg_base_url,
        (
            "--base-url (env GATEWAY_LITE_BASE_URL)",
            "EG_BASE_URL (--base-url)",
        ),
    ) else {
        return Ok("/".into());
    };
    normalise_base_url(text).map_err(|problem| ConfigError { option, problem })
}

/// `gw`, `/gw` and `/gw/` are all `/gw/`; `` and `/` are `/`. Only path characters that need
/// no escaping are accepted, so the prefix is matched as the client writes it.
fn normalise_base_url(text: &str) -> Result<String, String> {
    let fix = "give a path such as /gateway/";
    let bad = |why: &str| Err(format!("{text:?} {why}; {fix}"));
    if text.contains("..") {
        return bad("contains '..'");
    }
    if text.contains(['?', '#']) {
        return bad("contains '?' or '#' (a query or fragment, not a path)");
    }
    if text.contains(char::is_whitespace) {
        return bad("contains spaces");
    }
    let inner = text.trim_matches('/');
    if inner.is_empty() {
        return Ok("/".into());
    }
    if let Some(c) = inner
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/!$&'()+,;=@".contains(*c)))
    {
        return bad(&format!("contains {c:?}"));
    }
    if inner.split('/').any(|s| s.is_empty() || s == ".") {
        return bad("has an empty or '.' segment");
    }
    Ok(format!("/{inner}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_parse as parse;

    /// A directory with `cert.pem` and `key.pem` (self-signed, for localhost), `other.pem` (a
    /// key of another certificate) and `garbage.pem`; removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new() -> Files {
            let dir = std::env::temp_dir().join(format!("gl-tls-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let ours = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(dir.join("cert.pem"), ours.cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), ours.signing_key.serialize_pem()).unwrap();
            std::fs::write(dir.join("other.pem"), other.signing_key.serialize_pem()).unwrap();
            std::fs::write(dir.join("garbage.pem"), "-----BEGIN CERTIFICATE-----\n!!\n").unwrap();
            Files(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).to_string_lossy().into_owned()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn tls_files_are_checked_at_start() {
        let f = Files::new();
        let (cert, key) = (f.path("cert.pem"), f.path("key.pem"));
        let c = parse(&["--certfile", &cert, "--keyfile", &key]).unwrap();
        let tls = c.edge.tls.expect("TLS is on");
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(parse(&[]).unwrap().edge.tls.is_none(), "off by default");
        // Enterprise Gateway's names (EG_CERTFILE, EG_KEYFILE) are second names.
        let c = parse(&["--eg-certfile", &cert, "--eg-keyfile", &key]).unwrap();
        assert!(c.edge.tls.is_some());
        let c = parse(&["--certfile", &cert, "--keyfile", &key, "--client-ca", &cert]).unwrap();
        assert!(c.edge.tls.is_some(), "mutual TLS");

        // (arguments, the option the error names, words of the problem)
        let missing = f.path("missing.pem");
        let other = f.path("other.pem");
        let garbage = f.path("garbage.pem");
        let cases: Vec<(Vec<&str>, &str, &str)> = vec![
            (
                vec!["--certfile", &cert],
                "--certfile and --keyfile",
                "without --keyfile",
            ),
            (
                vec!["--keyfile", &key],
                "--certfile and --keyfile",
                "without --certfile",
            ),
            (
                vec!["--client-ca", &cert],
                "--client-ca",
                "--certfile and --keyfile",
            ),
            (
                vec!["--certfile", &cert, "--keyfile", &missing],
                "--keyfile",
                "cannot read",
            ),
            (
                vec!["--certfile", &missing, "--keyfile", &key],
                "--certfile",
                "cannot read",
            ),
            (
                vec!["--certfile", &key, "--keyfile", &key],
                "--certfile",
                "no PEM certificate",
            ),
            (
                vec!["--certfile", &cert, "--keyfile", &cert],
                "--keyfile",
                "no PEM private key",
            ),
            (
                vec!["--certfile", &cert, "--keyfile", &other],
                "--keyfile",
                "does not belong",
            ),
            (
                vec!["--certfile", &garbage, "--keyfile", &key],
                "--certfile",
                "PEM",
            ),
            (
                vec!["--eg-certfile", &cert, "--eg-keyfile", &other],
                "EG_KEYFILE",
                "does not belong",
            ),
            (
                vec!["--certfile", &cert, "--keyfile", &key, "--client-ca", &key],
                "--client-ca",
                "no PEM certificate",
            ),
            (
                vec![
                    "--certfile",
                    &cert,
                    "--keyfile",
                    &key,
                    "--eg-client-ca",
                    &missing,
                ],
                "EG_CLIENT_CA",
                "cannot read",
            ),
        ];
        for (args, option, words) in cases {
            let e = parse(&args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
            assert!(e.problem.contains(words), "{args:?}: {e}");
        }
    }

    #[test]
    fn base_url_option() {
        assert_eq!(parse(&[]).unwrap().edge.base_url, "/");
        assert_eq!(parse(&["--base-url", "gw"]).unwrap().edge.base_url, "/gw/");
        assert_eq!(
            parse(&["--eg-base-url", "/eg"]).unwrap().edge.base_url,
            "/eg/"
        );
        let c = parse(&["--base-url", "/ours/", "--eg-base-url", "/eg"]).unwrap();
        assert_eq!(c.edge.base_url, "/ours/", "the gateway-lite name wins");
        for bad in ["/a/../b", "/gw?x", "/gw#x", "/g w"] {
            let e = parse(&["--base-url", bad]).unwrap_err();
            assert!(e.option.starts_with("--base-url"), "{bad:?}: {e}");
        }
        let e = parse(&["--eg-base-url", "/a b"]).unwrap_err();
        assert!(e.option.starts_with("EG_BASE_URL"), "{e}");
    }

    #[test]
    fn base_urls_are_normalised() {
        for (given, want) in [
            ("", "/"),
            ("/", "/"),
            ("gw", "/gw/"),
            ("/gw", "/gw/"),
            ("/gw/", "/gw/"),
            ("/a/b-c_d.e/", "/a/b-c_d.e/"),
        ] {
            assert_eq!(normalise_base_url(given).as_deref(), Ok(want), "{given:?}");
        }
        for bad in [
            "/a/../b", "..", "/gw?x=1", "/gw#top", "/g w/", "/gw\t", "/a//b", "/a/./b", "/%2e/",
            "/{id}/", "/*x/", "/:x/", "/é/",
        ] {
            assert!(normalise_base_url(bad).is_err(), "{bad:?}");
        }
    }
}
