//! The streaming reader of Auth0 entries: behind `transform` (entries in, a JSON array of RudderStack events
//! out) and behind importing entries into the outbox (`EntryReader`: entries in, raw entries out in batches).
//!
//! It accepts every shape an operator is likely to have at hand: a JSON array of entries (a `/api/v2/logs`
//! page or an export), a single entry, NDJSON (Auth0's default Log Stream format) or any concatenation of
//! JSON values, `{log_id, data}` Log Stream wrappers, Amazon EventBridge events from Auth0's partner event
//! source (whose `detail` is such a wrapper), and `{"logs": [...]}` bodies. Any of these may be gzip
//! compressed, as archives in S3 usually are: the magic bytes decide, not a file name, so stdin works too, and
//! concatenated gzip members (what appending to an archive or Firehose produces) read as one stream.
//!
//! Inputs can be far larger than memory should be, so nothing is ever read whole. The calling thread reads
//! fixed-size chunks (decompressing as it goes) and finds where each entry begins and ends with a small byte
//! scanner that only tracks strings, escapes and bracket depth; each run of complete entries becomes a batch.
//! For `transform`, batches are transformed on worker threads (the transform is the costly part) and written
//! back in input order by the calling thread, which owns the reader and the writer and so needs neither to be
//! `Send`. At most a few batches are in flight, which bounds memory whatever the input size. `EntryReader`
//! hands its batches to the caller instead, one at a time, so the caller's pace bounds it.
//!
//! No entry is held whole past the entry limit (`entry_limit`: four times the largest event, at least 1 MiB):
//! the scanner keeps only its state (depth, string, escape) and lets the bytes of a longer value go through a
//! SHA-256 as they stream past, keeping its first 4 KiB, so a gigantic entry costs no memory and is handed
//! out as set aside with what was measured (`Oversized`).
//!
//! Malformed JSON stops the run with an error that says where; an entry that is valid JSON but yields no
//! event (not an object, no type, a group without an organization path) is reported and skipped, and the
//! run goes on. Byte offsets count the bytes of the input as the scanner sees them: for gzip input, those of
//! the decompressed stream.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use flate2::bufread::GzDecoder;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::transform::{self, EntryError, TransformError};

/// Bytes read per chunk; also the rough size of a batch handed to a worker.
const CHUNK: usize = 1 << 20;
/// Batches allowed in flight (read but not yet written): bounds memory to a few chunks in and out.
const IN_FLIGHT: usize = 6;
/// The entry text an `EntryReader` batch may hold before it ends (it always holds at least one entry). A
/// count alone would let a batch of large entries (each up to the entry limit) reach gigabytes, since every
/// entry in it is an owned copy; a few MiB still makes batches of thousands of the usual kilobyte entries.
const BATCH_BYTES: usize = 4 << 20;
/// The largest value read whole. Auth0 entries are kilobytes; only a hostile or broken input (a gzip bomb
/// of one endless string) comes near, and it must end in an error rather than in exhausting memory. A
/// `{"logs": [...]}` body that starts with its `logs` is streamed entry by entry and is not bound by this.
const MAX_VALUE: usize = 256 << 20;
/// The smallest entry limit (see [`entry_limit`]).
pub const MIN_ENTRY_LIMIT: usize = 1 << 20;
/// Bytes of the beginning of an entry set aside for its size that are kept as its excerpt.
pub const EXCERPT_BYTES: usize = 4096;
/// How far past a top-level `{` to look for `"logs": [` before reading the object whole instead.
const LOGS_LOOKAHEAD: usize = 4096;
/// Compressed bytes buffered ahead of the gzip decoder.
const GZIP_BUFFER: usize = 64 << 10;
/// The first two bytes of every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The largest entry read whole, for a `rudderstack.max_event_bytes`: four times the largest event (an event
/// is about as large as its entry), and never less than 1 MiB. A larger entry could never be delivered; it is
/// set aside while it is read, without ever being held whole (see [`Oversized`]).
pub fn entry_limit(max_event_bytes: usize) -> usize {
    max_event_bytes.saturating_mul(4).clamp(MIN_ENTRY_LIMIT, MAX_VALUE)
}

/// An entry larger than the entry limit, as the reader measured it while it streamed past: never held whole,
/// so only these facts about it are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// Byte offset where it begins.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes, as in the input.
    pub sha256: [u8; 32],
    /// Its first `EXCERPT_BYTES` bytes (fewer where they would end inside a UTF-8 character), as in the input.
    pub excerpt: String,
    /// A top-level `log_id` string found in those bytes, when one was.
    pub log_id: Option<String>,
}

/// An oversized value being measured: what the reader keeps of it while its bytes stream past.
struct Spill {
    offset: u64,
    size: u64,
    hasher: Sha256,
    head: Vec<u8>,
}

impl Spill {
    fn new(offset: u64) -> Spill {
        Spill { offset, size: 0, hasher: Sha256::new(), head: Vec::with_capacity(EXCERPT_BYTES) }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.hasher.update(bytes);
        let room = EXCERPT_BYTES - self.head.len();
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    fn finish(self) -> Oversized {
        let text = match std::str::from_utf8(&self.head) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&self.head[..e.valid_up_to()]).unwrap_or_default(),
        };
        Oversized {
            offset: self.offset,
            size: self.size,
            sha256: self.hasher.finalize().into(),
            excerpt: text.to_owned(),
            log_id: top_level_log_id(&self.head),
        }
    }
}

/// A `"log_id": "..."` member of the object that `head` begins (possibly cut short), found without parsing
/// the object: its strings are skipped and only keys at depth one are compared. An escaped value is not
/// taken (a log_id never needs one).
fn top_level_log_id(head: &[u8]) -> Option<String> {
    let start = head.iter().position(|b| !is_space(*b))?;
    if head[start] != b'{' {
        return None;
    }
    let skip_space = |mut i: usize| {
        while i < head.len() && is_space(head[i]) {
            i += 1;
        }
        i
    };
    let (mut depth, mut key_next, mut i) = (0u32, false, start);
    while i < head.len() {
        match head[i] {
            b'"' => {
                let mut j = i + 1;
                while j < head.len() && head[j] != b'"' {
                    j += if head[j] == b'\\' { 2 } else { 1 };
                }
                let string = head.get(i + 1..j)?;
                i = j + 1;
                if depth == 1 && key_next {
                    key_next = false;
                    let colon = skip_space(i);
                    if string == b"log_id" && head.get(colon) == Some(&b':') {
                        let open = skip_space(colon + 1);
                        if head.get(open) != Some(&b'"') {
                            return None;
                        }
                        let len = head[open + 1..].iter().position(|b| *b == b'"')?;
                        let value = &head[open + 1..open + 1 + len];
                        if value.contains(&b'\\') {
                            return None;
                        }
                        return std::str::from_utf8(value).ok().map(str::to_owned);
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => key_next = true,
            _ => {}
        }
        i += 1;
    }
    None
}

/// What a `transform` run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Entries read.
    pub entries: u64,
    /// Events written.
    pub events: u64,
    /// Entries that produced no event (each reported through the callback).
    pub set_aside: u64,
}

/// An entry that produced no event (or, for `EntryReader`, an element that holds no entry), as reported to
/// the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// 1-based position of the entry in the input.
    pub index: u64,
    /// Byte offset where the entry begins.
    pub offset: u64,
    /// Why it produced no event (names the entry's log_id when it has one).
    pub error: TransformError,
    /// The element's text, when the reader keeps it (`EntryReader` does, so an import can set it aside whole).
    pub text: Option<String>,
    /// What is known of an entry too large to read (`error` is then `TransformError::TooLarge`).
    pub oversized: Option<Box<Oversized>>,
}

impl fmt::Display for SetAside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {} (byte {}): {}", self.index, self.offset, self.error)
    }
}

