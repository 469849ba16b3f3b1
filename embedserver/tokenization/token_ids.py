"""A text's token ids as they travel: a list from a tokenizer, or an int32 array. The engine process keeps the
ids a front-end sent as views of the frame that carried them (embedserver/server/ipc.py): turning each id into
a Python int and back into an array for the model cost it ~35 ns an id on both sides of the pass, ~2.5 ms of
a 256 x 128 batch, on the thread that runs the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

TokenIds: TypeAlias = Sequence[int] | npt.NDArray[np.int32]
