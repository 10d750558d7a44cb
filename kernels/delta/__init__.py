"""4-bit group-quantised sparse deltas of fast weights: pack, unpack, merge in place."""

from memsdk.kernels.delta.delta import (
    GROUP_SIZES,
    PackedDelta,
    merge_delta_,
    pack_delta,
    unpack_delta,
)

__all__ = ["GROUP_SIZES", "PackedDelta", "merge_delta_", "pack_delta", "unpack_delta"]
