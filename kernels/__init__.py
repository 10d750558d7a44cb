"""memsdk.kernels: Triton kernels, each paired with a readable torch reference.

Kernels import only torch, triton and the standard library.
"""

if __name__ != "memsdk.kernels":  # the checkout's root is on sys.path (python without -P)
    raise ImportError(
        f"{__file__} is memsdk.kernels and cannot be imported as {__name__!r}: start Python "
        "with `python -P` (or PYTHONSAFEPATH=1), or from outside the memsdk checkout"
    )
