"""Texts to token ids, with the special tokens the model was trained with and no padding.

Padding happens in one place (embedserver/runtime/padding.py), so the tokenizer's own padding and truncation are
switched off here (all-MiniLM's tokenizer.json pads everything to 128 otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from embedserver.errors import InvalidRequest
from embedserver.tokenization import fast_bpe
from embedserver.tokenization.fast_bpe import fast_bpe_for


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`; `required_suffix` is what every sequence must end with.

    For last-token pooling the pooled token must be `<|endoftext|>`: Qwen3-Embedding's own tokenizer appends it
    through its post-processor, but some conversions lack that post-processor, so it is appended here when the
    tokenizer does not do it itself (and never twice).
    """

    def __init__(
        self, path: Path, *, end_token: str | None = None, fast: bool = True, verified: str | None = None
    ) -> None:
        """`verified`: see fast_bpe.fast_bpe_for."""
        self.path = path
        self.end_token = end_token
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        # Without character offsets, which nothing here reads: the same ids in less CPU time. Older tokenizers
        # lack it.
        self._encode_ids = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        # The same ids again, several times faster, where they provably cannot differ (fast_bpe.py).
        # FAST_TOKENIZER=false (`fast`) keeps `tokenizers` for every text.
        self._fast = fast_bpe_for(path, self._tok, verified=verified) if fast else None
        # The file's digest while the fast encoder is in use: what another process may trust (`verified`).
        self.fast_digest = fast_bpe.digest(path) if self._fast is not None else None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        plain = self._tok.encode("x", add_special_tokens=False).ids
        full = self._tok.encode("x", add_special_tokens=True).ids
        start = _find(full, plain)
        self.prefix: list[int] = full[:start]
        self.suffix: list[int] = full[start + len(plain) :]
        self._extra: list[int] = []
        if end_token is not None:
            end_id = self._tok.token_to_id(end_token)
            if end_id is None:
                raise ValueError(f"tokenizer has no {end_token!r} token")
            if self.suffix[-1:] != [end_id]:
                self._extra = [end_id]
                self.suffix = [*self.suffix, end_id]
        self.pad_id = self._pad_id()

    @property
    def fast(self) -> bool:
        """Encodes through tiktoken: a short text takes tens of microseconds, less than a thread hand-off."""
        return self._fast is not None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Full token ids with special tokens, not yet truncated."""
        if self._fast is not None:
            return [self.prefix + ids + self.suffix for ids in self._fast.encode_batch(texts)]
        encodings = self._encode_ids(list(texts), add_special_tokens=True)
        return [enc.ids + self._extra for enc in encodings]

    def encode_plain(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with nothing added, special-token text (`<|im_start|>`) read as those tokens, as a
        Hugging Face tokenizer called with add_special_tokens=False reads it (the reranker's prompt)."""
        return [enc.ids for enc in self._encode_ids(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids (special tokens written out), after checking them against the vocabulary."""
        self._check_ids(ids)
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def token_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (`yes`), or None."""
        found = self._tok.token_to_id(token)
        return int(found) if found is not None else None

    def wrap_ids(self, ids: Sequence[int]) -> list[int]:
        """Client-supplied token ids: checked against the vocabulary, special tokens added where missing."""
        self._check_ids(ids)
        out = list(ids)
        if self.prefix and out[: len(self.prefix)] != self.prefix:
            out = self.prefix + out
        if self.suffix and out[-len(self.suffix) :] != self.suffix:
            out = out + self.suffix
        return out

    def fit(self, ids: list[int], max_length: int, *, truncate: bool, index: int | None = None) -> list[int]:
        """Cut to `max_length`, keeping the trailing special tokens (the pooled token), or refuse."""
        if len(ids) <= max_length:
            return ids
        if not truncate:
            where = f"input[{index}]" if index is not None else "input"
            raise InvalidRequest(
                f"{where} has {len(ids)} tokens, more than this model's maximum of {max_length}; "
                "shorten it or send truncate=true",
                param="input",
                code="context_length_exceeded",
            )
        keep = max_length - len(self.suffix)
        return ids[:keep] + self.suffix

    def _check_ids(self, ids: Sequence[int]) -> None:
        for token in ids:
            if not 0 <= token < self.vocab_size:
                raise InvalidRequest(f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})")

    def _pad_id(self) -> int:
        padding = self._tok.padding
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        # With right padding the pad value is never seen by real tokens (causal mask or key mask), so any
        # in-vocabulary id serves; the last appended special token is always one.
        return self.suffix[-1] if self.suffix else 0


def _find(haystack: list[int], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    raise ValueError("tokenizer changes plain tokens when adding special tokens; cannot locate them")
