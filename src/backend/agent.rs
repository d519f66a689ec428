//! Agent checks, as HAProxy's `agent-check`: the prober connects to a
//! backend's address on `agent-port`, sends `agent-send` if set, and reads
//! one line, words separated by spaces, tabs or commas, each optional:
//! - `up` or `down` (also `fail`, `stopped`): the backend's health as the
//!   agent sees it; down takes it out at once, up lets the health checks
//!   decide again;
//! - `ready`, `drain` or `maint`: the agent's administrative state;
//! - `75%`: the agent's share of the backend's weight (0 to 256 %);
//! - `maxconn:N` is HAProxy's too: accepted and ignored.
//!
//! What a word does not mention stays as the agent last said it, and an
//! agent that cannot be reached changes nothing (the health check tests
//! reachability). Text after `#` is a description, kept for the logs. How
//! the agent's word combines with the health checks and the admin
//! endpoint's state is [`Pool`](super::pool::Pool)'s (see `AgentView`).
//! This module parses (pure) and asks (bounded in time by the prober and
//! here in bytes).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::pool::AdminState;

/// Most bytes read from an agent: one short line.
pub const MAX_ANSWER: usize = 1024;

/// The largest weight share an agent may give, as HAProxy's.
pub const MAX_PERCENT: u32 = 256;

/// What one answer of an agent says; `None` is "not mentioned".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `up` (true) or `down`/`fail`/`stopped` (false).
    pub up: Option<bool>,
    /// `ready`, `drain` or `maint`.
    pub state: Option<AdminState>,
    /// A weight share in percent.
    pub percent: Option<u32>,
    /// The text after `#`, if any.
    pub description: Option<String>,
}

/// Parses an agent's line (up to its first `\r` or `\n`). Unknown words are
/// an error naming them, as is a line with no word at all.
pub fn parse(line: &str) -> Result<Answer, String> {
    let line = line.split(['\r', '\n']).next().unwrap_or("");
    let (words, description) = match line.split_once('#') {
        Some((words, d)) => (words, Some(d.trim().to_string())),
        None => (line, None),
    };
    let mut answer = Answer {
        description,
        ..Answer::default()
    };
    let mut any = false;
    for word in words.split([' ', '\t', ',']).filter(|w| !w.is_empty()) {
        any = true;
        match word.to_ascii_lowercase().as_str() {
            "up" => answer.up = Some(true),
            "down" | "fail" | "stopped" => answer.up = Some(false),
            "ready" => answer.state = Some(AdminState::Ready),
            "drain" => answer.state = Some(AdminState::Drain),
            "maint" => answer.state = Some(AdminState::Maint),
            // HAProxy's agents may also set a maxconn: accepted, not applied
            // (max-conns is the config's), so such an answer still counts.
            w if w
                .strip_prefix("maxconn:")
                .is_some_and(|n| n.parse::<u32>().is_ok()) => {}
            w => {
                let percent = w
                    .strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|&n| n <= MAX_PERCENT);
                match percent {
                    Some(n) => answer.percent = Some(n),
                    None => {
                        return Err(format!(
                            "unknown word '{}' (expected up, down, ready, drain, maint or a weight such as 75%)",
                            word.escape_default()
                        ))
                    }
                }
            }
        }
    }
    if !any {
        return Err("an empty answer".into());
    }
    Ok(answer)
}

/// Asks the agent at `addr`: sends `send`, reads one line (at most
/// [`MAX_ANSWER`] bytes; the agent may close instead of ending it). The
/// caller bounds it in time.
pub async fn ask(addr: SocketAddr, send: Option<&[u8]>) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("agent {addr}: {e}"))?;
    if let Some(bytes) = send {
        stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("agent {addr}: send failed: {e}"))?;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.iter().any(|&b| b == b'\n' || b == b'\r') {
        if buf.len() >= MAX_ANSWER {
            return Err(format!(
                "agent {addr}: no line end within {MAX_ANSWER} bytes"
            ));
        }
        let room = (MAX_ANSWER - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("agent {addr}: read failed: {e}")),
        }
    }
    parse(&String::from_utf8_lossy(&buf)).map_err(|e| format!("agent {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_and_their_mixes() {
        let a = |up, state, percent| Answer {
            up,
            state,
            percent,
            description: None,
        };
        use AdminState::*;
        assert_eq!(parse("up\n").unwrap(), a(Some(true), None, None));
        assert_eq!(parse("DOWN").unwrap(), a(Some(false), None, None));
        assert_eq!(parse("fail").unwrap(), a(Some(false), None, None));
        assert_eq!(parse("stopped").unwrap(), a(Some(false), None, None));
        assert_eq!(parse("ready").unwrap(), a(None, Some(Ready), None));
        assert_eq!(parse("drain\r\n").unwrap(), a(None, Some(Drain), None));
        assert_eq!(parse("maint").unwrap(), a(None, Some(Maint), None));
        assert_eq!(parse("75%").unwrap(), a(None, None, Some(75)));
        assert_eq!(
            parse("up, ready\t50%").unwrap(),
            a(Some(true), Some(Ready), Some(50))
        );
        assert_eq!(
            parse("up maxconn:30 80%").unwrap(),
            a(Some(true), None, Some(80)),
            "maxconn is accepted, not applied"
        );
        assert!(parse("maxconn:lots").is_err());
        let d = parse("down #disk full").unwrap();
        assert_eq!(
            (d.up, d.description.as_deref()),
            (Some(false), Some("disk full"))
        );
    }

    #[test]
    fn bad_answers_are_named() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse(" \n").unwrap_err().contains("empty"));
        assert!(parse("up sideways").unwrap_err().contains("'sideways'"));
        assert!(parse("300%").unwrap_err().contains("'300%'"));
        assert!(parse("-5%").is_err());
        assert!(parse("\x1b[2J").unwrap_err().contains("\\u{1b}"));
    }
}
