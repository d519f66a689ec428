//! What one health check says to a backend once connected, and what it must
//! hear back: `send`/`expect` steps, or a preset that speaks the backend's
//! protocol (Redis `PING` and `INFO replication`, the MySQL handshake, the
//! PostgreSQL SSLRequest, an HTTP status line). The prober ([`probe`](super::probe))
//! connects and bounds the whole check in time; this module bounds it in
//! bytes: it never reads more than [`MAX_READ`] from a backend, so a backend
//! that sends forever fails its check instead of growing the prober.
//!
//! An error is one line that says what was expected and what came instead,
//! for the logs, the stats page and `/backends`.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{CheckSpec, Expect, Preset, RedisRole, Step};

/// Most bytes one check reads from a backend.
pub const MAX_READ: usize = 64 * 1024;

/// How much of an unexpected answer an error quotes.
const QUOTED: usize = 64;

/// The SSLRequest: length 8, then the code 1234/5679.
const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Runs `spec`'s conversation with the backend at `addr` over `stream`.
pub async fn converse<S>(stream: &mut S, spec: &CheckSpec, addr: SocketAddr) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = Reader::default();
    match spec.preset {
        None => steps(stream, &mut reader, &spec.steps).await,
        Some(Preset::Redis) => redis(stream, &mut reader, spec.role).await,
        Some(Preset::Mysql) => mysql(stream, &mut reader, spec.mysql_user.as_deref()).await,
        Some(Preset::Postgres) => postgres(stream, &mut reader).await,
        Some(Preset::Http) => http(stream, &mut reader, spec, addr).await,
    }
}

/// What came back and not yet consumed, and how much was read in all.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
    total: usize,
}

impl Reader {
    /// Reads more into the buffer; an error once the backend closed or
    /// [`MAX_READ`] bytes came.
    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<(), String> {
        let room = MAX_READ - self.total;
        if room == 0 {
            return Err(format!("{MAX_READ} bytes read without what was expected"));
        }
        let mut chunk = vec![0; room.min(4096)];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("closed by the backend".into());
        }
        self.total += n;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads until the buffer holds at least `n` bytes.
    async fn fill_to<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        n: usize,
    ) -> Result<(), String> {
        while self.buf.len() < n {
            self.fill(stream).await?;
        }
        Ok(())
    }

    /// The first line (without its `\r\n` or `\n`), consumed.
    async fn line<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Ok(String::from_utf8_lossy(line).into_owned());
            }
            self.fill(stream)
                .await
                .map_err(|e| format!("{e} before a whole line: got {}", quote(&self.buf)))?;
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("send failed: {e}"))
}

async fn steps<S>(stream: &mut S, reader: &mut Reader, steps: &[Step]) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for (k, step) in steps.iter().enumerate() {
        let at = |e: String| format!("step {}: {e}", k + 1);
        if let Some(bytes) = &step.send {
            send(stream, bytes).await.map_err(at)?;
        }
        let Some(expect) = &step.expect else {
            continue;
        };
        loop {
            if let Some(end) = find(expect, &reader.buf) {
                reader.buf.drain(..end);
                break;
            }
            if let Err(e) = reader.fill(stream).await {
                return Err(at(format!(
                    "expected {}: {e}; got {}",
                    describe(expect),
                    quote(&reader.buf)
                )));
            }
        }
    }
    Ok(())
}

/// Where the first match of `expect` in `buf` ends.
fn find(expect: &Expect, buf: &[u8]) -> Option<usize> {
    match expect {
        Expect::Bytes(want) if want.is_empty() => Some(0),
        Expect::Bytes(want) => buf
            .windows(want.len())
            .position(|w| w == want.as_slice())
            .map(|at| at + want.len()),
        Expect::Regex(pattern) => pattern.0.find(buf).map(|m| m.end()),
    }
}

fn describe(expect: &Expect) -> String {
    match expect {
        Expect::Bytes(want) => quote(want),
        Expect::Regex(pattern) => format!("a match of /{}/", pattern.0.as_str()),
    }
}

/// Bytes as an error quotes them: printable ASCII as is, the rest escaped,
/// cut at [`QUOTED`] bytes.
fn quote(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing".into();
    }
    let shown = &bytes[..bytes.len().min(QUOTED)];
    let mut out = String::from("\"");
    out.extend(
        shown
            .iter()
            .flat_map(|&b| std::ascii::escape_default(b))
            .map(char::from),
    );
    out.push('"');
    if bytes.len() > QUOTED {
        out.push_str("...");
    }
    out
}

