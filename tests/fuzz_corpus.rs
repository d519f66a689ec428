//! The fuzz targets' corpus and regression inputs, replayed on stable without
//! the fuzzer: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same check the target runs
//! (`fuzz/checks.rs`, included here by path), so an input that once crashed
//! a parser, or reached code the fuzzer found, keeps being tried in CI.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_and_regressions_pass_the_checks() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failed = Vec::new();
    for &(target, check) in checks::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "no corpus for {target} under {}",
            fuzz.display()
        );
        let regressions = inputs(&fuzz.join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = fs::read(file).expect("read an input");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "checks failed on (panic messages above): {failed:#?}"
    );
}
