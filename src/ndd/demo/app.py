"""The Gradio page of ``ndd demo`` and its server's life cycle.

:func:`build_app` lays out the page and wires its events to the plain callbacks of
:class:`ndd.demo.backend.DemoBackend`; :func:`start_demo` serves it in a background thread
and returns a :class:`DemoServer` whose :meth:`~DemoServer.close` stops the server and
removes the temporary directory that holds every file of the session (Gradio's uploads
and cache, the downloads). Gradio is imported only here, inside the functions.
"""

# No "from __future__ import annotations": Gradio reads the callbacks' annotations (gr.SelectData)
# as objects to know which argument receives the event data.
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ndd.demo.backend import DemoBackend, DemoSettings, find_examples
from ndd.models import SpecDiffNet

__all__ = ["build_app", "start_demo", "DemoServer", "default_examples_dir", "LOCAL_HOSTS"]

#: Hosts that serve this machine only; any other gets a warning.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

_INTRO = """# Neural diffusion distance: interactive segmentation
Upload an image (or pick an example). The network, the diffusion similarity `K_D` and the
hierarchy are computed once; the slider then picks the number of segments, and a **click on the
segmentation** shows the diffusion similarity of that pixel to every other one."""


def default_examples_dir() -> Path | None:
    """The repository's ``examples/`` folder (next to ``src/``), else ``./examples``, else ``None``."""
    import ndd

    for folder in (Path(ndd.__file__).resolve().parents[2] / "examples", Path.cwd() / "examples"):
        if folder.is_dir():
            return folder
    return None