/// Input that cannot be read as Auth0 entries, or output that cannot be written. Byte offsets are those of
/// the decompressed stream when the input is gzip.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading the input failed.
    #[error("cannot read the input")]
    Read(#[source] std::io::Error),
    /// Writing the events failed.
    #[error("cannot write the events")]
    Write(#[source] std::io::Error),
    /// The input is not valid JSON here.
    #[error("malformed JSON in entry {entry} at byte {offset}: {reason}")]
    Malformed {
        /// 1-based index of the entry being read.
        entry: u64,
        /// Byte offset of the problem in the input.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The input ends in the middle of a value.
    #[error("the input ends at byte {offset} inside entry {entry}, which began at byte {started}")]
    UnexpectedEnd {
        /// 1-based index of the unfinished entry.
        entry: u64,
        /// Where the entry began.
        started: u64,
        /// The input's length.
        offset: u64,
    },
    /// One value is too large to be an entry (or a body read whole).
    #[error("entry {entry}, which begins at byte {offset}, is larger than {} MiB", .limit >> 20)]
    TooLarge {
        /// 1-based index of the entry.
        entry: u64,
        /// Where it begins.
        offset: u64,
        /// The largest value read whole, in bytes.
        limit: usize,
    },
    /// The gzip input ends before its last member does: the file was cut off (an interrupted upload or copy).
    #[error(
        "the gzip input is cut off after {compressed} compressed bytes, at byte {offset} of the decompressed \
         input, while reading entry {entry}"
    )]
    GzipTruncated {
        /// 1-based index of the entry being read.
        entry: u64,
        /// Decompressed bytes read before the end.
        offset: u64,
        /// Compressed bytes read (the whole input).
        compressed: u64,
    },
    /// A complete gzip stream is followed by bytes that are not another gzip member (a file appended to one,
    /// or padding): they are refused rather than ignored, since they may be entries that would be lost.
    #[error(
        "trailing data after the gzip stream at byte {at} of the compressed input ({offset} bytes \
         decompressed, while reading entry {entry})"
    )]
    GzipTrailing {
        /// 1-based index of the entry being read.
        entry: u64,
        /// Decompressed bytes read before the trailing data.
        offset: u64,
        /// Where in the compressed input the trailing data begins.
        at: u64,
    },
    /// The gzip input is damaged.
    #[error(
        "the gzip input is corrupt within its first {compressed} compressed bytes, at byte {offset} of the \
         decompressed input, while reading entry {entry}"
    )]
    GzipCorrupt {
        /// 1-based index of the entry being read.
        entry: u64,
        /// Decompressed bytes read before the damage.
        offset: u64,
        /// Compressed bytes read so far (the decoder reads ahead, so the damage is at or before this).
        compressed: u64,
        /// What the decoder found.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread died (a bug: the transform never panics by design).
    #[error("a transform worker stopped unexpectedly")]
    Worker,
}

impl InputError {
    /// Only an interrupted or timed-out read or write may succeed on retry; bad input never will.
    pub fn is_transient(&self) -> bool {
        match self {
            InputError::Read(e) | InputError::Write(e) => {
                matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock)
            }
            _ => false,
        }
    }

    /// The same error about entry `index`: the scanner counts values, and a `{"logs": [...]}` body read
    /// whole is one value but many entries, which only the caller has counted.
    fn at_entry(mut self, index: u64) -> InputError {
        match &mut self {
            InputError::Malformed { entry, .. }
            | InputError::UnexpectedEnd { entry, .. }
            | InputError::TooLarge { entry, .. }
            | InputError::GzipTruncated { entry, .. }
            | InputError::GzipTrailing { entry, .. }
            | InputError::GzipCorrupt { entry, .. } => *entry = index,
            InputError::Read(_) | InputError::Write(_) | InputError::Worker => {}
        }
        self
    }
}

/// The input as given, with the bytes read to tell gzip from JSON put back in front, counted so that a gzip
/// error can say how far into the compressed input it is.
struct Raw<R> {
    input: R,
    /// The first bytes of the input, read before anything else to look for the gzip magic.
    head: [u8; 2],
    head_len: usize,
    /// How many of `head` were handed on.
    head_pos: usize,
    /// Bytes handed on so far.
    count: u64,
    /// Reading `input` itself failed (as opposed to decompressing what it gave).
    failed: bool,
}

impl<R: Read> Raw<R> {
    /// Read the first two bytes (fewer only at the end of the input): a pipe may give them one at a time.
    fn fill_head(&mut self) -> std::io::Result<()> {
        while self.head_len < self.head.len() {
            match self.input.read(&mut self.head[self.head_len..]) {
                Ok(0) => break,
                Ok(n) => self.head_len += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Raw<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = if self.head_pos < self.head_len {
            let n = (self.head_len - self.head_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            n
        } else {
            self.input.read(buf).inspect_err(|e| self.failed |= e.kind() != ErrorKind::Interrupted)?
        };
        self.count += n as u64;
        Ok(n)
    }
}

/// The input, decompressed while it is read when it starts with the gzip magic bytes (no JSON text can).
enum Decoded<R> {
    /// Nothing read yet.
    Undecided(Raw<R>),
    Plain(Raw<R>),
    /// Boxed: the decoder's state is tens of kilobytes.
    Gzip(Box<Members<R>>),
    /// Only while switching from `Undecided`.
    Gone,
}

impl<R: Read> Decoded<R> {
    fn new(input: R) -> Decoded<R> {
        Decoded::Undecided(Raw { input, head: [0; 2], head_len: 0, head_pos: 0, count: 0, failed: false })
    }

    /// Look at the first bytes and pick the reader for the rest.
    fn decide(&mut self) -> std::io::Result<()> {
        match self {
            Decoded::Undecided(raw) => raw.fill_head()?,
            _ => return Ok(()),
        }
        *self = match std::mem::replace(self, Decoded::Gone) {
            Decoded::Undecided(raw) if raw.head[..raw.head_len] == GZIP_MAGIC => {
                Decoded::Gzip(Box::new(Members::new(BufReader::with_capacity(GZIP_BUFFER, raw))))
            }
            Decoded::Undecided(raw) => Decoded::Plain(raw),
            other => other,
        };
        Ok(())
    }

    /// Turn a failed read into an input error. `offset` is the decompressed bytes read so far and `entry`
    /// the entry being read.
    fn error(&self, e: std::io::Error, offset: u64, entry: u64) -> InputError {
        let Decoded::Gzip(gz) = self else {
            return InputError::Read(e);
        };
        if let Some(at) = gz.trailing {
            return InputError::GzipTrailing { entry, offset, at };
        }
        let Some(raw) = gz.raw() else {
            return InputError::Read(e);
        };
        if raw.failed {
            return InputError::Read(e);
        }
        let compressed = raw.count;
        // The decoder reports a missing end (of the deflate data, the trailer or a header) as an
        // unexpected end of file, and anything else as invalid input.
        if e.kind() == ErrorKind::UnexpectedEof {
            InputError::GzipTruncated { entry, offset, compressed }
        } else {
            InputError::GzipCorrupt { entry, offset, compressed, source: e }
        }
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.decide()?;
        match self {
            Decoded::Plain(raw) => raw.read(buf),
            Decoded::Gzip(gz) => gz.read(buf),
            Decoded::Undecided(_) | Decoded::Gone => Ok(0),
        }
    }
}

/// Concatenated gzip members read as one stream (what appending to an archive or Firehose produces), one
/// decoder per member. After each member, what follows must be the end of the input or another member: any
/// other bytes are named as trailing data at their compressed offset, not taken for damage or a cut.
struct Members<R> {
    /// The member being read; `None` only while switching to the next one.
    decoder: Option<GzDecoder<BufReader<Raw<R>>>>,
    /// Where trailing data was found, once it was.
    trailing: Option<u64>,
}

impl<R: Read> Members<R> {
    fn new(input: BufReader<Raw<R>>) -> Members<R> {
        Members { decoder: Some(GzDecoder::new(input)), trailing: None }
    }

    /// The compressed input, as counted so far.
    fn raw(&self) -> Option<&Raw<R>> {
        self.decoder.as_ref().map(|d| d.get_ref().get_ref())
    }
}

impl<R: Read> Read for Members<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else { return Ok(0) };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This member ended, checksum and length verified; the decoder consumed exactly its bytes.
            let input = decoder.get_mut();
            let next = std::io::BufRead::fill_buf(input)?;
            let (empty, member, buffered) =
                (next.is_empty(), matches!(next, [0x1f] | [0x1f, 0x8b, ..]), next.len() as u64);
            match (empty, member) {
                (true, _) => return Ok(0),
                // A member (or the start of one cut short, which its decoder then reports as cut off).
                (false, true) => {
                    let input = self.decoder.take().map(GzDecoder::into_inner);
                    self.decoder = input.map(GzDecoder::new);
                }
                (false, false) => {
                    let at = input.get_ref().count - buffered;
                    self.trailing = Some(at);
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "trailing data after the gzip stream",
                    ));
                }
            }
        }
    }
}

