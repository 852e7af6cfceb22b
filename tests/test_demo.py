"""``ndd demo``: the functions behind the page (no browser), the server, and a real browser."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ndd import io
from ndd.demo import DemoBackend, DemoSettings, ProbedUpsampler, analyse_image, ucm_picture
from ndd.inference import segment_image, similarity_maps
from ndd.models import SpecDiffNet, SpecDiffNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "coffee.jpg"


def three_regions(h: int = 40, w: int = 56) -> np.ndarray:
    """(h, w, 3) float32: three flat colour regions with a little smooth shading."""
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2] = (0.9, 0.2, 0.1)
    img[:, w // 2 :] = (0.1, 0.3, 0.9)
    img[h // 2 :, : w // 4] = (0.2, 0.8, 0.2)
    shade = np.linspace(0.0, 0.05, w, dtype=np.float32)[None, :, None]
    return np.clip(img + shade, 0, 1)


def save_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model() -> SpecDiffNet:
    return SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()


class ForwardCounter:
    """Counts the network's forwards while in a ``with`` block."""

    def __init__(self, model: SpecDiffNet) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> ForwardCounter:
        self._handle = self.model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


@pytest.fixture()
def backend(model, tmp_path) -> DemoBackend:
    return DemoBackend(model, "hand-crafted test model", tmp_path / "work", DemoSettings(default_segments=2))


# ---------------------------------------------------------------- analysis (library side)


@pytest.mark.parametrize("size, max_side", [((40, 56), None), ((60, 90), 48)])
def test_click_similarity_equals_similarity_maps_without_network(model, size, max_side):
    """The precomputed FAI gives similarity_maps' maps (also at a capped working size), no forward."""
    img = three_regions(*size)
    analysis = analyse_image(img, model, max_side=max_side)
    assert analysis.upsampler is not None and analysis.upsampler.max_error < 1e-5
    points = [(3.0, 4.0), (size[1] - 1.0, size[0] - 1.0), (size[1] / 2 + 2.5, size[0] / 3)]
    with ForwardCounter(model) as counter:
        fast = np.stack([analysis.similarity(x, y) for x, y in points])
    assert counter.calls == 0
    reference, _ = similarity_maps(img, model, points, max_side=max_side)
    assert fast.shape == reference.shape == (3, *size)
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_probed_upsampler_too_small_window_is_detected_and_clicks_fall_back(model):
    """A window narrower than FAI's reach is caught by the check, and the direct path is exact."""
    img = three_regions()
    analysis = analyse_image(img, model, max_side=None)
    out = analysis.forward
    narrow = ProbedUpsampler(model, [f[:1] for f in out.levels], out.grid_shape, analysis.result.working_size, radius=1)
    assert narrow.max_error > 1e-3
    analysis._upsampler = None  # what analyse_image does when the check fails
    reference, _ = similarity_maps(img, model, [(10.0, 30.0)], max_side=None)
    np.testing.assert_allclose(analysis.similarity(10.0, 30.0), reference[0], atol=1e-6)


def test_analysis_hierarchy_is_segment_image_and_network_runs_once(model):
    img = three_regions()
    with ForwardCounter(model) as counter:
        analysis = analyse_image(img, model, max_side=None)
    assert counter.calls == 1
    expected = segment_image(img, model, max_side=None)
    assert analysis.n_segments == expected.hierarchy.n_segments
    for k in range(1, analysis.n_segments + 1):
        np.testing.assert_array_equal(analysis.labels(k), expected.hierarchy.labels_at(k))
    np.testing.assert_array_equal(analysis.ucm2(), expected.to_ucm2())


# ---------------------------------------------------------------- the page's callbacks


