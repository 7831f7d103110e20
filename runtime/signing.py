"""Bundle signatures: Ed25519 over the canonical manifest, in a DSSE envelope.

The design follows OpenSSF model signing (sigstore model-transparency): sign one small
document that lists the size and sha256 of every file, not the files themselves. Our
manifest already is that document (`bundle.py` refuses a bundle whose manifest does
not list every file it needs), so the signature covers

    PAE("application/vnd.genattn.manifest+json", canonical manifest)

where PAE is DSSE's pre-authentication encoding ("DSSEv1 <len> <type> <len> <body>";
it binds the payload type, so the signature cannot be replayed as another kind of
document) and the canonical manifest is `bundle.canonical_manifest` (sorted keys,
compact, ASCII, without `manifest_digest`). `manifest.sig` holds the DSSE envelope
with the payload included, so any DSSE tool can check it with the public key:

    {"payloadType": ..., "payload": base64(canonical manifest),
     "signatures": [{"keyid": "sha256:<hex of the raw public key>", "sig": base64}]}

Verification (`verify_signature`) re-derives the canonical bytes from the manifest it
parsed, requires them to equal the envelope's payload, and accepts the bundle only if
a signature by one of the trusted public keys verifies over them: what is verified is
exactly what the runtime then uses. File hashes are then checked as usual.

Crypto comes from the maintained `cryptography` package (imported lazily); keys are
PEM: PKCS#8 private keys (`genattn keygen`, or `openssl genpkey -algorithm ed25519`)
and SubjectPublicKeyInfo public keys (`openssl pkey -in KEY -pubout`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .bundle import Manifest, canonical_manifest, regular_file_inside
from .errors import BundleError, GenattnRuntimeError, KeyFileError, SignatureError

SIGNATURE_FILE = "manifest.sig"
PAYLOAD_TYPE = "application/vnd.genattn.manifest+json"
MAX_SIGNATURE_BYTES = 32 << 20  # the envelope carries the manifest (bounded at 16 MiB) in base64

KeySource = str | Path | bytes


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - a dependency of genattn
        raise GenattnRuntimeError("bundle signatures need the cryptography package: pip install cryptography") from e
    return serialization, ed25519, InvalidSignature


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _read_pem(src: KeySource, what: str) -> tuple[bytes, str]:
    if isinstance(src, bytes):
        return src, what
    try:
        return Path(src).read_bytes(), f"{what} {src}"
    except OSError as e:
        raise KeyFileError(f"{what} {src}: unreadable ({e.strerror or e})") from e


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    serialization, ed25519, _ = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(src: KeySource, password: bytes | None = None):
    """An Ed25519 private key from PEM (a path or the bytes); KeyFileError names what is wrong."""
    serialization, ed25519, _ = _crypto()
    data, what = _read_pem(src, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as e:  # encrypted without a password, or a password for an unencrypted key
        raise KeyFileError(f"{what}: {e}") from e
    except ValueError as e:
        raise KeyFileError(f"{what}: not a PEM private key ({e})") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{what}: a {type(key).__name__}, bundles are signed with Ed25519 keys "
                           "(genattn keygen)")
    return key


def load_public_key(src: KeySource):
    """An Ed25519 public key from PEM (a path or the bytes)."""
    serialization, ed25519, _ = _crypto()
    data, what = _read_pem(src, "trusted key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{what}: is a private key; trust the public key (KEY.pub from genattn keygen)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyFileError(f"{what}: not a PEM public key ({e})") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{what}: a {type(key).__name__}, bundles are signed with Ed25519 keys")
    return key


def key_id(public_key) -> str:
    """Fingerprint of a public key: sha256 of its 32 raw bytes."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def sign_manifest(raw: dict, private_key) -> dict:
    """The DSSE envelope (manifest.sig contents) for manifest `raw`."""
    payload = canonical_manifest(raw)
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": key_id(private_key.public_key()),
                            "sig": base64.b64encode(sig).decode("ascii")}]}