/// Buffers handed back for reuse. Each batch needs about a megabyte in and out; allocating those afresh
/// means fresh pages from the kernel every time (large allocations are unmapped on free), which cost more than
/// the copying itself.
#[derive(Default)]
struct Pools {
    inputs: Mutex<Vec<Vec<u8>>>,
    outputs: Mutex<Vec<String>>,
}

impl Pools {
    fn input(&self) -> Vec<u8> {
        self.inputs.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
    }
    fn give_input(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut p) = self.inputs.lock() {
            p.push(buf);
        }
    }
    fn output(&self) -> String {
        self.outputs.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
    }
    fn give_output(&self, mut text: String) {
        text.clear();
        if let Ok(mut p) = self.outputs.lock() {
            p.push(text);
        }
    }
}

/// Read Auth0 entries (a JSON array, one object, NDJSON, `{log_id,data}` wrappers or EventBridge events,
/// gzip compressed or not) from `input` and write a JSON array of RudderStack events to `output`, streaming.
/// Entries that produce no event are reported through `on_set_aside` with a message that names the entry.
pub fn transform_stream(
    tenant: &str,
    input: impl Read,
    output: impl Write,
    on_set_aside: &mut dyn FnMut(&SetAside),
) -> Result<Summary, InputError> {
    transform_stream_with(tenant, None, MIN_ENTRY_LIMIT, input, output, on_set_aside)
}

/// How `transform` lays out its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// One JSON array, one event per line after the `[`; an event keeps the whitespace its entry's own JSON
    /// had inside (e.g. a pretty-printed `details`).
    #[default]
    Array,
    /// One compact event per line (NDJSON), for line-based tools; the bytes inside strings are unchanged.
    Ndjson,
}

/// [`transform_stream`], with an operator's privacy rules applied to each entry before it is transformed. An
/// entry the rules cannot be applied to is set aside, never written in clear. An entry larger than `limit`
/// bytes (see [`entry_limit`]) is set aside as it is read, never held whole.
pub fn transform_stream_with(
    tenant: &str,
    privacy: Option<&crate::privacy::Privacy>,
    limit: usize,
    input: impl Read,
    output: impl Write,
    on_set_aside: &mut dyn FnMut(&SetAside),
) -> Result<Summary, InputError> {
    transform_stream_as(tenant, privacy, Layout::Array, limit, input, output, on_set_aside)
}

/// [`transform_stream_with`], writing the events in `layout`.
pub fn transform_stream_as(
    tenant: &str,
    privacy: Option<&crate::privacy::Privacy>,
    layout: Layout,
    limit: usize,
    input: impl Read,
    mut output: impl Write,
    on_set_aside: &mut dyn FnMut(&SetAside),
) -> Result<Summary, InputError> {
    let privacy = privacy.filter(|p| !p.is_noop());
    let ctx = Ctx { tenant, privacy, limit, layout };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let (work_tx, work_rx) = mpsc::channel::<Batch>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let pools = Pools::default();
    let pools = &pools;
    let mut input = Decoded::new(input);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    // Hold the lock only to take a batch, not while transforming it.
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok(batch)) = next else { break };
                    if done_tx.send(transform_batch(ctx, batch, pools)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut writer = Writer {
            output: &mut output,
            on_set_aside,
            summary: Summary::default(),
            pending: BTreeMap::new(),
            next_seq: 0,
            started: false,
            layout,
            pools,
        };
        let result = drive(&mut input, limit, &work_tx, &done_rx, &mut writer, pools);
        // Dropping the sender ends the workers, whatever happened.
        drop(work_tx);
        result.map(|()| writer.summary)
    })
}

/// Read, split and dispatch the whole input, writing results as they come back in order.
fn drive<R: Read>(
    input: &mut Decoded<R>,
    limit: usize,
    work_tx: &mpsc::Sender<Batch>,
    done_rx: &mpsc::Receiver<Done>,
    writer: &mut Writer<'_>,
    pools: &Pools,
) -> Result<(), InputError> {
    let mut scanner = Scanner::new(limit);
    let mut seq = 0u64;
    loop {
        let n = scanner.fill(input)?;
        let elements = scanner.scan()?;
        if !elements.is_empty() {
            let (bytes, base) = scanner.take_consumed(pools.input());
            let batch = Batch { seq, bytes, base, elements };
            seq += 1;
            // Bound the batches in flight by writing finished ones before handing out more.
            while seq - writer.next_seq > IN_FLIGHT as u64 {
                let done = done_rx.recv().map_err(|_| InputError::Worker)?;
                writer.accept(done)?;
            }
            work_tx.send(batch).map_err(|_| InputError::Worker)?;
        } else {
            scanner.discard_consumed();
        }
        while let Ok(done) = done_rx.try_recv() {
            writer.accept(done)?;
        }
        if n == 0 {
            scanner.finish()?;
            break;
        }
    }
    while writer.next_seq < seq {
        let done = done_rx.recv().map_err(|_| InputError::Worker)?;
        writer.accept(done)?;
    }
    writer.finish()
}

/// Where the scanner stands between values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Top level: a value, or the end of the input.
    TopValue,
    /// Just inside `[`: a value or `]`. `logs` when the array is the `logs` of a top-level object.
    ArrayFirst { logs: bool },
    /// After `,` in an array: a value.
    ArrayValue { logs: bool },
    /// After an array element: `,` or `]`.
    ArrayNext { logs: bool },
    /// After a streamed `logs` array: the rest of its object, up to the closing `}`, is skipped.
    ObjectRest,
}

