//! Configuration: the command line and environment, parsed once into a typed [`Config`].
//!
//! Every knob of the gateway is read here and nowhere else: after [`Config::from_args`]
//! returns, no code looks at command-line arguments, and the only environment the rest of the
//! gateway reads is the one it hands to kernels (and the Jupyter data paths, which are part of
//! the kernelspec search and are captured here too, as [`SearchEnv`]). Errors name the option
//! (and its environment variable) and say how to fix it; `main` exits 64 (`EX_USAGE`) on them.
//!
//! The types here flow down: the registry, the provisioners and the kernelspec search take
//! them, and this module imports nothing from the rest of the gateway. The raw command line
//! and its checks are in [`cli`]; the syntax of names that reach other programs (ssh
//! destinations, Docker images and networks) is in [`names`]. The TLS files are read and
//! checked here too, at start ([`tls`]), into the server configuration the listener uses.

mod args;
mod cli;
mod edge;
mod listen;
pub mod names;
mod provisioning;
mod settings;
pub mod subnet;
mod tls;

pub use settings::*;

/// Parses `gateway-lite --launcher <this test binary> EXTRA...` (for the options' tests).
#[cfg(test)]
pub(crate) fn test_parse(extra: &[&str]) -> Result<Config, ConfigError> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let launcher = exe.to_string_lossy().into_owned();
    let mut argv = vec!["gateway-lite", "--launcher", &launcher];
    argv.extend_from_slice(extra);
    Config::try_from_iter(argv, SearchEnv::default())
}