async fn redis<S>(
    stream: &mut S,
    reader: &mut Reader,
    role: Option<RedisRole>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, b"PING\r\n").await?;
    let pong = reader.line(stream).await?;
    if pong != "+PONG" {
        return Err(format!(
            "PING answered {}, not +PONG",
            quote(pong.as_bytes())
        ));
    }
    let Some(role) = role else {
        return Ok(());
    };
    send(stream, b"INFO replication\r\n").await?;
    let header = reader.line(stream).await?;
    let len = header
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= MAX_READ)
        .ok_or_else(|| {
            format!(
                "INFO answered {}, not a bulk string",
                quote(header.as_bytes())
            )
        })?;
    reader.fill_to(stream, len).await?;
    let info = String::from_utf8_lossy(&reader.buf[..len]);
    let got = info
        .lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(str::trim)
        .ok_or("INFO replication has no role")?;
    if got != role.info_name() {
        return Err(format!("role is {got}, not {}", role.info_name()));
    }
    Ok(())
}

/// Client capabilities of the check's login: 4.1 protocol, transactions,
/// a length-prefixed (here empty) auth response; as HAProxy's `post-41`.
const MYSQL_CAPABILITIES: u32 = 0x0200 | 0x2000 | 0x8000;

/// COM_QUIT, the polite end of a MySQL session.
const MYSQL_QUIT: [u8; 5] = [1, 0, 0, 0, 0x01];

async fn mysql<S>(stream: &mut S, reader: &mut Reader, user: Option<&str>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = mysql_packet(stream, reader, 0, "a MySQL handshake").await?;
    match greeting[0] {
        10 => {}
        0xff => return Err(mysql_error(&greeting)),
        9 => return Err("MySQL protocol 9, not 10".into()),
        _ => return Err(format!("not a MySQL handshake: got {}", quote(&greeting))),
    }
    let Some(user) = user else {
        return Ok(());
    };
    send(stream, &mysql_login(user)).await?;
    let answer = mysql_packet(stream, reader, 2, "an answer to the login").await?;
    match answer[0] {
        0x00 => send(stream, &MYSQL_QUIT).await,
        0xff => Err(mysql_error(&answer)),
        0xfe => Err(format!(
            "MySQL asks user '{user}' for another authentication method: give it no password (mysql_native_password)"
        )),
        _ => Err(format!("not a MySQL answer to the login: got {}", quote(&answer))),
    }
}

/// One MySQL packet of sequence number `seq`, small (a handshake, an OK or
/// an error): its payload.
async fn mysql_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    reader: &mut Reader,
    seq: u8,
    what: &str,
) -> Result<Vec<u8>, String> {
    reader
        .fill_to(stream, 4)
        .await
        .map_err(|e| format!("{e} before {what}"))?;
    let len = usize::from(reader.buf[0])
        | usize::from(reader.buf[1]) << 8
        | usize::from(reader.buf[2]) << 16;
    if reader.buf[3] != seq || len == 0 || len > 4096 {
        return Err(format!("not {what}: got {}", quote(&reader.buf)));
    }
    reader
        .fill_to(stream, 4 + len)
        .await
        .map_err(|e| format!("{e} inside {what}: got {}", quote(&reader.buf)))?;
    let packet: Vec<u8> = reader.buf.drain(..4 + len).skip(4).collect();
    Ok(packet)
}

/// An ERR packet's code and message, as one line.
fn mysql_error(packet: &[u8]) -> String {
    let code = u16::from_le_bytes([
        packet.get(1).copied().unwrap_or(0),
        packet.get(2).copied().unwrap_or(0),
    ]);
    let rest = packet.get(3..).unwrap_or_default();
    // After '#', a five-character SQL state comes before the message.
    let message = rest
        .strip_prefix(b"#")
        .map_or(rest, |m| m.get(5..).unwrap_or_default());
    format!(
        "MySQL error {code}: {}",
        String::from_utf8_lossy(message).trim()
    )
}

