"""Triton kernels of dmdl, installed as ``dmdl.kernels`` (the top-level ``kernels/`` folder of the source tree)."""
