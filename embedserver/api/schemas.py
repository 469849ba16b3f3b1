"""HTTP request bodies. Strict types: a number is not a text, and `null` is not an empty list."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from embedserver.service.calls import EmbedCall

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="Catalog name or alias; the default model when omitted")
    dimensions: StrictInt | None = Field(
        None, description="Matryoshka: keep the first N dimensions, renormalized"
    )
    instruction: StrictStr | None = Field(None, description="Task instruction for queries (Qwen3-Embedding)")
    input_type: Literal["query", "document"] | None = Field(
        None, description="'query' applies the model's default instruction; documents get none"
    )
    truncate: StrictBool | None = Field(
        None, description="Cut texts over the token limit (server default: on)"
    )
    normalize: StrictBool = True

    def call(self, inputs: list[str] | list[list[int]], *, openai_ids: bool = False) -> EmbedCall:
        """What these options ask of the embedding service, for `inputs`."""
        return EmbedCall(
            openai_ids=openai_ids,
            inputs=inputs,
            model=self.model,
            instruction=self.instruction,
            input_type=self.input_type,
            dimensions=self.dimensions,
            normalize=self.normalize,
            truncate=self.truncate,
        )


class EmbeddingRequest(_Options):
    """OpenAI's /v1/embeddings body, plus embedserver's optional fields."""

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


NonEmptyText = Annotated[StrictStr, Field(min_length=1)]


class EmbedRequest(_Options):
    text: NonEmptyText


class EmbedBatchRequest(_Options):
    texts: Annotated[list[NonEmptyText], Field(min_length=1)]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="Catalog name or alias; the default model when omitted")
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    add_special_tokens: StrictBool = Field(
        True, description="The special tokens the server adds before embedding (Qwen3: <|endoftext|>)"
    )


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    tokens: TokenIds | Annotated[list[TokenIds], Field(min_length=1)]


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RerankRequest(BaseModel):
    """The rerank body Cohere (/v1/rerank, /v2/rerank) and Jina clients send."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="A reranker's catalog name; RERANK_MODEL when omitted")
    query: StrictStr
    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1)]
    top_n: StrictInt | None = Field(None, ge=1, description="Return only the N best")
    return_documents: StrictBool = False
    instruction: StrictStr | None = Field(
        None, description="The task for the reranker's prompt (default: the model card's web-search task)"
    )

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class TeiRerankRequest(BaseModel):
    """The /rerank body text-embeddings-inference clients send."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    query: StrictStr
    texts: Annotated[list[StrictStr], Field(min_length=1)]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool = True
    instruction: StrictStr | None = None
