"""Context: a memory found by the text around it, without being part of it.

A chat turn often means little alone ("Yes, last weekend!"): what it answers is in the turn
before. ``add(text, context=previous_turn)`` stores ``text`` as it is, and the context twice
over:

- the vector is ``normalize(embed(text) + CONTEXT_WEIGHT * embed(context))``, so the vector
  ranking finds the turn by what it is about;
- the context is stored beside the text (``chunks.context``) and full-text indexed as a second
  column, where a word of it counts ``CONTEXT_RANK_WEIGHT`` (0.5, ``stores.sql_keywords``) as
  much as one of the text.

A hit is still the one memory that was added, with its own text; ``update`` with a new text
drops the context.

Measured on the LoCoMo development split (benchmarks/README.md):
- the vector blend, previous turn at weight 0.3, raised evidence recall@5 from 0.544 to 0.562
  over the fusion of the time. Weights 0.5 and 1.0 did worse. Both neighbours at 0.3 did about
  as well (recall@5 0.499 against 0.503 for the previous turn alone, in a simpler fusion), but
  only the previous turn is known when a turn is added;
- the keyword column raised recall@5 / recall@10 from 0.628 / 0.708 to 0.700 / 0.775 over the
  shipped search without it. Leaving one conversation out chose weight 0.5 in all three folds,
  from 0.1, 0.3, 0.5 and 1.0.

Returning a hit's neighbours was tried too and not kept (see the README).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONTEXT_WEIGHT", "blend"]

CONTEXT_WEIGHT = 0.3


def blend(vectors: np.ndarray, context_vector: np.ndarray) -> np.ndarray:
    """Each row of ``vectors`` (N, D) moved toward ``context_vector`` (D,), unit norm again."""
    mixed = vectors + CONTEXT_WEIGHT * context_vector[None, :]
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