def test_network_runs_once_per_image_slider_and_clicks_reuse_it(backend, model, tmp_path):
    path = save_png(tmp_path / "regions.png", three_regions())
    with ForwardCounter(model) as counter:
        view = backend.open_image(path)
        assert view.key is not None, view.message
        for k in range(1, view.max_segments + 1):
            assert backend.show_level(view.key, k).segmentation is not None
        for x, y in [(2, 2), (50, 30), (20, 35)]:
            assert backend.click(view.key, x, y).heatmap is not None
        again = backend.open_image(path)  # the same image again: from the cache
    assert counter.calls == 1 and backend.analyses_run == 1
    assert again.key == view.key and "reused" in again.message
    assert "hand-crafted test model" in view.message and " s" in view.message


def test_slider_gives_label_map_with_chosen_number_of_segments(backend, tmp_path):
    image = three_regions()
    view = backend.open_image(save_png(tmp_path / "regions.png", image))
    assert view.max_segments >= 3 and view.n_segments == 2
    assert view.segmentation.shape == (40, 56, 3) and view.segmentation.dtype == np.uint8
    assert view.ucm.shape == (40, 56, 3)
    for k in range(1, view.max_segments + 1):
        level = backend.show_level(view.key, k)
        labels = io.read_labels(level.labels_path)  # the download is the level shown
        assert labels.shape == (40, 56) and len(np.unique(labels)) == k == level.n_segments
        assert f"{k} segments" in level.message
        expected = io.colour_overlay(io.read_image(tmp_path / "regions.png"), labels, mean_colours=False)
        np.testing.assert_array_equal(level.segmentation, expected)
    # out of range (a stale slider) is clamped, not an error
    assert backend.show_level(view.key, 10_000).n_segments == view.max_segments
    assert backend.show_level(view.key, 0).n_segments == 1
    # the ucm2 download is the BSDS doubleSize map, and both files live under work_dir
    ucm2 = io.read_ucm2(view.ucm2_path)
    assert ucm2.shape == (81, 113) and 0 <= ucm2.min() and ucm2.max() <= 1
    for p in (view.labels_path, view.ucm2_path):
        assert backend.work_dir in p.parents


def test_click_similarity_in_unit_range_peaks_at_clicked_pixel(backend, tmp_path):
    image = three_regions(48, 64)  # 6 x 8 grid: node (i, j) on pixel (8 j, 8 i)
    region = np.zeros((48, 64), int)
    region[:, 32:] = 1
    region[24:, :16] = 2
    view = backend.open_image(save_png(tmp_path / "regions.png", image))
    _, analysis = backend._cached(view.key)
    h, w = analysis.forward.grid_shape
    for x, y in [(8, 8), (24, 16), (48, 24), (56, 40), (8, 40), (20, 30), (63, 47)]:
        # on the grid, the row of K_D shown is the clicked node's: K_D(i, i) = 1 is its maximum
        node = min(round(y / 8), h - 1) * w + min(round(x / 8), w - 1)
        row = analysis.forward.similarity[0, node]
        assert float(row[node]) == pytest.approx(1.0) and float(row.max()) <= 1.0 + 1e-6
        sim = analysis.similarity(x, y)
        assert sim.shape == (48, 64) and sim.dtype == np.float32 and sim.min() >= 0 and sim.max() <= 1
        # at full resolution (FAI), the maximum is next to the click: in its region, nearly as high
        py, px = np.unravel_index(np.argmax(sim), sim.shape)
        assert region[py, px] == region[y, x]
        assert sim[y, x] >= 0.95 * sim.max()
        assert sim[region != region[y, x]].mean() < 0.5 * sim[y, x]  # other regions are dissimilar
        heat = backend.click(view.key, x, y)
        assert heat.heatmap.shape == (48, 64, 3) and f"({x}, {y})" in heat.message
        assert tuple(heat.heatmap[y, x]) == (255, 0, 0)  # the point is marked


