//! What ran and what could not: loud, checked skips.
//!
//! A test that cannot run something (a kernel this CPU lacks, a Python
//! package that is not installed) calls [`skipped`], which prints
//! `SKIPPED: <what>: <reason>` straight to stdout. The test harness captures
//! only the `print!`/`eprint!` macros, so this line shows in a plain
//! `cargo test`. [`ran`] prints nothing. Both also append a line to the file
//! named by `FASTNN_TEST_REPORT`, if set (`.ci/run` sets it and prints a
//! summary at the end):
//!
//! ```text
//! ran\t<what>
//! skipped\t<what>\t<reason>
//! ```
//!
//! Each line is written once per test process, however many tests report
//! it. Lines are short and written with one append each, so parallel tests
//! (and test binaries) can share the file.

use std::io::Write;
use std::sync::Mutex;

/// `what` was exercised.
pub fn ran(what: &str) {
    record(&format!("ran\t{}\n", clean(what)), None);
}

/// `what` could not run, because of `reason`.
pub fn skipped(what: &str, reason: &str) {
    let (what, reason) = (clean(what), clean(reason));
    record(
        &format!("skipped\t{what}\t{reason}\n"),
        Some(format!("SKIPPED: {what}: {reason}\n")),
    );
}

/// One line, no tabs: the report's field separators.
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fn record(line: &str, terminal: Option<String>) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if seen.iter().any(|l| l == line) {
            return;
        }
        seen.push(line.to_string());
    }
    if let Some(msg) = terminal {
        // Not print!: the harness would capture it.
        let mut out = std::io::stdout().lock();
        out.write_all(msg.as_bytes()).unwrap();
        out.flush().unwrap();
    }
    if let Some(path) = std::env::var_os("FASTNN_TEST_REPORT").filter(|p| !p.is_empty()) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("FASTNN_TEST_REPORT={}: {e}", path.to_string_lossy()));
        file.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("FASTNN_TEST_REPORT={}: {e}", path.to_string_lossy()));
    }
}
