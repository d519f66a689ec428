use super::*;
use crate::testing::XorShift;

/// A ClientHello from OpenSSL (Python's `ssl`, captured through a memory
/// BIO) for `API.Example.com.` offering ALPN `h2` and `http/1.1`.
const OPENSSL_HELLO: &[u8] = include_bytes!("../../tests/data/client_hello_openssl.bin");

/// One extension: type and data.
fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
    out
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![NAME_TYPE_HOST];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name);
    let mut list = (entry.len() as u16).to_be_bytes().to_vec();
    list.extend(entry);
    ext(EXT_SERVER_NAME, &list)
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let mut entries = Vec::new();
    for p in protocols {
        entries.push(p.len() as u8);
        entries.extend(*p);
    }
    let mut list = (entries.len() as u16).to_be_bytes().to_vec();
    list.extend(entries);
    ext(EXT_ALPN, &list)
}

/// A ClientHello body with `extensions` (already encoded), or none at all.
fn body(session: usize, extensions: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.push(session as u8);
    b.extend(vec![1u8; session]);
    b.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
    b.extend([1, 0]);
    if let Some(e) = extensions {
        b.extend((e.len() as u16).to_be_bytes());
        b.extend(e);
    }
    b
}

/// The handshake message around a body.
fn handshake(body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut hs = vec![CLIENT_HELLO];
    hs.extend(&len.to_be_bytes()[1..]);
    hs.extend(body);
    hs
}

/// `hs` split into handshake records of the given fragment sizes (the last
/// one repeating).
fn records(hs: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = hs;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i.min(sizes.len() - 1)].clamp(1, rest.len());
        out.extend([CONTENT_HANDSHAKE, 3, 1]);
        out.extend((n as u16).to_be_bytes());
        out.extend(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
    ClientHello {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
    }
}

fn complete(buf: &[u8]) -> ClientHello {
    match parse(buf) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn openssl_hello_parses() {
    assert_eq!(
        complete(OPENSSL_HELLO),
        hello(Some("api.example.com"), &["h2", "http/1.1"])
    );
}

#[test]
fn openssl_hello_byte_by_byte_and_over_records() {
    let expected = complete(OPENSSL_HELLO);
    for n in 0..OPENSSL_HELLO.len() {
        assert_eq!(parse(&OPENSSL_HELLO[..n]), Ok(Parsed::Incomplete), "at {n}");
    }
    // The same handshake re-split into records of 1, 2, 7 and 100 bytes.
    let hs = &OPENSSL_HELLO[RECORD_HEADER..];
    for size in [1, 2, 7, 100] {
        let split = records(hs, &[size]);
        if split.len() > MAX_BUFFER {
            assert_eq!(parse(&split), Err(ParseError::TooLarge), "{size}");
            continue;
        }
        for n in 0..split.len() {
            assert_eq!(parse(&split[..n]), Ok(Parsed::Incomplete), "{size} at {n}");
        }
        assert_eq!(complete(&split), expected, "{size}");
    }
}

#[test]
fn bytes_after_the_hello_are_not_judged() {
    let mut buf = OPENSSL_HELLO.to_vec();
    buf.extend(b"\x14\x03\x03\x00\x01\x01 and then anything");
    assert_eq!(complete(&buf).sni.as_deref(), Some("api.example.com"));
}

#[test]
fn names_are_normalised() {
    for (raw, want) in [
        ("WWW.Example.COM", "www.example.com"),
        ("a.b.", "a.b"),
        ("x", "x"),
        ("_srv.a-b.c", "_srv.a-b.c"),
        ("10.0.0.1", "10.0.0.1"),
    ] {
        let e = sni_ext(raw.as_bytes());
        let buf = records(&handshake(&body(0, Some(&e))), &[500]);
        assert_eq!(complete(&buf).sni.as_deref(), Some(want), "{raw}");
    }
}

#[test]
fn no_sni_no_alpn_no_extensions() {
    let buf = records(&handshake(&body(32, None)), &[500]);
    assert_eq!(complete(&buf), ClientHello::default());
    let buf = records(&handshake(&body(0, Some(&[]))), &[500]);
    assert_eq!(complete(&buf), ClientHello::default());
    let mut e = ext(0xff01, &[0]);
    e.extend(alpn_ext(&[b"h2"]));
    let buf = records(&handshake(&body(0, Some(&e))), &[500]);
    assert_eq!(complete(&buf), hello(None, &["h2"]));
}

#[test]
fn bad_hellos() {
    use ParseError::*;
    let with = |e: &[u8]| records(&handshake(&body(0, Some(e))), &[1000]);
    let good = sni_ext(b"a.example");
    let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
        ("http", b"GET / HTTP/1.1\r\n".to_vec(), NotTls),
        ("alert", vec![0x15, 3, 3, 0, 2, 2, 40], NotTls),
        ("sslv2", vec![0x80, 0x2e, 0x01, 0x03, 0x01], NotTls),
        ("major", vec![0x16, 2], NotTls),
        ("minor", vec![0x16, 3, 9], NotTls),
        (
            "empty record",
            vec![0x16, 3, 1, 0, 0],
            Malformed("empty record"),
        ),
        (
            "huge record",
            vec![0x16, 3, 1, 0x40, 1],
            Malformed("record too long"),
        ),
        (
            "server hello",
            records(&[2, 0, 0, 0], &[10]),
            Malformed("first handshake message is not a ClientHello"),
        ),
        ("too large", records(&[1, 0, 0x40, 0], &[10]), TooLarge),
        (
            "duplicate sni",
            with(&[good.clone(), good.clone()].concat()),
            Malformed("two server_name extensions"),
        ),
        (
            "duplicate alpn",
            with(&[alpn_ext(&[b"a"]), alpn_ext(&[b"b"])].concat()),
            Malformed("two ALPN extensions"),
        ),
        ("empty name", with(&sni_ext(b"")), Malformed("host name")),
        ("dot only", with(&sni_ext(b".")), Malformed("host name")),
        (
            "empty label",
            with(&sni_ext(b"a..b")),
            Malformed("host name"),
        ),
        ("space", with(&sni_ext(b"a b")), Malformed("host name")),
        ("nul", with(&sni_ext(b"a\0")), Malformed("host name")),
        (
            "too long name",
            with(&sni_ext(&[b'a'; 254])),
            Malformed("host name"),
        ),
        (
            "empty alpn list",
            with(&ext(EXT_ALPN, &[0, 0])),
            Malformed("ALPN list"),
        ),
        (
            "empty alpn name",
            with(&ext(EXT_ALPN, &[0, 1, 0])),
            Malformed("empty ALPN protocol"),
        ),
        (
            "short ext",
            with(&[0, 0, 0, 9, 1]),
            Malformed("extension length"),
        ),
        (
            "trailing",
            [records(
                &handshake(&[body(0, Some(&good)), vec![0]].concat()),
                &[1000],
            )]
            .concat(),
            Malformed("bytes after the extensions"),
        ),
        (
            "no suites",
            records(
                &handshake(&[vec![3, 3], vec![0; 32], vec![0, 0, 0, 1, 0]].concat()),
                &[100],
            ),
            Malformed("cipher suites"),
        ),
        (
            "long session",
            records(&handshake(&body(33, None)), &[100]),
            Malformed("session id longer than 32"),
        ),
    ];
    for (name, buf, want) in cases {
        assert_eq!(parse(&buf), Err(want), "{name}");
    }
    // A record of another type in the middle of the hello.
    let mut split = records(&OPENSSL_HELLO[RECORD_HEADER..], &[50]);
    split[55] = 0x17;
    assert_eq!(
        parse(&split),
        Err(Malformed("record type changed inside the ClientHello"))
    );
}