def test_bad_input_gives_a_message_and_the_backend_keeps_serving(model, tmp_path):
    backend = DemoBackend(model, "m", tmp_path / "work", DemoSettings(max_upload_bytes=200_000, max_pixels=400_000,
                                                                      max_display_side=64))
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp_path / "trunc.jpg"
    Image.fromarray((three_regions(60, 80) * 255).astype(np.uint8)).save(truncated, "JPEG")
    truncated.write_bytes(truncated.read_bytes()[:300])
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    big_file = tmp_path / "big.bmp"
    Image.new("RGB", (300, 300)).save(big_file)  # 270 kB > 200 kB
    many_pixels = tmp_path / "wide.png"
    Image.new("RGB", (1000, 500)).save(many_pixels)  # small file, 0.5 MP > 0.4 MP
    cases = {not_image: "not an image", truncated: "truncated", tiny: "1x1", big_file: "at most 0.2 MB",
             many_pixels: "megapixels", tmp_path / "missing.png": "no such file"}
    for path, words in cases.items():
        view = backend.open_image(path)
        assert view.key is None and view.segmentation is None
        assert path.name in view.message and words in view.message, view.message
        assert str(tmp_path) not in view.message  # the page names the file, not the server's path
    assert backend.open_image(None).key is None
    assert "first" in backend.show_level(None, 3).message and "first" in backend.click(None, 1, 1).message
    assert "no longer" in backend.show_level("gone", 3).message
    # a large image is scaled to the display cap, and the page says so
    large = save_png(tmp_path / "large.png", three_regions(120, 160))
    view = backend.open_image(large)
    assert view.key is not None and view.segmentation.shape == (48, 64, 3)
    assert "160x120" in view.message and "64x48" in view.message
    bad_click = backend.click(view.key, 64, 10)  # x = W is outside
    assert bad_click.heatmap is None and "outside" in bad_click.message
    assert backend.open_example("nope").key is None


def test_ucm_picture_dark_where_contours_are_strong():
    ucm2 = np.zeros((9, 9))
    ucm2[:, 4] = 1.0  # a vertical contour between pixel columns 1 and 2
    ucm2[4, :4] = 0.25
    pic = ucm_picture(ucm2)
    assert pic.shape == (4, 4, 3) and pic.dtype == np.uint8
    assert pic[0, 1, 0] == 0 and pic[0, 0, 0] == 255 and 0 < pic[1, 0, 0] < 255


# ---------------------------------------------------------------- command line


