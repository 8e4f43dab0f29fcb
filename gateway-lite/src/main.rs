//! `gateway-lite`: a small gateway that speaks the Jupyter Kernel Gateway REST
//! and WebSocket API and starts kernels through `kernel-launcher`.
//! (Being built; see issue 4.)

fn main() {
    eprintln!("gateway-lite is not built yet");
    std::process::exit(1);
}
