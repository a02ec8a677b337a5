//! A consistent RDB snapshot of a running Redis, taken the way a replica (or `redis-cli --rdb`)
//! gets one: over the replication protocol, so no access to Redis's files is needed.
//!
//! Handshake: `AUTH` (when a password is set), `INFO keyspace` (the key count per database,
//! recorded with the backup), `REPLCONF capa eof` (so a diskless master may stream), `REPLCONF
//! rdb-only 1` (Redis 7: no replication stream after the snapshot; refused by older servers,
//! which is fine), then `SYNC`. The master answers with keep-alive newlines while it forks and
//! dumps, then one of two framings:
//! - `$<length>\r\n` followed by exactly that many bytes (disk-based sync);
//! - `$EOF:<40 random bytes>\r\n` followed by the RDB and then the same 40 bytes (diskless
//!   sync, where the length is not known in advance).
//!
//! [`RdbReader`] yields exactly the RDB bytes of either framing, as a blocking `Read`, so it
//! feeds content-defined chunking directly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::ArchiveError;

const EOF_MARK_LEN: usize = 40;
/// The longest reply line (status, error, length header) accepted: real ones are a few dozen
/// bytes, and a line without an end must not grow until memory runs out.
pub(crate) const MAX_LINE: usize = 64 << 10;
/// The largest reply held in memory (INFO, CONFIG GET: a few KiB on any real server). The
/// snapshot itself is streamed and has no such limit.
pub(crate) const MAX_REPLY: usize = 64 << 20;
/// Items in an array reply (`CONFIG GET` answers two).
const MAX_ARRAY_ITEMS: usize = 1 << 16;
/// How long a read may wait: a large dataset is forked and dumped before the first RDB byte,
/// with keep-alive newlines in between.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// How to reach Redis. `Debug` never shows the password.
#[derive(Clone)]
pub struct RedisOptions {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the server said before the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisFacts {
    pub version: String,
    /// Keys per database number when the backup started.
    pub keys: BTreeMap<u32, u64>,
    /// The server streamed the snapshot without writing it to its disk first.
    pub diskless: bool,
}

fn refused(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Precondition(what.into())
}

fn io_error(doing: &str, e: std::io::Error) -> ArchiveError {
    refused(format!("Redis connection failed while {doing}: {e}"))
}

/// The data directory Redis reports (`CONFIG GET dir`), or `None` when it cannot be asked
/// (not running, CONFIG renamed away).
pub fn redis_data_dir(opts: &RedisOptions) -> Option<std::path::PathBuf> {
    let mut conn = connect(opts).ok()?;
    match command(&mut conn, &["CONFIG", "GET", "dir"]).ok()? {
        Reply::Array(items) => items.get(1).map(std::path::PathBuf::from),
        _ => None,
    }
}

/// One `CONFIG GET` value.
pub(crate) fn config_value(opts: &RedisOptions, name: &str) -> Result<String, ArchiveError> {
    let mut conn = connect(opts)?;
    match command(&mut conn, &["CONFIG", "GET", name])? {
        Reply::Array(items) if items.len() == 2 => Ok(items[1].clone()),
        other => Err(refused(format!(
            "Redis did not answer CONFIG GET {name} ({other:?}); the backup user needs CONFIG"
        ))),
    }
}

/// One field of an INFO section.
pub(crate) fn info_value(
    opts: &RedisOptions,
    section: &str,
    field: &str,
) -> Result<Option<String>, ArchiveError> {
    let mut conn = connect(opts)?;
    match command(&mut conn, &["INFO", section])? {
        Reply::Bulk(text) => Ok(info_field(&text, field)),
        other => Err(refused(format!("INFO {section} failed: {other:?}"))),
    }
}

/// Keys per database as the server counts them now; an error while it is still loading its
/// data (INFO answers then, with the keys loaded so far).
pub fn keyspace(opts: &RedisOptions) -> Result<BTreeMap<u32, u64>, ArchiveError> {
    let mut conn = connect(opts)?;
    match command(&mut conn, &["INFO", "persistence"])? {
        Reply::Bulk(text) if info_field(&text, "loading").as_deref() == Some("0") => {}
        _ => return Err(refused("Redis is still loading its data")),
    }
    match command(&mut conn, &["INFO", "keyspace"])? {
        Reply::Bulk(text) => Ok(parse_keyspace(&text)),
        Reply::Error(e) => Err(refused(format!("Redis answered INFO with {e}"))),
        other => Err(refused(format!("INFO keyspace failed: {other:?}"))),
    }
}

/// Connect, authenticate and ask for a snapshot; the reader yields the RDB bytes.
pub fn open_rdb(opts: &RedisOptions) -> Result<(RdbReader, RedisFacts), ArchiveError> {
    let mut conn = connect(opts)?;
    let info = match command(&mut conn, &["INFO", "server"])? {
        Reply::Bulk(text) => text,
        Reply::Error(e) if e.starts_with("NOAUTH") => {
            return Err(refused(
                "Redis requires a password: set REDIS_PASSWORD".to_string(),
            ));
        }
        other => return Err(refused(format!("INFO failed: {other:?}"))),
    };
    let version = info_field(&info, "redis_version").unwrap_or_default();
    let keys = match command(&mut conn, &["INFO", "keyspace"])? {
        Reply::Bulk(text) => parse_keyspace(&text),
        other => return Err(refused(format!("INFO keyspace failed: {other:?}"))),
    };
    // Both are optional capabilities: an older server refuses them and still answers SYNC.
    let _ = command(&mut conn, &["REPLCONF", "capa", "eof"])?;
    let _ = command(&mut conn, &["REPLCONF", "rdb-only", "1"])?;
    conn.get_mut()
        .write_all(b"SYNC\r\n")
        .map_err(|e| io_error("asking for the snapshot", e))?;
    let framing = read_framing(&mut conn)?;
    let diskless = matches!(framing, Framing::EofMark(_));
    Ok((
        RdbReader::new(conn, framing),
        RedisFacts {
            version,
            keys,
            diskless,
        },
    ))
}

/// A connection to Redis, authenticated when a password is set.
fn connect(opts: &RedisOptions) -> Result<BufReader<TcpStream>, ArchiveError> {
    let address = format!("{}:{}", opts.host, opts.port);
    let stream = TcpStream::connect(&address).map_err(|e| {
        refused(format!(
            "cannot connect to Redis at {address} ({e}); check REDIS_HOST and REDIS_PORT"
        ))
    })?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| io_error("setting a timeout", e))?;
    let mut conn = BufReader::new(stream);
    if let Some(password) = &opts.password {
        match command(&mut conn, &["AUTH", password])? {
            Reply::Status => {}
            Reply::Error(_) => {
                return Err(refused(
                    "Redis refused the password; check REDIS_PASSWORD".to_string(),
                ));
            }
            _ => return Err(refused("Redis answered AUTH unexpectedly")),
        }
    }
    Ok(conn)
}