#[test]
fn two_host_names_and_other_name_types() {
    let entry =
        |t: u8, n: &[u8]| [vec![t], (n.len() as u16).to_be_bytes().to_vec(), n.to_vec()].concat();
    let list = |entries: Vec<u8>| {
        ext(
            EXT_SERVER_NAME,
            &[(entries.len() as u16).to_be_bytes().to_vec(), entries].concat(),
        )
    };
    let two = list([entry(0, b"a"), entry(0, b"b")].concat());
    let buf = records(&handshake(&body(0, Some(&two))), &[500]);
    assert_eq!(parse(&buf), Err(ParseError::Malformed("two host names")));
    let other = list([entry(7, b"??"), entry(0, b"b")].concat());
    let buf = records(&handshake(&body(0, Some(&other))), &[500]);
    assert_eq!(complete(&buf).sni.as_deref(), Some("b"));
}

#[test]
fn cap_is_enforced() {
    // A hello that fits only with small records: over the cap in 1-byte ones.
    let big = ext(0xfe00, &vec![0; 3000]);
    let hs = handshake(&body(0, Some(&[sni_ext(b"x.y"), big].concat())));
    assert_eq!(
        complete(&records(&hs, &[16000])).sni.as_deref(),
        Some("x.y")
    );
    let tiny = records(&hs, &[1]);
    assert!(tiny.len() > MAX_BUFFER);
    assert_eq!(parse(&tiny), Err(ParseError::TooLarge));
    assert_eq!(parse(&tiny[..MAX_BUFFER]), Err(ParseError::TooLarge));
    assert_eq!(parse(&tiny[..MAX_BUFFER - 1]), Ok(Parsed::Incomplete));
    // The largest that fits in one record, and one byte more.
    let pad = |n: usize| handshake(&body(0, Some(&ext(0xfe00, &vec![0; n]))));
    let fits = MAX_BUFFER - RECORD_HEADER - pad(0).len();
    assert!(complete(&records(&pad(fits), &[MAX_FRAGMENT]))
        .sni
        .is_none());
    assert_eq!(
        parse(&records(&pad(fits + 1), &[MAX_FRAGMENT])),
        Err(ParseError::TooLarge)
    );
}

