//! Files named by the configuration, read and written as if other processes on the host were hostile: they
//! may put a FIFO, a device, a directory or a huge file where a small one is expected, and plant a symlink
//! where the daemon is about to create a file.
//!
//! Reading: only a regular file is read, and never more than a bound the caller fixes, whatever its metadata
//! says (a device reports a length of 0 and never ends). Nothing here blocks: opening a FIFO for reading waits
//! for a writer, so the file is opened with `O_NONBLOCK`, and its type is checked twice, on the path before
//! opening (so that no device is ever opened, which can have effects of its own) and on the descriptor after
//! (so that a file swapped in between is caught). A symlink to a regular file is followed: secrets are often
//! mounted that way.
//!
//! Writing: a file is replaced by writing a temporary file beside it and renaming that over it, so a reader
//! never sees half a file. The temporary file gets a fresh random name and is created with `O_CREAT |
//! O_EXCL`, which fails on any existing name, a symlink included, and so never writes through one; the rename
//! replaces a symlink at the target's name rather than following it.

use std::io::{Read, Write};
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
    match kind(t) {
        None => Ok(()),
        Some(kind) => Err(ReadError::NotRegular(kind)),
    }
}

/// What a file that is not a regular one is, for a message ("a FIFO"); `None` for a regular file. A symlink is
/// named only when it was not followed (`symlink_metadata`).
pub fn kind(t: &std::fs::FileType) -> Option<&'static str> {
    Some(if t.is_file() {
        return None;
    } else if t.is_symlink() {
        "a symbolic link"
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
    })
}

/// Replace the file at `path` with `bytes`: a temporary file in the same directory (named
/// `.{name}.{random}.tmp`, so a collector reading `*.prom` never picks it up), synced, then renamed over
/// `path`. Its mode is the default one (0666 less the umask), as for any file the daemon's user creates. The
/// temporary file is removed if anything fails.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    // Random from the operating system, so that no other process can know the name in advance. Even a name
    // it guessed could only make the creation fail: `create_new` never opens an existing file.
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

    /// A symlink planted at the target's name is replaced, and one at a temporary name (this test can only
    /// plant at names it can know) is never written through.
    #[test]
    fn an_atomic_write_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("out.prom");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        for old in [format!(".out.prom.{}.tmp", std::process::id()), ".out.prom.tmp".into()] {
            std::os::unix::fs::symlink(&victim, dir.path().join(old)).unwrap();
        }
        write_atomically(&path, b"new text").unwrap();
        write_atomically(&path, b"newer text").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"newer text");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "no temporary file is left behind: {names:?}");
    }

    #[test]
    fn bounds_are_named_in_their_unit() {
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(16 << 20), "16 MiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
