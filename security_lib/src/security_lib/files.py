"""Fail-closed checks on the files the kit reads (existence, readability, modes).

Celery opens these files itself, late, and reports a bare ``FileNotFoundError``
or ``SecurityError``; checking them up front lets :func:`security_lib.harden`
refuse to start with a message that names the setting, the path and the fix.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

from .errors import CertStoreError, FilePermissionError, MissingFileError

__all__ = ["check_private_key_file", "check_readable_file", "expand_cert_store", "read_bytes"]


def check_readable_file(path: str | os.PathLike[str], setting: str) -> Path:
    """Return ``path`` as a :class:`Path` if it is an existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(
            setting, f"file {p} does not exist", f"create it or point {setting} at the right path"
        )
    if not p.is_file():
        raise MissingFileError(
            setting, f"{p} is not a regular file", f"point {setting} at a PEM file"
        )
    if not os.access(p, os.R_OK):
        raise MissingFileError(
            setting,
            f"file {p} is not readable by uid {os.geteuid()}",
            "run the process as the user that owns the file, or fix its owner",
        )
    return p


def read_bytes(path: Path, setting: str) -> bytes:
    """Read a file, turning OS errors into :class:`MissingFileError`."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MissingFileError(
            setting, f"cannot read {path}: {exc.strerror}", "fix the file's owner and mode"
        ) from exc


def check_private_key_file(path: str | os.PathLike[str], setting: str) -> Path:
    """Check that a private key is only accessible by the running user.

    A key that the group or others can read is as good as published on a
    shared host, and a key owned by another user means someone else can
    replace it; both are refused rather than warned about.
    """
    p = check_readable_file(path, setting)
    st = p.stat()
    if st.st_uid != os.geteuid():
        raise FilePermissionError(
            setting,
            f"private key {p} is owned by uid {st.st_uid}, not by the running user "
            f"(uid {os.geteuid()})",
            f"chown the key to the user that runs the app (e.g. chown celery: {p})",
        )
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise FilePermissionError(
            setting,
            f"private key {p} has mode {stat.S_IMODE(st.st_mode):04o} "
            "(readable or writable by group/others)",
            f"chmod 0600 {p}",
        )
    _check_key_dir(Path(os.path.realpath(p)).parent, setting)
    return p


def _check_key_dir(directory: Path, setting: str) -> None:
    """Refuse a key folder that someone else could write: they could swap the key."""
    st = directory.stat()
    if st.st_uid not in (0, os.geteuid()):
        raise FilePermissionError(
            setting,
            f"the key's folder {directory} is owned by uid {st.st_uid}, not by root or the "
            f"running user (uid {os.geteuid()}), who could replace the key",
            f"chown root {directory} (or keep the key in a folder of the running user)",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise FilePermissionError(
            setting,
            f"the key's folder {directory} has mode {mode:04o} (writable by group/others, "
            "who could replace the key)",
            f"chmod go-w {directory}",
        )


def _check_store_dir(directory: Path, setting: str) -> None:
    """Refuse a store directory that group or others can write (they could add a signer)."""
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        raise CertStoreError(
            setting,
            f"{directory} has mode {mode:04o} (writable by group/others, who could add a signer)",
            f"chmod go-w {directory}",
        )


def expand_cert_store(spec: str | os.PathLike[str], setting: str = "cert_store") -> list[Path]:
    """Expand a cert store (a directory or a glob) exactly the way Celery does.

    Celery's ``FSCertStore`` treats a directory as ``<dir>/*`` and otherwise
    uses the string as a glob. We list the same files so that what we validate
    is what Celery will trust.
    """
    text = os.fspath(spec)
    if Path(text).is_dir():
        _check_store_dir(Path(text), setting)
        pattern = str(Path(text) / "*")
    elif glob.has_magic(text):
        pattern = text
    else:
        raise CertStoreError(
            setting,
            f"{text} is neither a directory nor a glob of certificates",
            "create the directory of signer certificates or use a pattern like /dir/*.pem",
        )
    paths = sorted(Path(p) for p in glob.glob(pattern))  # noqa: PTH207 - same call as Celery
    for path in paths:
        if path.is_symlink():
            # Whoever can point the link elsewhere chooses what is trusted:
            # the target must live in a directory others cannot write either.
            _check_store_dir(path.resolve().parent, setting)
        if not path.resolve().is_file():
            raise CertStoreError(
                setting, f"{path} is not a regular file", f"remove {path} from the store"
            )
    if not paths:
        raise CertStoreError(
            setting,
            f"no certificate matches {pattern}",
            "install at least one signer certificate (PEM) there",
        )
    return paths
