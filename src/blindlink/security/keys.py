"""Ed25519 signing keys: the server signs its audit log with one. (Parties sign agreements with
the key of their client certificate: security/certificate_signing.py.)"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from blindlink.errors import BlindlinkError, InputError

PUBLIC_KEY_PREFIX = "ed25519:"
_RAW_PUBLIC_KEY_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EXISTS = "exists already; key material is never overwritten"


class SecurityError(BlindlinkError):
    """A key, signature or certificate is malformed."""


def generate_signing_key(out_dir: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write out_dir/NAME.key (PKCS8 PEM, mode 0600) and out_dir/NAME.pub (the public key text).

    Refuses to overwrite either file."""
    check_name(name, "key name")
    key_path, pub_path = Path(out_dir) / f"{name}.key", Path(out_dir) / f"{name}.pub"
    refuse_existing([key_path, pub_path])
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(key_path, pem, private=True)
    write_new_file(pub_path, (public_key_text(key) + "\n").encode("ascii"), private=False)
    return key_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key in PEM format."""
    try:
        key = serialization.load_pem_private_key(read_file(path, "private key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(str(path), "not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(str(path), "not an Ed25519 private key")
    return key


def load_public_key_text(path: Path) -> str:
    """Read a .pub file and return its validated public key text."""
    text = read_file(path, "public key").decode("ascii", errors="replace").strip()
    try:
        parse_public_key(text)
    except SecurityError as exc:
        raise InputError(str(path), str(exc)) from None
    return text


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as "ed25519:" followed by the base64 of its 32 raw bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse public key text made by `public_key_text`."""
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise SecurityError(f"a public key must start with '{PUBLIC_KEY_PREFIX}'")
    try:
        raw = base64.b64decode(text.removeprefix(PUBLIC_KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError("a public key must be base64 after its prefix") from None
    if len(raw) != _RAW_PUBLIC_KEY_BYTES:
        raise SecurityError(
            f"an Ed25519 public key is {_RAW_PUBLIC_KEY_BYTES} bytes, this one is {len(raw)}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Sign `data`; the signature is base64 text."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_signature(public_key: str, data: bytes, signature: str) -> bool:
    """True only if `signature` is a valid signature of `data` by `public_key`.

    Never raises: a malformed key or signature is simply not a valid signature."""
    try:
        key = parse_public_key(public_key)
        key.verify(base64.b64decode(signature, validate=True), data)
    except (SecurityError, InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def check_name(name: str, what: str) -> None:
    """Names become file names: 1-64 of A-Z a-z 0-9 _ . - only."""
    if not _NAME.fullmatch(name):
        raise InputError(name, f"not a valid {what}: use 1 to 64 of A-Z a-z 0-9 _ . -")


def read_file(path: Path, what: str) -> bytes:
    """Read a whole file, reporting a missing or unreadable one as an InputError."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), f"{what} file not found") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot read {what} file: {exc.strerror}") from None


def refuse_existing(paths: list[Path]) -> None:
    """Raise naming the first of `paths` that exists: key material is never overwritten."""
    for path in paths:
        if path.exists() or path.is_symlink():
            raise InputError(str(path), _EXISTS)


def write_new_file(path: Path, data: bytes, *, private: bool) -> None:
    """Create `path` (never overwriting it), mode 0600 if private, and write `data`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    except FileExistsError:
        raise InputError(str(path), _EXISTS) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
