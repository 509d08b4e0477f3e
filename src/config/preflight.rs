//! Whether a valid configuration can run on this machine, as this user: the state directory and
//! the record file's directory are writable, every `unix:` upstream's socket can be reached (or
//! its directory is there for the container to create it in), and every listen address is free.
//!
//! `check-config` and `run` ask this after validation (a reload does not: the running gateway
//! holds its listeners, and restart-only settings do not change on reload). Each problem names
//! its key and the path or address, as validation's do. The checks leave nothing behind: a
//! probe file is created and removed at once, a listener bound and closed.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Config, ConfigIssue, MachineChecks, RecordsOutput};

/// Every environment problem of `config`; keys in `skip` already have a problem of their own.
pub(super) fn preflight(
    config: &Config,
    machine: MachineChecks,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if machine == MachineChecks::None {
        return issues;
    }
    let mut issue = |key: &str, message: String| {
        if !skip(key) {
            issues.push(ConfigIssue {
                key: key.to_owned(),
                message,
            });
        }
    };
    if let Err(message) = writable_dir(&config.server.state_dir) {
        issue("server.state_dir", message);
    }
    if let RecordsOutput::File { path, .. } = &config.telemetry.output
        && !path.as_os_str().is_empty()
        && let Err(message) = writable_file(path)
    {
        issue("telemetry.file", message);
    }
    for (i, service) in config.services.iter().enumerate() {
        if let Some(socket) = &service.upstream.socket
            && let Err(message) = reachable_socket(socket)
        {
            issue(&format!("service[{i}].upstream"), message);
        }
    }
    let s = &config.server;
    if machine == MachineChecks::SkipListeners {
        return issues;
    }
    for (key, addr) in [
        ("server.listen", Some(s.listen)),
        ("server.admin_listen", Some(s.admin_listen)),
        ("server.probe_listen", s.probe_listen),
        ("server.metrics_listen", s.metrics_listen),
    ] {
        if let Some(addr) = addr.filter(|a| a.port() != 0)
            && let Err(e) = std::net::TcpListener::bind(addr)
        {
            issue(key, listen_error(addr, &e));
        }
    }
    issues
}

/// The message for a listener that cannot bind, naming the address (the caller names the key).
pub fn listen_error(addr: SocketAddr, e: &io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "; another process is listening there",
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE"
        }
        io::ErrorKind::AddrNotAvailable => "; no local interface has this address",
        _ => "",
    };
    format!("cannot listen on {addr}: {e}{hint}")
}

/// A directory that exists and takes a new file, or that can be created (its nearest existing
/// ancestor takes a new entry).
fn writable_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return probe(dir).map_err(|e| format!("{} is not writable: {e}", dir.display()));
    }
    if dir.exists() {
        // Validation reports "exists and is not a directory".
        return Ok(());
    }
    let ancestor = existing_ancestor(dir);
    if !ancestor.is_dir() {
        return Err(format!(
            "{} cannot be created: {} is not a directory",
            dir.display(),
            ancestor.display()
        ));
    }
    probe(&ancestor).map_err(|e| {
        format!(
            "{} cannot be created: {} is not writable: {e}",
            dir.display(),
            ancestor.display()
        )
    })
}

/// A `unix:` upstream's socket: a socket this user may connect to, or not there yet in a directory
/// that exists (the container creates it when it starts; until then the service is not ready).
/// A socket nobody listens on is not a configuration problem: the container may be restarting.
fn reachable_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
                    "cannot connect to {}: {e}; the gateway's user needs write permission on the socket",
                    path.display()
                )),
                _ => Ok(()),
            }
        }
        Ok(_) => Err(format!("{} exists and is not a socket", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if dir.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "{} cannot be reached: its directory {} does not exist (in a pod, mount the \
                     volume the container creates its socket in)",
                    path.display(),
                    dir.display()
                ))
            }
        }
        Err(e) => Err(format!("{} cannot be reached: {e}", path.display())),
    }
}

/// A file that can be opened for appending, or created in an existing writable directory (the
/// record writer does not create directories).
fn writable_file(path: &Path) -> Result<(), String> {
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("{} cannot be opened for writing: {e}", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{} cannot be created: its directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    probe(dir).map_err(|e| {
        format!(
            "{} cannot be created: {} is not writable: {e}",
            path.display(),
            dir.display()
        )
    })
}

/// The nearest ancestor of `path` that exists (`/` at worst).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .skip(1)
        .find(|a| a.as_os_str().is_empty() || a.exists())
        .map_or_else(
            || PathBuf::from("/"),
            |a| {
                if a.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    a.to_owned()
                }
            },
        )
}

/// Creates and removes a hidden file in `dir`: the one test that also catches read-only mounts,
/// full disks and ACLs that permission bits do not show.
fn probe(dir: &Path) -> io::Result<()> {
    let name = format!(".scoregate-check-{}", std::process::id());
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)
}
