"""Byte-level BPE through tiktoken, used only where it provably gives the ids `tokenizers` gives.

tiktoken encodes a text several times faster than `tokenizers` (docs/perf/log.md has the figures). For a lone
request tokenization is a sizeable part of what serving adds to the forward pass, and under load it is CPU
the event loop needs.

Taken only when nothing can differ; otherwise `tokenizers` encodes everything, as before:
- the model is byte-level BPE without dropout, unknown token, byte fallback, affixes or `ignore_merges`, and
  every byte has a token;
- the pre-tokenizer is a regex split with Qwen2/Qwen3's pattern (it matches every character, so tiktoken's
  find-all drops nothing) followed by the byte-level mapping without a regex of its own;
- the normalizer is NFC or none, applied through `tokenizers`' own normalizer (the same Unicode tables) to
  any text Python's quick check does not find already normalized;
- added tokens are matched verbatim (not normalized, stripped or single-word): they are split out of the raw
  text here, longest first at each position, as `tokenizers` does before normalizing the rest;
- the merges are the ones tiktoken's rule (merge the adjacent pair whose concatenation has the lowest id)
  performs: one per multi-byte token, listed in the order of the ids they produce, and for every token T the
  pair that BPE over T's bytes reaches using only lower ids is T's listed merge (`_merges_match_ranks`). Then
  every merge tiktoken performs on any text is a listed one, by induction: a token formed inside a longer text
  was formed from its own bytes as it would be alone, where the check holds; and a listed pair that is the
  lowest among all pairs is the lowest among the listed ones, so both pick the same pair at every step.
What the argument takes on trust is that the two regex engines (Oniguruma in `tokenizers`, fancy-regex in
tiktoken) split alike with this pattern: tests/test_fast_bpe.py compares whole encodings on thousands of texts
across scripts, and a few probe texts are compared again when a tokenizer file is first loaded in a process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from tokenizers import Tokenizer

from embedserver.tuning.cores import usable_cores
from embedserver.tuning.threads import named_executor

log = logging.getLogger(__name__)

# Qwen2's and Qwen3's split pattern: letters, single digits, punctuation runs, whitespace; every character falls
# in one alternative.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_PATTERNS = {QWEN_PATTERN}
# A batch is split over threads from this many characters a thread (~2k tokens, about a millisecond).
_CHUNK_CHARS = 8_192
_bpe_threads = min(8, usable_cores())


@cache
def _bpe_executor() -> ThreadPoolExecutor:
    """Threads for large batches, made on first use."""
    return named_executor("bpe", _bpe_threads)


_POST_PROCESSORS = {"ByteLevel", "TemplateProcessing"}
# Between texts in one tiktoken call; tiktoken never splits a word across it, so each text encodes as alone.
_SEPARATOR = "\uffff<embedserver-separator>\uffff"


class FastBPE:
    """Token ids of texts without the tokenizer's special tokens (its post-processor's prefix and suffix)."""

    def __init__(self, encoding: Any, added: dict[str, int], normalizer: Any) -> None:
        self._encoding = encoding
        self._separator_id: int = encoding.encode_single_token(_SEPARATOR)
        self._added = added
        self._normalizer = normalizer
        # Longest first, so at any position the longest added token wins (aho-corasick's leftmost-longest).
        alternatives = sorted(added, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, alternatives))) if added else None
        self._first_chars = {token[0] for token in added}

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Large batches are split over threads (tiktoken releases the interpreter lock while it encodes)."""
        chunks = min(_bpe_threads, sum(map(len, texts)) // _CHUNK_CHARS, len(texts))
        if chunks < 2:
            return self._encode_all(texts)
        parts = _split_by_chars(texts, chunks)
        return [ids for part in _bpe_executor().map(self._encode_all, parts) for ids in part]

    def encode(self, text: str) -> list[int]:
        return self._encode_all([text])[0]

    def _encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        """Every plain stretch of every text in one tiktoken call, a separator token between them: one release
        of the interpreter lock for the lot. Taking it back once per text instead waited behind a busy event
        loop each time (up to its 5 ms switch interval), which made tokenization under load several times slower."""
        layouts: list[list[int]] = []  # per text: added-token ids, and -1 where its next plain stretch goes
        plain: list[str] = []
        for text in texts:
            layout: list[int] = []
            for part in self._parts(text):
                if isinstance(part, int):
                    layout.append(part)
                else:
                    layout.append(-1)
                    plain.append(self._normalized(part))
            layouts.append(layout)
        joined = _SEPARATOR.join(plain)
        if joined.count(_SEPARATOR) != len(plain) - 1:  # a text holding the separator itself: one call each
            stretches = [self._encoding.encode_ordinary(stretch) for stretch in plain]
        else:
            stretches = self._split_at_separators(self._encoding.encode(joined, allowed_special={_SEPARATOR}))
        next_stretch = iter(stretches)
        out: list[list[int]] = []
        for layout in layouts:
            ids: list[int] = []
            for part in layout:
                if part < 0:
                    ids += next(next_stretch)
                else:
                    ids.append(part)
            out.append(ids)
        return out

    def _parts(self, text: str) -> list[str | int]:
        """The text's plain stretches and, between them, the ids of the added tokens it holds."""
        if self._split is None or not any(char in text for char in self._first_chars):
            return [text]
        parts: list[str | int] = []
        start = 0
        for match in self._split.finditer(text):
            parts += [text[start : match.start()], self._added[match.group()]]
            start = match.end()
        parts.append(text[start:])
        return parts

    def _normalized(self, text: str) -> str:
        # Python's quick check first: `tokenizers`' normalizer holds the interpreter lock for every text.
        # Text NFC by Python's tables is left alone by `tokenizers`' (tests/test_fast_bpe.py checks every code
        # point); other text goes through the latter.
        if self._normalizer is not None and not unicodedata.is_normalized("NFC", text):
            return str(self._normalizer.normalize_str(text))
        return text

    def _split_at_separators(self, ids: list[int]) -> list[list[int]]:
        stretches = []
        start = 0
        separator = self._separator_id
        for _ in range(ids.count(separator)):
            end = ids.index(separator, start)
            stretches.append(ids[start:end])
            start = end + 1
        stretches.append(ids[start:])
        return stretches


def _split_by_chars(texts: Sequence[str], parts: int) -> list[Sequence[str]]:
    """Consecutive runs of texts with about the same number of characters each."""
    share = sum(map(len, texts)) / parts
    runs: list[Sequence[str]] = []
    start = seen = 0
    for index, text in enumerate(texts):
        seen += len(text)
        if seen >= share * (len(runs) + 1) and len(runs) < parts - 1:
            runs.append(texts[start : index + 1])
            start = index + 1
    runs.append(texts[start:])
    return [run for run in runs if run]


_built: dict[bytes, FastBPE | None] = {}
_lock = threading.Lock()


def fast_bpe_for(path: Path, tokenizer: Tokenizer, *, verified: str | None = None) -> FastBPE | None:
    """The fast encoder for the tokenizer.json at `path` (loaded as `tokenizer`), or None where it could differ.
    Built once per file content in a process: the merge check takes about a second for Qwen's 151k tokens.
    `verified`: the content digest (`digest`) of a file whose merges another process of this server has
    checked already (the engine, for its front-ends); the check is skipped when this file has that digest."""
    raw = path.read_bytes()
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    with _lock:
        if digest not in _built:
            spec = json.loads(raw)
            reason = _unsupported(spec)
            trusted = verified is not None and verified == digest.hex()
            fast = None if reason else _build(spec, tokenizer, merges_checked=trusted)
            if reason:
                log.info("tokenizer %s: encoding with `tokenizers` (%s)", path, reason)
            elif fast is not None and not _agrees(fast, tokenizer):
                log.warning("tokenizer %s: the fast encoder disagrees on a probe text; not used", path)
                fast = None
            _built[digest] = fast
        return _built[digest]


# Texts that would expose a mistake in the reasoning above: added tokens with characters NFC would compose
# across their edge, decomposed accents, contractions, digit and whitespace runs, scripts without spaces.
_PROBES = [
    "Hello, world! It's 2026; they'll've 12345 items.",
    "naïve cafe\u0301 東京タワー 😀👍🏽 Ünïcödé",
    "<|endoftext|>\u0338 a<|im_start|>b<|im_end|>\n<think></think>>\u0338",
    "  leading\t\ttabs\r\n\r\nand   trailing   ",
    "한국어 텍스트 ᄀᄁ ﬁ ℌ ① ｆｕｌｌ",
]


def _agrees(fast: FastBPE, tokenizer: Tokenizer) -> bool:
    return all(fast.encode(text) == tokenizer.encode(text, add_special_tokens=False).ids for text in _PROBES)


def _unsupported(spec: dict[str, Any]) -> str | None:
    """Why this tokenizer.json is outside what FastBPE reproduces exactly, or None."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return "not a BPE model"
    if model.get("dropout") or model.get("unk_token") is not None or model.get("byte_fallback"):
        return "BPE with dropout, an unknown token or byte fallback"
    if (
        model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("ignore_merges")
    ):
        return "BPE with word affixes or ignore_merges"
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return "a normalizer other than NFC"
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) != 2:
        return "a pre-tokenizer other than a regex split and the byte-level mapping"
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return "a pre-tokenizer other than an isolating regex split"
    if pattern not in _PATTERNS:
        return "a split pattern not known to match every character"
    if (
        byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex")
        or byte_level.get("add_prefix_space")
    ):
        return "a byte-level step with a regex or prefix space of its own"
    post = spec.get("post_processor")
    posts = (post.get("processors", []) if post.get("type") == "Sequence" else [post]) if post else []
    if any(step.get("type") not in _POST_PROCESSORS for step in posts):
        return "a post-processor other than ByteLevel and TemplateProcessing"
    for added in spec.get("added_tokens", []):
        if added.get("normalized") or added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            return f"added token {added.get('content')!r} is normalized, stripped or single-word"
    return None


def digest(path: Path) -> str:
    """The content digest `fast_bpe_for` knows a file by."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _build(spec: dict[str, Any], tokenizer: Tokenizer, *, merges_checked: bool = False) -> FastBPE | None:
    try:
        import tiktoken
    except ImportError:
        return None
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    byte_of = _byte_of_char()
    try:
        ranks = {bytes(byte_of[char] for char in token): rank for token, rank in vocab.items()}
    except KeyError:
        ranks = {}
    if not set(byte_of) <= set(vocab) or not ranks:
        log.info("tokenizer: not byte-level (a token outside the byte alphabet, or a byte without a token)")
        return None
    if len(ranks) != len(vocab) or not (merges_checked or _merges_match_ranks(vocab, merges)):  # type: ignore[arg-type]
        log.info(
            "tokenizer: its merges are not the ones lowest-id-first BPE performs; encoding with `tokenizers`"
        )
        return None
    added = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    encoding = tiktoken.Encoding(
        "embedserver-bpe",
        pat_str=spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
        mergeable_ranks=ranks,
        special_tokens={_SEPARATOR: max([*ranks.values(), *added.values()]) + 1},
    )
    return FastBPE(encoding, added, tokenizer.normalizer)


_checked: dict[bytes, bool] = {}  # by vocabulary and merges: tokenizer files that differ elsewhere share them


def _merges_match_ranks(vocab: dict[str, int], merges: list[tuple[str, str]]) -> bool:
    """One merge per multi-byte token, in the order of the ids they produce, each the pair that BPE over the
    token's own bytes reaches with lower ids only."""
    key = hashlib.blake2b(orjson.dumps([vocab, merges]), digest_size=16).digest()
    if key not in _checked:
        _checked[key] = _check_merges(vocab, merges)
    return _checked[key]


def _check_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> bool:
    if len(merges) != sum(1 for token in vocab if len(token) > 1):
        return False
    previous = -1
    for left, right in merges:
        token = left + right
        rank = vocab.get(token, -1)
        if rank <= previous:
            return False
        previous = rank
        # Two characters can only come from those two (the pair itself is not below its own id).
        if len(token) > 2 and _lower_id_bpe(token, rank, vocab) != [left, right]:
            return False
    return True


def _lower_id_bpe(token: str, limit: int, vocab: dict[str, int]) -> list[str]:
    """BPE over the characters of `token` with the tokens below id `limit` only."""
    parts = list(token)
    while len(parts) > 1:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            rank = vocab.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, where = rank, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    return parts


@cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), mapped back to the byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table