#[test]
fn labels() {
    assert_eq!(ParseError::NotTls.label(), "not_tls");
    assert_eq!(ParseError::Malformed("x").label(), "malformed");
    assert_eq!(ParseError::TooLarge.label(), "oversized");
    assert_eq!(
        ParseError::Malformed("host name").to_string(),
        "malformed ClientHello: host name"
    );
}

/// A random host name of one to four labels.
fn random_name(rng: &mut XorShift) -> String {
    const CHARS: &[u8] = b"abcXYZ019-_";
    let labels = 1 + rng.below(4);
    (0..labels)
        .map(|_| {
            let n = 1 + rng.below(12);
            String::from_utf8(rng.bytes(n, CHARS)).unwrap()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A random valid ClientHello in random records, and what it must parse to.
fn random_hello(rng: &mut XorShift) -> (Vec<u8>, ClientHello) {
    let mut want = ClientHello::default();
    let mut exts: Vec<Vec<u8>> = Vec::new();
    if rng.below(4) != 0 {
        let name = random_name(rng);
        let dot = if rng.below(4) == 0 { "." } else { "" };
        exts.push(sni_ext(format!("{name}{dot}").as_bytes()));
        want.sni = Some(name.to_ascii_lowercase());
    }
    if rng.below(2) == 0 {
        let protocols: Vec<Vec<u8>> = (0..1 + rng.below(3))
            .map(|_| {
                let n = 1 + rng.below(8);
                rng.bytes(n, &[])
            })
            .collect();
        let refs: Vec<&[u8]> = protocols.iter().map(Vec::as_slice).collect();
        exts.push(alpn_ext(&refs));
        want.alpn = protocols;
    }
    for _ in 0..rng.below(4) {
        let kind = 17 + rng.below(60000) as u16;
        let n = rng.below(300);
        exts.push(ext(kind, &rng.bytes(n, &[])));
    }
    // Shuffle the extensions' order.
    for i in (1..exts.len()).rev() {
        exts.swap(i, rng.below(i + 1));
    }
    let exts = exts.concat();
    let no_block = exts.is_empty() && rng.below(2) == 0;
    let b = body(rng.below(33), (!no_block).then_some(exts.as_slice()));
    let sizes: Vec<usize> = (0..4)
        .map(|_| match rng.below(10) {
            0 => 1 + rng.below(4),
            1..=3 => 1 + rng.below(200),
            _ => MAX_FRAGMENT,
        })
        .collect();
    (records(&handshake(&b), &sizes), want)
}

/// The invariants the module docs promise, for one input.
fn check_invariants(buf: &[u8], rng: &mut XorShift) {
    let result = parse(buf);
    if buf.len() >= MAX_BUFFER {
        assert_ne!(result, Ok(Parsed::Incomplete));
        assert_eq!(parse(&buf[..MAX_BUFFER]), result);
    }
    // A prefix's verdict, once not Incomplete, is final.
    if !buf.is_empty() {
        let cut = rng.below(buf.len());
        let prefix = parse(&buf[..cut]);
        if prefix != Ok(Parsed::Incomplete) {
            assert_eq!(prefix, result, "{buf:?} at {cut}");
        }
    }
}

#[test]
fn random_and_mutated_hellos_never_break_invariants() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut complete_count, mut valid) = (0usize, 0usize);
    for i in 0..200_000 {
        let buf = match i % 4 {
            0 => {
                let (buf, want) = random_hello(&mut rng);
                if buf.len() <= MAX_BUFFER {
                    assert_eq!(parse(&buf), Ok(Parsed::Complete(want)), "{buf:?}");
                    let cut = rng.below(buf.len());
                    assert_eq!(parse(&buf[..cut]), Ok(Parsed::Incomplete));
                    valid += 1;
                }
                buf
            }
            1 => {
                let n = rng.below(600);
                let mut b = vec![CONTENT_HANDSHAKE, 3, rng.below(5) as u8];
                b.extend(rng.bytes(n, &[]));
                b
            }
            _ => {
                // A valid hello with a few bit flips, a random cut or
                // random bytes after it.
                let (mut b, _) = random_hello(&mut rng);
                b.truncate(MAX_BUFFER);
                for _ in 0..rng.below(4) {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
                match rng.below(3) {
                    0 => b.truncate(rng.below(b.len() + 1)),
                    1 => {
                        let n = rng.below(100);
                        b.extend(rng.bytes(n, &[]));
                    }
                    _ => {}
                }
                b
            }
        };
        if matches!(parse(&buf), Ok(Parsed::Complete(_))) {
            complete_count += 1;
        }
        check_invariants(&buf, &mut rng);
    }
    assert!(valid > 40_000, "only {valid} valid");
    // The mutated inputs must reach the accepting paths too.
    assert!(complete_count > 60_000, "only {complete_count} complete");
}