/// A value being scanned, possibly across chunks.
#[derive(Debug, Clone, Copy)]
struct Partial {
    /// Where it begins in the buffer.
    start: usize,
    /// Bracket depth (containers only).
    depth: u32,
    /// Inside a string.
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
    /// What is being scanned.
    shape: Shape,
    /// It is a top-level value (so an object may be a `{"logs": [...]}` body).
    top_level: bool,
}

/// The kinds of values the scanner delimits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Container,
    String,
    Scalar,
    /// The remainder of an object after its streamed `logs` array (not an entry).
    Rest,
}

/// One complete value found by the scanner, relative to its batch's bytes.
#[derive(Debug, Clone)]
struct Element {
    start: usize,
    end: usize,
    top_level: bool,
    /// A value over the entry limit, measured as it streamed past: `start..end` then holds nothing of it.
    big: Option<Box<Oversized>>,
}

/// Finds where values begin and end in a byte stream, without parsing them.
struct Scanner {
    /// Read bytes are `buf[..filled]`; the rest is zeroed room for the next read.
    buf: Vec<u8>,
    filled: usize,
    /// Input offset of `buf[0]`.
    base: u64,
    /// Next byte to look at.
    pos: usize,
    expect: Expect,
    partial: Option<Partial>,
    /// Complete values found since the last `take_consumed`.
    found: Vec<Element>,
    /// Values found so far (for messages).
    count: u64,
    eof: bool,
    /// The largest value read whole (`MAX_VALUE`; smaller in tests).
    max_value: usize,
    /// A value larger than this is measured and hashed as it streams past instead of being kept.
    limit: usize,
    /// The oversized value in progress, once its bytes are no longer kept.
    spill: Option<Spill>,
}

impl Scanner {
    fn new(limit: usize) -> Scanner {
        Scanner {
            buf: Vec::with_capacity(CHUNK),
            filled: 0,
            base: 0,
            pos: 0,
            expect: Expect::TopValue,
            partial: None,
            found: Vec::new(),
            count: 0,
            eof: false,
            max_value: MAX_VALUE,
            limit,
            spill: None,
        }
    }

    /// Let go of the bytes of the value in progress once it is over the limit: they go through the hash and
    /// into the excerpt, and the scanner goes on from its state (depth, string, escape) alone. Called before
    /// each read, when every value before it was handed out (`take_consumed` or `discard_consumed`), so no
    /// offset anyone holds moves.
    fn spill_partial(&mut self) {
        let Some(p) = self.partial.as_ref() else { return };
        let len = self.filled - p.start;
        if self.spill.is_none() && len <= self.limit {
            return;
        }
        let start = p.start;
        let offset = self.base + start as u64;
        self.spill.get_or_insert_with(|| Spill::new(offset)).take(&self.buf[start..self.filled]);
        self.filled = start;
        self.pos = start;
        self.base += len as u64;
    }

    /// Read up to one chunk more; returns the bytes read (0 at the end of the input).
    fn fill<R: Read>(&mut self, input: &mut Decoded<R>) -> Result<usize, InputError> {
        self.spill_partial();
        let start = self.partial.map_or(self.pos, |p| p.start);
        if self.filled - start > self.max_value {
            return Err(InputError::TooLarge {
                entry: self.count + 1,
                offset: self.base + start as u64,
                limit: self.max_value,
            });
        }
        // Zero only memory not zeroed before: small reads (pipes) must not each pay for a whole chunk.
        let len = self.filled;
        if self.buf.len() < len + CHUNK {
            self.buf.resize(len + CHUNK, 0);
        }
        let n = loop {
            match input.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(input.error(e, self.base + len as u64, self.count + 1)),
            }
        };
        self.filled = len + n;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// Hand over the bytes holding the values found so far, keeping the unconsumed tail.
    /// `tail` is an empty buffer to continue in (recycled when possible).
    fn take_consumed(&mut self, mut tail: Vec<u8>) -> (Vec<u8>, u64) {
        let keep = self.partial.map_or(self.pos, |p| p.start);
        tail.reserve(self.filled - keep + CHUNK);
        tail.extend_from_slice(&self.buf[keep..self.filled]);
        let mut bytes = std::mem::replace(&mut self.buf, tail);
        bytes.truncate(self.filled);
        self.filled = self.buf.len();
        let base = self.base;
        self.base += keep as u64;
        self.pos -= keep;
        if let Some(p) = &mut self.partial {
            p.start -= keep;
        }
        (bytes, base)
    }

    /// Drop the bytes before the next value when no value was found in them (whitespace, `[`, `,`): without
    /// this, a long run of them (a gzip bomb of spaces) would pile up in the buffer.
    fn discard_consumed(&mut self) {
        let keep = self.partial.map_or(self.pos, |p| p.start);
        if keep == 0 {
            return;
        }
        self.buf.copy_within(keep..self.filled, 0);
        self.filled -= keep;
        self.base += keep as u64;
        self.pos -= keep;
        if let Some(p) = &mut self.partial {
            p.start -= keep;
        }
    }

    /// The end of the input: anything unfinished is an error.
    fn finish(&mut self) -> Result<(), InputError> {
        if let Some(p) = self.partial {
            return Err(InputError::UnexpectedEnd {
                entry: self.count + 1,
                started: self.spill.as_ref().map_or(self.base + p.start as u64, |s| s.offset),
                offset: self.base + self.filled as u64,
            });
        }
        match self.expect {
            Expect::TopValue => Ok(()),
            _ => Err(InputError::UnexpectedEnd {
                entry: self.count + 1,
                started: self.base + self.pos as u64,
                offset: self.base + self.filled as u64,
            }),
        }
    }

    fn malformed(&self, at: usize, reason: impl Into<String>) -> InputError {
        InputError::Malformed { entry: self.count + 1, offset: self.base + at as u64, reason: reason.into() }
    }

    /// Find every value complete in the buffer; returns them (and forgets them).
    fn scan(&mut self) -> Result<Vec<Element>, InputError> {
        loop {
            if let Some(mut p) = self.partial.take() {
                match self.scan_partial(&mut p) {
                    Some(end) => {
                        let mut spill = self.spill.take();
                        if spill.is_none() && end - p.start > self.limit {
                            spill = Some(Spill::new(self.base + p.start as u64));
                        }
                        if let Some(s) = spill.as_mut() {
                            s.take(&self.buf[p.start..end]);
                        }
                        if p.shape != Shape::Rest {
                            let big = spill.map(|s| Box::new(s.finish()));
                            self.found.push(Element { start: p.start, end, top_level: p.top_level, big });
                            self.count += 1;
                        }
                        self.expect = match self.expect {
                            Expect::ArrayFirst { logs }
                            | Expect::ArrayValue { logs }
                            | Expect::ArrayNext { logs } => Expect::ArrayNext { logs },
                            Expect::TopValue | Expect::ObjectRest => Expect::TopValue,
                        };
                        continue;
                    }
                    None => {
                        self.partial = Some(p);
                        break;
                    }
                }
            }
            while self.pos < self.filled && is_space(self.buf[self.pos]) {
                self.pos += 1;
            }
            if self.pos >= self.filled {
                break;
            }
            let at = self.pos;
            let b = self.buf[at];
            match self.expect {
                Expect::TopValue => {
                    if b == b'[' {
                        self.pos += 1;
                        self.expect = Expect::ArrayFirst { logs: false };
                    } else if b == b'{' {
                        match logs_array_prefix(&self.buf[at..self.filled], self.eof) {
                            Lookahead::NeedMore => break,
                            Lookahead::Yes(n) => {
                                self.pos += n;
                                self.expect = Expect::ArrayFirst { logs: true };
                            }
                            Lookahead::No => self.begin(true)?,
                        }
                    } else {
                        self.begin(true)?;
                    }
                }
                Expect::ArrayFirst { logs } if b == b']' => {
                    self.pos += 1;
                    self.expect = after_array(logs);
                }
                Expect::ArrayFirst { .. } | Expect::ArrayValue { .. } => {
                    if b == b']' {
                        return Err(self.malformed(at, "a `]` right after `,` (trailing comma)"));
                    }
                    self.begin(false)?;
                }
                Expect::ArrayNext { logs } => {
                    self.pos += 1;
                    match b {
                        b',' => self.expect = Expect::ArrayValue { logs },
                        b']' => self.expect = after_array(logs),
                        other => {
                            return Err(self.malformed(
                                at,
                                format!("expected `,` or `]` after an entry, found {}", show(other)),
                            ));
                        }
                    }
                }
                Expect::ObjectRest => {
                    self.partial = Some(Partial {
                        start: at,
                        depth: 1,
                        in_string: false,
                        escaped: false,
                        shape: Shape::Rest,
                        top_level: true,
                    });
                }
            }
        }
        Ok(std::mem::take(&mut self.found))
    }