def build_app(backend: DemoBackend) -> Any:
    """The page, a ``gradio.Blocks`` (not launched). Element ids start with ``ndd-`` (for tests)."""
    import gradio as gr

    def view_outputs(view) -> list[Any]:
        ok = view.key is not None
        slider = (gr.update(minimum=1, maximum=max(2, view.max_segments), value=view.n_segments, interactive=True)
                  if ok else gr.update())
        return [view.key if ok else None, view.message, view.segmentation, view.ucm, None,
                "Click the segmentation to see the similarity of a pixel." if ok else "", slider, "",
                gr.update(value=view.labels_path, interactive=ok), gr.update(value=view.ucm2_path, interactive=ok)]

    def on_upload(path: str | None):
        return view_outputs(backend.open_image(path))

    def on_example(name: str | None):
        return view_outputs(backend.open_example(name))

    def on_slider(key: str | None, k: float):
        view = backend.show_level(key, k)
        if view.segmentation is None:
            return gr.update(), view.message, gr.update()
        return view.segmentation, view.message, gr.update(value=view.labels_path)

    def on_click(key: str | None, evt: gr.SelectData):
        x, y = (evt.index if isinstance(evt.index, (list, tuple)) else (None, None))[:2]
        view = backend.click(key, x, y)
        return (view.heatmap if view.heatmap is not None else gr.update()), view.message

    with gr.Blocks(title="ndd demo", analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        key = gr.State(None)
        with gr.Row():
            upload = gr.File(label="Upload an image", file_types=["image"], type="filepath", elem_id="ndd-upload")
            example = gr.Dropdown(choices=list(backend.examples), value=None, label="...or pick an example",
                                  elem_id="ndd-example")
        status = gr.Markdown("Upload an image or pick an example.", elem_id="ndd-status")
        k0 = backend.settings.default_segments
        slider = gr.Slider(1, max(2, k0), value=k0, step=1, label="Number of segments", interactive=False,
                           elem_id="ndd-slider")
        level_info = gr.Markdown("", elem_id="ndd-level-info")
        with gr.Row():
            segmentation = gr.Image(label="Segmentation (click a pixel)", type="numpy", format="png",
                                    interactive=False, elem_id="ndd-segmentation")
            heatmap = gr.Image(label="Diffusion similarity of the clicked pixel", type="numpy", format="png",
                               interactive=False, elem_id="ndd-similarity")
        click_info = gr.Markdown("", elem_id="ndd-click-info")
        with gr.Row():
            ucm = gr.Image(label="Ultrametric contour map (darker = merged later)", type="numpy", format="png",
                           interactive=False, elem_id="ndd-ucm")
            with gr.Column():
                labels_dl = gr.DownloadButton("Label map of this level (PNG)", interactive=False, elem_id="ndd-labels")
                ucm2_dl = gr.DownloadButton("ucm2 (.mat, BSDS format)", interactive=False, elem_id="ndd-ucm2")
                gr.Markdown(f"Model: {backend.model_name}", elem_id="ndd-model")

        opened = [key, status, segmentation, ucm, heatmap, click_info, slider, level_info, labels_dl, ucm2_dl]
        upload.upload(on_upload, [upload], opened)
        example.input(on_example, [example], opened)
        # change covers dragging, arrow keys and typed values; always_last drops the intermediate
        # values of a fast drag instead of queueing one answer per step
        slider.change(on_slider, [key, slider], [segmentation, level_info, labels_dl], trigger_mode="always_last")
        segmentation.select(on_click, [key], [heatmap, click_info])
    return app


class DemoServer:
    """A running demo: :attr:`url`, :attr:`backend`; :meth:`close` (or ``with``) stops it and
    removes :attr:`temp_dir`."""

    def __init__(self, app: Any, backend: DemoBackend, temp: tempfile.TemporaryDirectory,
                 previous_env: str | None, patched: dict[str, str] | None = None) -> None:
        self.app, self.backend, self._temp, self._previous_env = app, backend, temp, previous_env
        self._patched = patched or {}
        self.temp_dir = Path(temp.name)
        self.url: str = str(app.local_url)

    def close(self) -> None:
        """Stop the server and delete every file it wrote (idempotent)."""
        try:
            self.app.close(verbose=False)
        finally:
            _restore_env(self._previous_env)
            _point_imported_gradio_to(None, self._patched)
            self._patched = {}
            self._temp.cleanup()

    def __enter__(self) -> "DemoServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_demo(
    model: SpecDiffNet,
    model_name: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    settings: DemoSettings | None = None,
    examples_dir: Path | None = None,
) -> DemoServer:
    """Serve the demo in a background thread.

    Args:
        model, model_name: the model that answers and how the page names it.
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port (``None``: Gradio picks a free one from 7860 on).
        settings: :class:`DemoSettings` (upload cap, display cap, ...).
        examples_dir: folder of example images (default :func:`default_examples_dir`).

    Returns:
        the running :class:`DemoServer`; nothing is written outside its ``temp_dir``.
    """
    settings = settings or DemoSettings()
    temp = tempfile.TemporaryDirectory(prefix="ndd-demo-")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    # Gradio keeps uploads and served files in GRADIO_TEMP_DIR (read when components and the
    # server are created): pointing it here keeps every file of the session in one removable place
    os.environ["GRADIO_TEMP_DIR"] = temp.name
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports
    # ... except the copies some Gradio modules took at import, if this process imported Gradio
    # before (the server then makes a folder there): point those here too, for this server's life
    patched = _point_imported_gradio_to(temp.name)
    try:
        backend = DemoBackend(model, model_name, Path(temp.name) / "results", settings,
                              find_examples(examples_dir if examples_dir is not None else default_examples_dir()))
        app = build_app(backend)
        app.queue(default_concurrency_limit=1)
        app.launch(server_name=host, server_port=port, prevent_thread_lock=True, inbrowser=False, quiet=True,
                   show_error=True, max_file_size=settings.max_upload_bytes)
    except BaseException:
        _restore_env(previous)
        _point_imported_gradio_to(None, patched)
        temp.cleanup()
        raise
    return DemoServer(app, backend, temp, previous, patched)


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


def _point_imported_gradio_to(folder: str | None, undo: dict[str, str] | None = None) -> dict[str, str]:
    """Set ``DEFAULT_TEMP_DIR`` of the already imported Gradio modules to ``folder`` and return
    the old values; with ``undo`` (what an earlier call returned), put those back instead."""
    if undo is not None:
        for name, value in undo.items():
            if name in sys.modules:
                sys.modules[name].DEFAULT_TEMP_DIR = value
        return {}
    old = {}
    for name in ("gradio.route_utils", "gradio.routes"):
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, "DEFAULT_TEMP_DIR", None), str):
            old[name], module.DEFAULT_TEMP_DIR = module.DEFAULT_TEMP_DIR, folder
    return old
