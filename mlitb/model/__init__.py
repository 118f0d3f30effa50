"""The model core: spec language, flat parameter layout, file formats, PyTorch executor."""

from .errors import FormatError, ModelError, SpecError
from .layout import Segment, decay_multipliers, init_params, segments
from .model import Model
from .spec import Spec, expand, from_expanded

__all__ = [
    "FormatError",
    "Model",
    "ModelError",
    "Segment",
    "Spec",
    "SpecError",
    "decay_multipliers",
    "expand",
    "from_expanded",
    "init_params",
    "segments",
]
