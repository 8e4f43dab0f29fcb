//! Errors of kernel operations, each with whose fault it is; the API maps them to HTTP
//! statuses with Enterprise Gateway's codes.

/// Errors of kernel operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// No kernelspec of that name (client's fault; EG answers 500, we answer 404).
    #[error("No such kernelspec: {0:?}")]
    NoSuchSpec(String),
    /// The kernelspec asks for a placement gateway-lite does not do (Kubernetes, a YARN
    /// cluster, an unknown process proxy); nothing was started.
    #[error("Kernelspec {spec} cannot be launched by gateway-lite: {why}")]
    Refused {
        /// The kernelspec's name.
        spec: String,
        /// The class it names and what to use instead.
        why: String,
    },
    /// `--transport-encryption required`, and the kernelspec does not list `"curve"` in
    /// `metadata.supported_encryption`; nothing was started.
    #[error(
        "Kernelspec {spec} does not support CurveZMQ (its metadata.supported_encryption does not list \"curve\"), and gateway-lite runs with --transport-encryption required: install the spec with `kernel-launcher kernelspec install --for gateway-lite --transport-encryption required` (its kernel needs ipykernel >= 7.3), or run gateway-lite with --transport-encryption auto"
    )]
    EncryptionUnsupported {
        /// The kernelspec's name.
        spec: String,
    },
    /// No kernel of that id (client's fault).
    #[error("Kernel does not exist: {0}")]
    NoSuchKernel(String),
    /// The request's env is unacceptable (client's fault).
    #[error("{0}")]
    BadEnv(String),
    /// The launcher failed before reporting (kernelspec or host fault).
    #[error("Error occurred during launch of KernelID: {kernel_id}. {message}")]
    Launch {
        /// The kernel id.
        kernel_id: String,
        /// What happened, with the launcher's stderr tail.
        message: String,
    },
    /// No payload within the launch timeout.
    #[error(
        "KernelID: '{kernel_id}' launch timeout due to: Waited too long ({secs}s) to get connection info. {log}"
    )]
    Timeout {
        /// The kernel id.
        kernel_id: String,
        /// The timeout.
        secs: f64,
        /// The launcher's stderr tail.
        log: String,
    },
    /// The operation needs a running kernel.
    #[error("Kernel {0} is not running (it died or is restarting)")]
    NotRunning(String),
    /// A kernel limit is reached (EG answers 403).
    #[error("{0}")]
    Limit(String),
    /// Interrupting failed.
    #[error("Interrupting kernel {kernel_id} failed: {message}")]
    Interrupt {
        /// The kernel id.
        kernel_id: String,
        /// Why.
        message: String,
    },
    /// The launch was abandoned: its client went away, the kernel was shut down meanwhile, or
    /// the gateway is stopping. The launcher was stopped.
    #[error("The launch of KernelID: {0} was abandoned")]
    Cancelled(String),
}
