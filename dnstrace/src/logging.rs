//! Logs go to stderr, or to a file once [`to_file`] is called: the TUI owns the
//! terminal, and a log line there would tear its screen.
use std::{
    fs::File,
    io::{self, Write},
    path::Path,
    sync::{Mutex, PoisonError},
};

static FILE: Mutex<Option<File>> = Mutex::new(None);

/// Where env_logger writes: the file if one is set, else stderr.
struct Destination;

impl Write for Destination {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match FILE.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match FILE.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// Sets up env_logger (`DNSTRACE_LOG`, default `warn`), writing to stderr for now.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("DNSTRACE_LOG", "warn"))
        .target(env_logger::Target::Pipe(Box::new(Destination)))
        .init();
}

/// From now on, logs are appended to `path` (created 0600, parent folders 0700), opened
/// under the rules of [`crate::outfile`].
pub fn to_file(path: &Path) -> Result<(), crate::outfile::OutFileError> {
    let file = crate::outfile::open_log(path)?;
    *FILE.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
    Ok(())
}
