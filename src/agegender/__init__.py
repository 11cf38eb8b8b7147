"""agegender: age and gender of every face, with explicit per-model preprocessing.

The public names are resolved on first use (PEP 562 module ``__getattr__``), so
``import agegender`` and ``agegender --version`` do not load ONNX Runtime, dlib, OpenCV
or onnx; ``from agegender import Estimator`` loads what the Estimator needs.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# ONNX Runtime's telemetry (on Linux since 1.30: read when onnxruntime is imported) left a
# mat-debug-PID.log in $TMPDIR for every process, kept an event database in
# ~/.cache/Microsoft, a thread and three files open: thousands of files in /tmp over a
# batch's workers and runs. Off unless the user set the variable; an onnxruntime imported
# before agegender keeps whatever it started with.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# public name -> the module (under agegender) that defines it
_EXPORTS: dict[str, str] = {
    "AgeEstimate": "results",
    "AgegenderError": "errors",
    "CardError": "errors",
    "Estimator": "pipeline",
    "EstimatorConfig": "config",
    "Face": "results",
    "GenderEstimate": "results",
    "ImageError": "errors",
    "ImageResult": "results",
    "ModelCard": "cards",
    "ModelFileError": "errors",
    "ModelNotInstalledError": "errors",
    "PreparedImage": "pipeline",
    "get_card": "cards",
}

__all__ = [
    "AgeEstimate",
    "AgegenderError",
    "CardError",
    "Estimator",
    "EstimatorConfig",
    "Face",
    "GenderEstimate",
    "ImageError",
    "ImageResult",
    "ModelCard",
    "ModelFileError",
    "ModelNotInstalledError",
    "PreparedImage",
    "get_card",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from .cards import ModelCard, get_card
    from .config import EstimatorConfig
    from .errors import (
        AgegenderError,
        CardError,
        ImageError,
        ModelFileError,
        ModelNotInstalledError,
    )
    from .pipeline import Estimator, PreparedImage
    from .results import AgeEstimate, Face, GenderEstimate, ImageResult


if not TYPE_CHECKING:  # a type checker sees the imports above; a __getattr__ typed Any
    # would let it accept any misspelt name (agegender.Estimatr)

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
