//! `--completions SHELL` and `--man`: every shell's script names every long
//! flag, bash parses its script, and groff renders the man page without a
//! warning. The flag list comes from the CLI definition itself, so a new
//! flag is checked without touching this file.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use common::{binary, run_to_exit};
use ringlb::config::cli::Cli;

/// Every `--long` flag ringlb takes, except clap's own help and version.
fn long_flags() -> Vec<String> {
    let flags: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    flags
}

fn ringlb(args: &[&str]) -> Output {
    let out = Command::new(binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    out
}

/// Runs `program args` with `input` on stdin; returns its output.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn completions_name_every_long_flag_for_each_shell() {
    let flags = long_flags();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = String::from_utf8(ringlb(&["--completions", shell]).stdout).unwrap();
        assert!(script.len() > 500, "{shell}: {script}");
        for flag in &flags {
            // fish writes `-l listen` rather than `--listen`.
            let named = script.contains(flag.as_str())
                || (shell == "fish" && script.contains(&format!("-l {}", &flag[2..])));
            assert!(named, "{shell} completion lacks {flag}");
        }
    }
}

#[test]
fn bash_accepts_the_bash_completion() {
    let script = ringlb(&["--completions", "bash"]).stdout;
    let out = pipe("bash", &["-n"], &script);
    assert!(out.status.success(), "bash -n: {out:?}");
    // And sourcing it registers the completion function.
    let mut probe = script.clone();
    probe.extend_from_slice(b"\ncomplete -p ringlb\n");
    let out = pipe("bash", &[], &probe);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("ringlb"), "{out:?}");
}

#[test]
fn man_page_renders_without_warnings_with_the_extra_sections() {
    let page = ringlb(&["--man"]).stdout;
    let out = pipe("groff", &["-man", "-Tutf8", "-ww", "-P-cbou"], &page);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "groff: {stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "CONFIGURATION FILE",
        "SIGNALS",
        "EXIT STATUS",
        "FILES",
    ] {
        assert!(
            text.lines().any(|l| l == section),
            "no {section} section:\n{text}"
        );
    }
    for needle in ["SIGHUP", "SIGTERM", "SIGINT", "/etc/ringlb/ringlb.toml"] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Each exit code is a tagged paragraph of its own in its section.
    let exit = &text[text.find("EXIT STATUS").unwrap()..text.find("\nFILES").unwrap()];
    for code in ["0", "1", "2"] {
        assert!(
            exit.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit code {code} missing:\n{exit}"
        );
    }
    // Hyphenation may split a flag at a line end; rejoin before searching.
    let joined = text
        .replace("-\n", "")
        .split_whitespace()
        .collect::<String>();
    for flag in long_flags() {
        assert!(joined.contains(&flag), "man page lacks {flag}");
    }
}

#[test]
fn unknown_shell_is_one_line_naming_it() {
    let (status, out) = run_to_exit(&["--completions", "tcsh"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.contains("tcsh"), "{out}");
}

#[test]
fn manual_flags_stand_alone() {
    let (status, out) = run_to_exit(&["--man", "--listen", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--man"), "{out}");
}
