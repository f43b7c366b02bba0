//! What the crates' tests share (feature `testing`, enabled by their dev-dependencies): a
//! property-test runner that reports how many cases ran, and PNG chunks written by hand.

use std::cell::Cell;

use proptest::prelude::{ProptestConfig, Strategy};
use proptest::test_runner::{TestCaseError, TestRunner};

/// Runs `test` on `cases` values drawn from `strategy` and prints how many cases ran. A failure
/// panics with the smallest input proptest shrank it to. Nothing is written to disk: a failing
/// input is reported, not kept in a regressions file.
pub fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // Milliseconds: a shrinking failure still ends in bounded time.
        max_shrink_time: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let ran = Cell::new(0_u32);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        ran.set(ran.get() + 1);
        test(value)
    });
    eprintln!("{name}: {} cases ran ({cases} must pass)", ran.get());
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

/// Appends one PNG chunk: length, `kind`, `data` and its CRC.
pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}
