"""Signed model bundles: a content version over the whole manifest and an Ed25519 signature.

A bundle is ``manifest.json`` plus the files it lists under ``"files"`` with their sha256. Two
guarantees are layered on it:

* **Content version.** ``manifest["version"]`` is ``<format>-<12 hex>`` of the sha256 of the
  canonical JSON of the manifest *without* its ``version`` field. The manifest holds the sha256 of
  every other file, so the version covers every file, the manifest included: editing the calibration,
  or a weights file together with its sha256 entry, gives another version.
* **Signature.** ``signature.json`` beside the manifest holds an Ed25519 signature (``cryptography``)
  over the exact bytes of ``manifest.json``. The private key stays outside the bundle (by default
  ``var/keys/bundle-signing.key``, mode 0600, generated on first use); a loader checks against a
  trusted public key (by default ``var/keys/bundle-signing.pub``), never against a key the bundle
  brings along. Whoever can rewrite the manifest and recompute the version still cannot sign it.

Files written next to the bundle that it does not list (``metrics.json``, ``report.md``, plots) are
reports, not part of the bundle, and are neither signed nor read by the loader.

Examples
--------
>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> (d / "w.pt").write_bytes(b"weights")
7
>>> m = {"bundle_format": 1, "files": {"w.pt": sha256_file(d / "w.pt")}}
>>> m["version"] = content_version(m, 1)
>>> _ = (d / "manifest.json").write_text(json.dumps(m))
>>> key = d / "keys" / "k.key"
>>> _ = sign_bundle(d, key)
>>> verify_bundle(d, public_key_path(key)).version == m["version"]
True
>>> (d / "w.pt").write_bytes(b"WEIGHTS")
7
>>> verify_bundle(d, public_key_path(key))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.errors.BundleError: .../w.pt: corrupt weights: sha256 differs from the manifest ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.errors import BundleError

log = logging.getLogger("riskmon.models.signing")

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
ALGORITHM = "Ed25519"
DEFAULT_KEY = Path(__file__).resolve().parent.parent / "var" / "keys" / "bundle-signing.key"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def content_version(manifest: dict[str, Any], bundle_format: int) -> str:
    """``<format>-<12 hex>``: sha256 of the canonical JSON of ``manifest`` without its ``version``.

    >>> content_version({"files": {"a": "00"}, "version": "ignored"}, 1)
    '1-36a8749928fa'
    """
    body = {k: v for k, v in manifest.items() if k != "version"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"{bundle_format}-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def public_key_path(private_key: Path) -> Path:
    """Where the public half of ``private_key`` lives: same name, suffix ``.pub``."""
    return Path(private_key).with_suffix(".pub")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex of the sha256 of the raw public key; names a key in messages."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``; created (0600, with ``.pub`` beside it) when missing.

    Concurrent first uses agree on one key: the file is created exclusively, and a loser reads the
    winner's key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if another process won
            pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            public_key_path(path).write_bytes(pub)
            log.warning("generated a new bundle signing key %s (key id %s)", path, key_id(key.public_key()))
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"unreadable signing key: {exc}", path) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise BundleError("signing key is not an Ed25519 private key", path)
    key = loaded
    pub_path = public_key_path(path)
    if not pub_path.exists():  # the private key alone was copied here: restore its public half
        pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A trusted Ed25519 public key (PEM)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError("trusted public key not found (train a bundle with `riskmon train` on this machine, "
                          "or copy the signer's .pub here, or point RISKMON_BUNDLE_PUBLIC_KEY at it)", path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"unreadable public key: {exc}", path) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("public key is not an Ed25519 key", path)
    return key


def sign_bundle(bundle_dir: Path, private_key: Path) -> Path:
    """Sign ``bundle_dir/manifest.json`` with the key at ``private_key`` (created when missing).

    Writes ``signature.json`` and returns its path.
    """
    bundle_dir = Path(bundle_dir)
    key = load_or_create_key(private_key)
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    signature = key.sign(manifest_bytes)
    body = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "signature": base64.b64encode(signature).decode()}
    out = bundle_dir / SIGNATURE
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


@dataclass(frozen=True, slots=True)
class Verified:
    """What :func:`verify_bundle` checked: the manifest (parsed), its version, and the signer's key id."""

    manifest: dict[str, Any]
    version: str
    key_id: str | None  # None: unsigned, accepted because the caller asked to


def verify_bundle(bundle_dir: Path, public_key: Path, *, accept_unsigned: bool = False) -> Verified:
    """Check a bundle's signature, content version and file hashes; raise :class:`BundleError` otherwise.

    With ``accept_unsigned`` a bundle without ``signature.json`` loads (with a warning), its listed
    file hashes still checked; a *signed* bundle is always verified in full.
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MANIFEST
    try:
        manifest_bytes = manifest_path.read_bytes()
        manifest = json.loads(manifest_bytes)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest: {exc}", manifest_path) from exc
    if not isinstance(manifest, dict):
        raise BundleError("manifest is not a JSON object", manifest_path)
    sig_path = bundle_dir / SIGNATURE
    signer: str | None = None
    if not sig_path.is_file():
        if not accept_unsigned:
            raise BundleError("bundle is not signed (retrain it with `riskmon train`, or accept unsigned bundles "
                              "explicitly: --accept-unsigned-bundle / RISKMON_ACCEPT_UNSIGNED_BUNDLES=true)", bundle_dir)
        log.warning("loading UNSIGNED bundle %s (accept_unsigned is set)", bundle_dir)
    else:
        trusted = load_public_key(public_key)
        try:
            sig = json.loads(sig_path.read_text())
            signature = base64.b64decode(sig["signature"], validate=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"unreadable signature: {type(exc).__name__} {exc}", sig_path) from exc
        if sig.get("algorithm") != ALGORITHM:
            raise BundleError(f"signature algorithm {sig.get('algorithm')!r} is not {ALGORITHM}", sig_path)
        try:
            trusted.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise BundleError(f"signature does not match the manifest or the trusted key {key_id(trusted)} "
                              f"(bundle says key {sig.get('key_id')}; the manifest was edited or signed by another key)",
                              sig_path) from None
        signer = key_id(trusted)
        expected = content_version(manifest, int(manifest.get("bundle_format", 0)))
        if manifest.get("version") != expected:
            raise BundleError(f"version {manifest.get('version')} does not match the manifest's content ({expected})",
                              manifest_path)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError("manifest lists no files", manifest_path)
    for name, digest in files.items():
        path = bundle_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"manifest lists a file outside the bundle: {name!r}", manifest_path)
        if not path.is_file():
            raise BundleError("missing weights file", path)
        if sha256_file(path) != digest:
            raise BundleError("corrupt weights: sha256 differs from the manifest (changed after signing?)", path)
    return Verified(manifest, str(manifest.get("version")), signer)
