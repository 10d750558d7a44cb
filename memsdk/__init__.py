"""memsdk: long memory for AI agents.

An exact notepad (SQL + FAISS, hybrid keyword/vector search) and a test-time-trained weight
memory behind one API::

    from memsdk import HybridMemory, Scope

    with HybridMemory.open("./agent-memory") as mem:
        scope = Scope(tenant="acme", user="u1")
        mem.add("Ticket 4812: VPN drops after sleep", scope=scope, metadata={"ticket": 4812})
        hits = mem.search("VPN drops after sleep", scope=scope, k=5)
"""

from memsdk.aio import AsyncHybridMemory
from memsdk.config import MemoryConfig
from memsdk.errors import (
    BusyError,
    ConfigError,
    DatabaseCorruptedError,
    DuplicateError,
    FilterError,
    FormatError,
    IndexCorruptedError,
    InputError,
    MemsdkError,
    ModelNotFoundError,
    NotFoundError,
    StaleFilesError,
    StorageError,
)
from memsdk.memory import HybridMemory
from memsdk.results import (
    AddResult,
    Answer,
    HistoryEvent,
    IngestReport,
    MemoryItem,
    MemoryStats,
    RouteDecision,
    RouteFeatures,
    RouterCalibration,
    ScopeStats,
    SearchHit,
    SkippedSource,
    StageLag,
    Surprise,
    SurpriseLine,
    WeightFigures,
)
from memsdk.scope import Scope

__version__ = "0.1.0"

__all__ = [
    "AddResult",
    "Answer",
    "AsyncHybridMemory",
    "BusyError",
    "ConfigError",
    "DatabaseCorruptedError",
    "DuplicateError",
    "FilterError",
    "FormatError",
    "HistoryEvent",
    "HybridMemory",
    "IndexCorruptedError",
    "IngestReport",
    "InputError",
    "MemoryConfig",
    "MemoryItem",
    "MemoryStats",
    "MemsdkError",
    "ModelNotFoundError",
    "NotFoundError",
    "RouteDecision",
    "RouteFeatures",
    "RouterCalibration",
    "Scope",
    "ScopeStats",
    "SearchHit",
    "SkippedSource",
    "StageLag",
    "StaleFilesError",
    "StorageError",
    "Surprise",
    "SurpriseLine",
    "WeightFigures",
    "__version__",
]
