//! The raw command line as clap sees it: every option, its environment variable, its
//! default and its help text. The checks that turn it into a [`super::Config`] are in
//! [`super::cli`] and [`super::provisioning`].

use std::path::PathBuf;

use clap::Parser;

/// The raw command line, as clap sees it.
#[derive(Debug, Parser)]
#[command(
    name = "gateway-lite",
    version,
    about = "A small Jupyter Kernel Gateway that starts kernels through kernel-launcher",
    after_help = "Exit codes: 0 after SIGTERM/SIGINT; 64 a configuration error (the message names the \
option and the fix); 71 the async runtime could not start; 1 a failure while starting or serving \
(address in use, state directory locked by another gateway, ...), with the cause on stderr.\n\n\
`gateway-lite run NOTEBOOK.ipynb --url URL ...` runs a notebook through a gateway instead (see \
`gateway-lite run --help`)."
)]
pub(super) struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LITE_IP", default_value = "127.0.0.1")]
    pub(super) ip: String,
    /// Port to listen on (0 picks a free port; the chosen address is logged and printed).
    #[arg(long, env = "GATEWAY_LITE_PORT", default_value_t = 8888)]
    pub(super) port: u16,
    /// Token clients must present (`Authorization: token T` or `?token=T`). Prefer the
    /// environment variable or --auth-token-file: a command line is readable by every local
    /// user. Without any, a token is generated, printed once and written to a 0600 file.
    #[arg(long, env = "GATEWAY_LITE_AUTH_TOKEN", hide_env_values = true)]
    pub(super) auth_token: Option<String>,
    /// File holding the token (its first line).
    #[arg(
        long,
        env = "GATEWAY_LITE_AUTH_TOKEN_FILE",
        conflicts_with = "auth_token"
    )]
    pub(super) auth_token_file: Option<PathBuf>,
    /// No authentication at all: anyone who can reach the port runs code as this user.
    /// Refused unless --ip is a loopback address.
    #[arg(long, env = "GATEWAY_LITE_NO_AUTH", conflicts_with_all = ["auth_token", "auth_token_file"])]
    pub(super) no_auth: bool,
    /// A host name clients may use in the `Host` header besides IP addresses and localhost
    /// (DNS-rebinding protection). Repeatable; comma-separated in the variable; `*` allows any.
    #[arg(
        long = "allow-host",
        env = "GATEWAY_LITE_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub(super) allow_hosts: Vec<String>,
    /// TLS certificate in PEM (the server's, then any intermediates); with --keyfile the
    /// gateway speaks HTTPS and WSS only. `EG_CERTFILE` is read too.
    #[arg(long, env = "GATEWAY_LITE_CERTFILE")]
    pub(super) certfile: Option<PathBuf>,
    /// Enterprise Gateway's spelling of --certfile.
    #[arg(long = "eg-certfile", env = "EG_CERTFILE", hide = true)]
    pub(super) eg_certfile: Option<PathBuf>,
    /// The private key of --certfile, in PEM. `EG_KEYFILE` is read too.
    #[arg(long, env = "GATEWAY_LITE_KEYFILE")]
    pub(super) keyfile: Option<PathBuf>,
    /// Enterprise Gateway's spelling of --keyfile.
    #[arg(long = "eg-keyfile", env = "EG_KEYFILE", hide = true)]
    pub(super) eg_keyfile: Option<PathBuf>,
    /// CA certificates in PEM: every client must then present a certificate one of them
    /// signed (mutual TLS), besides the token. Needs --certfile and --keyfile. `EG_CLIENT_CA`
    /// is read too.
    #[arg(long, env = "GATEWAY_LITE_CLIENT_CA")]
    pub(super) client_ca: Option<PathBuf>,
    /// Enterprise Gateway's spelling of --client-ca.
    #[arg(long = "eg-client-ca", env = "EG_CLIENT_CA", hide = true)]
    pub(super) eg_client_ca: Option<PathBuf>,
    /// Path prefix every route is served under (Jupyter's base_url), e.g. /gateway/;
    /// requests outside it get 404. `EG_BASE_URL` is read too.
    #[arg(long, env = "GATEWAY_LITE_BASE_URL")]
    pub(super) base_url: Option<String>,
    /// Enterprise Gateway's spelling of --base-url.
    #[arg(long = "eg-base-url", env = "EG_BASE_URL", hide = true)]
    pub(super) eg_base_url: Option<String>,
    /// Open HTTP connections at once; more are closed at once.
    #[arg(long, env = "GATEWAY_LITE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub(super) max_connections: usize,
    /// A kernelspec directory (holding `<name>/kernel.json`), searched first, before
    /// Jupyter's data paths: JUPYTER_PATH; the user data dir (JUPYTER_DATA_DIR, else
    /// ~/.local/share/jupyter) and the Python environment's share/jupyter (VIRTUAL_ENV,
    /// CONDA_PREFIX, python3 on PATH), in the order Jupyter gives them; then
    /// /usr/local/share/jupyter and /usr/share/jupyter. The first directory holding a name
    /// wins; all are re-read while the gateway runs. Repeatable.
    #[arg(
        long = "kernelspec-dir",
        env = "GATEWAY_LITE_KERNELSPEC_DIRS",
        value_delimiter = ':'
    )]
    pub(super) kernelspec_dirs: Vec<PathBuf>,
    /// Name of the default kernelspec (default: python3 if present, else the first by name).
    #[arg(long, env = "GATEWAY_LITE_DEFAULT_KERNEL_NAME")]
    pub(super) default_kernel_name: Option<String>,
    /// The kernel-launcher binary (default: next to gateway-lite, then on PATH).
    #[arg(long, env = "GATEWAY_LITE_LAUNCHER")]
    pub(super) launcher: Option<PathBuf>,
    /// Seconds to wait for a kernel's connection payload; `KERNEL_LAUNCH_TIMEOUT` in the
    /// request's env wins, as in Enterprise Gateway.
    #[arg(long, env = "GATEWAY_LITE_LAUNCH_TIMEOUT", default_value = "30")]
    pub(super) launch_timeout: String,
    /// A web origin (`https://lab.example:8443`) whose pages may call the API and open
    /// kernel WebSockets (CORS); `*` allows any. Repeatable; comma-separated in the variable.
    /// Without one, only same-origin pages and non-browser clients may.
    #[arg(
        long = "allow-origin",
        env = "GATEWAY_LITE_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub(super) allow_origins: Vec<String>,
    /// Ports launchers may use, `L..U` (`0..0`: any); payloads naming other ports are
    /// refused. `EG_PORT_RANGE` is read too.
    #[arg(long, env = "GATEWAY_LITE_PORT_RANGE")]
    pub(super) port_range: Option<String>,
    /// Enterprise Gateway's spelling of --port-range.
    #[arg(long = "eg-port-range", env = "EG_PORT_RANGE", hide = true)]
    pub(super) eg_port_range: Option<String>,
    /// A variable of the gateway's environment local kernels get too, besides the standard
    /// ones (PATH, HOME, LANG, ...); `PREFIX*` for all that start with PREFIX. Repeatable;
    /// comma-separated in the variable. `GATEWAY_LITE_*` never passes.
    #[arg(
        long = "kernel-env",
        env = "GATEWAY_LITE_KERNEL_ENV",
        value_delimiter = ','
    )]
    pub(super) kernel_env: Vec<String>,
    /// Remote hosts for `DistributedProcessProxy` kernelspecs: ssh destinations (`host`,
    /// `user@host`, an ssh config alias), comma-separated. `EG_REMOTE_HOSTS` is read too.
    /// Launchers there report to --response-ip, so give one the hosts can reach.
    #[arg(long, env = "GATEWAY_LITE_REMOTE_HOSTS")]
    pub(super) remote_hosts: Option<String>,
    /// Enterprise Gateway's spelling of --remote-hosts.
    #[arg(
        long = "EnterpriseGatewayApp.remote_hosts",
        env = "EG_REMOTE_HOSTS",
        hide = true
    )]
    pub(super) eg_remote_hosts: Option<String>,
    /// ssh client configuration for remote hosts (`ssh -F FILE`). Default: ~/.ssh/config.
    #[arg(long, env = "GATEWAY_LITE_SSH_CONFIG")]
    pub(super) ssh_config: Option<PathBuf>,
    /// User on the remote hosts (`ssh -l USER`). Default: ssh's choice.
    #[arg(long, env = "GATEWAY_LITE_SSH_USER")]
    pub(super) ssh_user: Option<String>,
    /// How a remote host is chosen: round-robin, or least-connection (fewest live kernels).
    /// Either way, a host ssh could not reach is skipped for 30 s while another is up, and
    /// the launch that found it down is sent to another host.
    #[arg(
        long,
        env = "GATEWAY_LITE_LOAD_BALANCING",
        default_value = "round-robin"
    )]
    pub(super) load_balancing: String,
    /// Seconds ssh may take to connect to a remote host (whole seconds).
    #[arg(long, env = "GATEWAY_LITE_SSH_CONNECT_TIMEOUT", default_value = "10")]
    pub(super) ssh_connect_timeout: String,
    /// Directory on the remote hosts for launcher logs and pid files.
    #[arg(long, env = "GATEWAY_LITE_REMOTE_LOG_DIR", default_value = "/tmp")]
    pub(super) remote_log_dir: String,
    /// Docker network kernel containers join (`DockerProcessProxy` and
    /// `DockerSwarmProcessProxy` kernelspecs). `EG_DOCKER_NETWORK` is read too. Containers
    /// report to --response-ip, so give one they can reach, e.g. this network's gateway
    /// address on the host (`docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' NET`).
    #[arg(long, env = "GATEWAY_LITE_DOCKER_NETWORK")]
    pub(super) docker_network: Option<String>,
    /// The attachable overlay network Swarm kernels (`DockerSwarmProcessProxy`,
    /// `docker-swarm-provisioner`) join; default: --docker-network. The gateway must be on it
    /// too (run it as a Swarm service or a container attached to it).
    #[arg(long, env = "GATEWAY_LITE_SWARM_NETWORK")]
    pub(super) swarm_network: Option<String>,
    /// Enterprise Gateway's spelling of --docker-network.
    #[arg(long = "eg-docker-network", env = "EG_DOCKER_NETWORK", hide = true)]
    pub(super) eg_docker_network: Option<String>,
    /// A kernel image clients may ask for with `KERNEL_IMAGE` (an allow-list: others are
    /// refused). Repeatable; comma-separated in the variable. The first is the image of
    /// Docker kernelspecs without `metadata.process_proxy.config.image_name`.
    /// `EG_KERNEL_IMAGE` is read too.
    #[arg(
        long = "docker-image",
        env = "GATEWAY_LITE_DOCKER_IMAGE",
        value_delimiter = ','
    )]
    pub(super) docker_images: Vec<String>,
    /// Each KERNEL_USERNAME's containers on a network of their own
    /// (`<--docker-name-prefix>-user-<name>`, created as needed), so one user's kernels
    /// cannot reach another's.
    #[arg(long, env = "GATEWAY_LITE_DOCKER_NETWORK_PER_USER")]
    pub(super) docker_network_per_user: bool,
    /// Give kernel containers a writable root filesystem (default: read-only, with a
    /// private /tmp).
    #[arg(long, env = "GATEWAY_LITE_DOCKER_WRITABLE_ROOT")]
    pub(super) docker_writable_root: bool,
    /// Enterprise Gateway's spelling of --docker-image.
    #[arg(long = "eg-kernel-image", env = "EG_KERNEL_IMAGE", hide = true)]
    pub(super) eg_kernel_image: Option<String>,
    /// Kernel containers are named PREFIX-<kernel id>.
    #[arg(
        long,
        env = "GATEWAY_LITE_DOCKER_NAME_PREFIX",
        default_value = "gateway-lite"
    )]
    pub(super) docker_name_prefix: String,
    /// Extra label KEY=VALUE on every kernel container (besides kernel_id, component=kernel
    /// and app=gateway-lite). Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "docker-label",
        env = "GATEWAY_LITE_DOCKER_LABELS",
        value_delimiter = ','
    )]
    pub(super) docker_labels: Vec<String>,
    /// The Docker Engine API socket kernel containers are run through: `unix:///PATH` or a
    /// path. Default: `DOCKER_HOST` when it is a `unix://` URL, else /var/run/docker.sock.
    #[arg(long, env = "GATEWAY_LITE_DOCKER_HOST")]
    pub(super) docker_host: Option<String>,
    /// Docker's own variable, read when --docker-host is not given.
    #[arg(long = "docker-host-env", env = "DOCKER_HOST", hide = true)]
    pub(super) docker_host_env: Option<String>,
    /// Default CPU reservation of a Docker/Swarm kernel without KERNEL_CPUS (e.g. 0.5, 500m).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_CPUS_DEFAULT")]
    pub(super) kernel_cpus_default: Option<String>,
    /// Default CPU limit of a Docker/Swarm kernel without KERNEL_CPUS_LIMIT (e.g. 2).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_CPUS_LIMIT_DEFAULT")]
    pub(super) kernel_cpus_limit_default: Option<String>,
    /// Most CPUs a request may ask for (KERNEL_CPUS and KERNEL_CPUS_LIMIT); above it: 400.
    #[arg(long, env = "GATEWAY_LITE_KERNEL_CPUS_MAX")]
    pub(super) kernel_cpus_max: Option<String>,
    /// Default memory reservation of a Docker/Swarm kernel without KERNEL_MEMORY (e.g. 512Mi).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_MEMORY_DEFAULT")]
    pub(super) kernel_memory_default: Option<String>,
    /// Default memory limit of a Docker/Swarm kernel without KERNEL_MEMORY_LIMIT (e.g. 2Gi).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_MEMORY_LIMIT_DEFAULT")]
    pub(super) kernel_memory_limit_default: Option<String>,
    /// Most memory a request may ask for (KERNEL_MEMORY and KERNEL_MEMORY_LIMIT); above it: 400.
    #[arg(long, env = "GATEWAY_LITE_KERNEL_MEMORY_MAX")]
    pub(super) kernel_memory_max: Option<String>,
    /// Most GPUs a request may ask for (KERNEL_GPUS and KERNEL_GPUS_LIMIT); above it: 400.
    #[arg(long, env = "GATEWAY_LITE_KERNEL_GPUS_MAX")]
    pub(super) kernel_gpus_max: Option<String>,
    /// Address the response listener binds and launchers are told to report to. A subnet
    /// (e.g. 10.202.0.0/24) means this host's (or container's) address in it, found at start:
    /// for a gateway on a Swarm overlay network without a fixed address.
    #[arg(long, env = "GATEWAY_LITE_RESPONSE_IP", default_value = "127.0.0.1")]
    pub(super) response_ip: String,
    /// Address local kernels bind their ZeroMQ and comm ports on (`KERNEL_LAUNCHER_IP`).
    #[arg(long, env = "GATEWAY_LITE_KERNEL_IP", default_value = "127.0.0.1")]
    pub(super) kernel_ip: String,
    /// CurveZMQ between gateway-lite and kernels whose kernelspec lists "curve" in
    /// `metadata.supported_encryption`: `auto` asks their launcher for it and falls back to
    /// clear text for a kernel that cannot (ipykernel < 7.3); `required` refuses such specs and
    /// kernels; `none` never asks.
    #[arg(
        long,
        env = "GATEWAY_LITE_TRANSPORT_ENCRYPTION",
        default_value = "auto"
    )]
    pub(super) transport_encryption: String,
    /// Largest message accepted from a client (WebSocket) or passed on from a kernel, in
    /// bytes. Kernel messages over twice this are dropped as they arrive.
    #[arg(long, env = "GATEWAY_LITE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(super) max_message_bytes: usize,
    /// Directory where running kernels are recorded, so a restarted gateway re-attaches to
    /// them (and launchers' logs are kept). Default: $XDG_STATE_HOME/gateway-lite/port-PORT
    /// (~/.local/state/...), or none with --port 0.
    #[arg(long, env = "GATEWAY_LITE_STATE_DIR", conflicts_with = "no_state_dir")]
    pub(super) state_dir: Option<PathBuf>,
    /// Do not record kernels: they end with the gateway.
    #[arg(long, env = "GATEWAY_LITE_NO_STATE_DIR")]
    pub(super) no_state_dir: bool,
    /// Seconds a kernel's log file (the launcher's and kernel's output, `logs/<kernel id>.log`
    /// in the state directory) is kept after the kernel ended; 0 deletes it at once.
    #[arg(
        long,
        env = "GATEWAY_LITE_KERNEL_LOG_RETENTION",
        default_value = "86400",
        allow_negative_numbers = true
    )]
    pub(super) kernel_log_retention: String,
    /// Format of the gateway's log on stderr: text (one line per event) or json (one object
    /// per line, its fields at the top level). `GATEWAY_LITE_LOG` filters it.
    #[arg(long, env = "GATEWAY_LITE_LOG_FORMAT", default_value = "text")]
    pub(super) log_format: String,
    /// Shut every kernel down when the gateway exits (SIGTERM/SIGINT). Without it, kernels
    /// keep running for the next gateway when a state directory is in use.
    #[arg(long, env = "GATEWAY_LITE_SHUTDOWN_KERNELS_ON_EXIT")]
    pub(super) shutdown_kernels_on_exit: bool,
    /// Most kernels at once (EG's max_kernels). Absent: no limit.
    #[arg(long, env = "GATEWAY_LITE_MAX_KERNELS")]
    pub(super) max_kernels: Option<usize>,
    /// Most kernels at once per KERNEL_USERNAME (EG's max_kernels_per_user). Absent or -1: no limit.
    #[arg(
        long,
        env = "GATEWAY_LITE_MAX_KERNELS_PER_USER",
        allow_negative_numbers = true
    )]
    pub(super) max_kernels_per_user: Option<i64>,
    /// Consecutive automatic restarts of a kernel that died; 0 turns automatic restart off.
    #[arg(long, env = "GATEWAY_LITE_RESTART_LIMIT", default_value_t = 5)]
    pub(super) restart_limit: u32,
    /// Seconds of inactivity after which a kernel is shut down (Jupyter's cull_idle_timeout); 0: never.
    #[arg(long, env = "GATEWAY_LITE_CULL_IDLE_TIMEOUT", default_value = "0")]
    pub(super) cull_idle_timeout: String,
    /// Seconds between idle checks (Jupyter's cull_interval).
    #[arg(long, env = "GATEWAY_LITE_CULL_INTERVAL", default_value = "300")]
    pub(super) cull_interval: String,
    /// Cull kernels with open WebSocket connections too (Jupyter's cull_connected).
    #[arg(long, env = "GATEWAY_LITE_CULL_CONNECTED")]
    pub(super) cull_connected: bool,
    /// Cull busy kernels too (Jupyter's cull_busy).
    #[arg(long, env = "GATEWAY_LITE_CULL_BUSY")]
    pub(super) cull_busy: bool,
    /// Keep N started, idle kernels of kernelspec NAME for requests to claim (NAME=N;
    /// repeatable; the env variable takes a comma-separated list).
    #[arg(
        long = "pool",
        env = "GATEWAY_LITE_POOL",
        value_name = "NAME=N",
        value_delimiter = ','
    )]
    pub(super) pools: Vec<String>,
    /// Pooled kernels launched at once while refilling, across all pools.
    #[arg(
        long,
        env = "GATEWAY_LITE_POOL_REFILL_CONCURRENCY",
        default_value_t = 2
    )]
    pub(super) pool_refill_concurrency: usize,
    /// Seconds a refill waits before it launches, so it does not compete with the claimed
    /// kernel's first work (e.g. a Spark kernel's first job on a small machine).
    #[arg(
        long,
        env = "GATEWAY_LITE_POOL_REFILL_DELAY",
        default_value = "0.25",
        allow_negative_numbers = true
    )]
    pub(super) pool_refill_delay: String,
}
