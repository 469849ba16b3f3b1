"""How queued texts become batches: sorted by length, cut by count, by padded tokens, and where padding the
shorter texts would cost more than another pass (a pure function, tested on its own)."""

from __future__ import annotations

from collections.abc import Sequence

from embedserver.batching.queued import WorkItem
from embedserver.runtime.padding import bucket_length


def plan_batches(
    items: Sequence[WorkItem], *, max_size: int, max_tokens: int, split_tokens: int = 0
) -> list[list[WorkItem]]:
    """Sort by length and cut into batches of at most `max_size` items whose padded size
    (bucketed longest length × count) stays within `max_tokens`. A single item always forms a batch.

    With `split_tokens`, a batch is also cut where the next (longer) item would pad the items already in it by
    more than `split_tokens` tokens and by more than their own padded size: a pass costs a fixed time (on GPUs
    mostly the host queueing its kernels) plus time per padded token, so past that point a second pass costs
    less than the padding. Queries of 16 tokens waiting with passages of 256 then run as a batch of queries and
    a batch of passages, not all padded to 256; texts of similar lengths still share a pass."""
    batches: list[list[WorkItem]] = []
    current: list[WorkItem] = []
    current_length = 0  # the bucketed length `current` is padded to
    for item in sorted(items, key=lambda it: len(it.ids)):
        # Sorted ascending, so the newcomer is the longest and sets the padded length.
        length = bucket_length(len(item.ids))
        padded = length * (len(current) + 1)
        added = (length - current_length) * len(current)  # padding the newcomer adds to the items in
        split = split_tokens and added > split_tokens and added > current_length * len(current)
        if current and (len(current) >= max_size or padded > max_tokens or split):
            batches.append(current)
            current = []
        current.append(item)
        current_length = length
    if current:
        batches.append(current)
    return batches
