//! Privacy rules applied to a raw Auth0 entry before it is transformed: keyed hashing, masking and dropping
//! of named fields, and truncation of IP addresses.
//!
//! A field name matches every object key of that name at any depth of the entry: top-level keys, keys inside
//! `details`, keys of objects inside arrays. Keys are compared after unescaping, so `"e\u006dail"` is `email`.
//! Keys and strings are read as JavaScript reads them (see `json_text`): every escape JSON allows is read, a
//! lone UTF-16 surrogate (`\ud800`) included, so no entry an attacker can type escapes the rules. What happens
//! to the value under a matching key:
//!
//! - **hash**: replaced by the lowercase hex HMAC-SHA256 of the value under the operator's key, as a JSON
//!   string. A string hashes its unescaped content as WTF-8 (its UTF-8, a lone surrogate encoded like any
//!   other code point), so `"a\u0040b"` and `"a@b"` hash alike; `null` stays
//!   `null`; any other value (number, boolean, object, array) hashes its JSON text with the whitespace between
//!   tokens removed, exactly as written otherwise (`1.0` and `1` differ; escapes inside nested strings are not
//!   normalised). The same value under the same key always gives the same hash, so joins across events and
//!   fields still work; another key gives unrelated hashes.
//! - **mask**: replaced by the string [`MASK`]; `null` stays `null`.
//! - **drop**: the key and its value are removed, with the comma that separated them from a neighbour.
//!
//! With **truncate_ip**, every IP address in every string of the entry, keys included, is replaced by its
//! network address where it stands: IPv4 to /24 (`203.0.113.7` → `203.0.113.0`, only the last group
//! rewritten), IPv6 to /48 in canonical form, with the IPv4 address an IPv6 one carries kept to its /24 at
//! most (see `truncate_run` for what counts as an address, and `truncate_v6`). Lists, ports, brackets, zones
//! and addresses inside free text are covered alike. It runs over what the other rules leave, so a hashed,
//! masked or dropped value is not looked at again.
//!
//! It is shaped for speed, since it runs on every entry in front of a transform that takes 2 to 3 µs. The
//! entry is never parsed, not even tokenized: every key is followed by a `:`, so a vectorised search for
//! colons finds every key, and a short look back from each colon tells a key from a colon inside a string
//! (see `key_before`). Most keys are turned away by their last byte alone. In a text without backslashes
//! (nearly every entry), every key a rule matches is spelled as written, so its last two bytes and closing
//! quote are one of a few short endings (`il"` for `email`, `ip"` for the IP keys): a search for each ending
//! finds the few colons worth that look, and the dozens of others are never visited. Only keys are compared
//! with the rules, only values under matching keys are read, checked and rewritten, and every other byte is
//! copied verbatim (through the address search, with `truncate_ip`). When no listed key can occur in the text
//! at all, a substring search proves it first. The
//! keyed HMAC state is computed once from the key and cloned per value, and a value that stands twice in one
//! entry is hashed once. An entry without any rewrite is returned borrowed, without a copy. The `privacy`
//! benchmark measures what all this adds to the transform.
//!
//! The text is treated as hostile: nothing recurses, every backward look stops at the previous key's quote,
//! and every forward scan starts after the previous one, so the cost is linear in the input whatever it holds,
//! and nothing panics. For valid JSON the result is valid JSON with exactly the rules applied (a test checks
//! this against a rewrite of the parsed tree), and valid JSON is never refused. The JSON syntax is not checked
//! outside the values this module rewrites: those are checked in full (a malformed one is refused with
//! [`PrivacyError::Malformed`]), the rest is left for the JSON reader after it, which every caller has anyway;
//! only with `truncate_ip` and a backslash in the text is every string checked, since an invalid one could
//! hide an address.
//!
//! The key is taken as a [`SecretSlice`], used once to build the HMAC state and then dropped (secrecy zeroes
//! it). It never appears in a message, a `Debug` output or [`Privacy::describe`].

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};

use crate::json_text;
use memchr::memmem::Finder;
use secrecy::{ExposeSecret, SecretSlice};
use serde::de::IgnoredAny;
use sha2::Sha256;

/// What a masked value becomes.
pub const MASK: &str = "****";

/// The environment variable that may hold the hash key when no key file is configured.
pub const KEY_ENV: &str = "AUTH0_RUDDERSTACK_HASH_KEY";

/// The shortest hash key accepted, in bytes: 128 bits, below which guessing the key becomes thinkable.
pub const MIN_KEY_BYTES: usize = 16;

/// The privacy rules as an operator writes them: field names per action, and whether to truncate IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Fields whose values are replaced by their keyed hash.
    pub hash: Vec<String>,
    /// Fields whose values are replaced by [`MASK`].
    pub mask: Vec<String>,
    /// Fields removed with their values.
    pub drop: Vec<String>,
    /// Whether every IP address in the entry is truncated (IPv4 to /24, IPv6 to /48).
    pub truncate_ip: bool,
}

/// A privacy rule set that cannot be used, or an entry it cannot be applied to.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// `hash` lists fields but no key was given.
    #[error("privacy.hash lists fields but no hash key is configured (hash_key_file or {KEY_ENV})")]
    MissingKey,
    /// The key is shorter than [`MIN_KEY_BYTES`].
    #[error("the hash key is too short: at least {MIN_KEY_BYTES} bytes are required")]
    ShortKey,
    /// The key file could not be read.
    #[error("cannot read the hash key file {}", .path.display())]
    KeyFile {
        /// The file named in the configuration.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: crate::files::ReadError,
    },
    /// A list holds an empty field name.
    #[error("privacy.{list} holds an empty field name")]
    EmptyName {
        /// `hash`, `mask` or `drop`.
        list: &'static str,
    },
    /// A field name holds a `,` or a `:`. No Auth0 key does, and excluding them is what lets keys be found
    /// without tokenizing the entry (see `key_before`).
    #[error("field {name:?} in privacy.{list} holds a ',' or ':', which no log field name does")]
    UnsupportedName {
        /// The field name.
        name: String,
        /// `hash`, `mask` or `drop`.
        list: &'static str,
    },
    /// A field name appears in two lists, so which rule applies would be a guess.
    #[error("field {name:?} is listed in both privacy.{first} and privacy.{second}")]
    NameInTwoLists {
        /// The field name.
        name: String,
        /// The first list it appears in.
        first: &'static str,
        /// The second list it appears in.
        second: &'static str,
    },
    /// The entry is not valid JSON where this module had to read it.
    #[error("not valid JSON at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the problem in the entry.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl PrivacyError {
    /// Configuration errors never go away by themselves, and an entry's errors are properties of the entry.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Read the hash key: from `file` when one is configured, else from `env` (the value of [`KEY_ENV`], passed in
/// so that the caller decides where it comes from). One final line break (`\n` or `\r\n`) is not part of the
/// key, since editors and `echo` add one. `Ok(None)` when neither is given. The file must be a regular file of
/// at most 64 KiB (see [`crate::files`]).
pub fn load_key(file: Option<&Path>, env: Option<OsString>) -> Result<Option<SecretSlice<u8>>, PrivacyError> {
    let mut bytes = match (file, env) {
        (Some(path), _) => crate::files::read_regular(path, crate::config::MAX_SECRET_FILE_BYTES)
            .map_err(|source| PrivacyError::KeyFile { path: path.to_owned(), source })?,
        (None, Some(value)) => value.into_encoded_bytes(),
        (None, None) => return Ok(None),
    };
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(Some(SecretSlice::from(bytes)))
}

/// What happens to the value under a matching key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Hash,
    Mask,
    Drop,
}

/// Compiled privacy rules, ready to apply to entries. Cheap to share across threads.
pub struct Privacy {
    /// Every listed field name with its rule, in list order (hash, mask, drop).
    names: Vec<(Box<str>, Rule)>,
    /// Bit `n` is set when some listed name is `n` bytes long (`n < 64`): most keys are ruled out by this.
    lengths: u64,
    /// Whether some listed name is 64 bytes or longer.
    long_names: bool,
    truncate_ip: bool,
    /// Byte `b` is set when some rule's key can end in `b` (an `ip` key ends in `p`): a quick test that turns
    /// most keys away at the first byte looked at.
    last_bytes: [bool; 256],
    /// The last two bytes some rule's key can end in (a quote and the byte for a one-byte name): the second
    /// quick test, which turns away the many keys that merely share a last byte with a listed name.
    last_pairs: Vec<[u8; 2]>,
    /// The HMAC state after absorbing the key; `None` when nothing is hashed.
    mac: Option<Hmac<Sha256>>,
    /// Substrings at least one of which every entry with a matching key contains.
    needles: Vec<Finder<'static>>,
    /// Each of `last_pairs` followed by a quote: in a text without backslashes, every key some rule matches
    /// ends with one of these, so searching for them finds those keys without visiting every colon.
    endings: Vec<Ending>,
    /// The rules as given, for `describe`.
    rules: Rules,
}

impl fmt::Debug for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the HMAC state: it is as good as the key.
        f.debug_struct("Privacy").field("rules", &self.rules).field("key", &"[REDACTED]").finish()
    }
}

