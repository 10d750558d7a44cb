"""memsdk.kernels: Triton kernels, each paired with a readable torch reference.

Kernels import only torch, triton and the standard library.
"""
