"""Interactive web demo of the library (``ndd demo``; needs the ``demo`` extra, Gradio).

* :mod:`ndd.demo.analysis`: one image analysed once (:func:`analyse_image`): the forward,
  ``K_D``, the hierarchy, the ``ucm2`` and a precomputed FAI for fast similarity maps.
* :mod:`ndd.demo.backend`: the page's callbacks as plain functions (:class:`DemoBackend`),
  with a per-image cache and user-facing messages for bad input. No Gradio.
* :mod:`ndd.demo.app`: the Gradio page (:func:`build_app`) and server (:func:`start_demo`);
  Gradio is imported inside those functions only.
"""

from ndd.demo.analysis import ImageAnalysis, ProbedUpsampler, analyse_image
from ndd.demo.app import DemoServer, build_app, default_examples_dir, start_demo
from ndd.demo.backend import ClickView, DemoBackend, DemoSettings, ImageView, LevelView, find_examples, ucm_picture

__all__ = [
    "ImageAnalysis", "ProbedUpsampler", "analyse_image",
    "DemoServer", "build_app", "default_examples_dir", "start_demo",
    "ClickView", "DemoBackend", "DemoSettings", "ImageView", "LevelView", "find_examples", "ucm_picture",
]
