"""Layers that are not the paper's core and that more than one model uses or may use: the gated MLP of the larger
modern ViTs (:class:`SwiGLU`). The rest of the shared pieces move here with issue 27."""

from vitlab.layers.swiglu import SwiGLU

__all__ = ["SwiGLU"]
