//! Secrets generated on first start and kept in a file under `data_dir`
//! (the auth secret, the data key), so the embedded default needs no setup
//! and survives restarts. One mechanism for all of them: 32 random bytes
//! from the OS, hex, file mode 0600, written aside and linked into place so
//! the file appears complete or not at all, and a replica starting at the
//! same moment never reads half a secret (the first creator wins).

use std::io;
use std::path::Path;

/// Shortest secret accepted from a file (or a setting).
pub const MIN_LEN: usize = 32;

/// Reads the secret in `path`, or creates one there. `what` names it in
/// errors and warnings ("auth secret", "data key"); the value never is.
pub fn load_or_create(path: &Path, what: &str) -> io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= MIN_LEN => {
            warn_if_readable_by_others(path, what);
            return Ok(s.trim().as_bytes().to_vec());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} (the {what}) holds fewer than {MIN_LEN} bytes",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let text = hex::encode(os_random::<32>()?);
    let aside = path.with_extension(format!("tmp-{}", hex::encode(os_random::<8>()?)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts.open(&aside).and_then(|mut f| {
        io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()
    });
    // a hard link fails if the name exists: the first creator wins
    let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the {what}; back this file up");
            Ok(text.into_bytes())
        }
        // another process created it first: use theirs
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_or_create(path, what),
        Err(e) => Err(e),
    }
}

/// `N` bytes from the operating system's random source.
pub(crate) fn os_random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
        .map_err(|e| io::Error::other(format!("OS random source: {e}")))?;
    Ok(bytes)
}

fn warn_if_readable_by_others(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the {what} file is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
}
