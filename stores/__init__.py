"""memsdk.stores: the notepad's storage (SQL records, FAISS index, manifest, atomic files).

``stores`` never imports ``memsdk.engine``; it may raise the errors of ``memsdk.errors``.
"""

if __name__ != "memsdk.stores":  # the checkout's root is on sys.path (python without -P)
    raise ImportError(
        f"{__file__} is memsdk.stores and cannot be imported as {__name__!r}: start Python "
        "with `python -P` (or PYTHONSAFEPATH=1), or from outside the memsdk checkout"
    )
