//! The `ringlb` binary: parse, validate, run. Every start-up failure is one
//! line on stderr: exit 2 for bad usage, 1 for anything else.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use ringlb::config::cli::Cli;
use ringlb::config::manual;
use ringlb::config::Config;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(err),
    };
    if let Some(printed) = print_manual(&cli) {
        return printed;
    }
    if let Err(err) =
        ringlb::logging::init(cli.log_format, cli.log_level.as_deref(), cli.access_log)
    {
        eprintln!("ringlb: {}", printable(&err.to_string()));
        return ExitCode::from(2);
    }
    let config = match load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ringlb: {}", printable(&err));
            return ExitCode::from(2);
        }
    };
    if cli.check {
        let names: Vec<&str> = config.frontends.iter().map(|f| f.name.as_str()).collect();
        println!(
            "ringlb: configuration ok: {} frontend(s): {}",
            names.len(),
            names.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let reload = cli.config.clone().map(|_| {
        let cli = cli.clone();
        Box::new(move || load(&cli)) as ringlb::server::Reloader
    });
    match ringlb::server::run(config, reload, cli.takeover.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringlb: {}", printable(&err.to_string()));
            if err.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--completions` and `--man`: print and exit, before logs or config.
fn print_manual(cli: &Cli) -> Option<ExitCode> {
    let mut out = std::io::stdout().lock();
    let result = match (cli.completions, cli.man) {
        (Some(shell), _) => manual::write_completions(shell, &mut out),
        (None, true) => manual::write_man(&mut out),
        (None, false) => return None,
    };
    Some(match result.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringlb: writing to standard output: {err}");
            ExitCode::FAILURE
        }
    })
}

/// The configuration from the file (with process-wide flags over it) or
/// from the flags alone.
fn load(cli: &Cli) -> Result<Config, String> {
    match &cli.config {
        Some(path) => ringlb::config::file::load(path)
            .map_err(|e| e.to_string())?
            .with_cli_overrides(cli)
            .map_err(|e| e.to_string()),
        None => Config::from_cli(cli).map_err(|e| e.to_string()),
    }
}

/// `s` with its control characters escaped (`\t`, `\u{1b}`): a value from a
/// flag or a file, quoted in an error, cannot break the one line or drive
/// the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .fold(String::with_capacity(s.len()), |mut out, c| {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
            out
        })
}

/// Prints help and version as clap renders them; squeezes usage errors onto one line.
fn clap_exit(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = err.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("ringlb: {} (see --help)", printable(&line.join(" ")));
            ExitCode::from(2)
        }
    }
}
