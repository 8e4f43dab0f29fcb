//! Benchmark: how fast each kernel image delivers its connection payload. For every image,
//! RUNS times: `docker run` as Enterprise Gateway's Docker launchers do (environment only,
//! `--user 1000`), timed from the start of `docker run` until a real response listener has
//! received the whole encrypted payload (and decrypted it, outside the timing). Prints a Markdown
//! table: image, size, median and range. Run with `bench/images.sh` (builds the images), or
//! `KL_BENCH_IMAGES="python=IMAGE r=IMAGE ..." cargo bench -p e2e --bench images -- [RUNS]`.

use std::time::Instant;

use e2e::kernel_image::{KernelRun, docker};

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("RUNS must be a number"))
        .unwrap_or(5);
    let images = std::env::var("KL_BENCH_IMAGES")
        .expect("KL_BENCH_IMAGES is not set: NAME=IMAGE pairs, e.g. python=gateway-lite/python-kernel:latest (bench/images.sh sets it)");
    println!("| image | size | `docker run` → payload received (median of {runs}) | min – max |");
    println!("|---|---|---|---|");
    for pair in images.split_whitespace() {
        let (name, image) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("`{pair}` in KL_BENCH_IMAGES is not NAME=IMAGE"));
        let out = docker(&["image", "inspect", "--format", "{{.Size}}", image]);
        let size: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no image {image}: build it first"));
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let run = KernelRun::create();
            let start = Instant::now();
            run.start_like_eg(image, &[]);
            let report = run.payload();
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(report.kernel_id, run.name);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "| {name} (`{image}`) | {} MiB | {:.0} ms | {:.0} – {:.0} ms |",
            size / 1024 / 1024,
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
    }
}