/// The handshake response logging in as `user` with no password.
fn mysql_login(user: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(32 + user.len() + 2);
    payload.extend_from_slice(&MYSQL_CAPABILITIES.to_le_bytes());
    payload.extend_from_slice(&(1u32 << 24).to_le_bytes()); // max packet size
    payload.push(0x21); // utf8_general_ci
    payload.extend_from_slice(&[0; 23]);
    payload.extend_from_slice(user.as_bytes());
    payload.push(0);
    payload.push(0); // no auth response
    let len = payload.len() as u32;
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(1);
    packet.extend_from_slice(&payload);
    packet
}

async fn postgres<S>(stream: &mut S, reader: &mut Reader) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, &PG_SSL_REQUEST).await?;
    reader
        .fill_to(stream, 1)
        .await
        .map_err(|e| format!("{e} before an answer to SSLRequest"))?;
    match reader.buf[0] {
        b'S' | b'N' => Ok(()),
        _ => Err(format!(
            "SSLRequest answered {}, not S or N",
            quote(&reader.buf)
        )),
    }
}

async fn http<S>(
    stream: &mut S,
    reader: &mut Reader,
    spec: &CheckSpec,
    addr: SocketAddr,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = spec.http_path.as_deref().unwrap_or("/");
    let host = spec.http_host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nConnection: close\r\n\r\n"
    );
    send(stream, request.as_bytes()).await?;
    let line = reader.line(stream).await?;
    let (low, high) = spec.http_status.unwrap_or((200, 399));
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .filter(|_| line.as_bytes().get(8) == Some(&b' '))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: {}", quote(line.as_bytes())))?;
    if !(low..=high).contains(&status) {
        return Err(format!("HTTP status {status}, not within {low}-{high}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    /// Runs `spec` against a peer that sends `answers` and closes its side,
    /// and returns the result and what the check sent.
    fn run(spec: &CheckSpec, answers: &[&[u8]]) -> (Result<(), String>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
            let answers: Vec<Vec<u8>> = answers.iter().map(|a| a.to_vec()).collect();
            let peer = tokio::spawn(async move {
                for a in answers {
                    theirs.write_all(&a).await.unwrap();
                }
                // Closes this way only: what the check sends is still read.
                theirs.shutdown().await.unwrap();
                let mut sent = Vec::new();
                let _ = theirs.read_to_end(&mut sent).await;
                sent
            });
            let addr = "127.0.0.1:6379".parse().unwrap();
            let result = converse(&mut ours, spec, addr).await;
            drop(ours);
            (result, peer.await.unwrap())
        })
    }

    fn preset(p: Preset) -> CheckSpec {
        CheckSpec {
            preset: Some(p),
            ..CheckSpec::CONNECT
        }
    }

    #[test]
    fn steps_send_then_find_each_expectation_in_turn() {
        let spec = CheckSpec {
            steps: vec![
                Step {
                    send: Some(b"HELLO\r\n".to_vec()),
                    expect: Some(Expect::Bytes(b"+OK".to_vec())),
                },
                Step {
                    send: None,
                    expect: Some(Expect::Regex(Pattern::new(r"v\d+\.\d+").unwrap())),
                },
            ],
            ..CheckSpec::CONNECT
        };
        let (result, sent) = run(&spec, &[b"+O", b"K\r\nversion v1.2\r\n"]);
        assert_eq!(result, Ok(()));
        assert_eq!(sent, b"HELLO\r\n");
        let (result, _) = run(&spec, &[b"-ERR nope\r\n"]);
        let err = result.unwrap_err();
        assert!(err.starts_with("step 1: expected \"+OK\""), "{err}");
        assert!(err.contains("-ERR nope"), "{err}");
    }

    #[test]
    fn a_backend_that_sends_forever_fails_within_the_byte_bound() {
        let spec = CheckSpec {
            steps: vec![Step {
                send: None,
                expect: Some(Expect::Bytes(b"never".to_vec())),
            }],
            ..CheckSpec::CONNECT
        };
        let flood = vec![b'x'; 2 * MAX_READ];
        let (result, _) = run(&spec, &[&flood]);
        assert!(result.unwrap_err().contains("bytes read without"));
    }

    #[test]
    fn redis_wants_pong_and_the_role() {
        let mut spec = preset(Preset::Redis);
        assert_eq!(run(&spec, &[b"+PONG\r\n"]).0, Ok(()));
        let err = run(&spec, &[b"-NOAUTH Authentication required.\r\n"]).0;
        assert!(err.unwrap_err().contains("NOAUTH"));
        spec.role = Some(RedisRole::Master);
        let info = |role: &str| {
            let body = format!("# Replication\r\nrole:{role}\r\nconnected_slaves:0\r\n");
            format!("+PONG\r\n${}\r\n{body}\r\n", body.len())
        };
        let (result, sent) = run(&spec, &[info("master").as_bytes()]);
        assert_eq!(result, Ok(()));
        assert_eq!(sent, b"PING\r\nINFO replication\r\n");
        let err = run(&spec, &[info("slave").as_bytes()]).0.unwrap_err();
        assert_eq!(err, "role is slave, not master");
    }

    #[test]
    fn mysql_wants_a_protocol_10_handshake() {
        let spec = preset(Preset::Mysql);
        let mut greeting = vec![10];
        greeting.extend_from_slice(b"10.11.6-MariaDB\0");
        let mut packet = vec![greeting.len() as u8, 0, 0, 0];
        packet.extend_from_slice(&greeting);
        assert_eq!(run(&spec, &[&packet]).0, Ok(()));
        let mut refusal = vec![0xff, 0x6a, 0x04];
        refusal.extend_from_slice(b"Host 'x' is not allowed to connect");
        let mut packet = vec![refusal.len() as u8, 0, 0, 0];
        packet.extend_from_slice(&refusal);
        let err = run(&spec, &[&packet]).0.unwrap_err();
        assert_eq!(err, "MySQL error 1130: Host 'x' is not allowed to connect");
        let err = run(&spec, &[b"SSH-2.0-OpenSSH_9.2\r\n"]).0.unwrap_err();
        assert!(err.starts_with("not a MySQL handshake"), "{err}");
    }

    #[test]
    fn mysql_with_a_user_logs_in_and_quits() {
        let spec = CheckSpec {
            mysql_user: Some("ringlb".into()),
            ..preset(Preset::Mysql)
        };
        let greeting = [&[5, 0, 0, 0][..], &[10, b'1', b'0', 0, 0]].concat();
        let ok = [2, 0, 0, 2, 0, 0];
        let (result, sent) = run(&spec, &[&greeting, &ok]);
        assert_eq!(result, Ok(()));
        let login = mysql_login("ringlb");
        assert_eq!(&login[..4], &[32 + 6 + 2, 0, 0, 1], "length and sequence 1");
        assert_eq!(&login[36..], b"ringlb\0\0");
        assert_eq!(sent, [&login[..], &MYSQL_QUIT].concat());
        let denied = [&[15, 0, 0, 2, 0xff, 0x15, 0x04][..], b"#28000Denied"].concat();
        let err = run(&spec, &[&greeting, &denied]).0.unwrap_err();
        assert_eq!(err, "MySQL error 1045: Denied");
        let switch = [2, 0, 0, 2, 0xfe, 0];
        assert!(run(&spec, &[&greeting, &switch])
            .0
            .unwrap_err()
            .contains("no password"));
    }

    #[test]
    fn postgres_wants_s_or_n() {
        let spec = preset(Preset::Postgres);
        let (result, sent) = run(&spec, &[b"N"]);
        assert_eq!(result, Ok(()));
        assert_eq!(sent, PG_SSL_REQUEST);
        assert_eq!(run(&spec, &[b"S"]).0, Ok(()));
        assert!(run(&spec, &[b"E"]).0.is_err());
        assert!(run(&spec, &[]).0.unwrap_err().contains("closed"));
    }

    #[test]
    fn http_wants_a_status_in_range() {
        let mut spec = preset(Preset::Http);
        spec.http_path = Some("/healthz".into());
        let (result, sent) = run(&spec, &[b"HTTP/1.1 204 No Content\r\n\r\n"]);
        assert_eq!(result, Ok(()));
        assert!(sent.starts_with(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:6379\r\n"));
        let err = run(&spec, &[b"HTTP/1.0 503 Service Unavailable\r\n"]).0;
        assert_eq!(err.unwrap_err(), "HTTP status 503, not within 200-399");
        spec.http_status = Some((503, 503));
        assert_eq!(run(&spec, &[b"HTTP/1.0 503 Busy\r\n"]).0, Ok(()));
        assert!(run(&spec, &[b"SSH-2.0-x\r\n"]).0.is_err());
    }
}
