"""Compiled kernels (built from ``cext/``). Called only from the modules of ``dipengine``."""
