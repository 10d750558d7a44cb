"""Contextual embeddings: a memory embedded with the text around it.

A chat turn often means little alone ("Yes, last weekend!"): what it answers is in the turn
before. ``add(text, context=previous_turn)`` stores ``text`` as it is but embeds it as

    normalize(embed(text) + CONTEXT_WEIGHT * embed(context))

so the vector ranking can find the turn by what it is about. The context itself is not stored,
and a hit is still the one memory that was added.

Measured on the LoCoMo development split (benchmarks/README.md), against returning a hit's
neighbours and grouping by session: the previous turn at weight 0.3 was the one kept (the
weight of the first grid point tried, 0.3 against 0.5 and 1.0; both sides' neighbours did no
better, and only the previous turn is known when a turn is added).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONTEXT_WEIGHT", "blend"]

CONTEXT_WEIGHT = 0.3


def blend(vectors: np.ndarray, context_vector: np.ndarray) -> np.ndarray:
    """Each row of ``vectors`` (N, D) moved toward ``context_vector`` (D,), unit norm again."""
    mixed = vectors + CONTEXT_WEIGHT * context_vector[None, :]
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
