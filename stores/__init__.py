"""memsdk.stores: the notepad's storage (SQL records, FAISS index, manifest, atomic files).

``stores`` never imports ``memsdk.engine``; it may raise the errors of ``memsdk.errors``.
"""
