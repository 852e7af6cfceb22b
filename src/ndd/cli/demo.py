"""``ndd demo``: a local web page to segment an image and explore its diffusion similarity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help
from ndd.models.config import DEFAULT_MAX_SIDE

INSTALL_HINT = 'ndd demo: needs Gradio; install it with: pip install "neural-diffusion-distance[demo]"'


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=subcommand_help("demo"),
                              description="Serve an interactive page (Gradio): upload an image, choose the number of "
                                          "segments, click a pixel to see its diffusion similarity, download the "
                                          "label map and ucm2. Ctrl-C stops it.")
    p.add_argument("--model", default=None,
                   help="'default' (shipped weights), a shipped model name (e.g. bsds500), 'handcrafted', or a "
                        "checkpoint path, as for ndd segment (default: default)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860; 0: the first free one from 7860)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; 1 can be faster on a busy small CPU)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MB (default 20)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="longest side the network sees (default %(default)s)")
    p.add_argument("--examples", type=Path, default=None,
                   help="folder of example images offered on the page (default: the repository's examples/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if args.max_upload_mb <= 0 or args.max_side < 16 or not 0 <= args.port <= 65535 or (args.threads or 1) < 1:
        print("ndd demo: --max-upload-mb must be > 0, --max-side >= 16, --threads >= 1 and --port in 0..65535",
              file=sys.stderr)
        return 2
    from ndd.device import check_device_name

    try:  # before torch and Gradio are imported (seconds)
        check_device_name(args.device)
    except ValueError as err:
        print(f"ndd demo: {err}", file=sys.stderr)
        return 2
    # Imported here so that other subcommands (and --help) start without torch or Gradio.
    import signal
    import time

    from ndd.demo import DemoSettings, start_demo
    from ndd.demo.app import LOCAL_HOSTS
    from ndd.inference import load_segmentation_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model, description = load_segmentation_model(args.model, args.device)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as err:
        print(f"ndd demo: {err}", file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(f"ndd demo: warning: serving on {args.host} makes the demo reachable from other machines "
              "(no authentication); use --host 127.0.0.1 to keep it local", file=sys.stderr)
    settings = DemoSettings(max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side)
    try:
        server = start_demo(model, description, host=args.host, port=args.port or None, settings=settings,
                            examples_dir=args.examples)
    except OSError as err:  # e.g. the port is taken
        print(f"ndd demo: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a terminated server still removes its temporary files
    print(f"ndd demo: serving {server.url} (model: {description}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C or SIGTERM (e.g. from both a wrapper and its child) must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.close()
        print("ndd demo: stopped", file=sys.stderr)
    return 0
