"""The operator tests' fixture `kube_emulator` is shared, in tests/conftest.py.

This directory has no `__init__.py`, unlike the other test directories, on purpose: tests/ is on
sys.path (pytest's rootdir-based "prepend" import mode), so a package `tests/operator/` would be
imported as `operator` and collide with the standard library's `operator` module (collection
fails with "'operator' is not a package"). Import shared helpers as `tests.kube_emulator`.
"""
