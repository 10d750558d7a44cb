"""The encoder's layers as an ONNX Runtime session, for embedding one short text (a query).

A search embeds one question of a dozen tokens. At that size torch's eager CPU kernels cost
far more than their arithmetic: on two cores a question took 8-11 ms through
:class:`~memsdk.stores.bert.BertEncoder`, and about 3 ms through ONNX Runtime, which packs
each weight matrix once and fuses the small operators, with the same float32 result (cosine to
the torch vector above 0.9999). Batches of stored chunks are large enough for torch's matrix
products, where ONNX Runtime measured no faster, so they stay on torch.

The graph is written here from the encoder's own tensors with ``onnx.helper`` rather than by
``torch.onnx.export``: the exporter needs ``onnxscript`` and ~10 s of tracing on every start,
while the hand-written graph is a few standard operators per layer (MatMul, Add, Softmax,
LayerNormalization, Erf) built in well under a second. It covers the embedding layer's norm and
the six transformer layers of one unpadded sequence. The token embeddings (a table lookup) are
read in NumPy from the encoder's own tensors, so the session holds no copy of the 47 MB table,
and a query runs no torch operator: the thread embedding it keeps no OpenMP pool
(:mod:`memsdk.stores.background`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from memsdk.stores.bert import BertEncoder

__all__ = ["OnnxLayers", "onnx_available"]

# LayerNormalization entered the standard operator set in opset 17.
_OPSET = 17


def onnx_available() -> bool:
    """True when ``onnx`` and ``onnxruntime`` import; without them queries run on torch."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _build_graph(encoder: BertEncoder) -> bytes:
    """The serialized ONNX model: ``e`` (T, C) float32, the sum of the token, position and
    token-type embeddings, -> ``h`` (T, C), the last hidden states of the six layers (the
    embedding layer's norm first; post-LN BERT)."""
    from onnx import TensorProto, helper, numpy_helper

    cfg = encoder.cfg
    C, nh = cfg.hidden_size, cfg.num_attention_heads
    hs = C // nh
    eps = cfg.layer_norm_eps
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def tensor(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).cpu().numpy()

    def linear(x: str, module: torch.nn.Linear, name: str) -> str:
        w = const(f"{name}.w", tensor(module.weight).T)  # (in, out): x @ w
        b = const(f"{name}.b", tensor(module.bias))
        return node("Add", [node("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")

    def layer_norm(x: str, module: torch.nn.LayerNorm, name: str) -> str:
        w = const(f"{name}.w", tensor(module.weight))
        b = const(f"{name}.b", tensor(module.bias))
        return node("LayerNormalization", [x, w, b], f"{name}.out", axis=-1, epsilon=eps)

    heads = const("heads_shape", np.array([-1, nh, hs], dtype=np.int64))  # (T, nh, hs)
    flat = const("flat_shape", np.array([-1, C], dtype=np.int64))
    split = const("qkv_split", np.array([C, C, C], dtype=np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(hs), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    one = const("one", np.array(1.0, dtype=np.float32))
    root2 = const("root2", np.array(math.sqrt(2.0), dtype=np.float32))

    x = layer_norm("e", encoder.ln, "embed.ln")
    for i, block in enumerate(encoder.layers):
        p = f"l{i}"
        qkv = linear(x, block.attn.qkv, f"{p}.qkv")  # (T, 3C)
        qkv_out = [f"{p}.q", f"{p}.k", f"{p}.v"]
        nodes.append(helper.make_node("Split", [qkv, split], qkv_out, axis=1))
        q, k, v = (node("Reshape", [f"{p}.{n}", heads], f"{p}.{n}3") for n in "qkv")
        q = node("Transpose", [q], f"{p}.qt", perm=[1, 0, 2])  # (nh, T, hs)
        k = node("Transpose", [k], f"{p}.kt", perm=[1, 2, 0])  # (nh, hs, T)
        v = node("Transpose", [v], f"{p}.vt", perm=[1, 0, 2])  # (nh, T, hs)
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        attn = node("Softmax", [scores], f"{p}.attn", axis=-1)  # (nh, T, T)
        y = node("MatMul", [attn, v], f"{p}.y")  # (nh, T, hs)
        y = node("Transpose", [y], f"{p}.yt", perm=[1, 0, 2])  # (T, nh, hs)
        y = linear(node("Reshape", [y, flat], f"{p}.y2"), block.attn.proj, f"{p}.proj")
        x = layer_norm(node("Add", [x, y], f"{p}.res1"), block.ln_1, f"{p}.ln1")
        h = linear(x, block.fc, f"{p}.fc")
        # Exact GELU, as torch's default: 0.5 * h * (1 + erf(h / sqrt 2)).
        erf = node("Erf", [node("Div", [h, root2], f"{p}.hs2")], f"{p}.erf")
        gate = node("Mul", [half, node("Add", [erf, one], f"{p}.erf1")], f"{p}.gate")
        h = node("Mul", [h, gate], f"{p}.gelu")
        o = linear(h, block.out, f"{p}.out")
        x = layer_norm(node("Add", [x, o], f"{p}.res2"), block.ln_2, f"{p}.ln2")
    nodes.append(helper.make_node("Identity", [x], ["h"]))
    graph = helper.make_graph(
        nodes,
        "minilm_layers",
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["T", C])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", C])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8  # the oldest IR that opset 17 allows, read by every runtime release
    return bytes(model.SerializeToString())


class OnnxLayers:
    """The embedding norm and the six layers of ``encoder`` as one ONNX Runtime session, called
    with token ids (see the module doc).

    Args:
        encoder: the loaded torch encoder whose tensors the graph copies.
        threads: intra-op threads; ONNX Runtime's default is one per core.

    Raises:
        ImportError: ``onnx`` or ``onnxruntime`` is not installed (see :func:`onnx_available`).
    """

    def __init__(self, encoder: BertEncoder, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        options.inter_op_num_threads = 1
        # Idle worker threads would otherwise spin for a while after each query, taking
        # the cores from the embedding and weight stages that share them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(
            _build_graph(encoder), options, providers=["CPUExecutionProvider"]
        )
        # Views of the encoder's CPU tables, not copies. A single sentence is all token type 0.
        self._tokens = encoder.wte.detach().numpy()
        self._positions = encoder.wpe.detach().numpy()
        self._type0 = encoder.wtt.detach().numpy()[0]

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        """The token ids of one sequence (T of them) -> (T, C) float32 last hidden states."""
        rows = np.asarray(ids, dtype=np.int64)
        embedded = self._tokens[rows] + self._positions[: len(rows)] + self._type0
        return self._session.run(["h"], {"e": embedded})[0]