def signature_text(raw: dict, private_key) -> str:
    return json.dumps(sign_manifest(raw, private_key), indent=2) + "\n"


def read_envelope(manifest: Manifest) -> dict | None:
    """manifest.sig parsed and shape-checked, or None when the bundle is unsigned."""
    f = manifest.path / SIGNATURE_FILE
    try:
        st = regular_file_inside(manifest.path, SIGNATURE_FILE)
    except BundleError as e:
        raise SignatureError(str(e)) from None
    if st is None:
        return None
    try:
        if st.st_size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{f}: {st.st_size} bytes, more than any signature envelope: refused")
        env = json.loads(f.read_bytes().decode("utf-8"))
    except OSError as e:
        raise SignatureError(f"{f}: unreadable ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise SignatureError(f"{f}: not valid UTF-8 JSON ({type(e).__name__})") from e
    sigs = env.get("signatures") if isinstance(env, dict) else None
    if (not isinstance(env, dict) or env.get("payloadType") != PAYLOAD_TYPE or not isinstance(env.get("payload"), str)
            or not isinstance(sigs, list) or not sigs
            or not all(isinstance(s, dict) and isinstance(s.get("sig"), str) for s in sigs)):
        raise SignatureError(f"{f}: not a genattn DSSE signature envelope (payloadType {PAYLOAD_TYPE}, "
                             "payload, signatures[].sig)")
    return env


def describe_signature(manifest: Manifest) -> str:
    """One line for `genattn inspect` when no key is given: unsigned, or by which key id (not checked)."""
    try:
        env = read_envelope(manifest)
    except SignatureError as e:
        return f"unreadable ({e})"
    if env is None:
        return "unsigned"
    ids = ", ".join(str(s.get("keyid", "?")) for s in env["signatures"])
    return f"signed by {ids} (not checked: pass --trusted-key)"


def verify_signature(manifest: Manifest, trusted_keys: Iterable[Any]) -> str:
    """Accept the bundle only if manifest.sig holds a valid signature by one of `trusted_keys`
    (public keys: PEM paths, PEM bytes or loaded Ed25519PublicKey objects) over this manifest.

    Returns the key id that verified; raises SignatureError (a BundleError) otherwise.
    """
    _, ed25519, InvalidSignature = _crypto()
    keys = [k if isinstance(k, ed25519.Ed25519PublicKey) else load_public_key(k) for k in trusted_keys]
    if not keys:
        raise KeyFileError("trusted_keys is empty: give at least one public key, or None to skip signature checks")
    env = read_envelope(manifest)
    if env is None:
        raise SignatureError(f"bundle {manifest.path} is unsigned ({SIGNATURE_FILE} missing) but trusted keys "
                             "were given: only bundles signed by one of them are loaded")
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"{manifest.path / SIGNATURE_FILE}: payload is not base64") from e
    if payload != canonical_manifest(manifest.raw):
        raise SignatureError(f"bundle {manifest.path}: {SIGNATURE_FILE} was made for another manifest "
                             "(its payload differs from manifest.json)")
    message = pae(env["payloadType"], payload)
    by_id = {key_id(k): k for k in keys}
    for s in env["signatures"]:
        key = by_id.get(s.get("keyid"))
        candidates = [key] if key is not None else list(by_id.values())  # keyid is a hint, not trusted
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            continue
        for k in candidates:
            try:
                k.verify(sig, message)
            except InvalidSignature:
                continue
            return key_id(k)
    ids = ", ".join(str(s.get("keyid", "?")) for s in env["signatures"])
    raise SignatureError(f"bundle {manifest.path}: no valid signature by a trusted key (signed by {ids}; "
                         f"trusted: {', '.join(by_id)})")


__all__ = ["SIGNATURE_FILE", "PAYLOAD_TYPE", "generate_key_pair",
           "load_private_key", "load_public_key", "key_id", "sign_manifest", "signature_text", "verify_signature",
           "describe_signature", "pae"]
