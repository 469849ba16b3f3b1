"""JSON responses through orjson, which writes numpy vectors directly (no per-float Python objects), and the
base64 encoding of vectors that OpenAI's clients ask for."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, as the OpenAI SDK decodes `encoding_format="base64"`."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
