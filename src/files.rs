//! Files named by the configuration, read as if other processes on the host were hostile: they may put a
//! FIFO, a device, a directory or a huge file where a small one is expected.
//!
//! Only a regular file is read, and never more than a bound the caller fixes, whatever its metadata says (a
//! device reports a length of 0 and never ends). Nothing here blocks: opening a FIFO for reading waits for a
//! writer, so the file is opened with `O_NONBLOCK`, and its type is checked twice, on the path before opening
//! (so that no device is ever opened, which can have effects of its own) and on the descriptor after (so that
//! a file swapped in between is caught). A symlink to a regular file is followed: secrets are often mounted
//! that way.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read. The caller names the file (and the key that named it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It could not be opened (missing, no permission, a socket).
    #[error("cannot open it")]
    Open(#[source] std::io::Error),
    /// It is something else than a regular file.
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    /// It holds more than the bound.
    #[error("it is larger than {}", size(*.limit))]
    TooLarge {
        /// The bound, in bytes.
        limit: u64,
    },
    /// Reading it failed.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
}

/// Read the regular file at `path`, at most `limit` bytes of it.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let before = std::fs::metadata(path).map_err(ReadError::Open)?;
    regular(&before.file_type())?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Open)?;
    regular(&file.metadata().map_err(ReadError::Read)?.file_type())?;
    let mut bytes = Vec::with_capacity(before.len().min(limit) as usize);
    // One byte past the bound tells a file of exactly `limit` bytes from a longer one.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(ReadError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

fn regular(t: &std::fs::FileType) -> Result<(), ReadError> {
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "of another kind"
    };
    Err(ReadError::NotRegular(kind))
}

/// A bound in words: `64 KiB`, `1 MiB`, or bytes.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_up_to_its_bound_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular(&path, 10).unwrap(), b"0123456789");
        let err = read_regular(&path, 9).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 9 }), "{err:?}");
        // Through a symlink, as mounted secrets often are.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read_regular(&link, 64).unwrap(), b"0123456789");
    }

    #[test]
    fn anything_but_a_regular_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        // A blocking open would wait here for a writer that never comes.
        for (path, kind) in
            [(dir.path(), "a directory"), (&fifo, "a FIFO"), (Path::new("/dev/zero"), "a character device")]
        {
            let err = read_regular(path, 64 * 1024).unwrap_err();
            assert_eq!(err.to_string(), format!("it is {kind}, not a regular file"), "{}", path.display());
        }
        let err = read_regular(&dir.path().join("missing"), 64).unwrap_err();
        assert!(matches!(err, ReadError::Open(_)), "{err:?}");
    }

    #[test]
    fn bounds_are_named_in_their_unit() {
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(16 << 20), "16 MiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
