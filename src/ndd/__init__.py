"""ndd: neural diffusion distance for image segmentation (Sun & Xu, NeurIPS 2019)."""

__version__ = "0.1.0"
