"""Model files built from an archive member in another format (``[source] convert``).

A TensorFlow.js graph model is a ``model.json`` (topology and weight manifest) with weight
files beside it. ``convert = "tfjs"`` on a card makes installing read that JSON member and
the weight files its manifest names out of the same archive (each as a stream, nothing
unpacked), convert them to ONNX with :mod:`agegender.onnxgraph.tfjs`, and check the ONNX
bytes' size and sha256 against the card before anything is installed. The conversion is
deterministic, so a card pins the converted file's hash just as it pins a downloaded one.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ..cards import Source, member_path_ok
from ..errors import ModelFileError
from .archives import MemberMissingError, extract_member
from .hashing import sha256_bytes
from .layout import part_path

MAX_JSON_BYTES = 64 * 1024 * 1024  # a model.json larger than this is not a model's topology


def _member_bytes(archive: Path, member: str, limit: int | None = None) -> bytes:
    out = io.BytesIO()
    extract_member(archive, member, out)
    data = out.getvalue()
    if limit is not None and len(data) > limit:
        raise ModelFileError(f"{archive.name}: member {member} is larger than {limit} bytes")
    return data


def _tfjs(archive: Path, member: str) -> bytes:
    """The ONNX bytes of the TF.js graph model ``member`` of ``archive``."""
    from ..onnxgraph.tfjs import convert, weight_paths

    where = f"{archive.name}: member {member}"
    try:
        model_json: Any = json.loads(_member_bytes(archive, member, MAX_JSON_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{where}: not a TF.js model.json ({error})") from None
    if not isinstance(model_json, dict):
        raise ModelFileError(f"{where}: not a TF.js model.json (not a JSON object)")
    folder = PurePosixPath(member).parent
    weights: dict[str, bytes] = {}
    for name in weight_paths(model_json):
        path = str(folder / name)
        if not member_path_ok(path):
            raise ModelFileError(f"{where}: weight file {name!r} is not a path in the archive")
        try:
            weights[name] = _member_bytes(archive, path)
        except MemberMissingError:
            raise ModelFileError(
                f"{where}: its manifest names {name}, which the archive does not hold"
            ) from None

    def read(name: str) -> bytes:
        return weights[name]

    model = convert(model_json, read, name=PurePosixPath(member).stem)
    return model.SerializeToString()


CONVERTERS: dict[str, Callable[[Path, str], bytes]] = {"tfjs": _tfjs}


def converted_bytes(archive: Path, source: Source) -> bytes:
    """The model file a card with ``[source] convert`` gets from ``archive``."""
    assert source.convert and source.member
    return CONVERTERS[source.convert](archive, source.member)


def install_converted(archive: Path, source: Source, dest: Path) -> Path:
    """Convert the card's member, check size and sha256, write ``dest`` atomically; on a
    fault nothing is left at ``dest`` or ``dest.part``."""
    data = converted_bytes(archive, source)
    actual = sha256_bytes(data)
    what = f"{archive.name}: member {source.member} converted from {source.convert}"
    if source.bytes is not None and len(data) != source.bytes:
        raise ModelFileError(f"{what} has {len(data)} bytes, not {source.bytes}")
    if source.sha256 is not None and actual != source.sha256:
        raise ModelFileError(
            f"{what} has sha256 {actual}, not the expected {source.sha256}; nothing was installed"
        )
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with part.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


__all__ = ["CONVERTERS", "converted_bytes", "install_converted"]