#[derive(Debug)]
enum Reply {
    Status,
    Error(String),
    Bulk(String),
    /// A flat array of bulk strings (`CONFIG GET`).
    Array(Vec<String>),
}

/// Send one command as a RESP array and read a simple or bulk-string reply.
fn command<S: Read + Write>(conn: &mut BufReader<S>, args: &[&str]) -> Result<Reply, ArchiveError> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| io_error("sending a command", e))?;
    let line = read_line(conn)?;
    match line.split_at_checked(1) {
        Some(("+", _)) => Ok(Reply::Status),
        Some(("-", rest)) => Ok(Reply::Error(rest.to_string())),
        Some(("$", rest)) => read_bulk(conn, rest, &line).map(Reply::Bulk),
        Some(("*", rest)) => {
            let count: usize = rest
                .parse()
                .map_err(|_| refused(format!("Redis sent a malformed reply: {line:?}")))?;
            if count > MAX_ARRAY_ITEMS {
                return Err(refused(format!(
                    "Redis sent an array of {count} items, above the limit of {MAX_ARRAY_ITEMS}; \
                     is REDIS_PORT a Redis server?"
                )));
            }
            let mut items = Vec::with_capacity(count.min(64));
            let mut total = 0usize;
            for _ in 0..count {
                let header = read_line(conn)?;
                let Some(len) = header.strip_prefix('$') else {
                    return Err(refused(format!("Redis sent a malformed array: {header:?}")));
                };
                let item = read_bulk(conn, len, &header)?;
                total = total.saturating_add(item.len());
                if total > MAX_REPLY {
                    return Err(too_large(total));
                }
                items.push(item);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(refused(format!(
            "Redis sent an unexpected reply {line:?}; is REDIS_PORT a Redis server?"
        ))),
    }
}

fn too_large(len: impl std::fmt::Display) -> ArchiveError {
    refused(format!(
        "Redis sent a reply of {len} bytes, above the {} MiB limit on replies held in memory; \
         is REDIS_PORT a Redis server?",
        MAX_REPLY >> 20
    ))
}

/// A bulk string of at most `MAX_REPLY` bytes, read as it arrives: the length the server
/// announces is checked before it sizes anything.
fn read_bulk<R: BufRead>(conn: &mut R, len: &str, line: &str) -> Result<String, ArchiveError> {
    let len: u64 = len
        .parse()
        .map_err(|_| refused(format!("Redis sent a malformed reply: {line:?}")))?;
    if len > MAX_REPLY as u64 {
        return Err(too_large(len));
    }
    // Within MAX_REPLY, so the body and its CRLF fit in memory and in usize.
    let want = len + 2;
    let mut body = Vec::new();
    conn.by_ref()
        .take(want)
        .read_to_end(&mut body)
        .map_err(|e| io_error("reading a reply", e))?;
    if body.len() as u64 != want {
        return Err(refused(
            "Redis closed the connection in the middle of a reply",
        ));
    }
    body.truncate(body.len() - 2);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One line, without its end; at most `MAX_LINE` bytes are read looking for the end.
fn read_line<R: BufRead>(conn: &mut R) -> Result<String, ArchiveError> {
    let mut line = Vec::new();
    let n = conn
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error("reading a reply", e))?;
    if n == 0 {
        return Err(refused("Redis closed the connection"));
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
        return Err(refused(format!(
            "Redis sent a line longer than the {} KiB limit without an end; is REDIS_PORT a \
             Redis server?",
            MAX_LINE >> 10
        )));
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// `db0:keys=12,expires=0,avg_ttl=0` lines into database -> key count.
pub fn parse_keyspace(info: &str) -> BTreeMap<u32, u64> {
    info.lines()
        .filter_map(|line| {
            let (db, fields) = line.trim().split_once(':')?;
            let db: u32 = db.strip_prefix("db")?.parse().ok()?;
            let keys = fields
                .split(',')
                .find_map(|f| f.strip_prefix("keys="))?
                .parse()
                .ok()?;
            Some((db, keys))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    Length(u64),
    EofMark(Vec<u8>),
}

/// Skip keep-alive newlines, then read `$<len>` or `$EOF:<mark>`.
fn read_framing<R: BufRead>(conn: &mut R) -> Result<Framing, ArchiveError> {
    loop {
        let line = read_line(conn)?;
        if line.is_empty() {
            continue;
        }
        if let Some(error) = line.strip_prefix('-') {
            return Err(refused(format!(
                "Redis refused to send a snapshot: {error}"
            )));
        }
        let Some(header) = line.strip_prefix('$') else {
            return Err(refused(format!(
                "Redis answered SYNC with {line:?} instead of a snapshot"
            )));
        };
        if let Some(mark) = header.strip_prefix("EOF:") {
            if mark.len() != EOF_MARK_LEN {
                return Err(refused(format!("Redis sent a malformed end mark {line:?}")));
            }
            return Ok(Framing::EofMark(mark.as_bytes().to_vec()));
        }
        // A checked number: digits only, no sign, within u64 (the stream itself is bounded by
        // what arrives, never by this number).
        return header
            .parse::<u64>()
            .ok()
            .filter(|_| header.bytes().all(|b| b.is_ascii_digit()))
            .map(Framing::Length)
            .ok_or_else(|| refused(format!("Redis sent a malformed snapshot length {line:?}")));
    }
}

/// The RDB bytes of a snapshot, whichever framing the master chose. Ends with an error if the
/// connection ends before the snapshot does: a torn RDB is never mistaken for a whole one.
pub struct RdbReader {
    conn: Box<dyn BufRead + Send>,
    framing: Framing,
    /// Bytes ready to hand out, and how many have been.
    ready: Vec<u8>,
    pos: usize,
    /// EOF framing: the last bytes seen, held back until it is known they are not the mark.
    held: Vec<u8>,
    received: u64,
    done: bool,
}

impl RdbReader {
    fn new<R: BufRead + Send + 'static>(conn: R, framing: Framing) -> RdbReader {
        RdbReader {
            conn: Box::new(conn),
            framing,
            ready: Vec::new(),
            pos: 0,
            held: Vec::new(),
            received: 0,
            done: false,
        }
    }

    /// The snapshot's size as the server announced it (`$<len>`); none when it streams
    /// diskless and marks the end instead.
    pub fn announced_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(len) => Some(len),
            Framing::EofMark(_) => None,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = vec![0; 256 << 10];
        let want = match self.framing {
            Framing::Length(total) => {
                let left = total.saturating_sub(self.received);
                if left == 0 {
                    self.done = true;
                    self.ready.clear();
                    self.pos = 0;
                    return Ok(());
                }
                chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            Framing::EofMark(_) => chunk.len(),
        };
        let n = self.conn.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Redis closed the connection before the end of the snapshot",
            ));
        }
        chunk.truncate(n);
        self.received += n as u64;
        self.pos = 0;
        match &self.framing {
            Framing::Length(total) => {
                self.done = self.received == *total;
                self.ready = chunk;
            }
            Framing::EofMark(mark) => {
                let mut data = std::mem::take(&mut self.held);
                data.extend_from_slice(&chunk);
                if data.ends_with(mark) {
                    data.truncate(data.len() - mark.len());
                    self.done = true;
                    self.ready = data;
                } else {
                    let keep = data.len().min(mark.len());
                    self.held = data.split_off(data.len() - keep);
                    self.ready = data;
                }
            }
        }
        Ok(())
    }
}

impl Read for RdbReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.ready.len() {
                let n = out.len().min(self.ready.len() - self.pos);
                out[..n].copy_from_slice(&self.ready[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that hands out its bytes a few at a time, as a network does.
    struct Trickle {
        bytes: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.step).min(self.bytes.len() - self.pos);
            out[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn read_all(wire: Vec<u8>, step: usize) -> std::io::Result<Vec<u8>> {
        let mut conn = BufReader::with_capacity(
            7,
            Trickle {
                bytes: wire,
                pos: 0,
                step,
            },
        );
        let framing = read_framing(&mut conn).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut out = Vec::new();
        RdbReader::new(conn, framing).read_to_end(&mut out)?;
        Ok(out)
    }

    fn rdb() -> Vec<u8> {
        let mut body = b"REDIS0010".to_vec();
        body.extend((0..5000u32).map(|i| (i * 31 % 251) as u8));
        body
    }

    #[test]
    fn the_length_framing_yields_exactly_the_snapshot() {
        let body = rdb();
        for step in [1, 3, 40, 4096] {
            let mut wire = b"\n\n".to_vec();
            wire.extend(format!("${}\r\n", body.len()).as_bytes());
            wire.extend(&body);
            wire.extend(b"*1\r\n$4\r\nPING\r\n"); // the replication stream, not ours
            assert_eq!(read_all(wire, step).expect("read"), body, "step {step}");
        }
    }

    #[test]
    fn the_eof_framing_strips_the_mark_at_any_read_boundary() {
        let body = rdb();
        let mark = "0123456789abcdef0123456789abcdef01234567";
        for step in [1, 7, 39, 40, 41, 4096, 100_000] {
            let mut wire = b"\n".to_vec();
            wire.extend(format!("$EOF:{mark}\r\n").as_bytes());
            wire.extend(&body);
            wire.extend(mark.as_bytes());
            assert_eq!(read_all(wire, step).expect("read"), body, "step {step}");
        }
    }

    #[test]
    fn a_snapshot_cut_short_is_an_error_not_a_smaller_rdb() {
        let body = rdb();
        let mut wire = format!("${}\r\n", body.len() + 10).into_bytes();
        wire.extend(&body);
        assert!(read_all(wire, 100).is_err());
        let mut wire = format!("$EOF:{}\r\n", "x".repeat(40)).into_bytes();
        wire.extend(&body);
        assert!(read_all(wire, 100).is_err());
    }

    #[test]
    fn refusals_and_garbage_are_errors() {
        for wire in [
            &b"-ERR no\r\n"[..],
            b"+OK\r\n",
            b"$EOF:short\r\n",
            b"$abc\r\n",
            b"$-5\r\n",
            b"$+5\r\n",
            b"$99999999999999999999999\r\n",
            b"",
        ] {
            let mut conn = BufReader::new(wire);
            assert!(read_framing(&mut conn).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn keyspace_lines_become_counts() {
        let info =
            "# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n";
        let keys = parse_keyspace(info);
        assert_eq!(keys, BTreeMap::from([(0, 12), (3, 5)]));
        assert!(parse_keyspace("# Keyspace\r\n").is_empty());
    }

    /// A fake Redis on a local port that answers every connection with `answer`, and the
    /// outcome of `ask` against it, which must come within ten seconds.
    fn against_fake_server<T: Send + 'static>(
        answer: fn(std::net::TcpStream),
        ask: fn(&RedisOptions) -> Result<T, ArchiveError>,
    ) -> Result<T, ArchiveError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || answer(conn));
            }
        });
        let opts = RedisOptions {
            host: "127.0.0.1".into(),
            port,
            password: None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ask(&opts));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the client neither failed nor finished within 10 s")
    }

    /// Hold the connection open until the client goes away.
    fn linger(mut conn: std::net::TcpStream) {
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    }

    #[test]
    fn a_huge_bulk_length_fails_without_allocating_it() {
        let result = against_fake_server(
            |mut conn| {
                // 1 TiB announced: allocating it would abort the test.
                let _ = conn.write_all(b"$1099511627776\r\n");
                linger(conn);
            },
            |opts| info_value(opts, "server", "redis_version"),
        );
        let err = result.expect_err("a 1 TiB reply is refused").to_string();
        assert!(
            err.contains("1099511627776 bytes") && err.contains("64 MiB limit"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_array_reply_is_refused() {
        let result = against_fake_server(
            |mut conn| {
                let _ = conn.write_all(b"*1152921504606846976\r\n");
                linger(conn);
            },
            |opts| config_value(opts, "dir"),
        );
        let err = result.expect_err("refused").to_string();
        assert!(err.contains("above the limit"), "{err}");
    }

    #[test]
    fn an_endless_line_fails_at_the_line_limit() {
        let result = against_fake_server(
            |mut conn| {
                let _ = conn.write_all(b"+");
                let filler = [b'a'; 8192];
                // Until the client hangs up.
                while conn.write_all(&filler).is_ok() {}
            },
            keyspace,
        );
        let err = result.expect_err("an endless line is refused").to_string();
        assert!(err.contains("longer than the 64 KiB limit"), "{err}");
    }

    #[test]
    fn an_endless_line_before_the_snapshot_fails_too() {
        let result = against_fake_server(
            |mut conn| {
                let filler = [b'$'; 8192];
                while conn.write_all(&filler).is_ok() {}
            },
            |opts| open_rdb(opts).map(|(_, facts)| facts),
        );
        let err = result.expect_err("refused").to_string();
        assert!(err.contains("64 KiB limit"), "{err}");
    }

    #[test]
    fn replies_within_the_limits_still_read() {
        let info = "# Server\r\nredis_version:7.2.4\r\n";
        let mut wire = format!("${}\r\n{info}\r\n", info.len()).into_bytes();
        wire.extend(b"*2\r\n$3\r\ndir\r\n$8\r\n/var/lib\r\n");
        let mut conn = BufReader::new(std::io::Cursor::new(wire));
        let reply = |conn: &mut BufReader<std::io::Cursor<Vec<u8>>>| {
            let line = read_line(conn).expect("line");
            match line.split_at(1) {
                ("$", len) => Reply::Bulk(read_bulk(conn, len, &line).expect("bulk")),
                _ => Reply::Status,
            }
        };
        match reply(&mut conn) {
            Reply::Bulk(text) => {
                assert_eq!(info_field(&text, "redis_version").as_deref(), Some("7.2.4"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_line(&mut conn).expect("array header"), "*2");
    }
}
