"""The fast byte-level BPE gives exactly the ids `tokenizers` gives, and is refused wherever it could differ."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from embedserver.tokenization import fast_bpe
from embedserver.tokenization.fast_bpe import QWEN_PATTERN, fast_bpe_for
from embedserver.tokenization.tokenizer import TextTokenizer

END_OF_TEXT = "<|endoftext|>"

PIECES = [
    "hello", "World", "don't", "IT'S", "they'LL", "12345", "3.14", "x2", "!!!", "...", "--", "@#$%", "()",
    " ", "  ", "\t", "\n", "\r\n", "\n\n\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x85", "\u200b",
    "naïve", "cafe\u0301", "e\u0301\u0323", "A\u030a", "\u1100\u1161\u11a8", "한국어", "東京タワー", "中文文本",
    "مرحبا", "שלום", "नमस्ते", "ภาษาไทย", "😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "ﬁ", "①", "ｆｕｌｌ", ">\u0338",
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</tool_call>", "<|fim_pad|>", "<|endoftext",
]  # fmt: skip


def _random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)

    def code_point() -> str:
        while True:
            value = rng.randrange(0x20, 0x30000)
            if not 0xD800 <= value < 0xE000:
                return chr(value)

    texts = []
    for _ in range(count):
        parts = [
            rng.choice(PIECES)
            if rng.random() < 0.8
            else "".join(code_point() for _ in range(rng.randrange(1, 6)))
            for _ in range(rng.randrange(1, 30))
        ]
        texts.append(rng.choice(["", " ", "\n"]).join(parts))
    return texts


def _hf_ids(tokenizer_json: Path, texts: list[str], extra: list[int]) -> list[list[int]]:
    full = Tokenizer.from_file(str(tokenizer_json))
    return [enc.ids + extra for enc in full.encode_batch(texts, add_special_tokens=True)]


@pytest.mark.parametrize("layout", ["hf", "mlx"])
def test_qwen_tokenizer_is_fast_and_gives_the_same_ids(
    tiny_qwen3: Path, tiny_qwen3_mlx: Path, layout: str
) -> None:
    path = (tiny_qwen3 if layout == "hf" else tiny_qwen3_mlx) / "tokenizer.json"
    tokenizer = TextTokenizer(path, end_token=END_OF_TEXT)
    assert tokenizer._fast is not None
    # The MLX layout's tokenizer lacks the end-of-text post-processor: the server appends it either way.
    extra = [] if layout == "hf" else [tokenizer.suffix[-1]]
    texts = _random_texts(3000)
    assert tokenizer.encode_batch(texts) == _hf_ids(path, texts, extra)


def test_real_prose_and_code_get_the_same_ids(tiny_qwen3: Path) -> None:
    """This repository's own documentation and source, paragraph by paragraph: English prose, tables, code,
    numbers, typographic quotes and dashes."""
    root = Path(__file__).resolve().parent.parent
    files = [
        root / "README.md",
        *sorted((root / "docs").glob("*.md")),
        *sorted((root / "embedserver").rglob("*.py")),
    ]
    texts = [part for file in files for part in file.read_text().split("\n\n") if part.strip()]
    assert len(texts) > 500
    path = tiny_qwen3 / "tokenizer.json"
    assert TextTokenizer(path, end_token=END_OF_TEXT).encode_batch(texts) == _hf_ids(path, texts, [])


def test_a_large_batch_split_over_threads_keeps_order_and_ids(tiny_qwen3: Path) -> None:
    path = tiny_qwen3 / "tokenizer.json"
    tokenizer = TextTokenizer(path, end_token=END_OF_TEXT)
    texts = [text * 40 for text in _random_texts(300, seed=1)]  # ~millions of characters: several threads
    assert sum(map(len, texts)) > 4 * fast_bpe._CHUNK_CHARS
    assert tokenizer.encode_batch(texts) == _hf_ids(path, texts, [])


def test_texts_holding_the_batch_separator_get_their_own_ids(tiny_qwen3: Path) -> None:
    """The fast encoder joins a batch's texts around a separator token; a text holding that string is still
    encoded as `tokenizers` encodes it, and so are its neighbours."""
    path = tiny_qwen3 / "tokenizer.json"
    tokenizer = TextTokenizer(path, end_token=END_OF_TEXT)
    texts = ["before", f"a{fast_bpe._SEPARATOR}b", "after <|endoftext|> end", ""]
    assert tokenizer.encode_batch(texts) == _hf_ids(path, texts, [])


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_any_text_gets_the_same_ids(qwen_tokenizer: tuple[Tokenizer, fast_bpe.FastBPE], text: str) -> None:
    hf, fast = qwen_tokenizer
    assert fast.encode(text) == hf.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_qwen3: Path) -> tuple[Tokenizer, fast_bpe.FastBPE]:
    path = tiny_qwen3 / "tokenizer.json"
    hf = Tokenizer.from_file(str(path))
    fast = fast_bpe_for(path, hf)
    assert fast is not None
    return hf, fast


# --- where it could differ, `tokenizers` encodes --------------------------------------------------------------


def _spec(tiny_qwen3: Path) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((tiny_qwen3 / "tokenizer.json").read_text())
    return spec


def _swap_two_merges(spec: dict[str, Any]) -> None:
    merges = spec["model"]["merges"]
    merges[100], merges[101] = merges[101], merges[100]


def _nfkc(spec: dict[str, Any]) -> None:
    spec["normalizer"] = {"type": "NFKC"}


def _other_pattern(spec: dict[str, Any]) -> None:
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\S+|\s+"


def _stripped_added_token(spec: dict[str, Any]) -> None:
    spec["added_tokens"][0]["lstrip"] = True


def _ignore_merges(spec: dict[str, Any]) -> None:
    spec["model"]["ignore_merges"] = True


@pytest.mark.parametrize(
    "change", [_swap_two_merges, _nfkc, _other_pattern, _stripped_added_token, _ignore_merges]
)
def test_tokenizers_it_cannot_reproduce_exactly_are_left_to_tokenizers(
    tiny_qwen3: Path, tmp_path: Path, change: Any
) -> None:
    spec = copy.deepcopy(_spec(tiny_qwen3))
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False))
    tokenizer = TextTokenizer(path, end_token=END_OF_TEXT)
    assert tokenizer._fast is None
    texts = _random_texts(200, seed=2)
    assert tokenizer.encode_batch(texts) == _hf_ids(path, texts, [])


def _toy_bpe(tmp_path: Path, merges: list[list[str]]) -> Path:
    """Byte-level BPE over the 256 bytes plus "bc", "ab" and "abc" (ids 256, 257, 258)."""
    byte_chars = sorted(fast_bpe._byte_of_char(), key=lambda char: fast_bpe._byte_of_char()[char])
    vocab = {char: index for index, char in enumerate(byte_chars)} | {"bc": 256, "ab": 257, "abc": 258}
    spec: dict[str, object] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }  # fmt: skip
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def test_merges_lowest_id_first_bpe_would_not_make_are_caught(tmp_path: Path) -> None:
    # "abc" is listed as ab + c, but from its bytes "bc" (id 256) merges first: `tokenizers` then stops at
    # a + bc, while tiktoken, which merges any pair whose concatenation is a token, would make "abc".
    path = _toy_bpe(tmp_path, [["b", "c"], ["a", "b"], ["ab", "c"]])
    hf = Tokenizer.from_file(str(path))
    a = fast_bpe._byte_of_char()["a"]
    assert hf.encode("abc").ids == [a, 256]
    ranks = {bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258}
    naive = tiktoken.Encoding("naive", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={})
    assert naive.encode_ordinary("abc") == [258]
    assert fast_bpe_for(path, hf) is None
    assert TextTokenizer(path).encode_batch(["abc", "xabcx"]) == [[a, 256], hf.encode("xabcx").ids]


def test_merges_lowest_id_first_bpe_makes_are_accepted(tmp_path: Path) -> None:
    path = _toy_bpe(tmp_path, [["b", "c"], ["a", "b"], ["a", "bc"]])
    hf = Tokenizer.from_file(str(path))
    fast = fast_bpe_for(path, hf)
    assert fast is not None
    for text in ["abc", "ab", "abab", "bcabc", "aabcc", "x abc"]:
        assert fast.encode(text) == hf.encode(text).ids


def test_text_python_finds_nfc_is_left_alone_by_the_tokenizers_normalizer() -> None:
    """The fast encoder skips `tokenizers`' NFC where Python's quick check finds the text normalized: sound
    only if, on this machine's Python, no such text is changed by it (every code point, and sequences where
    composition and reordering happen: combining marks after letters, Hangul jamo)."""
    import unicodedata

    from tokenizers import normalizers

    nfc = normalizers.NFC()
    code_points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    assert [c for c in code_points if unicodedata.is_normalized("NFC", c) and nfc.normalize_str(c) != c] == []
    marks = [c for c in code_points if unicodedata.combining(c)]
    letters = [c for c in code_points if unicodedata.category(c).startswith("L")]
    jamo = [chr(c) for c in (*range(0x1100, 0x1200), *range(0xAC00, 0xAC40))]
    rng = random.Random(0)
    for _ in range(50_000):
        text = "".join(rng.choice(rng.choice((marks, letters, jamo))) for _ in range(rng.randrange(2, 6)))
        if unicodedata.is_normalized("NFC", text):
            assert nfc.normalize_str(text) == text, [hex(ord(c)) for c in text]


def test_a_file_another_process_verified_skips_the_merge_check_and_only_that_file(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Front-ends trust the engine's check of the same file content (its digest), never of another file."""
    path = tiny_qwen3 / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    monkeypatch.setattr(fast_bpe, "_built", {})
    monkeypatch.setattr(fast_bpe, "_checked", {})
    checks: list[int] = []

    def counted(vocab: object, merges: object) -> bool:
        checks.append(1)
        return True

    monkeypatch.setattr(fast_bpe, "_check_merges", counted)
    assert fast_bpe_for(path, tokenizer, verified=fast_bpe.digest(path)) is not None
    assert checks == []
    monkeypatch.setattr(fast_bpe, "_built", {})
    assert fast_bpe_for(path, tokenizer, verified="0" * 32) is not None
    assert checks == [1]
