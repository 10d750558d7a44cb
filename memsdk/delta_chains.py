"""A scope's saved weight memory as a chain of 4-bit deltas: reading the chain and checking it.

Each save of a scope's weights (:mod:`memsdk.consolidation`) is a delta file that names its
parent; a state is the initial weights with the chain merged in order, from the first delta to
the newest. A chain is trusted only whole: every delta's header is checked against the fast
weights this model can hold, every parent must come before its child, and every delta must
belong to this memory (a directory copied from another memory, or a forged file, sends the
scope to be rebuilt from the notepad instead).
"""

from __future__ import annotations

from memsdk.engine import ByteLM, TTTConfig, WeightDelta, read_delta
from memsdk.engine.delta import header_int
from memsdk.engine.ttt import MAX_SLOTS, initial_weights, slot_name
from memsdk.errors import FormatError
from memsdk.stores.weights import WeightDeltas

__all__ = ["DeltaChains"]


class DeltaChains:
    """The chains of deltas of one memory's scopes, read from ``deltas``.

    Args:
        deltas: where the scopes' delta files are.
        model: the weight-memory model the deltas adapt (their tensors' names and shapes).
        memory_id: the memory the deltas must belong to.
    """

    def __init__(self, deltas: WeightDeltas, model: ByteLM, memory_id: str) -> None:
        self.deltas = deltas
        self.model = model
        self.memory_id = memory_id
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every fast weight a delta of this model may hold (those of either mode), by name:
        a delta's header is checked against them before its tensors are read."""
        if self._shapes is None:
            masked = TTTConfig(fast_params="fisher_masked")
            weights = initial_weights(self.model, masked)
            self._shapes = {
                slot_name(slot, name): tuple(w.shape)
                for slot in range(MAX_SLOTS)
                for name, w in weights.items()
            }
        return self._shapes

    def read(self, scope_id: int, version: int) -> WeightDelta:
        """One delta file, its header checked against :meth:`shapes`.

        Raises:
            FormatError: the file cannot be read, or is not a delta of this model.
        """
        path = self.deltas.path(scope_id, version)
        try:
            data = self.deltas.read(scope_id, version)
        except OSError as exc:
            raise FormatError(f"{path} cannot be read: {exc}") from exc
        return read_delta(data, source=str(path), shapes=self.shapes())

    def chain(self, scope_id: int, newest: int) -> list[tuple[int, WeightDelta]]:
        """The deltas from the first to ``newest``, following each file's parent.

        Raises:
            FormatError: a delta is unreadable, of another model or memory, or names a parent
                that does not come before it.
        """
        chain, version = [], newest
        while version:
            delta = self.read(scope_id, version)
            owner = delta.labels.get("memory_id")
            if owner is not None and owner != self.memory_id:
                raise FormatError(
                    f"delta {version} of scope {scope_id} belongs to memory {owner}, this is "
                    f"memory {self.memory_id}"
                )
            chain.append((version, delta))
            version = header_int(
                delta.labels.get("parent"),
                f"the parent named by delta {version} of scope {scope_id}",
                high=version - 1,
            )
        return chain[::-1]

    def versions(self, scope_id: int) -> list[int]:
        """The versions on the chain of the scope's newest delta (empty if unreadable)."""
        versions = self.deltas.versions(scope_id)
        try:
            return [v for v, _ in self.chain(scope_id, versions[-1])] if versions else []
        except FormatError:
            return []
