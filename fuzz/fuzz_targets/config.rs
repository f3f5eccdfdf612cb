//! Fuzzes `lethe::config::parse_str` with arbitrary bytes: it must not panic, and every
//! error must name its place (a line and column, or a config path), except the errors
//! about the whole file. A violation panics, which libFuzzer records as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

const WHOLE_FILE: [&str; 5] = [
    "the file is empty",
    "not UTF-8",
    "brackets nested",
    "bytes, more than",
    "cannot read",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = lethe::config::parse_str(
        &text,
        "fuzz.yaml",
        std::path::Path::new("/nonexistent"),
        &|_| None,
    );
    if let Err(errors) = parsed {
        assert!(!errors.0.is_empty(), "rejected without an error");
        for e in &errors.0 {
            let whole_file = WHOLE_FILE.iter().any(|w| e.message.contains(w));
            assert!(
                e.location.is_some() || !e.path.is_empty() || whole_file,
                "an error without a place: {e:?}"
            );
        }
    }
});