impl Privacy {
    /// Compile `rules`. `key` is required when `rules.hash` is not empty, must then be at least
    /// [`MIN_KEY_BYTES`] long, and is ignored otherwise. Field names must be non-empty, hold no `,` or `:`, and
    /// appear in one list only (repeating a name within one list is harmless).
    pub fn new(rules: &Rules, key: Option<SecretSlice<u8>>) -> Result<Privacy, PrivacyError> {
        let lists = [
            ("hash", &rules.hash, Rule::Hash),
            ("mask", &rules.mask, Rule::Mask),
            ("drop", &rules.drop, Rule::Drop),
        ];
        let mut names: Vec<(Box<str>, Rule)> = Vec::new();
        let mut origin: Vec<&'static str> = Vec::new();
        for (list, fields, rule) in lists {
            for name in fields.iter() {
                if name.is_empty() {
                    return Err(PrivacyError::EmptyName { list });
                }
                if name.contains([',', ':']) {
                    return Err(PrivacyError::UnsupportedName { name: name.clone(), list });
                }
                match names.iter().position(|(n, _)| **n == **name) {
                    Some(i) if origin[i] == list => {}
                    Some(i) => {
                        return Err(PrivacyError::NameInTwoLists {
                            name: name.clone(),
                            first: origin[i],
                            second: list,
                        });
                    }
                    None => {
                        names.push((name.as_str().into(), rule));
                        origin.push(list);
                    }
                }
            }
        }
        let mac = if rules.hash.is_empty() {
            None
        } else {
            let key = key.ok_or(PrivacyError::MissingKey)?;
            let bytes = key.expose_secret();
            if bytes.len() < MIN_KEY_BYTES {
                return Err(PrivacyError::ShortKey);
            }
            // HMAC takes a key of any length; this cannot fail.
            Some(Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| PrivacyError::ShortKey)?)
        };
        let mut lengths = 0u64;
        let mut long_names = false;
        for (name, _) in &names {
            match name.len() {
                n @ 0..64 => lengths |= 1 << n,
                _ => long_names = true,
            }
        }
        let mut last_bytes = [false; 256];
        for (name, _) in &names {
            if let Some(&b) = name.as_bytes().last() {
                last_bytes[usize::from(b)] = true;
            }
        }
        let mut last_pairs: Vec<[u8; 2]> = names
            .iter()
            .map(|(name, _)| match name.as_bytes() {
                [.., a, b] => [*a, *b],
                [b] => [b'"', *b],
                [] => [0, 0],
            })
            .collect();
        last_pairs.sort_unstable();
        last_pairs.dedup();
        let endings = last_pairs.iter().map(|&[a, b]| Ending::new([a, b, b'"'])).collect();
        Ok(Privacy {
            endings,
            last_bytes,
            last_pairs,
            needles: needles(&names),
            names,
            lengths,
            long_names,
            truncate_ip: rules.truncate_ip,
            mac,
            rules: rules.clone(),
        })
    }

    /// Whether these rules change nothing, so `apply` can be skipped altogether.
    pub fn is_noop(&self) -> bool {
        self.names.is_empty() && !self.truncate_ip
    }

    /// Apply the rules to one entry's JSON text (any JSON value: an entry, a `{log_id, data}` wrapper, a list).
    /// The text comes back borrowed when nothing changed. Valid JSON in gives valid JSON out. Of invalid JSON,
    /// only the values to rewrite are checked (see the module notes): the caller parses the result anyway.
    pub fn apply<'a>(&self, raw_entry_json: &'a str) -> Result<Cow<'a, str>, PrivacyError> {
        let mut out = String::new();
        Ok(if self.apply_into(raw_entry_json, &mut out)? {
            Cow::Owned(out)
        } else {
            Cow::Borrowed(raw_entry_json)
        })
    }

    /// [`Privacy::apply`] into a buffer the caller keeps (a worker applies the rules to entry after entry, and
    /// a fresh allocation for each would cost as much as a fair part of the work). `out` is cleared and holds
    /// the rewritten text when this returns `true`; `false` means nothing changed and `out` is not used.
    pub fn apply_into(&self, raw_entry_json: &str, out: &mut String) -> Result<bool, PrivacyError> {
        if self.is_noop() {
            return Ok(false);
        }
        // Without a single backslash, every quote is a real one and every key is spelled as it is named, so
        // keys can be compared where they stand, and looked for as substrings. Most entries have none.
        let literal = memchr::memchr(b'\\', raw_entry_json.as_bytes()).is_none();
        let keys = !self.names.is_empty() && (!literal || self.may_match(raw_entry_json));
        if !keys && !self.truncate_ip {
            return Ok(false);
        }
        out.clear();
        let mut scan = Scan::new(self, raw_entry_json, out, literal);
        if keys {
            scan.run(literal)?;
        }
        scan.finish()
    }

    /// The active rules in one line, for status output and logs; never the key. `off` when nothing applies.
    pub fn describe(&self) -> String {
        if self.is_noop() {
            return "off".to_owned();
        }
        let mut parts = Vec::new();
        for (list, names) in
            [("hash", &self.rules.hash), ("mask", &self.rules.mask), ("drop", &self.rules.drop)]
        {
            if !names.is_empty() {
                parts.push(format!("{list} [{}]", names.join(", ")));
            }
        }
        if self.truncate_ip {
            parts.push("truncate_ip".to_owned());
        }
        parts.join("; ")
    }

    /// Whether `text`, which has no backslash, may hold a key some rule matches: false only when none of the
    /// needles occurs.
    fn may_match(&self, text: &str) -> bool {
        // Past a couple of needles, searching for each costs more than the scan it could save.
        self.needles.len() > MAX_NEEDLES || self.needles.iter().any(|n| n.find(text.as_bytes()).is_some())
    }

    /// The rule for an object key, unescaped to WTF-8 (see `json_text`), if any.
    fn rule_for(&self, key: &[u8]) -> Option<Rule> {
        let len = key.len();
        let maybe_listed = if len < 64 { self.lengths & (1 << len) != 0 } else { self.long_names };
        if !maybe_listed {
            return None;
        }
        self.names.iter().find(|(name, _)| name.as_bytes() == key).map(|(_, rule)| *rule)
    }

    /// `key_before` for a text without backslashes, together with the key's rule: the names are compared with
    /// the bytes before the colon directly. The reasoning of `key_before` holds with every quote unescaped.
    #[inline(never)]
    fn literal_key_before(&self, bytes: &[u8], colon: usize) -> Option<(Key, Rule)> {
        let mut close = colon;
        while close > 0 && is_ws(bytes[close - 1]) {
            close -= 1;
        }
        close = close.checked_sub(1)?;
        if bytes[close] != b'"' {
            return None;
        }
        let before = &bytes[..close];
        let named = self.names.iter().find_map(|(name, rule)| {
            let open = close.checked_sub(name.len() + 1)?;
            // The quote first: it rules out almost every name without a comparison.
            (bytes[open] == b'"' && before.ends_with(name.as_bytes())).then_some((open, *rule))
        });
        let (open, rule) = named?;
        let separator = separator_before(bytes, open)?;
        Some((Key { open, close, separator, escaped: false }, rule))
    }

    /// HMAC-SHA256 under the key of `parts` fed in order, as lowercase hex in a JSON string.
    fn hash_into(&self, out: &mut String, feed: impl FnOnce(&mut Hmac<Sha256>)) {
        let Some(mac) = &self.mac else {
            // `new` never builds a hash rule without a key; mask rather than leak if that ever changes.
            out.push('"');
            out.push_str(MASK);
            out.push('"');
            return;
        };
        let mut mac = mac.clone();
        feed(&mut mac);
        let tag = mac.finalize().into_bytes();
        let mut text = [b'"'; 66];
        for (pair, byte) in text[1..65].chunks_exact_mut(2).zip(tag) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        // Hex digits and quotes: always UTF-8.
        out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    }
}

/// The two lowercase hex digits of every byte: one lookup per byte of a tag instead of one per digit.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// The most needles `may_match` searches for before giving up on the fast path.
const MAX_NEEDLES: usize = 2;
/// The most key endings searched for one by one; past that, visiting every colon costs less.
const MAX_ENDINGS: usize = 4;
/// How many hashed values `Scan::hash_string` remembers per text: an entry has two or three.
const HASHED_KEPT: usize = 4;
/// The most candidate colons `run_by_endings` keeps for one text before it visits every colon instead. The
/// fixtures have at most 15; the array is zeroed for every entry, so it is kept no larger than needed.
const MAX_CANDIDATES: usize = 32;

/// The substrings that every entry without backslashes and with a matching key contains: each name in
/// quotes. (A key can be spelled another way only with a backslash.)
fn needles(names: &[(Box<str>, Rule)]) -> Vec<Finder<'static>> {
    names.iter().map(|(n, _)| Finder::new(format!("\"{n}\"").as_bytes()).into_owned()).collect()
}

/// One key ending searched for by `Scan::run_by_endings`: three bytes, the last a quote.
///
/// Where the CPU has AVX2, memchr's pair search is called directly. An entry is about a kilobyte, and on a
/// text that short, choosing and setting up `memmem`'s general search adds about a third to the search itself
/// (for the three endings of a fixture entry in cache: 176 ns through `memmem`, 137 ns directly).
struct Ending {
    needle: [u8; 3],
    /// The general search: without AVX2, and for the last bytes, too few for the pair search.
    finder: Finder<'static>,
    #[cfg(target_arch = "x86_64")]
    pairs: Option<memchr::arch::x86_64::avx2::packedpair::Finder>,
}

impl Ending {
    fn new(needle: [u8; 3]) -> Self {
        Ending {
            needle,
            finder: Finder::new(&needle).into_owned(),
            #[cfg(target_arch = "x86_64")]
            pairs: memchr::arch::x86_64::avx2::packedpair::Finder::new(&needle),
        }
    }

    /// Call `f` with the offset of every occurrence in `bytes`, in order, while it returns `true`; whether
    /// every occurrence was visited.
    fn find_each(&self, bytes: &[u8], mut f: impl FnMut(usize) -> bool) -> bool {
        let mut at = 0;
        #[cfg(target_arch = "x86_64")]
        if let Some(pairs) = &self.pairs {
            // `find` requires at least `min_haystack_len` bytes; the rest is left to the general search.
            while bytes.len() - at >= pairs.min_haystack_len() {
                match pairs.find(&bytes[at..], &self.needle) {
                    Some(i) => {
                        if !f(at + i) {
                            return false;
                        }
                        at += i + 1;
                    }
                    None => return true,
                }
            }
        }
        self.finder.find_iter(&bytes[at..]).all(|i| f(at + i))
    }
}

/// A key found in the text.
struct Key {
    /// Offset of its opening quote.
    open: usize,
    /// Offset of its closing quote.
    close: usize,
    /// Offset of the `{` or `,` before it.
    separator: usize,
    /// Whether it holds a backslash, so that it must be unescaped before it is compared.
    escaped: bool,
}

