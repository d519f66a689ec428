//! What a packaged daemon ships besides `--help`: shell completion scripts
//! (clap_complete) and a roff man page (clap_mangen), both generated from the
//! same [`Cli`] definition so they cannot drift from the flags. The man page
//! adds the sections clap knows nothing about: the config file, signals, exit
//! codes and files. Writes to the given sink only; never starts anything.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use super::cli::Cli;

/// Prints the completion script for `shell`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ringlb", out);
    Ok(())
}

/// Prints the man page, section 8 (a system daemon), in roff.
pub fn write_man(out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command())
        .section("8")
        .manual("System Administration");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}

/// The sections clap cannot derive, in roff (`\-` is a minus sign, `\fB`
/// bold, `\fI` italic, `\fR` back to roman).
const EXTRA_SECTIONS: &str = r#".SH "CONFIGURATION FILE"
\fB\-\-config\fR \fIFILE\fR reads any number of frontends from a TOML file,
each with its own listen address, backend pool, balancing algorithm, health
checks, timeouts, limits and PROXY protocol settings. Unknown keys, wrong
types and bad values are rejected with one line naming the file, line and key.
Frontend flags (\fB\-\-listen\fR, \fB\-\-backend\fR, \fB\-\-balance\fR, ...)
cannot be combined with \fB\-\-config\fR; the process\-wide flags
\fB\-\-workers\fR, \fB\-\-drain\-timeout\fR, \fB\-\-admin\fR,
\fB\-\-access\-log\fR, \fB\-\-pin\fR, \fB\-\-sqpoll\fR, \fB\-\-resolver\fR and
\fB\-\-resolve\-at\-start\fR override the file.
.PP
A backend written as a name (\fIname\fR:\fIport\fR, or
\fBsrv:\fR\fI_service._proto.name\fR for SRV records) follows DNS: every
address it resolves to is a backend, looked up again every
\fB\-\-resolve\-interval\fR (or at the TTL when shorter) and applied without
a reload. A failed lookup keeps the last addresses; NXDOMAIN keeps them for
\fB\-\-resolve\-hold\fR.
.PP
\fBringlb \-\-check \-\-config\fR \fIFILE\fR validates a file without starting.
A commented example listing every key and its default is shipped as
\fI/usr/share/doc/ringlb/examples/ringlb.toml\fR.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re\-read the configuration file. A file that fails validation, or a listen
address that cannot be bound, is logged and the running configuration stays.
Open connections keep the settings they started with. Without
\fB\-\-config\fR the signal is logged and ignored.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting and let open connections finish for up to
\fB\-\-drain\-timeout\fR, then close the rest and exit 0. A second signal
closes everything at once.
.SH "EXIT STATUS"
.TP
\fB0\fR
Clean exit: after a drain, or \fB\-\-check\fR found the configuration valid,
or \fB\-\-help\fR, \fB\-\-version\fR, \fB\-\-completions\fR, \fB\-\-man\fR.
.TP
\fB1\fR
A runtime failure, such as a listen address held by another program; one line
on standard error names the address and the OS error.
.TP
\fB2\fR
Bad usage or configuration: one line on standard error names the bad value.
.SH FILES
.TP
\fI/etc/ringlb/ringlb.toml\fR
The configuration file read by the packaged systemd unit.
.TP
\fI/lib/systemd/system/ringlb.service\fR
The systemd unit; \fBsystemctl reload ringlb\fR sends SIGHUP.
.SH "SEE ALSO"
The admin endpoint (\fB\-\-admin\fR) serves a stats page at /, Prometheus
metrics at /metrics, /healthz and /backends (JSON).
"#;
