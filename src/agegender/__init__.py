"""agegender: age and gender of every face, with explicit per-model preprocessing."""

from .cards import ModelCard, get_card
from .errors import AgegenderError, CardError, ImageError, ModelFileError, ModelNotInstalledError
from .pipeline import Estimator, PreparedImage
from .results import AgeEstimate, Face, GenderEstimate, ImageResult

__all__ = [
    "AgeEstimate",
    "AgegenderError",
    "CardError",
    "Estimator",
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
__version__ = "0.1.0"