/// One pass of `Privacy::apply` over one text.
struct Scan<'p, 'a, 'o> {
    privacy: &'p Privacy,
    text: &'a str,
    bytes: &'a [u8],
    /// The rewritten text, written from the first rewrite on.
    out: &'o mut String,
    /// Whether anything was rewritten yet.
    rewritten: bool,
    /// Input before this offset is already in `out` (or cut).
    copied: usize,
    /// String values hashed so far in this text, each with where its hash stands in `out`. One entry often
    /// holds a value under two listed keys (a database user's `name` is their `email`, a response repeats
    /// its request), and comparing a few short strings costs far less than an HMAC. Only this text's values
    /// are kept, and only while it is rewritten.
    hashed: [(&'a str, Range<usize>); HASHED_KEPT],
    /// How many of `hashed` are in use.
    hashed_len: usize,
    /// Whether the text has no backslash.
    literal: bool,
}

impl<'p, 'a, 'o> Scan<'p, 'a, 'o> {
    fn new(privacy: &'p Privacy, text: &'a str, out: &'o mut String, literal: bool) -> Self {
        Scan {
            privacy,
            text,
            bytes: text.as_bytes(),
            out,
            rewritten: false,
            copied: 0,
            hashed: Default::default(),
            hashed_len: 0,
            literal,
        }
    }

    /// Finish the rewritten text; whether there was anything to rewrite. With `truncate_ip`, the rest of the
    /// text is copied through the address search, which may be the first to rewrite anything.
    fn finish(mut self) -> Result<bool, PrivacyError> {
        let end = self.text.len();
        self.copy_to(end)?;
        Ok(self.rewritten)
    }

    /// Start the rewritten text, once.
    fn start_rewriting(&mut self) {
        if !self.rewritten {
            self.out.reserve(self.text.len() + 128);
            self.rewritten = true;
        }
    }

    /// Copy the input from `copied` up to `to` (which never lies inside a string or an address) into the
    /// rewritten text, with every IP address in it truncated when `truncate_ip` is on. Nothing is copied while
    /// nothing was rewritten yet: the copy starts at the first rewrite, with everything before it.
    fn copy_to(&mut self, to: usize) -> Result<(), PrivacyError> {
        let from = self.copied;
        if to <= from {
            return Ok(());
        }
        if self.privacy.truncate_ip {
            let text = self.text;
            let mut at = from;
            let mut started = self.rewritten;
            let out = &mut *self.out;
            let mut emit = |start: usize, end: usize, replacement: &str| {
                if !started {
                    out.reserve(text.len() + 128);
                    started = true;
                }
                out.push_str(&text[at..start]);
                out.push_str(replacement);
                at = end;
            };
            if self.literal {
                find_addresses(self.bytes, from, to, &mut emit);
            } else {
                find_addresses_in_strings(text, from, to, &mut emit)?;
            }
            self.rewritten = started;
            if !self.rewritten {
                return Ok(());
            }
            self.out.push_str(&text[at..to]);
        } else if self.rewritten {
            self.out.push_str(&self.text[from..to]);
        }
        self.copied = to;
        Ok(())
    }

    /// Replace `start..end` of the input by what `write` appends.
    fn rewrite(
        &mut self,
        start: usize,
        end: usize,
        write: impl FnOnce(&mut String),
    ) -> Result<(), PrivacyError> {
        // Rewrites come in input order; the clamps only guard that invariant against malformed input.
        let start = start.max(self.copied);
        let end = end.max(start);
        self.start_rewriting();
        self.copy_to(start)?;
        write(self.out);
        self.copied = end;
        Ok(())
    }

    /// Visit every key, rewriting as the rules say.
    ///
    /// Every key is followed by a `:`, and every `:` outside a string follows a key, so the colons are where
    /// to look: one fast pass over the bytes finds them all. A colon inside a string is told apart by what precedes
    /// it (see `key_before`). The values of keys without a rule are never even read.
    /// With `literal`, the text has no backslash (see `Privacy::apply`).
    fn run(&mut self, literal: bool) -> Result<(), PrivacyError> {
        if literal && self.privacy.endings.len() <= MAX_ENDINGS {
            self.run_by_endings()
        } else {
            self.run_every_colon(literal)
        }
    }

    /// `run` by visiting every colon.
    fn run_every_colon(&mut self, literal: bool) -> Result<(), PrivacyError> {
        let bytes = self.bytes;
        // Colons before this offset are inside a value already rewritten.
        let mut resume = 0;
        // The per-colon step returns a one-byte `Err(())` to stop, with the error kept here: a `PrivacyError`
        // passed back through every colon would cost more than the step itself.
        let mut failed = None;
        let stopped = for_each_colon(bytes, |colon| {
            if colon < resume {
                return Ok(());
            }
            // The common cases, kept small: a colon inside a string value (a time, a URL), or a key ending in
            // a byte no rule's key ends in.
            if literal && colon >= 3 {
                let before = bytes[colon - 1];
                if before == b'"' {
                    let last = bytes[colon - 2];
                    if !self.privacy.last_bytes[usize::from(last)]
                        || !self.privacy.last_pairs.contains(&[bytes[colon - 3], last])
                    {
                        return Ok(());
                    }
                } else if !is_ws(before) {
                    return Ok(());
                }
            }
            match self.key_at(literal, colon) {
                Ok(end) => {
                    resume = end;
                    Ok(())
                }
                Err(e) => {
                    failed = Some(e);
                    Err(())
                }
            }
        });
        match (stopped, failed) {
            (Err(()), Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// `run` for a text without backslashes: the colons worth a look are those right after a key ending as a
    /// listed key can end (`endings`), found by a vectorised search for each ending, which skips the many
    /// colons no rule can concern. They are visited in order, as `run` visits all of them.
    fn run_by_endings(&mut self) -> Result<(), PrivacyError> {
        let bytes = self.bytes;
        let mut colons = [0usize; MAX_CANDIDATES];
        let mut found = 0;
        for ending in &self.privacy.endings {
            let complete = ending.find_each(bytes, |at| {
                let colon = skip_ws(bytes, at + 3);
                if bytes.get(colon) != Some(&b':') {
                    return true;
                }
                let Some(slot) = colons.get_mut(found) else {
                    return false;
                };
                *slot = colon;
                found += 1;
                true
            });
            if !complete {
                // An entry with this many candidates is rare: visit every colon instead.
                return self.run_every_colon(true);
            }
        }
        let colons = &mut colons[..found];
        colons.sort_unstable();
        let mut resume = 0;
        for &colon in colons.iter() {
            if colon >= resume {
                resume = self.key_at(true, colon)?;
            }
        }
        Ok(())
    }

    /// Find the key before `colon` and apply its rule, if any; returns where the search for keys goes on.
    #[inline(never)]
    fn key_at(&mut self, literal: bool, colon: usize) -> Result<usize, PrivacyError> {
        let bytes = self.bytes;
        let found = if literal {
            self.privacy.literal_key_before(bytes, colon)
        } else {
            match key_before(bytes, colon) {
                Some(key) => self.rule_for(&key)?.map(|rule| (key, rule)),
                None => None,
            }
        };
        match found {
            Some((key, rule)) => self.apply_rule(rule, &key, skip_ws(bytes, colon + 1)),
            None => Ok(colon),
        }
    }

    /// The rule for a key, unescaping it when needed.
    fn rule_for(&self, key: &Key) -> Result<Option<Rule>, PrivacyError> {
        let quoted = &self.text[key.open..=key.close];
        if !key.escaped {
            let name = &quoted[1..quoted.len() - 1];
            let rule = self.privacy.rule_for(name.as_bytes());
            // A raw control character makes the key invalid JSON; rewriting the member would hide that.
            if rule.is_some() && name.bytes().any(|b| b < 0x20) {
                return Err(PrivacyError::Malformed {
                    offset: key.open,
                    reason: "control character in a key",
                });
            }
            return Ok(rule);
        }
        // As JavaScript reads it: a key holding a lone surrogate is read too (and matches no listed name).
        let name = json_text::unescape(&quoted[1..quoted.len() - 1])
            .map_err(|_| PrivacyError::Malformed { offset: key.open, reason: "invalid key" })?;
        Ok(self.privacy.rule_for(&name))
    }

    /// Apply `rule` to the member of `key`, whose value starts at `start`. Returns where the search for keys
    /// goes on: past the value, which was rewritten.
    #[inline(never)]
    fn apply_rule(&mut self, rule: Rule, key: &Key, start: usize) -> Result<usize, PrivacyError> {
        let bytes = self.bytes;
        let malformed = |reason| PrivacyError::Malformed { offset: start, reason };
        let Some(&first) = bytes.get(start) else {
            return Err(malformed("a key without a value"));
        };
        // Hash, mask or drop: the whole value goes, so check all of it.
        let (end, value) = match first {
            b'"' => {
                let (end, escaped) = string_end(bytes, start).ok_or(malformed("unterminated string"))?;
                (end, string_content(self.text, start, end, escaped)?)
            }
            b'{' | b'[' => {
                let end = container_end(bytes, start).ok_or(malformed("unterminated object or array"))?;
                let text = &self.text[start..end];
                serde_json::from_str::<IgnoredAny>(text).map_err(|_| malformed("invalid value"))?;
                (end, Value::Other(text))
            }
            _ => {
                let end = scalar_end(bytes, start);
                let text = &self.text[start..end];
                serde_json::from_str::<IgnoredAny>(text).map_err(|_| malformed("invalid value"))?;
                (end, if text == "null" { Value::Null } else { Value::Other(text) })
            }
        };
        match (rule, value) {
            (Rule::Hash | Rule::Mask, Value::Null) => {}
            (Rule::Hash, Value::Plain(s)) => self.hash_string(s, start, end)?,
            (Rule::Hash, value) => {
                let privacy = self.privacy;
                self.rewrite(start, end, |out| match value {
                    // WTF-8: the UTF-8 of the string, lone surrogates encoded like other code points.
                    Value::Unescaped(s) => privacy.hash_into(out, |mac| mac.update(&s)),
                    Value::Other(text) => privacy.hash_into(out, |mac| feed_compact(mac, text)),
                    Value::Null | Value::Plain(_) => {}
                })?;
            }
            (Rule::Mask, _) => self.rewrite(start, end, |out| {
                out.push('"');
                out.push_str(MASK);
                out.push('"');
            })?,
            (Rule::Drop, _) => self.drop_member(key, end)?,
        }
        Ok(end)
    }

    /// Replace the string at `start..end`, whose content `s` has no escapes, by its hash: copied from where
    /// the same content was hashed before in this text, if it was.
    fn hash_string(&mut self, s: &'a str, start: usize, end: usize) -> Result<(), PrivacyError> {
        let hashed = &self.hashed[..self.hashed_len];
        if let Some((_, done)) = hashed.iter().find(|(earlier, _)| *earlier == s) {
            let done = done.clone();
            return self.rewrite(start, end, |out| out.extend_from_within(done));
        }
        let privacy = self.privacy;
        let mut at = 0..0;
        self.rewrite(start, end, |out| {
            at.start = out.len();
            privacy.hash_into(out, |mac| mac.update(s.as_bytes()));
            at.end = out.len();
        })?;
        if let Some(slot) = self.hashed.get_mut(self.hashed_len) {
            *slot = (s, at);
            self.hashed_len += 1;
        }
        Ok(())
    }

    /// Cut the member of `key`, whose value ends at `end`, with one comma next to it.
    fn drop_member(&mut self, key: &Key, end: usize) -> Result<(), PrivacyError> {
        if self.bytes[key.separator] == b',' && key.separator >= self.copied {
            // A member is kept before this one: its comma goes with the dropped member.
            return self.rewrite(key.separator, end, |_| {});
        }
        // The first member of its object, or the first left after earlier cuts: the comma after it goes.
        let after = skip_ws(self.bytes, end);
        let end = if self.bytes.get(after) == Some(&b',') { after + 1 } else { end };
        self.rewrite(key.open, end, |_| {})
    }
}

/// Call `f` with the offset of every `:` in `bytes`, in order, until it fails. memchr's vectorised search
/// reads a whole vector register of bytes at a time.
fn for_each_colon<E>(bytes: &[u8], mut f: impl FnMut(usize) -> Result<(), E>) -> Result<(), E> {
    for colon in memchr::memchr_iter(b':', bytes) {
        f(colon)?;
    }
    Ok(())
}

/// A value under a hash, mask or drop rule, checked.
enum Value<'a> {
    Null,
    /// A string without escapes: its content as written.
    Plain(&'a str),
    /// A string with escapes: its content unescaped to WTF-8 (see `json_text`), lone surrogates included.
    Unescaped(Vec<u8>),
    /// Any other value's text.
    Other(&'a str),
}

/// The content of the string at `start..end`; an error when it is not a valid JSON string.
fn string_content(text: &str, start: usize, end: usize, escaped: bool) -> Result<Value<'_>, PrivacyError> {
    let inner = &text[start + 1..end - 1];
    if escaped {
        return json_text::unescape(inner).map(|c| Value::Unescaped(c.into_owned())).map_err(|e| {
            let at = match e {
                json_text::InvalidString::ControlCharacter { at }
                | json_text::InvalidString::BadEscape { at } => at,
            };
            PrivacyError::Malformed { offset: start + 1 + at, reason: "invalid string" }
        });
    }
    // Nearly every value is clean: a check of all bytes without an early exit is vectorised, and the
    // position is looked for only when there is something to report.
    if !inner.bytes().fold(false, |control, b| control | (b < 0x20)) {
        return Ok(Value::Plain(inner));
    }
    let i = inner.bytes().position(|b| b < 0x20).unwrap_or_default();
    Err(PrivacyError::Malformed { offset: start + 1 + i, reason: "control character in a string" })
}

/// Whether `b` is JSON whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// The first offset from `at` on that is not whitespace (or the end).
fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&b| is_ws(b)) {
        at += 1;
    }
    at
}

/// Whether the byte at `at` is escaped: preceded by an odd number of backslashes.
fn escaped_at(bytes: &[u8], at: usize) -> bool {
    bytes[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The key a colon follows, if it follows one.
///
/// In valid JSON, a colon follows a key when the last non-whitespace byte before it is an unescaped quote
/// (the key's closing quote), the unescaped quote before that opens the key, and a `{` or `,` precedes it. A
/// colon inside a string can look like that only when the string starts with it (`":x"`): the "key" is then
/// the text between the previous string and this one, outside any string, which always holds a `,` or a `:`.
/// No field name may hold either, so such a "key" never matches a rule.
///
/// The backward walks are bounded: each stops at the nearest unescaped quote, which the previous colon's
/// walk did not pass, so all of them together read each byte a bounded number of times.
fn key_before(bytes: &[u8], colon: usize) -> Option<Key> {
    let mut i = colon;
    while i > 0 && is_ws(bytes[i - 1]) {
        i -= 1;
    }
    let close = i.checked_sub(1)?;
    if bytes[close] != b'"' || escaped_at(bytes, close) {
        return None;
    }
    let mut open = close;
    let mut escaped = false;
    loop {
        open = open.checked_sub(1)?;
        match bytes[open] {
            b'"' if !escaped_at(bytes, open) => break,
            b'\\' | b'"' => escaped = true,
            _ => {}
        }
    }
    let separator = separator_before(bytes, open)?;
    Some(Key { open, close, separator, escaped })
}

/// The offset of the `{` or `,` before a key opening at `open`, past whitespace; `None` when something else
/// stands there, so that it is no key.
fn separator_before(bytes: &[u8], open: usize) -> Option<usize> {
    let mut at = open;
    loop {
        at = at.checked_sub(1)?;
        match bytes[at] {
            b'{' | b',' => return Some(at),
            b if is_ws(b) => {}
            _ => return None,
        }
    }
}

/// The end (just past the closing quote) of the string whose opening quote is at `start`, and whether it has
/// escapes; `None` when it does not end.
fn string_end(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start + 1;
    let mut escaped = false;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i] == b'"' {
            return Some((i + 1, escaped));
        }
        // A backslash: the next byte is escaped, whatever it is (a `\u` escape's digits hold no quote).
        escaped = true;
        i += 2;
    }
}

/// The end of the scalar (number or literal) starting at `start`: the first byte that cannot be part of one.
fn scalar_end(bytes: &[u8], start: usize) -> usize {
    let rest = bytes.get(start..).unwrap_or_default();
    let len = rest
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.'))
        .unwrap_or(rest.len());
    start + len
}

/// The end (just past the closing bracket) of the object or array opening at `start`; `None` when it does
/// not end. Only brackets outside strings are counted; the caller checks the value's syntax.
fn container_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'"' => {
                i = string_end(bytes, i)?.0;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Feed the JSON text `value` (known to be valid) to `mac` without the whitespace between its tokens.
fn feed_compact(mac: &mut Hmac<Sha256>, value: &str) {
    let bytes = value.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'"' {
            i = string_end(bytes, i).map_or(bytes.len(), |(end, _)| end);
        } else if is_ws(c) {
            mac.update(&bytes[run_start..i]);
            i += 1;
            run_start = i;
        } else {
            i += 1;
        }
    }
    mac.update(&bytes[run_start..]);
}

/// Room for the text of a truncated address (the longest IPv6 text form is 45 bytes).
const IP_TEXT_MAX: usize = 48;

/// Whether `b` can be part of an address as written: a hex digit, `.` or `:`.
fn is_address_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'.' || b == b':'
}

/// Whether `b` continues a name: an IPv6-looking run glued to one is part of a name (`std::vector` holds
/// `d::ec`, `Foo::Bar` holds `::Ba`), not an address.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Find every IP address in `bytes[from..to]` and call `emit(start, end, replacement)`, in order, for each
/// whose truncated form differs from it (see `truncate_run` for what counts as an address).
///
/// Every address holds a `.` between two digits or a `:` next to a hex digit or another `:`, so a
/// vectorised search for both finds every candidate, and one or two byte comparisons turn away the many that
/// are neither (a key's colon follows a quote). A candidate is read as the whole run of hex digits, dots and
/// colons around it; runs never hold a quote or a backslash, so in a text without backslashes one lies within
/// a single string (or is a number, which is never an address) and is rewritten where it stands.
fn find_addresses(bytes: &[u8], from: usize, to: usize, emit: &mut dyn FnMut(usize, usize, &str)) {
    let mut next = from;
    for hit in memchr::memchr2_iter(b'.', b':', &bytes[from..to]) {
        let hit = from + hit;
        if hit < next {
            continue;
        }
        let before = if hit > from { bytes[hit - 1] } else { 0 };
        let after = if hit + 1 < to { bytes[hit + 1] } else { 0 };
        let candidate = if bytes[hit] == b'.' {
            before.is_ascii_digit() && after.is_ascii_digit()
        } else {
            (before.is_ascii_hexdigit() || before == b':') && (after.is_ascii_hexdigit() || after == b':')
        };
        if !candidate {
            continue;
        }
        let mut start = hit;
        while start > from && is_address_byte(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = hit + 1;
        while end < to && is_address_byte(bytes[end]) {
            end += 1;
        }
        next = end;
        truncate_run(bytes, from, to, start, end, emit);
    }
}

/// Truncate the addresses in the run `bytes[start..end]` of hex digits, dots and colons (inside
/// `bytes[from..to]`).
///
/// - **IPv6**: the run, less one leading `:` (as in `from:2001:db8::1`) and a trailing `.` or `:` (the end of
///   a sentence), when it parses as an IPv6 address and is not glued to a letter, digit or `_` on either
///   side. Brackets, a `%zone` and a `/prefix` end the run, so `[2001:db8::1]:443`, `fe80::1%eth0` and
///   `2001:db8::/32` are found too.
/// - **IPv4**: otherwise, every chain of exactly four groups of one to three digits, each at most 255, joined
///   by single dots, whatever stands around it (`1.2.3.4:443`, `ip=1.2.3.4`, `v1.2.3.4`). Leading zeros are
///   allowed, as `inet_aton` allows them. A version number of that shape is indistinguishable from an
///   address and is truncated too; a chain of five or more groups is not an address.
fn truncate_run(
    bytes: &[u8],
    from: usize,
    to: usize,
    start: usize,
    end: usize,
    emit: &mut dyn FnMut(usize, usize, &str),
) {
    let run = &bytes[start..end];
    let colons = run.iter().filter(|&&b| b == b':').count();
    if colons >= 2 && (colons >= 6 || run.windows(2).any(|w| w == b"::")) {
        let (mut a, mut b) = (start, end);
        // `from:2001:db8::1` and `from:::1`, but not `::1` itself.
        if bytes[a] == b':' && (bytes.get(a + 1) != Some(&b':') || bytes.get(a + 2) == Some(&b':')) {
            a += 1;
        }
        while b > a && bytes[b - 1] == b'.' {
            b -= 1;
        }
        if b >= a + 2 && bytes[b - 1] == b':' && bytes[b - 2] != b':' {
            b -= 1;
        }
        let glued = (a == start && start > from && is_word_byte(bytes[start - 1]))
            || (b == end && end < to && is_word_byte(bytes[end]));
        let parsed = std::str::from_utf8(&bytes[a..b]).ok().and_then(|t| t.parse::<Ipv6Addr>().ok());
        if let Some(address) = parsed.filter(|_| !glued && b - a <= 45) {
            let mut buf = [0u8; IP_TEXT_MAX];
            if let Some(text) = format_ip(IpAddr::V6(truncate_v6(address)), &mut buf)
                && text.as_bytes() != &bytes[a..b]
            {
                emit(a, b, text);
            }
            return;
        }
    }
    let mut i = start;
    while i < end {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A chain of digit groups joined by single dots, from `i`.
        let mut groups = [(0usize, 0usize); 4];
        let mut count = 0;
        let mut octets = true;
        let mut j = i;
        loop {
            let group = j;
            while j < end && bytes[j].is_ascii_digit() {
                j += 1;
            }
            let digits = &bytes[group..j];
            let value = digits.iter().take(4).fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
            octets &= digits.len() <= 3 && value <= 255;
            if let Some(slot) = groups.get_mut(count) {
                *slot = (group, j);
            }
            count += 1;
            if j + 1 < end && bytes[j] == b'.' && bytes[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        if count == 4 && octets {
            let (last, last_end) = groups[3];
            if bytes[last..last_end].iter().any(|&d| d != b'0') {
                emit(last, last_end, "0");
            }
        }
        i = j;
    }
}

/// An IPv4 address's /24.
fn v4_net(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & 0xffff_ff00)
}

/// The network address an IPv6 address is truncated to: /48, except where the first 48 bits would hold more
/// than an IPv4 /24. An IPv4-mapped address (`::ffff:a.b.c.d`) keeps the /24 of its IPv4 address, and a 6to4
/// address (2002::/16, whose next 32 bits are an IPv4 address) is cut to /40, the 6to4 prefix and that /24.
/// Other forms that embed an IPv4 address do so in their last 64 bits (IPv4-compatible, NAT64's 64:ff9b::/96,
/// Teredo's client, ISATAP), which /48 removes; a Teredo address (2001::/32) keeps 16 bits of its server's.
fn truncate_v6(a: Ipv6Addr) -> Ipv6Addr {
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_net(v4).to_ipv6_mapped();
    }
    let bits = u128::from(a);
    let keep = if bits >> 112 == 0x2002 { 40 } else { 48 };
    Ipv6Addr::from(bits & (u128::MAX << (128 - keep)))
}

/// The canonical text of an address, written into `buf`.
fn format_ip(address: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> Option<&str> {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    std::io::Write::write_fmt(&mut cursor, format_args!("{address}")).ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    std::str::from_utf8(&buf[..len]).ok()
}

/// [`find_addresses`] over the strings of `text[from..to]`, a stretch of a text with backslashes that starts
/// outside any string. A string without escapes is searched where it stands; one with escapes is unescaped
/// first (so `1\u002e2.3.4` is found) and, if it held an address, written back whole (see
/// `json_text::push_string`). A string that is not valid JSON is refused: what it hides cannot be known.
fn find_addresses_in_strings(
    text: &str,
    from: usize,
    to: usize,
    emit: &mut dyn FnMut(usize, usize, &str),
) -> Result<(), PrivacyError> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(q) = memchr::memchr(b'"', &bytes[i..to]) {
        let open = i + q;
        let malformed = |reason| PrivacyError::Malformed { offset: open, reason };
        let (end, escaped) = string_end(bytes, open).ok_or(malformed("unterminated string"))?;
        if end > to {
            return Err(malformed("unterminated string"));
        }
        if escaped {
            let wtf8 =
                json_text::unescape(&text[open + 1..end - 1]).map_err(|_| malformed("invalid string"))?;
            let mut changed: Option<Vec<u8>> = None;
            let mut at = 0;
            find_addresses(&wtf8, 0, wtf8.len(), &mut |s, e, replacement| {
                let c = changed.get_or_insert_with(|| Vec::with_capacity(wtf8.len()));
                c.extend_from_slice(&wtf8[at..s]);
                c.extend_from_slice(replacement.as_bytes());
                at = e;
            });
            if let Some(mut c) = changed {
                c.extend_from_slice(&wtf8[at..]);
                let mut literal = String::with_capacity(c.len() + 2);
                json_text::push_string(&mut literal, &c);
                emit(open, end, &literal);
            }
        } else {
            find_addresses(bytes, open + 1, end - 1, emit);
        }
        i = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    /// RFC 4231 test case 1: this key and "Hi There" give the HMAC-SHA256 below.
    const RFC_KEY: [u8; 20] = [0x0b; 20];
    const RFC_TAG: &str = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";

    fn key(bytes: &[u8]) -> Option<SecretSlice<u8>> {
        Some(SecretSlice::from(bytes.to_vec()))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn privacy(hash: &[&str], mask: &[&str], drop: &[&str], truncate_ip: bool) -> Privacy {
        let rules = Rules { hash: names(hash), mask: names(mask), drop: names(drop), truncate_ip };
        Privacy::new(&rules, key(&RFC_KEY)).expect("valid rules")
    }

    /// The usual rule set of the tests: hash email/user_name/name, mask phone_number, drop user_agent, IPs.
    fn usual() -> Privacy {
        privacy(&["email", "user_name", "name"], &["phone_number"], &["user_agent"], true)
    }

    fn apply_unchecked(p: &Privacy, text: &str) -> String {
        p.apply(text).unwrap_or_else(|e| panic!("{text}: {e}")).into_owned()
    }

    fn apply(p: &Privacy, text: &str) -> String {
        let out = p.apply(text).unwrap_or_else(|e| panic!("{text}: {e}")).into_owned();
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{text} gave invalid {out}: {e}"));
        out
    }

    fn tag(data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&RFC_KEY).expect("key");
        mac.update(data);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The hash is the standard HMAC-SHA256 in lowercase hex (RFC 4231's first test vector).
    #[test]
    fn the_hash_is_hmac_sha256_in_lowercase_hex() {
        let p = privacy(&["email"], &[], &[], false);
        assert_eq!(apply(&p, r#"{"email":"Hi There"}"#), format!(r#"{{"email":"{RFC_TAG}"}}"#));
        assert_eq!(tag(b"Hi There"), RFC_TAG);
    }

    /// A value hashed again in the same text is copied from where it was hashed first. Every copy must be the
    /// hash of its own value, also once more values were hashed than are remembered.
    #[test]
    fn repeated_values_in_one_text_get_their_own_hash_every_time() {
        let p = privacy(&["email", "name"], &[], &[], false);
        let values = ["a", "b", "a", "c", "d", "e", "f", "b", "f", "a", "Hi There", "Hi There"];
        assert!(values.len() > 2 * HASHED_KEPT);
        let list = |value: &dyn Fn(&str) -> String| {
            let members: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!(r#"{{"{}":"{}"}}"#, ["email", "name"][i % 2], value(v)))
                .collect();
            format!("[{}]", members.join(","))
        };
        assert_eq!(apply(&p, &list(&|v| v.to_owned())), list(&|v| tag(v.as_bytes())));
    }

    /// The pair search, called directly, finds just what memmem finds: at every position, in texts too
    /// short for it, and in the last bytes of long ones, which it leaves to memmem. It stops when told to.
    #[test]
    fn an_ending_is_found_wherever_it_stands() {
        let needle = *b"il\"";
        let ending = Ending::new(needle);
        let memmem = Finder::new(&needle);
        // Texts of the needle's bytes and one other, so that it occurs often, overlaps and nearly occurs.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut checked = 0;
        for len in 0..120 {
            for _ in 0..30 {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        b"il\"x"[(state % 4) as usize]
                    })
                    .collect();
                let want: Vec<usize> = memmem.find_iter(&text).collect();
                let mut got = Vec::new();
                assert!(ending.find_each(&text, |at| {
                    got.push(at);
                    true
                }));
                assert_eq!(got, want, "in {:?}", String::from_utf8_lossy(&text));
                checked += want.len();
            }
        }
        assert!(checked > 1000, "only {checked} occurrences");
        let text = b"xil\"il\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxil\"";
        let mut seen = Vec::new();
        assert!(!ending.find_each(text, |at| {
            seen.push(at);
            seen.len() < 2
        }));
        assert_eq!(seen, [1, 4]);
    }

    /// A name matches keys at any depth, inside details and inside arrays of objects, and nothing else.
    #[test]
    fn a_name_matches_keys_at_any_depth_and_only_keys() {
        let p = usual();
        let text = r#"{"email":"a@b","details":{"auth":{"user":{"email":"a@b"}},"list":[{"email":"a@b"},["email"]]},"note":"email","x":{"y":[[{"email":"a@b"}]]}}"#;
        let h = tag(b"a@b");
        let want = text.replace(r#""email":"a@b""#, &format!(r#""email":"{h}""#));
        assert_eq!(apply(&p, text), want);
        assert!(want.contains(r#"["email"]"#) && want.contains(r#""note":"email""#));
    }

    /// Escaped keys are matched by their unescaped name; a string value hashes its unescaped content.
    #[test]
    fn escaped_keys_and_values_are_compared_and_hashed_unescaped() {
        let p = usual();
        let h = tag(b"a@b");
        assert_eq!(apply(&p, r#"{"e\u006dail":"a\u0040b"}"#), format!(r#"{{"e\u006dail":"{h}"}}"#));
        assert_eq!(apply(&p, r#"{"email":"a@b"}"#), format!(r#"{{"email":"{h}"}}"#));
        // A quote inside a string neither ends it nor starts a key.
        let text = r#"{"note":"he said \"email\":\"x\"","name":"q\"r\\"}"#;
        let want = format!(r#"{{"note":"he said \"email\":\"x\"","name":"{}"}}"#, tag(b"q\"r\\"));
        assert_eq!(apply(&p, text), want);
        // An escaped key that is not a listed name stays as written.
        assert_eq!(apply(&p, r#"{"e\u006dails":"a"}"#), r#"{"e\u006dails":"a"}"#);
    }

    /// Lone surrogates, which JSON allows and JavaScript reads, are read too: in keys (which then match no
    /// name, unless the rest of the key is escaped into one) and in values, whose hash is that of their WTF-8
    /// bytes; masking and dropping work as usual.
    #[test]
    fn lone_surrogates_are_read_as_javascript_reads_them() {
        let p = privacy(&["email", "user_name"], &["phone_number"], &["user_agent"], true);
        let text = r#"{"\ud800":"x","user_name":"\ud800victim@example.org","email":"a\udc00\u0040b","phone_number":"\udfff","user_agent":"\ud83d\ude00\ud800","ip":"1.2.3.4","e\u006dail\ud800":"kept"}"#;
        let out = apply_unchecked(&p, text);
        let want = format!(
            r#"{{"\ud800":"x","user_name":"{}","email":"{}","phone_number":"****","ip":"1.2.3.0","e\u006dail\ud800":"kept"}}"#,
            tag(b"\xED\xA0\x80victim@example.org"),
            tag(b"a\xED\xB0\x80@b"),
        );
        assert_eq!(out, want);
        // Without escapes elsewhere, and a key with a lone surrogate before a listed one.
        let out = apply_unchecked(&p, r#"{"a\ud800":{"email":"q"},"l":["\ud800",{"user_name":"r"}]}"#);
        assert_eq!(
            out,
            format!(
                r#"{{"a\ud800":{{"email":"{}"}},"l":["\ud800",{{"user_name":"{}"}}]}}"#,
                tag(b"q"),
                tag(b"r")
            )
        );
        // A paired surrogate hashes as the character it is, escaped or not.
        assert_eq!(
            apply_unchecked(&p, r#"{"email":"\ud83d\ude00"}"#),
            apply_unchecked(&p, "{\"email\":\"\u{1F600}\"}")
        );
        // A hashed object holding lone surrogates hashes its compact text.
        let out = apply_unchecked(&p, r#"{"email":{"\ud800": "x"}}"#);
        assert_eq!(out, format!(r#"{{"email":"{}"}}"#, tag(br#"{"\ud800":"x"}"#)));
    }

    /// null stays null; other non-strings hash their JSON text without whitespace between tokens.
    #[test]
    fn non_string_values_hash_their_compact_text_and_null_stays() {
        let p = usual();
        assert_eq!(apply(&p, r#"{"name":null}"#), r#"{"name":null}"#);
        assert_eq!(apply(&p, r#"{"name":12.50}"#), format!(r#"{{"name":"{}"}}"#, tag(b"12.50")));
        assert_eq!(apply(&p, r#"{"name":true}"#), format!(r#"{{"name":"{}"}}"#, tag(b"true")));
        let spaced = "{\"name\" : { \"a\" : [ 1 , \"x y\" ] ,\n\t\"email\": \"q\" } }";
        let compact = r#"{"a":[1,"x y"],"email":"q"}"#;
        assert_eq!(apply(&p, spaced), format!("{{\"name\" : \"{}\" }}", tag(compact.as_bytes())));
        // The whole value is hashed as written: the inner email is not hashed first.
        assert_eq!(apply(&p, r#"{"name":[]}"#), format!(r#"{{"name":"{}"}}"#, tag(b"[]")));
    }

    /// Masking writes MASK for every value but null.
    #[test]
    fn mask_replaces_every_value_but_null() {
        let p = usual();
        let out =
            apply(&p, r#"{"phone_number":"+1 555","a":{"phone_number":5},"b":[{"phone_number":null}]}"#);
        assert_eq!(out, r#"{"phone_number":"****","a":{"phone_number":"****"},"b":[{"phone_number":null}]}"#);
    }

    /// Dropping removes the member and exactly one comma, wherever it stands and however many go.
    #[test]
    fn drop_leaves_valid_json_at_every_position() {
        let p = usual();
        for (text, want) in [
            (r#"{"user_agent":"u"}"#, r#"{}"#),
            (r#"{"user_agent":"u","a":1}"#, r#"{"a":1}"#),
            (r#"{"a":1,"user_agent":"u","b":2}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1,"user_agent":"u"}"#, r#"{"a":1}"#),
            (r#"{"user_agent":1,"user_agent":[2],"a":1}"#, r#"{"a":1}"#),
            (r#"{"a":1,"user_agent":{"x":[1]},"user_agent":null}"#, r#"{"a":1}"#),
            (
                r#"{"user_agent":1,"a":1,"user_agent":2,"b":{"user_agent":3},"user_agent":4}"#,
                r#"{"a":1,"b":{}}"#,
            ),
            (r#"[{"user_agent":1},{"a":{"user_agent":2,"c":3}}]"#, r#"[{},{"a":{"c":3}}]"#),
            ("{ \"user_agent\" : \"u\" ,\n \"a\" : 1 }", "{ \n \"a\" : 1 }"),
            ("{\n  \"a\": 1,\n  \"user_agent\": \"u\"\n}", "{\n  \"a\": 1\n}"),
        ] {
            assert_eq!(apply(&p, text), want, "{text}");
        }
    }

    /// IPv4 goes to /24 and IPv6 to /48 in canonical form, in every string at any depth, keys included.
    #[test]
    fn ip_addresses_are_truncated_in_every_string() {
        let p = privacy(&[], &[], &[], true);
        for (ip, want) in [
            ("203.0.113.7", "203.0.113.0"),
            ("0.0.0.255", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.0"),
            ("10.200.3.40", "10.200.3.0"),
            ("2001:DB8:1234:5678::1", "2001:db8:1234::"),
            ("2001:0db8:0001:0002:0003:0004:0005:0006", "2001:db8:1::"),
            ("::ffff:203.0.113.7", "::ffff:203.0.113.0"),
            ("::1", "::"),
            // 6to4 embeds 192.0.2.33 in bits 16 to 47: only its /24 stays.
            ("2002:c000:0221::1", "2002:c000:200::"),
            // Teredo: server 65.54.227.120 in bits 32 to 63, the client in the last 32 bits.
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136::"),
            ("01.2.3.4", "01.2.3.0"),
        ] {
            let text = format!(
                r#"{{"ip":"{ip}","IP":"{ip}","clientIP":"{ip}","x-forwarded-for":"{ip}, {ip}","details":{{"d":["at {ip}."],"{ip}":1}}}}"#
            );
            let out = apply(&p, &text);
            assert_eq!(out, text.replace(ip, want), "{ip}");
        }
        for (text, want) in [
            ("1.2.3.4:443", "1.2.3.0:443"),
            ("[2001:db8:1:2::7]:443", "[2001:db8:1::]:443"),
            ("fe80::1:2%eth0", "fe80::%eth0"),
            ("from:2001:db8:1:2::7 via 10.1.2.3,192.0.2.9", "from:2001:db8:1:: via 10.1.2.0,192.0.2.0"),
            ("::ffff:1.2.3.4:80", "::ffff:1.2.3.0:80"),
            ("ip=1.2.3.4;v1.2.3.4", "ip=1.2.3.0;v1.2.3.0"),
            (
                "Chrome/120.0.6099.109 Safari/537.36 Windows NT 10.0",
                "Chrome/120.0.6099.109 Safari/537.36 Windows NT 10.0",
            ),
            (
                "1.2.3.4.5 and 1.2.3.256 and 1.2.3 and 1234.1.2.3",
                "1.2.3.4.5 and 1.2.3.256 and 1.2.3 and 1234.1.2.3",
            ),
            (
                "std::vector Foo::Bar 10:00:00.000 00:1a:2b:3c:4d:5e",
                "std::vector Foo::Bar 10:00:00.000 00:1a:2b:3c:4d:5e",
            ),
            ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z"),
        ] {
            let json = |s: &str| format!(r#"{{"description":{}}}"#, serde_json::to_string(s).expect("text"));
            assert_eq!(apply(&p, &json(text)), json(want), "{text}");
        }
        assert!(matches!(p.apply(r#"{"ip":"203.0.113.0","n":1.5,"t":"10:00"}"#), Ok(Cow::Borrowed(_))));
        // Escaped, in a text with backslashes: found all the same, and written back unescaped.
        assert_eq!(apply(&p, r#"{"ip":"\u0031.2.3.4"}"#), r#"{"ip":"1.2.3.0"}"#);
        let lone = r#"{"q":"\"","d":"1\u002e2.3.4 \ud800"}"#;
        assert_eq!(apply_unchecked(&p, lone), r#"{"q":"\"","d":"1.2.3.0 \ud800"}"#);
        assert_eq!(apply(&p, r#"{"q":"\"","ip":"1.2.3.4"}"#), r#"{"q":"\"","ip":"1.2.3.0"}"#);
        // In a text with backslashes, a string that is not valid JSON may hide an address: refused.
        assert!(matches!(p.apply(r#"{"q":"\"","d":"\x1.2.3.4"}"#), Err(PrivacyError::Malformed { .. })));
    }

    /// An explicit rule for an IP key wins over truncation.
    #[test]
    fn an_explicit_rule_wins_over_ip_truncation() {
        let text = r#"{"ip":"1.2.3.4","client_ip":"1.2.3.4","request_ip":"1.2.3.4"}"#;
        let p = privacy(&["ip"], &["client_ip"], &["request_ip"], true);
        assert_eq!(apply(&p, text), format!(r#"{{"ip":"{}","client_ip":"****"}}"#, tag(b"1.2.3.4")));
    }

    /// Nothing to change: the text comes back borrowed; no rules: not even read.
    #[test]
    fn unchanged_text_comes_back_borrowed() {
        let p = usual();
        assert!(matches!(p.apply(r#"{"a":[1,{"b":"email"}]}"#), Ok(Cow::Borrowed(_))));
        assert!(matches!(p.apply(r#"{"name":null,"ip":"x"}"#), Ok(Cow::Borrowed(_))));
        let off = Privacy::new(&Rules::default(), None).expect("no rules");
        assert!(off.is_noop());
        assert_eq!(off.describe(), "off");
        assert!(matches!(off.apply("not json"), Ok(Cow::Borrowed("not json"))));
        assert!(!usual().is_noop());
        assert!(!privacy(&[], &[], &[], true).is_noop());
    }

    /// Bad rule sets are refused with a reason that names the list, never the key.
    #[test]
    fn bad_rule_sets_are_refused() {
        let rules = |hash: &[&str], mask: &[&str], drop: &[&str]| Rules {
            hash: names(hash),
            mask: names(mask),
            drop: names(drop),
            truncate_ip: false,
        };
        let r = rules(&["email"], &[], &[]);
        assert!(matches!(Privacy::new(&r, None), Err(PrivacyError::MissingKey)));
        let short = b"fifteen-bytes!!";
        assert!(matches!(Privacy::new(&r, key(short)), Err(PrivacyError::ShortKey)));
        assert!(Privacy::new(&r, key(b"sixteen-bytes!!!")).is_ok());
        assert!(Privacy::new(&rules(&[], &["a"], &["b"]), None).is_ok(), "no hash, no key needed");
        let err = Privacy::new(&rules(&[], &["a", ""], &[]), None).expect_err("empty");
        assert_eq!(err.to_string(), "privacy.mask holds an empty field name");
        let err = Privacy::new(&rules(&["a"], &[], &["b", "a"]), key(&RFC_KEY)).expect_err("two lists");
        assert_eq!(err.to_string(), r#"field "a" is listed in both privacy.hash and privacy.drop"#);
        let err = Privacy::new(&rules(&[], &[], &["a:b"]), None).expect_err("colon");
        assert_eq!(
            err.to_string(),
            r#"field "a:b" in privacy.drop holds a ',' or ':', which no log field name does"#
        );
        assert!(Privacy::new(&rules(&[], &["a,"], &[]), None).is_err());
        assert!(Privacy::new(&rules(&["a", "a"], &[], &[]), key(&RFC_KEY)).is_ok());
        for e in [PrivacyError::MissingKey, PrivacyError::ShortKey] {
            assert!(!e.to_string().contains("fifteen"), "{e}");
        }
    }

    /// The key appears in no Debug output, description or message.
    #[test]
    fn the_key_never_shows() {
        let secret = b"very-secret-hash-key-0123456789";
        let rules = Rules { hash: names(&["email"]), truncate_ip: true, ..Rules::default() };
        let p = Privacy::new(&rules, key(secret)).expect("rules");
        let shown = format!("{p:?} {:?} {}", key(secret), p.describe());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &secret[..4])), "{shown}");
        assert_eq!(p.describe(), "hash [email]; truncate_ip");
        assert_eq!(
            usual().describe(),
            "hash [email, user_name, name]; mask [phone_number]; drop [user_agent]; truncate_ip"
        );
    }

    /// Another key gives other hashes; the same key the same ones.
    #[test]
    fn hashes_depend_on_the_key() {
        let rules = Rules { hash: names(&["email"]), ..Rules::default() };
        let a = Privacy::new(&rules, key(b"0123456789abcdef")).expect("a");
        let b = Privacy::new(&rules, key(b"0123456789abcdeg")).expect("b");
        let text = r#"{"email":"a@b"}"#;
        assert_eq!(apply(&a, text), apply(&a, text));
        assert_ne!(apply(&a, text), apply(&b, text));
    }

    /// A value to rewrite that is not valid JSON is refused; so is a key to match that is not.
    #[test]
    fn malformed_values_to_rewrite_are_refused() {
        let p = usual();
        for text in [
            r#"{"user_agent":tru}"#,
            r#"{"email":"a\x"}"#,
            r#"{"email":[1,}"#,
            r#"{"email":[1}"#,
            r#"{"email":"unterminated}"#,
            "{\"email\":\"a\u{1}\"}",
            r#"{"e\mail":"a"}"#,
            r#"{"user_agent":01}"#,
            r#"{"email":}"#,
            r#"{"email":"#,
        ] {
            let r = p.apply(text);
            assert!(matches!(r, Err(PrivacyError::Malformed { .. })), "{text:?} gave {r:?}");
        }
        let err = p.apply(r#"{"a":1,"email":nul}"#).expect_err("bad literal");
        assert_eq!(err.to_string(), "not valid JSON at byte 15: invalid value");
    }

    /// Arbitrarily deep or long input costs no stack and linear time.
    #[test]
    fn deep_and_long_input_is_handled_without_recursion() {
        let p = usual();
        let deep = format!(r#"{{"ip":"1.2.3.4","x":{}{}}}"#, "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert_eq!(apply_unchecked(&p, &deep), deep.replace("1.2.3.4", "1.2.3.0"));
        let deep_objects = format!(
            "{}{}",
            r#"{"user_agent":1,"a":"#.repeat(100_000),
            "{}".to_owned() + &"}".repeat(100_000)
        );
        assert!(!p.apply(&deep_objects).expect("applies").contains("user_agent"));
        let deep_value = format!(r#"{{"email":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(apply_unchecked(&p, &deep_value).starts_with(r#"{"email":""#));
        // Many colons, quotes and backslashes in a row: each is looked at a bounded number of times.
        let colons = format!(r#"{{"a":"{}"}}"#, "\\\":".repeat(200_000));
        let start = std::time::Instant::now();
        assert!(matches!(p.apply(&colons), Ok(Cow::Borrowed(_))));
        let keys = format!("{{{}\"z\":1}}", r#""ip":"1.2.3.4","#.repeat(100_000));
        assert_eq!(apply(&p, &keys).matches("1.2.3.0").count(), 100_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{:?}", start.elapsed());
    }

    /// A colon inside a string is never taken for the end of a key, however the string looks.
    #[test]
    fn colons_inside_strings_are_not_keys() {
        let p = privacy(&["email"], &["x"], &["y"], true);
        for text in [
            r#"{"a":":email","b":"x\":","c":"\"email\":1","d":"{\"y\":2}"}"#,
            r#"["x,",":y","{",":x"]"#,
            r#"{"k":["a,",":email"],"t":"10:00:00","u":"https://x/y:z"}"#,
        ] {
            assert!(matches!(p.apply(text), Ok(Cow::Borrowed(_))), "{text}");
        }
        // What looks like an IP member inside a string is a string like any other: its address is truncated.
        assert_eq!(apply(&p, r#"{"s":"ip\":\"1.2.3.4"}"#), r#"{"s":"ip\":\"1.2.3.0"}"#);
        // Keys whose names end in a backslash or hold escaped quotes are still keys.
        let text = r#"{"a\\":"1","\"x\"":2,"email":"q"}"#;
        assert_eq!(apply(&p, text), format!(r#"{{"a\\":"1","\"x\"":2,"email":"{}"}}"#, tag(b"q")));
    }

    /// Invalid scalars that are copied stay invalid, so the transform still refuses them.
    #[test]
    fn copied_invalid_text_stays_invalid() {
        let p = usual();
        for text in [
            r#"{"ip":"1.2.3.4","n":01}"#,
            "{\"ip\":\"1.2.3.4\",\"s\":\"a\u{1}\"}",
            r#"{"ip":"1.2.3.4","t":nul}"#,
        ] {
            let out = p.apply(text).expect("copied");
            assert!(serde_json::from_str::<IgnoredAny>(&out).is_err(), "{out}");
        }
    }

    /// The key file and the environment value lose one final line break; the file wins.
    #[test]
    fn keys_are_loaded_without_their_final_line_break() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "0123456789abcdef\r\n").expect("write");
        let env = Some(OsString::from("from-env-0123456789\n"));
        let k = load_key(Some(&path), env.clone()).expect("read").expect("key");
        assert_eq!(k.expose_secret(), b"0123456789abcdef");
        let k = load_key(None, env).expect("env").expect("key");
        assert_eq!(k.expose_secret(), b"from-env-0123456789");
        assert!(load_key(None, None).expect("nothing").is_none());
        let missing = dir.path().join("nope");
        let err = load_key(Some(&missing), None).expect_err("missing");
        assert_eq!(err.to_string(), format!("cannot read the hash key file {}", missing.display()));
        assert!(std::error::Error::source(&err).is_some());
    }

    /// The compiled rules can be shared by worker threads.
    #[test]
    fn privacy_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Privacy>();
    }

    /// The fast path holds back only when the text cannot contain a matching key.
    #[test]
    fn the_fast_path_never_skips_a_possible_match() {
        let p = privacy(&[], &[], &["phone_number"], false);
        assert_eq!(p.needles.len(), 1);
        assert!(!p.may_match(r#"{"phone":"1"}"#));
        assert_eq!(apply(&p, r#"{"phone_numbe\u0072":"1","a":2}"#), r#"{"a":2}"#);
        let p = privacy(&["a/b"], &[], &[], false);
        assert_eq!(apply(&p, r#"{"a\/b":"x"}"#), format!(r#"{{"a\/b":"{}"}}"#, tag(b"x")));
    }

    /// Stands in the reference for the hash of a non-string value whose text is not known (see `reference`).
    const SOME_HASH: &str = "<some hash>";

    /// Entries with and without a backslash take different paths to their keys, with the same outcome.
    #[test]
    fn both_ways_to_find_keys_agree() {
        let p = usual();
        for text in [
            r#"{"email":"a@b","x":{"user_name":"u","ip":"1.2.3.4"},"l":[{"name":"n","client_ip":"::1"}],"user_agent":"u"}"#,
            "{ \"email\" : \"a@b\" ,\n \"t\" : \"10:00\" , \"user_agent\":1, \"b_ip\" :\"1.2.3.4\" }",
        ] {
            let with_backslash = text.replacen('{', r#"{"q":"\"","#, 1);
            let plain = apply(&p, text);
            assert_eq!(apply(&p, &with_backslash), plain.replacen('{', r#"{"q":"\"","#, 1), "{text}");
        }
    }

    /// What the rules do, written over a parsed tree: the reference the scanner is compared with. With
    /// `exact`, the text of the tree is taken to be serde_json's, and a hashed non-string value hashes that;
    /// else its hash is `SOME_HASH`.
    fn reference(v: &Value, p: &Privacy, exact: bool) -> Value {
        match v {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, x) in map {
                    let new = match p.rule_for(k.as_bytes()) {
                        Some(Rule::Drop) => continue,
                        Some(_) if x.is_null() => Value::Null,
                        Some(Rule::Hash) => Value::String(match x {
                            Value::String(s) => tag(s.as_bytes()),
                            other if exact => tag(serde_json::to_string(other).expect("text").as_bytes()),
                            _ => SOME_HASH.to_owned(),
                        }),
                        Some(Rule::Mask) => Value::String(MASK.to_owned()),
                        None => reference(x, p, exact),
                    };
                    out.insert(addresses_truncated(k, p), new);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|x| reference(x, p, exact)).collect()),
            Value::String(s) => Value::String(addresses_truncated(s, p)),
            other => other.clone(),
        }
    }

    /// `s` with its addresses truncated when the rules say so.
    fn addresses_truncated(s: &str, p: &Privacy) -> String {
        if !p.truncate_ip {
            return s.to_owned();
        }
        let mut out = String::new();
        let mut at = 0;
        find_addresses(s.as_bytes(), 0, s.len(), &mut |start, end, replacement| {
            out.push_str(&s[at..start]);
            out.push_str(replacement);
            at = end;
        });
        out.push_str(&s[at..]);
        out
    }

    /// Whether `got` is `want`, where `SOME_HASH` in `want` stands for any hash.
    fn same(got: &Value, want: &Value) -> bool {
        match (got, want) {
            (Value::String(g), Value::String(w)) if w == SOME_HASH => {
                g.len() == 64 && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            (Value::Object(g), Value::Object(w)) => {
                g.len() == w.len() && g.iter().zip(w).all(|((gk, gv), (wk, wv))| gk == wk && same(gv, wv))
            }
            (Value::Array(g), Value::Array(w)) => {
                g.len() == w.len() && g.iter().zip(w).all(|(g, w)| same(g, w))
            }
            _ => got == want,
        }
    }

    /// Any JSON value, with keys and values the rules care about.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Floats whose text reads back as the same float, so that re-serializing a tree gives its text.
            any::<f64>()
                .prop_filter("round trip", |f| serde_json::to_string(f)
                    .ok()
                    .and_then(|t| serde_json::from_str::<f64>(&t).ok())
                    .is_some_and(|g| g == *f))
                .prop_map(Value::from),
            ".{0,10}".prop_map(Value::String),
            prop::sample::select(vec!["1.2.3.4", "2001:db8::7", "::ffff:9.8.7.6", "a@b.c", "\"\\", "email"])
                .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((json_key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Mostly keys some rule matches, sometimes anything.
    fn json_key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "email", "name", "user_name", "phone_number", "user_agent", "ip", "client_ip", "details", "x"
            ])
            .prop_map(str::to_owned),
            1 => ".{0,6}",
        ]
    }

    /// Escape some characters of a JSON text's strings as `\u` escapes, which changes no value.
    fn escape_some(text: &str, every: usize) -> String {
        let mut out = String::new();
        let mut in_string = false;
        // Characters still to copy as they are: the rest of an escape sequence.
        let mut verbatim = 0;
        for (i, c) in text.chars().enumerate() {
            if verbatim > 0 {
                verbatim -= 1;
                if verbatim == 4 && c != 'u' {
                    verbatim = 0;
                }
                out.push(c);
                continue;
            }
            if in_string && c == '\\' {
                verbatim = 5;
            } else if c == '"' {
                in_string = !in_string;
            } else if in_string && c.is_ascii_alphanumeric() && i % every == 0 {
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
            out.push(c);
        }
        out
    }

    proptest! {
        /// Whatever the JSON and however it is spaced or escaped, the output is valid JSON holding exactly
        /// what the rules say.
        #[test]
        fn any_json_gives_valid_json_with_exactly_the_rules_applied(v in any_json(), every in 1usize..5) {
            let p = usual();
            let compact = serde_json::to_string(&v).expect("text");
            for (text, exact) in [
                (compact.clone(), true),
                (serde_json::to_string_pretty(&v).expect("text"), true),
                (escape_some(&compact, every), false),
            ] {
                let want = reference(&v, &p, exact);
                let out = p.apply(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                let got: Value = serde_json::from_str(&out)
                    .map_err(|e| TestCaseError::fail(format!("{text} gave {out}: {e}")))?;
                prop_assert!(same(&got, &want), "{} gave {} instead of {}", text, got, want);
            }
        }

        /// Searching for the key endings gives the very bytes, or the same refusal, that visiting every colon
        /// gives, for any JSON however spaced, and for damaged JSON.
        #[test]
        fn searching_key_endings_gives_what_visiting_every_colon_gives(
            v in any_json(),
            at in any::<prop::sample::Index>(),
            b in r#"[\[\]{}",: 0a]"#,
        ) {
            let compact = serde_json::to_string(&v).expect("text");
            check_both_ways(&compact)?;
            check_both_ways(&serde_json::to_string_pretty(&v).expect("text"))?;
            let cut = at.index(compact.len().max(1));
            if compact.is_char_boundary(cut) && cut < compact.len() {
                let next = compact[cut..].chars().next().map_or(cut, |c| cut + c.len_utf8());
                check_both_ways(&format!("{}{}", &compact[..cut], &compact[next..]))?;
                check_both_ways(&format!("{}{}{}", &compact[..cut], b, &compact[next..]))?;
            }
        }

        /// Every address the standard parsers read, written among other text, comes out as its network
        /// address; the text around it is left alone.
        #[test]
        fn every_standard_address_in_text_is_truncated(
            bits in any::<u128>(),
            v4 in any::<u32>(),
            form in 0usize..6,
            before in prop::sample::select(vec!["", " ", "ip=", "[", "(", ", ", "from:"]),
            after in prop::sample::select(vec!["", " ", "]:443", ":8080", "%eth0", ".", ", x", "/64"]),
        ) {
            let address: IpAddr = match form {
                0 | 1 => IpAddr::V4(Ipv4Addr::from(v4)),
                2 => IpAddr::V6(Ipv4Addr::from(v4).to_ipv6_mapped()),
                3 => IpAddr::V6(Ipv6Addr::from((0x2002u128 << 112) | (u128::from(v4) << 80) | (bits & 0xffff_ffff))),
                4 => IpAddr::V6(Ipv6Addr::from(bits)),
                _ => IpAddr::V6(Ipv6Addr::from(bits >> 64)),
            };
            // After an IPv6 address, `:8080` would be one more group of it (only `[...]:8080` is a port).
            let after = if address.is_ipv6() && after == ":8080" { " 8080" } else { after };
            let text = format!("{before}{address}{after}");
            let want = match address {
                IpAddr::V4(a) => IpAddr::V4(v4_net(a)),
                IpAddr::V6(a) => IpAddr::V6(truncate_v6(a)),
            };
            let p = privacy(&[], &[], &[], true);
            let got = addresses_truncated(&text, &p);
            prop_assert_eq!(&got, &format!("{before}{want}{after}"), "{}", text);
        }

        /// Arbitrary text never panics, and valid JSON among it comes out valid.
        #[test]
        fn arbitrary_text_never_panics(text in r#"[\[\]{}",:\\ a-z0-9ul.\-]{0,40}"#) {
            check_validity(&text)?;
        }

        /// Valid JSON with one byte cut out or changed never panics either.
        #[test]
        fn damaged_json_never_panics(v in any_json(), at in any::<prop::sample::Index>(), b in r#"[\[\]{}",:\\ 0a]"#) {
            let text = serde_json::to_string(&v).expect("text");
            let cut = at.index(text.len().max(1));
            if text.is_char_boundary(cut) && cut < text.len() {
                let next = text[cut..].chars().next().map_or(cut, |c| cut + c.len_utf8());
                check_validity(&format!("{}{}", &text[..cut], &text[next..]))?;
                check_validity(&format!("{}{}{}", &text[..cut], b, &text[next..]))?;
            }
        }
    }

    /// One text through one of the two ways `Scan::run` finds keys, for a text without backslashes.
    fn scan_by(p: &Privacy, text: &str, endings: bool) -> Result<Option<String>, String> {
        let mut out = String::new();
        let mut scan = Scan::new(p, text, &mut out, true);
        let ran = if endings { scan.run_by_endings() } else { scan.run_every_colon(true) };
        let changed = ran.and_then(|()| scan.finish()).map_err(|e| e.to_string())?;
        Ok(changed.then_some(out))
    }

    /// Both ways agree on `text`, byte for byte.
    fn check_both_ways(text: &str) -> Result<(), TestCaseError> {
        if text.contains('\\') {
            return Ok(());
        }
        for p in [
            usual(),
            privacy(&["email", "user_name", "name"], &[], &[], true),
            privacy(&["e"], &["a"], &["user_name"], false),
        ] {
            prop_assert_eq!(scan_by(&p, text, true), scan_by(&p, text, false), "{:?}", text);
        }
        Ok(())
    }

    #[test]
    fn searching_key_endings_finds_what_visiting_every_colon_finds_in_every_fixture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut texts = 0;
        for sub in ["transform", "transform-edge-cases"] {
            for file in std::fs::read_dir(dir.join(sub)).expect("fixtures") {
                let raw = std::fs::read_to_string(file.expect("entry").path()).expect("read");
                let v: Value = serde_json::from_str(&raw).expect("json");
                for text in [
                    serde_json::to_string(&v).expect("text"),
                    serde_json::to_string_pretty(&v).expect("text"),
                ] {
                    check_both_ways(&text).expect("same");
                    texts += 1;
                }
            }
        }
        assert!(texts >= 50, "only {texts} fixture texts");
        // More candidates than `run_by_endings` keeps: it visits every colon instead, with the same result.
        let many = format!(
            "{{{}}}",
            (0..100).map(|i| format!("\"k{i}\":{{\"name\":\"n{i}\"}}")).collect::<Vec<_>>().join(",")
        );
        let out = scan_by(&usual(), &many, true).expect("applied").expect("rewritten");
        assert!(!out.contains("\"n99\""), "{out}");
        check_both_ways(&many).expect("same");
    }

    /// What `apply` promises for one text: no panic, and valid JSON stays valid.
    fn check_validity(text: &str) -> Result<(), TestCaseError> {
        let valid_in = serde_json::from_str::<IgnoredAny>(text).is_ok();
        for p in [usual(), privacy(&[], &["a"], &["u"], false)] {
            match p.apply(text) {
                Ok(out) if valid_in => {
                    prop_assert!(
                        serde_json::from_str::<IgnoredAny>(&out).is_ok(),
                        "{:?} gave {:?}",
                        text,
                        out
                    );
                }
                Ok(_) => {}
                Err(_) => prop_assert!(!valid_in, "valid {:?} refused", text),
            }
        }
        Ok(())
    }

    #[test]
    fn reference_sanity() {
        let p = usual();
        let v = json!({"email": "a@b", "user_agent": 1, "ip": "1.2.3.4"});
        let want = json!({"email": tag(b"a@b"), "ip": "1.2.3.0"});
        assert_eq!(reference(&v, &p, true), want);
    }
}
