"""memsdk.engine: the weight memory (byte-level model, test-time training, recall).

The engine takes tensors and frozen dataclasses and returns tensors and dataclasses; it never
touches disk, SQL or FAISS. Its model and inner loop are tracked in the weight-memory issue.
"""
