//! Times one pipeline on one image on one thread, for `scripts/bench-compare`.
//!
//! `bench-one [--mode M] [--runs N] [--out PATH] <image> <pipeline>` reads the image once,
//! does one untimed warm-up, times `N` runs (default 5) and prints one JSON line with every
//! run's time in milliseconds and the output's size. The pipeline is in the text or JSON form.
//! Modes (what is timed):
//!
//! * `process` — `engine::process`: decode, every op, encode (the default);
//! * `decode` — `codec::decode` alone;
//! * `ops` — the ops (not the encode) on an image decoded before timing;
//! * `encode` — the encode the pipeline's format op asks for, of the image after its ops.
//!
//! `--out` writes the output of `process` mode (used to make the 4K input from the 5K photo).
//! Uses the allocator of the `pixelmesh` binary, so buffer reuse costs what it does there.

use std::time::Instant;

use pixelmesh_filter::codec::{self, Encoding, Limits};
use pixelmesh_filter::engine;
use pixelmesh_filter::ops::{Bitmap, Op, Pipeline};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let usage = "usage: bench-one [--mode process|decode|ops|encode] [--runs N] [--out PATH] <image> <pipeline>";
    let (mut mode, mut runs, mut out_path, mut positional) =
        ("process".to_string(), 5usize, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = args.next().ok_or(usage)?,
            "--runs" => runs = args.next().ok_or(usage)?.parse()?,
            "--out" => out_path = Some(args.next().ok_or(usage)?),
            _ => positional.push(arg),
        }
    }
    let [path, text] = <[String; 2]>::try_from(positional).map_err(|_| usage)?;
    let input = std::fs::read(&path)?;
    let pipeline = Pipeline::parse(&text).map_err(|err| format!("{err:?}"))?;
    let limits = Limits::default();

    let decoded = codec::decode(&input, &limits)?;
    let apply = |mut image: Bitmap| -> Result<Bitmap, Error> {
        for op in pipeline.ops() {
            if !matches!(op, Op::Format(_)) {
                image = op.apply(image)?;
            }
        }
        Ok(image)
    };
    let after_ops = apply(decoded.image.clone())?;
    let encoding = match pipeline.output_format() {
        Some(format) => format.encoding(),
        None => Encoding::new(decoded.format),
    };

    let mut times = Vec::with_capacity(runs);
    let mut size = (0, 0, 0);
    // Run 0 is the warm-up.
    for run in 0..=runs {
        let start = Instant::now();
        size = match mode.as_str() {
            "process" => {
                let out = engine::process(std::hint::black_box(&input), &pipeline, &limits)?;
                if run == runs
                    && let Some(path) = &out_path
                {
                    std::fs::write(path, &out.bytes)?;
                }
                (out.width, out.height, out.bytes.len())
            }
            "decode" => {
                let image = codec::decode(std::hint::black_box(&input), &limits)?.image;
                (image.width(), image.height(), image.data().len())
            }
            "ops" => {
                let source = decoded.image.clone();
                let start_ops = Instant::now();
                let image = apply(source)?;
                times.push(start_ops.elapsed().as_secs_f64() * 1e3);
                if run == 0 {
                    times.clear();
                }
                (image.width(), image.height(), image.data().len())
            }
            "encode" => {
                let bytes = codec::encode_with(std::hint::black_box(&after_ops), &encoding)?;
                (after_ops.width(), after_ops.height(), bytes.len())
            }
            other => return Err(format!("unknown mode {other}; {usage}").into()),
        };
        if mode != "ops" && run > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let times: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!(
        "{{\"times_ms\":[{}],\"width\":{},\"height\":{},\"bytes\":{}}}",
        times.join(","),
        size.0,
        size.1,
        size.2
    );
    Ok(())
}
