"""The packaged MiniLM embedder: offline, normalized, and usable by Chroma and LangChain."""

from __future__ import annotations

import numpy as np
import pytest

from memory import ChromaEmbeddingFunction, LangChainEmbeddings, MiniLMEmbedder


def test_shape_and_normalization(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["I love hiking in the mountains.", "The quarterly report is due.", "ok"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_sentences_are_closer(embedder: MiniLMEmbedder) -> None:
    cat, kitten, stocks = embedder.embed(["I have a cat.", "My kitten is cute.", "Stock prices fell sharply today."])
    assert float(cat @ kitten) > float(cat @ stocks) + 0.2


def test_batched_equals_single(embedder: MiniLMEmbedder) -> None:
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(10)]
    batched = embedder.embed(texts)
    single = np.stack([embedder.embed_one(t) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_a_bare_string_is_refused(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_chroma_and_langchain_interfaces(embedder: MiniLMEmbedder) -> None:
    ef = ChromaEmbeddingFunction(embedder)
    out = ef(["hello", "world"])
    assert len(out) == 2 and len(out[0]) == 384
    assert ef.name() == "pllm-minilm" and ef.default_space() == "cosine"
    lc = LangChainEmbeddings.create(embedder)
    from langchain_core.embeddings import Embeddings

    assert isinstance(lc, Embeddings)
    docs = lc.embed_documents(["a", "b"])
    assert len(docs) == 2 and len(docs[0]) == 384
    np.testing.assert_allclose(lc.embed_query("a"), docs[0], atol=1e-5)