    /// Start scanning a value at `pos`.
    fn begin(&mut self, top_level: bool) -> Result<(), InputError> {
        let at = self.pos;
        let shape = match self.buf[at] {
            b'{' | b'[' => Shape::Container,
            b'"' => Shape::String,
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => Shape::Scalar,
            b'}' | b']' => return Err(self.malformed(at, format!("unexpected {}", show(self.buf[at])))),
            other => {
                return Err(self.malformed(at, format!("expected a JSON value, found {}", show(other))));
            }
        };
        self.pos += 1;
        self.partial = Some(Partial {
            start: at,
            depth: u32::from(shape == Shape::Container),
            in_string: shape == Shape::String,
            escaped: false,
            shape,
            top_level,
        });
        Ok(())
    }

    /// Continue scanning `p` from `pos`; returns its end when it is complete.
    fn scan_partial(&mut self, p: &mut Partial) -> Option<usize> {
        let buf = &self.buf[..self.filled];
        let mut pos = self.pos;
        if p.shape == Shape::Scalar {
            while pos < buf.len() {
                if matches!(buf[pos], b',' | b']' | b'}' | b'[' | b'{' | b'"') || is_space(buf[pos]) {
                    self.pos = pos;
                    return Some(pos);
                }
                pos += 1;
            }
            self.pos = pos;
            // A scalar at the very end of the input ends there.
            return if self.eof { Some(pos) } else { None };
        }
        loop {
            if p.in_string {
                if p.escaped {
                    if pos >= buf.len() {
                        self.pos = pos;
                        return None;
                    }
                    p.escaped = false;
                    pos += 1;
                }
                match memchr::memchr2(b'"', b'\\', &buf[pos..]) {
                    None => {
                        self.pos = buf.len();
                        return None;
                    }
                    Some(i) => {
                        pos += i + 1;
                        if buf[pos - 1] == b'\\' {
                            p.escaped = true;
                        } else {
                            p.in_string = false;
                            if p.shape == Shape::String {
                                self.pos = pos;
                                return Some(pos);
                            }
                        }
                    }
                }
            } else {
                // Outside strings only structure matters; most bytes of an entry are inside strings.
                loop {
                    let Some(&b) = buf.get(pos) else {
                        self.pos = pos;
                        return None;
                    };
                    pos += 1;
                    match b {
                        b'"' => {
                            p.in_string = true;
                            break;
                        }
                        b'{' | b'[' => p.depth += 1,
                        b'}' | b']' => {
                            p.depth -= 1;
                            if p.depth == 0 {
                                self.pos = pos;
                                return Some(pos);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// What follows a `]`.
fn after_array(logs: bool) -> Expect {
    if logs { Expect::ObjectRest } else { Expect::TopValue }
}

/// JSON whitespace.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// A byte, readably.
fn show(b: u8) -> String {
    if b.is_ascii_graphic() { format!("`{}`", b as char) } else { format!("byte 0x{b:02x}") }
}

/// Result of looking at the start of a top-level object.
enum Lookahead {
    /// It is `{"logs": [`; the array begins after this many bytes.
    Yes(usize),
    No,
    NeedMore,
}

/// Whether `bytes` (starting at `{`) opens `{"logs": [`. Such a body is streamed element by element; any
/// other object is read whole (and may still turn out to be a `{"logs": ...}` body with `logs` later).
fn logs_array_prefix(bytes: &[u8], eof: bool) -> Lookahead {
    let mut i = 1;
    let expect = |i: &mut usize, want: &[u8]| -> Option<bool> {
        while *i < bytes.len() && is_space(bytes[*i]) {
            *i += 1;
        }
        for &w in want {
            match bytes.get(*i) {
                None => return None,
                Some(&b) if b == w => *i += 1,
                Some(_) => return Some(false),
            }
        }
        Some(true)
    };
    for want in [&b"\"logs\""[..], b":", b"["] {
        match expect(&mut i, want) {
            // Whitespace that long is no `{"logs": [` body anyone wrote; looking further would rescan it on
            // every read.
            None if eof || bytes.len() > LOGS_LOOKAHEAD => return Lookahead::No,
            None => return Lookahead::NeedMore,
            Some(false) => return Lookahead::No,
            Some(true) => {}
        }
    }
    Lookahead::Yes(i)
}

/// Complete values, with the bytes they are in, for a worker.
struct Batch {
    seq: u64,
    bytes: Vec<u8>,
    /// Input offset of `bytes[0]`.
    base: u64,
    elements: Vec<Element>,
}

/// A transformed batch.
struct Done {
    seq: u64,
    /// Events, each preceded by `,\n`.
    text: String,
    entries: u64,
    events: u64,
    /// Entries without an event: (0-based index within the batch, offset, why).
    set_aside: Vec<(u64, u64, TransformError)>,
    /// Malformed JSON: (0-based index within the batch, offset, why). Ends the run.
    error: Option<(u64, u64, String)>,
    /// Where the privacy rules rewrite an entry, reused from entry to entry.
    scratch: String,
}

/// What every worker transforms with.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    tenant: &'a str,
    privacy: Option<&'a crate::privacy::Privacy>,
    /// The entry limit, for messages.
    limit: usize,
    layout: Layout,
}

/// Transform every value of a batch (on a worker thread).
fn transform_batch(ctx: Ctx<'_>, batch: Batch, pools: &Pools) -> Done {
    let mut text = pools.output();
    text.reserve(batch.bytes.len() + batch.bytes.len() / 4);
    let done = transform_elements(ctx, &batch, text);
    pools.give_input(batch.bytes);
    done
}

/// The body of `transform_batch`: stops at the first malformed value.
fn transform_elements(ctx: Ctx<'_>, batch: &Batch, text: String) -> Done {
    let mut done = Done {
        seq: batch.seq,
        text,
        entries: 0,
        events: 0,
        set_aside: Vec::new(),
        error: None,
        scratch: String::new(),
    };
    for element in &batch.elements {
        if let Some(big) = &element.big {
            let error = TransformError::TooLarge {
                log_id: big.log_id.clone(),
                size: big.size,
                limit: ctx.limit as u64,
            };
            done.set_aside.push((done.entries, big.offset, error));
            done.entries += 1;
            continue;
        }
        let offset = batch.base + element.start as u64;
        let text = match std::str::from_utf8(&batch.bytes[element.start..element.end]) {
            Ok(text) => text,
            Err(e) => {
                done.error = Some((done.entries, offset + e.valid_up_to() as u64, "invalid UTF-8".into()));
                return done;
            }
        };
        if element.top_level && text.starts_with('{') && text.contains("\"logs\"") {
            match logs_list(text) {
                Ok(Some(list)) => {
                    for entry in list {
                        // Offsets inside the list are exact: each entry is a slice of `text`.
                        let at = offset + (entry.get().as_ptr() as usize - text.as_ptr() as usize) as u64;
                        if let Err(e) = transform_one(ctx, entry.get(), at, &mut done) {
                            done.error = Some(e);
                            return done;
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    done.error = Some((done.entries, offset + e.0, e.1));
                    return done;
                }
            }
        }
        if let Err(e) = transform_one(ctx, text, offset, &mut done) {
            done.error = Some(e);
            return done;
        }
    }
    done
}

/// Transform one entry into the batch result; `Err` only for malformed JSON.
fn transform_one(ctx: Ctx<'_>, text: &str, offset: u64, done: &mut Done) -> Result<(), (u64, u64, String)> {
    let index = done.entries;
    done.entries += 1;
    let text = match ctx.privacy.map(|p| p.apply_into(text, &mut done.scratch)) {
        None | Some(Ok(false)) => text,
        Some(Ok(true)) => done.scratch.as_str(),
        Some(Err(e)) => {
            let error = TransformError::Unreadable {
                log_id: None,
                reason: format!("the privacy rules cannot be applied: {e}"),
            };
            done.set_aside.push((index, offset, error));
            return Ok(());
        }
    };
    let mark = done.text.len();
    if ctx.layout == Layout::Array {
        done.text.push_str(",\n");
    }
    let start = done.text.len();
    match transform::write_any_text(ctx.tenant, text, &mut done.text) {
        Ok(_) => {
            if ctx.layout == Layout::Ndjson {
                let event = done.text.split_off(start);
                crate::json_text::compact_into(&event, &mut done.text);
                done.text.push('\n');
            }
            done.events += 1;
            Ok(())
        }
        Err(EntryError::Transform(e)) => {
            done.text.truncate(mark);
            done.set_aside.push((index, offset, e));
            Ok(())
        }
        Err(EntryError::Json(e)) => {
            done.text.truncate(mark);
            Err((index, offset + position_in(text, &e), e.to_string()))
        }
    }
}

/// The byte position in `text` of a serde_json error (which counts lines and columns).
fn position_in(text: &str, e: &serde_json::Error) -> u64 {
    let line_start: usize = text.split_inclusive('\n').take(e.line().saturating_sub(1)).map(str::len).sum();
    (line_start + e.column().saturating_sub(1)) as u64
}

/// The entries of a top-level object used as a `{"logs": [...]}` body: `None` when its `logs` is absent or
/// falsy (then the object is itself an entry).
#[allow(clippy::type_complexity)]
fn logs_list(text: &str) -> Result<Option<Vec<&RawValue>>, (u64, String)> {
    // Keys read as JavaScript reads them: a lone surrogate in one is no reason to refuse the body.
    let [logs] =
        crate::json_text::pick(text, &["logs"]).map_err(|e| (position_in(text, &e), e.to_string()))?;
    // `event.logs || [event]`: a falsy `logs` (null, false, 0, "") leaves the object an entry itself.
    let Some(logs) = logs.filter(|l| transform::is_truthy(l)) else {
        return Ok(None);
    };
    if !logs.get().starts_with('[') {
        return Err((0, "`logs` must be an array of entries".into()));
    }
    let at = (logs.get().as_ptr() as usize - text.as_ptr() as usize) as u64;
    serde_json::from_str(logs.get()).map(Some).map_err(|e| (at + position_in(logs.get(), &e), e.to_string()))
}

/// Writes finished batches in input order.
struct Writer<'a> {
    output: &'a mut dyn Write,
    on_set_aside: &'a mut dyn FnMut(&SetAside),
    summary: Summary,
    /// Batches that finished before an earlier one.
    pending: BTreeMap<u64, Done>,
    next_seq: u64,
    /// `[` written.
    started: bool,
    layout: Layout,
    pools: &'a Pools,
}

impl Writer<'_> {
    /// Take a finished batch; write it and any that were waiting for it.
    fn accept(&mut self, done: Done) -> Result<(), InputError> {
        self.pending.insert(done.seq, done);
        while let Some(done) = self.pending.remove(&self.next_seq) {
            self.next_seq += 1;
            self.write(done)?;
        }
        Ok(())
    }

    fn write(&mut self, done: Done) -> Result<(), InputError> {
        let Done { text, entries, events, set_aside, error, .. } = done;
        let first = self.summary.entries;
        if !text.is_empty() {
            // Every event comes as `,\n{...}` (as `{...}\n` in NDJSON); the very first one opens the array
            // instead.
            let events_text = if self.started || self.layout == Layout::Ndjson {
                &text[..]
            } else {
                self.started = true;
                self.output.write_all(b"[").map_err(InputError::Write)?;
                &text[1..]
            };
            self.output.write_all(events_text.as_bytes()).map_err(InputError::Write)?;
        }
        self.pools.give_output(text);
        self.summary.entries += entries;
        self.summary.events += events;
        for (index, offset, error) in set_aside {
            self.summary.set_aside += 1;
            (self.on_set_aside)(&SetAside {
                index: first + index + 1,
                offset,
                error,
                text: None,
                oversized: None,
            });
        }
        if let Some((index, offset, reason)) = error {
            return Err(InputError::Malformed { entry: first + index + 1, offset, reason });
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), InputError> {
        let end: &[u8] = match (self.layout, self.started) {
            (Layout::Ndjson, _) => b"",
            (Layout::Array, true) => b"\n]\n",
            (Layout::Array, false) => b"[]\n",
        };
        self.output.write_all(end).map_err(InputError::Write)?;
        self.output.flush().map_err(InputError::Write)
    }
}

/// One entry of the input as the raw Auth0 entry it holds, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// 1-based position of the entry in the input.
    pub index: u64,
    /// Byte offset where the element holding it (the entry, its wrapper or its EventBridge event) begins.
    pub offset: u64,
    /// The log_id to file it under: the wrapper's (a Log Streams wrapper's, or an EventBridge event's
    /// `detail`) when it is a string, else the entry's own when that is one. The event's ids derive from it;
    /// when it differs from the entry's own `log_id`, transform with `transform_entry_with_log_id` so that the
    /// event is the one the wrapper gives.
    pub log_id: Option<String>,
    /// The raw entry's JSON text, byte for byte as in the input (for a wrapper, its `data` object).
    pub raw: String,
}

/// What an `EntryReader` has read so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    /// Entries passed: the index of the last one.
    pub entries: u64,
    /// Of those, the ones skipped unread (see `EntryReader::skipping`).
    pub skipped: u64,
    /// Of those, the ones that hold no raw entry (reported as `SetAside`).
    pub set_aside: u64,
}

/// Entries in input order: each the raw entry, or why its element holds none (not an object, or an
/// EventBridge event without `data`).
pub type EntryBatch = Vec<Result<RawEntry, SetAside>>;

/// Reads the raw Auth0 entries of an input in batches, for importing them into the outbox.
///
/// It takes every input `transform_stream` takes (gzip included) and unwraps `{log_id, data}` wrappers and
/// EventBridge events, keeping the wrapper's log_id in `RawEntry::log_id`. The caller pulls one batch at a
/// time (`next_batch`, or as an iterator) and so can stop whenever it likes, for its own reasons; memory
/// stays at a few chunks of input plus one batch. Malformed input ends the read with an `InputError` naming
/// the entry and byte, after every entry before it was handed out. Once an error was returned, the reader
/// yields nothing more.
pub struct EntryReader<R> {
    input: Decoded<R>,
    scanner: Scanner,
    batch_size: usize,
    /// Entry text a batch may hold before it ends (`BATCH_BYTES`; smaller in tests).
    batch_bytes: usize,
    skip: u64,
    /// The chunk holding the values in `queue`, and the input offset of its first byte.
    bytes: Vec<u8>,
    base: u64,
    /// Values of `bytes` not yet handed out, in input order.
    queue: VecDeque<Element>,
    /// Entries passed so far (the index of the last one).
    index: u64,
    summary: ReadSummary,
    /// An error met while filling a batch, returned after that batch.
    error: Option<InputError>,
    /// The scanner saw the end of the input.
    eof: bool,
    /// Nothing more will be read (end of input, or an error returned).
    done: bool,
}

impl<R: Read> EntryReader<R> {
    /// Read `input` in batches of at most `batch_size` entries (at least 1), each ending early once its
    /// entries hold a few MiB of text, so that a batch of large entries stays small.
    pub fn new(input: R, batch_size: usize) -> EntryReader<R> {
        EntryReader {
            input: Decoded::new(input),
            scanner: Scanner::new(MIN_ENTRY_LIMIT),
            batch_size: batch_size.max(1),
            batch_bytes: BATCH_BYTES,
            skip: 0,
            bytes: Vec::new(),
            base: 0,
            queue: VecDeque::new(),
            index: 0,
            summary: ReadSummary::default(),
            error: None,
            eof: false,
            done: false,
        }
    }

    /// Set aside entries larger than `limit` bytes (see [`entry_limit`]; `MIN_ENTRY_LIMIT` unless told) while
    /// they are read: each is handed out as a `SetAside` with what was measured of it (`oversized`).
    pub fn limited_to(mut self, limit: usize) -> EntryReader<R> {
        self.scanner.limit = limit;
        self
    }

    /// Pass over the first `n` entries without handing them out, to resume an interrupted import. They are
    /// only delimited, not parsed or copied (so neither are they checked: they were when first read).
    pub fn skipping(mut self, n: u64) -> EntryReader<R> {
        self.skip = n;
        self
    }

    /// What was read so far.
    pub fn summary(&self) -> ReadSummary {
        self.summary
    }

    /// The next batch of entries, `None` at the end of the input. An error comes after the batch holding the
    /// entries before it, and ends the read.
    pub fn next_batch(&mut self) -> Result<Option<EntryBatch>, InputError> {
        if self.done {
            return Ok(None);
        }
        let mut batch = Vec::new();
        // The text the batch holds. Values left in the queue when the batch ends early stay in `bytes`, which
        // is only replaced once the queue is empty, and the counts in `summary` stop at the last entry handed
        // out: a caller that records them with the batch resumes exactly after it.
        let mut held = 0;
        loop {
            // The queue holds the values before any error the scanner met, so it is drained first.
            while batch.len() < self.batch_size && held < self.batch_bytes {
                let Some(element) = self.queue.pop_front() else { break };
                let before = batch.len();
                if let Err(e) = self.take(element, &mut batch) {
                    // This error comes before the scanner's, if any: it is the one to report.
                    self.queue.clear();
                    self.error = Some(e);
                    break;
                }
                held += batch[before..].iter().map(text_len).sum::<usize>();
            }
            if batch.len() == self.batch_size || held >= self.batch_bytes {
                return Ok(Some(batch));
            }
            if self.error.is_some() || self.eof {
                // Hand out what came before the error (or the end) first.
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
                self.done = true;
                return match self.error.take() {
                    Some(e) => Err(e.at_entry(self.index + 1)),
                    None => Ok(None),
                };
            }
            self.refill();
        }
    }

    /// Read until the scanner finds values (or the input ends, or fails) and queue them.
    fn refill(&mut self) {
        loop {
            let n = match self.scanner.fill(&mut self.input) {
                Ok(n) => n,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            };
            let (found, error) = match self.scanner.scan() {
                Ok(found) => (found, None),
                // The values before the error are still handed out.
                Err(e) => (std::mem::take(&mut self.scanner.found), Some(e)),
            };
            if !found.is_empty() {
                // The previous chunk is all handed out: it becomes the buffer the scanner goes on in.
                let mut tail = std::mem::take(&mut self.bytes);
                tail.clear();
                (self.bytes, self.base) = self.scanner.take_consumed(tail);
                self.queue.extend(found);
            } else {
                self.scanner.discard_consumed();
            }
            if error.is_some() {
                self.error = error;
                return;
            }
            if n == 0 {
                self.eof = true;
                if let Err(e) = self.scanner.finish() {
                    self.error = Some(e);
                }
                return;
            }
            if !self.queue.is_empty() {
                return;
            }
        }
    }

    /// Hand out one value: an entry, or the entries of a `{"logs": [...]}` body (queued in its place).
    fn take(&mut self, element: Element, batch: &mut EntryBatch) -> Result<(), InputError> {
        if let Some(big) = element.big {
            let index = self.index + 1;
            self.index = index;
            self.summary.entries = index;
            if index <= self.skip {
                self.summary.skipped += 1;
            } else {
                self.summary.set_aside += 1;
                let error = TransformError::TooLarge {
                    log_id: big.log_id.clone(),
                    size: big.size,
                    limit: self.scanner.limit as u64,
                };
                batch.push(Err(SetAside {
                    index,
                    offset: big.offset,
                    error,
                    text: None,
                    oversized: Some(big),
                }));
            }
            return Ok(());
        }
        let offset = self.base + element.start as u64;
        let bytes = &self.bytes[element.start..element.end];
        if element.top_level
            && bytes.first() == Some(&b'{')
            && memchr::memmem::find(bytes, b"\"logs\"").is_some()
        {
            let text = utf8(bytes, offset, self.index + 1)?;
            match logs_list(text) {
                Ok(Some(list)) => {
                    // Each entry is a slice of `text`, so its place in the chunk is exact.
                    for entry in list.iter().rev() {
                        let start = element.start + (entry.get().as_ptr() as usize - text.as_ptr() as usize);
                        let end = start + entry.get().len();
                        self.queue.push_front(Element { start, end, top_level: false, big: None });
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err((at, reason)) => {
                    return Err(InputError::Malformed { entry: self.index + 1, offset: offset + at, reason });
                }
            }
        }
        // The index moves on only past an entry that was read (or skipped), so that an error names the
        // entry it is about as `index + 1`, whichever step found it.
        let index = self.index + 1;
        if index <= self.skip {
            self.index = index;
            self.summary.entries = index;
            self.summary.skipped += 1;
            return Ok(());
        }
        let text = utf8(bytes, offset, index)?;
        let item = match transform::unwrap_text(text) {
            Ok(entry) => Ok(RawEntry { index, offset, log_id: entry.log_id(), raw: entry.text.to_owned() }),
            Err(EntryError::Transform(error)) => {
                self.summary.set_aside += 1;
                Err(SetAside { index, offset, error, text: Some(text.to_owned()), oversized: None })
            }
            Err(EntryError::Json(e)) => {
                return Err(InputError::Malformed {
                    entry: index,
                    offset: offset + position_in(text, &e),
                    reason: e.to_string(),
                });
            }
        };
        batch.push(item);
        self.index = index;
        self.summary.entries = index;
        Ok(())
    }
}

impl<R: Read> Iterator for EntryReader<R> {
    type Item = Result<EntryBatch, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// The text an item of a batch holds (an oversized entry's excerpt is bounded and not counted).
fn text_len(item: &Result<RawEntry, SetAside>) -> usize {
    match item {
        Ok(entry) => entry.raw.len(),
        Err(set_aside) => set_aside.text.as_ref().map_or(0, String::len),
    }
}

/// A value's bytes as text, or the error naming where they stop being UTF-8.
fn utf8(bytes: &[u8], offset: u64, entry: u64) -> Result<&str, InputError> {
    std::str::from_utf8(bytes).map_err(|e| InputError::Malformed {
        entry,
        offset: offset + e.valid_up_to() as u64,
        reason: "invalid UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value larger than the entry limit is handed out as set aside with its offset, size, hash, excerpt and
    /// log_id, while the scanner's buffer never holds it whole; the entries around it are read as usual.
    #[test]
    fn a_value_larger_than_the_entry_limit_is_measured_and_set_aside() {
        let big = format!(r#"{{"type":"s","log_id":"big-1","description":"{}"}}"#, "x".repeat(5 * CHUNK));
        let input = format!("{{\"type\":\"s\"}}\n{big}\n{{\"type\":\"f\"}}\n");
        let mut reader = EntryReader::new(input.as_bytes(), 10).limited_to(CHUNK);
        let mut items = Vec::new();
        while let Some(batch) = reader.next_batch().expect("reads") {
            items.extend(batch);
            assert!(reader.scanner.buf.capacity() <= 4 * CHUNK, "{}", reader.scanner.buf.capacity());
        }
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok());
        let set_aside = items[1].as_ref().expect_err("the big entry is set aside");
        assert_eq!((set_aside.index, set_aside.offset), (2, 13));
        let o = set_aside.oversized.as_ref().expect("measured");
        assert_eq!(o.size, big.len() as u64);
        assert_eq!(o.sha256, <[u8; 32]>::from(Sha256::digest(big.as_bytes())));
        assert_eq!(o.excerpt, big[..EXCERPT_BYTES]);
        assert_eq!(o.log_id.as_deref(), Some("big-1"));
        assert!(matches!(set_aside.error, TransformError::TooLarge { size, .. } if size == big.len() as u64));
        assert_eq!(reader.summary().set_aside, 1);
        // Resuming past it skips it like any other entry.
        let mut resumed = EntryReader::new(input.as_bytes(), 10).limited_to(CHUNK).skipping(2);
        let rest = resumed.next_batch().expect("reads").expect("a batch");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].as_ref().map(|e| e.index), Ok(3));
    }

    /// A batch ends once its entries hold `batch_bytes`, whatever its count allows, and the entries left
    /// over come first in the next one; the count after each batch is where a resumed read goes on.
    #[test]
    fn a_batch_of_large_entries_ends_by_bytes_and_resumes_after_its_last_entry() {
        let entry =
            |i: usize| format!(r#"{{"type":"s","log_id":"{i}","description":"{}"}}"#, "z".repeat(1000));
        let input: String = (1..=10).map(|i| entry(i) + "\n").collect();
        let mut reader = EntryReader::new(input.as_bytes(), 100);
        reader.batch_bytes = 2500;
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_batch().expect("reads") {
            // Three entries reach 2,500 bytes: never more in one batch.
            assert!((1..=3).contains(&batch.len()), "{}", batch.len());
            let indexes: Vec<u64> = batch.iter().map(|e| e.as_ref().expect("an entry").index).collect();
            assert_eq!(reader.summary().entries, *indexes.last().expect("not empty"));
            // Resuming after this batch hands out exactly the entries after it.
            let resumed = EntryReader::new(input.as_bytes(), 100).skipping(reader.summary().entries);
            let rest: Vec<u64> =
                resumed.flat_map(|b| b.expect("reads")).map(|e| e.expect("an entry").index).collect();
            assert_eq!(rest, ((reader.summary().entries + 1)..=10).collect::<Vec<_>>());
            seen.extend(indexes);
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    }

    /// A value that fits in one read but is over the limit is set aside too; `transform_stream` reports it by
    /// position and goes on.
    #[test]
    fn transform_sets_aside_an_entry_over_the_limit_and_goes_on() {
        let big = format!(r#"{{"type":"s","description":"{}"}}"#, "y".repeat(CHUNK / 2));
        let input =
            format!("[{{\"type\":\"s\",\"log_id\":\"1\"}},{big},{{\"type\":\"f\",\"log_id\":\"2\"}}]");
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let summary = transform_stream_with("t", None, CHUNK / 4, input.as_bytes(), &mut out, &mut |s| {
            seen.push((s.index, s.offset, s.error.to_string()))
        })
        .expect("reads");
        assert_eq!((summary.entries, summary.events, summary.set_aside), (3, 2, 1));
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].0, seen[0].1), (2, input.find(&big).expect("there") as u64));
        assert!(seen[0].2.contains(&big.len().to_string()), "{}", seen[0].2);
    }

    /// The look for a log_id reads only top-level keys, stops at a cut, and refuses escaped values.
    #[test]
    fn the_log_id_of_a_cut_off_object_is_found_at_the_top_level_only() {
        assert_eq!(top_level_log_id(br#" {"a":{"log_id":"inner"},"log_id" : "90020"#), None);
        assert_eq!(
            top_level_log_id(br#" {"a":{"log_id":"inner"},"log_id" : "900","x""#).as_deref(),
            Some("900")
        );
        assert_eq!(top_level_log_id(br#"{"s":"\"log_id\":\"no\"","log_id":"yes"}"#).as_deref(), Some("yes"));
        assert_eq!(top_level_log_id(br#"{"log_id":"a\u0062"}"#), None);
        assert_eq!(top_level_log_id(br#"["log_id","x"]"#), None);
        assert_eq!(top_level_log_id(br#"{"log_id":12}"#), None);
    }

    /// Whitespace between values does not pile up in the scanner's buffer.
    #[test]
    fn whitespace_between_values_is_not_kept() {
        let mut input = b"{\"type\":\"s\"}".to_vec();
        input.extend(std::iter::repeat_n(b' ', 20 * CHUNK));
        input.extend(b"[\n\n\n");
        input.extend(std::iter::repeat_n(b'\n', 20 * CHUNK));
        input.extend(b"{\"type\":\"s\"}]");
        let mut reader = EntryReader::new(&input[..], 10);
        let mut read = 0;
        while let Some(batch) = reader.next_batch().expect("reads") {
            read += batch.len();
            assert!(reader.scanner.buf.capacity() <= 4 * CHUNK, "{}", reader.scanner.buf.capacity());
        }
        assert_eq!(read, 2);
        assert!(reader.scanner.buf.capacity() <= 4 * CHUNK, "{}", reader.scanner.buf.capacity());
    }

    /// Whitespace after a top-level `{` ends the look for `"logs": [` instead of being rescanned per read.
    #[test]
    fn the_look_for_a_logs_body_is_bounded() {
        let mut text = b"{".to_vec();
        text.extend(std::iter::repeat_n(b' ', LOGS_LOOKAHEAD + 1));
        assert!(matches!(logs_array_prefix(&text, false), Lookahead::No));
        assert!(matches!(logs_array_prefix(b"{  \"logs\"", false), Lookahead::NeedMore));
        assert!(matches!(logs_array_prefix(b"{ \"logs\" : [", false), Lookahead::Yes(12)));
    }
}
