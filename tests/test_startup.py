"""What ``ndd segment`` imports: only what the chosen model needs.

timm (all of its models), ``torchvision.models`` and ``torch._dynamo`` cost seconds of start-up
on a small CPU and none of them is used by the shipped models (EfficientNet-Lite is ndd's own,
VGG16-HED too). Each check runs in a fresh interpreter, since this test process has imported
them already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

#: Modules no shipped model needs.
HEAVY = ("timm", "torchvision", "torchvision.models", "torch._dynamo")


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (two torch threads); it prints one JSON object as its last line."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # so that --threads 1 shows
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_segment_with_the_shipped_models_imports_no_timm_torchvision_or_dynamo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 56, 3), np.uint8)
    image[:, 28:] = 200  # two regions, some noise
    image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
    photo = tmp_path / "tiny.png"
    Image.fromarray(image).save(photo)
    result = _run(f"""
        import json, sys
        from ndd.cli import main

        bad = main(["segment", {str(photo)!r}, "--out", {str(tmp_path)!r} + "/bad", "--threads", "0"])
        codes = [main(["segment", {str(photo)!r}, "--out", {str(tmp_path)!r} + "/" + name, "--model", model,
                       "--threads", "1"]) for name, model in (("default", "default"), ("small", "bsds500"))]
        import torch

        print(json.dumps({{"bad": bad, "codes": codes, "threads": torch.get_num_threads(),
                          "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """)
    assert result["bad"] == 2 and result["codes"] == [0, 0]
    assert result["threads"] == 1  # --threads
    assert result["loaded"] == []
    for name in ("default", "small"):  # both really segmented
        assert (tmp_path / name / "tiny.mat").is_file() and (tmp_path / name / "tiny_hierarchy.png").is_file()


def test_backbone_modules_are_imported_when_built() -> None:
    result = _run(f"""
        import json, sys
        from ndd.models import build_backbone

        build_backbone("efficientnet_lite0")
        build_backbone("vgg16_hed")
        before = [m for m in {HEAVY!r} if m in sys.modules]
        build_backbone("resnet18")
        print(json.dumps({{"before": before, "after": "torchvision.models" in sys.modules}}))
    """)
    assert result == {"before": [], "after": True}
