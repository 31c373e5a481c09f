"""The scorer's identity: a digest of the model's files and the fingerprint of its shards.

Two scorers share shards only when their fingerprints are equal: the model's content (not
its path) and every setting that changes a utility.
"""

from __future__ import annotations

import hashlib
import json
import os

_FULL_HASH_SUFFIXES = (".json", ".model", ".txt", ".jinja")
_EDGE_BYTES = 1 << 20


def _file_digest(path: str, full: bool) -> str:
    h = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if full or size <= 2 * _EDGE_BYTES:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:  # weights: size plus both ends, so multi-GB checkpoints hash in milliseconds
            h.update(f.read(_EDGE_BYTES))
            f.seek(size - _EDGE_BYTES)
            h.update(f.read(_EDGE_BYTES))
    return h.hexdigest()


def model_digest(model: str) -> str:
    """Hash of a local checkpoint's config/tokenizer files (whole) and weights (size and ends).

    A hub id that is not a local directory hashes as its name and, when the hub cache
    holds a snapshot of it, that snapshot's revision and files (:func:`model_identity`).
    """
    h = hashlib.blake2b(digest_size=16)
    ident = model_identity(model)
    if ident.get("snapshot"):
        h.update(f"hub:{model}@{ident['revision']}".encode())
        model = ident["snapshot"]
    if os.path.isdir(model):
        for name in sorted(os.listdir(model)):
            p = os.path.join(model, name)
            if os.path.isfile(p) and not name.startswith("."):
                h.update(name.encode())
                h.update(_file_digest(p, name.endswith(_FULL_HASH_SUFFIXES)).encode())
    else:
        h.update(f"hub:{model}".encode())
    return h.hexdigest()


def model_identity(model: str) -> dict:
    """Hub id and revision of a model: ``{"hub_id", "revision", "snapshot"}``, None where unknown.

    A local directory has no hub identity (its files are hashed instead). A hub id is
    resolved against the local hub cache only (never the network); the snapshot folder's
    name is the commit the weights came from, so a new upload changes the fingerprint.
    """
    if os.path.isdir(model):
        return {"hub_id": None, "revision": None, "snapshot": None}
    none = {"hub_id": model, "revision": None, "snapshot": None}
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        repo = os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=model, repo_type="model"))
        with open(os.path.join(repo, "refs", "main")) as f:
            revision = f.read().strip()
    except (ImportError, OSError, ValueError):  # not cached, or not a hub id at all
        return none
    snap = os.path.join(repo, "snapshots", revision)
    if not revision or not os.path.isdir(snap):
        return none
    return {"hub_id": model, "revision": revision, "snapshot": snap}


def scorer_fingerprint(model_hash: str, fields: dict) -> str:
    """16 hex digits over the model hash and every setting that changes the numbers."""

    h = hashlib.blake2b(digest_size=8)
    h.update(model_hash.encode())
    h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()