def test_demo_help_imports_neither_torch_nor_gradio():
    script = ("import contextlib, io, sys\nfrom ndd.cli import main\n"
              "try:\n    with contextlib.redirect_stdout(io.StringIO()) as out:\n        main(['demo', '--help'])\n"
              "except SystemExit as exc:\n    assert exc.code == 0\n"
              "print('--host' in out.getvalue(), 'torch' in sys.modules, 'gradio' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]


def test_demo_without_gradio_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from ndd.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["demo", "--model", "handcrafted"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "neural-diffusion-distance[demo]"' in err[0]


def test_demo_warns_on_a_public_host_and_reports_a_busy_port(monkeypatch, capsys):
    import ndd.demo
    from ndd.cli import main

    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    seen = {}

    def busy(model, name, **kwargs):
        seen.update(kwargs, name=name)
        raise OSError("port taken")

    monkeypatch.setattr(ndd.demo, "start_demo", busy)
    assert main(["demo", "--model", "handcrafted", "--host", "0.0.0.0", "--port", "7999", "--max-upload-mb", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "warning" in err[0] and "0.0.0.0" in err[0] and "port taken" in err[1]
    assert seen["host"] == "0.0.0.0" and seen["port"] == 7999 and seen["settings"].max_upload_bytes == 2**20
    assert "hand-crafted" in seen["name"]
    assert main(["demo", "--model", "handcrafted", "--port", "7999"]) == 1
    assert "warning" not in capsys.readouterr().err  # 127.0.0.1: no warning


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_serves_locally_and_removes_its_files_when_stopped(model, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    from ndd.demo import start_demo

    import gradio.routes  # imported before start_demo: the server must still write nothing outside its folder

    before = os.environ.get("GRADIO_TEMP_DIR")
    default_dir = Path(gradio.routes.DEFAULT_TEMP_DIR)
    existed = default_dir.exists()
    server = start_demo(model, "test model", port=free_port(), examples_dir=REPO / "examples")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=30) as page:
            assert page.status == 200
        assert os.environ["GRADIO_TEMP_DIR"] == str(server.temp_dir) and server.temp_dir.is_dir()
        assert "coffee.jpg" in server.backend.examples
        view = server.backend.open_example("coffee.jpg")
        assert view.key is not None and server.temp_dir in view.ucm2_path.parents
    finally:
        server.close()
    assert not server.temp_dir.exists() and os.environ.get("GRADIO_TEMP_DIR") == before
    assert gradio.routes.DEFAULT_TEMP_DIR == str(default_dir)  # put back
    if not existed:
        assert not default_dir.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=5)


# ---------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def test_browser_upload_slider_click(tmp_path):
    """Headless Chromium drives ``ndd demo``: upload, result, slider, click; a screenshot is saved.

    ``NDD_DEMO_SCREENSHOT=path`` also saves it there, ``NDD_DEMO_MODEL`` picks the model
    (default here: the fast hand-crafted one).
    """
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    pytest.importorskip("selenium", reason="selenium is not installed (python -m pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no Chromium / chromedriver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ndd", "demo", "--model", os.environ.get("NDD_DEMO_MODEL", "handcrafted"),
         "--port", str(port), "--examples", str(REPO / "examples")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    # drained in a thread: a full pipe would block the server, and readline() cannot time out
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    driver = None
    profile = tempfile.TemporaryDirectory(prefix="ndd-test-chromium-")  # the browser's profile, not ~/.config
    try:
        deadline, log = time.monotonic() + 90, []
        while not any("serving http://127.0.0.1:" in line for line in log):  # printed once it accepts connections
            assert server.poll() is None and time.monotonic() < deadline, f"server did not start: {''.join(log)}"
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1700", f"--user-data-dir={profile.name}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")

        def src(elem_id: str) -> str | None:
            found = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
            return found[0].get_attribute("src") if found else None

        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ndd-upload input[type=file]"))
        assert src("ndd-segmentation") is None and src("ndd-similarity") is None
        upload.send_keys(str(EXAMPLE))
        first = wait.until(lambda d: src("ndd-segmentation"))
        assert src("ndd-ucm")
        status = driver.find_element(By.ID, "ndd-status").text
        assert "coffee.jpg" in status and "Model:" in status and " s" in status

        slider = driver.find_element(By.CSS_SELECTOR, "#ndd-slider input[type=range]")
        before = int(slider.get_attribute("value"))
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        moved = wait.until(lambda d: (s := src("ndd-segmentation")) != first and s)
        wait.until(lambda d: f"{before + 2} segments" in d.find_element(By.ID, "ndd-level-info").text)

        image = driver.find_element(By.CSS_SELECTOR, "#ndd-segmentation img")
        ActionChains(driver).move_to_element_with_offset(image, -40, 20).click().perform()
        heat = wait.until(lambda d: src("ndd-similarity"))
        assert "Diffusion similarity of pixel" in driver.find_element(By.ID, "ndd-click-info").text
        ActionChains(driver).move_to_element_with_offset(image, 60, -30).click().perform()
        wait.until(lambda d: src("ndd-similarity") not in (None, heat))
        assert src("ndd-segmentation") == moved  # a click does not redraw the segmentation

        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("NDD_DEMO_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["NDD_DEMO_SCREENSHOT"])
        served = Path(moved.split("file=", 1)[1]) if "file=/" in moved else Path()
        served_dir = next((p for p in served.parents if p.name.startswith("ndd-demo-")), None)
        assert served_dir is not None and served_dir.is_dir(), moved  # pictures are served from the temp dir
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        profile.cleanup()
    assert server.returncode == 0
    assert not served_dir.exists()  # removed with the server
    assert list(tmp_path.iterdir()) == [shot]  # nothing written in the working directory
