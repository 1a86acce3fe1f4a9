//! Classifier speed: `cargo bench --bench classify` prints the one-off index build and ns per call.
//! Under `cargo test` (no `--bench` argument) it runs a single call, so the target stays compiled and
//! working without costing test time.

use std::hint::black_box;
use std::time::Instant;

use kybctl::classify::{classify, BusinessInput};

fn main() {
    let input = BusinessInput {
        name: "Sunrise Bakery".to_string(),
        description: Some(
            "Family-owned artisan bakery selling sourdough bread, pastries and custom cakes. \
             We also run a small cafe serving coffee."
                .to_string(),
        ),
        website: Some("https://www.sunrisebakery.com".to_string()),
        country: Some("US".to_string()),
        declared_mcc: None,
    };
    let start = Instant::now();
    let first = classify(&input);
    let build = start.elapsed();
    assert!(first.naics_code.starts_with("3118"), "{first:?}");
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("first call (builds the index): {build:?}");
    for round in 1..=3 {
        let n = 20_000u32;
        let start = Instant::now();
        for _ in 0..n {
            black_box(classify(black_box(&input)));
        }
        let per = start.elapsed().as_nanos() / u128::from(n);
        println!("round {round}: {per} ns/call ({n} calls)");
    }
}
