"""The ast-hf web app, ready to run as a Hugging Face Space (or anywhere): `python examples/app.py [MODEL]`.

MODEL, else the AST_HF_MODEL variable, is a model folder or Hub id; the default,
MIT/ast-finetuned-audioset-10-10-0.4593, needs the Hub once (offline, give a local folder, e.g. one written by
`ast-hf convert` or `ast-hf demo`). AST_HF_MAX_SECONDS sets the longest upload (default 3600).

A Space (sdk: gradio, app_file: app.py) needs beside this file a requirements.txt with `ast-hf[app]` and a
packages.txt with `espeak-ng`, `sox` and `ffmpeg` (decoding; the example clips). Spaces set
GRADIO_SERVER_NAME=0.0.0.0; anywhere else the app binds to 127.0.0.1, this machine only.
"""

from __future__ import annotations

import os
import sys

from ast_hf.app import DEFAULT_MAX_SECONDS, build_app, launch_app, stop_on_sigterm
from ast_hf.model_loading import load_for_inference

DEFAULT_MODEL = "MIT/ast-finetuned-audioset-10-10-0.4593"


def _setting(name: str, default, kind, what: str):
    """The environment variable `name` read as `kind` (float, int), else `default`; a value that is not `what`
    stops the script with a message naming the variable, before the model is loaded."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise SystemExit(f"{name} must be {what}, got {text!r}")
    return value


def main(argv: list[str]) -> None:
    source = argv[1] if len(argv) > 1 else os.environ.get("AST_HF_MODEL", DEFAULT_MODEL)
    max_seconds = _setting("AST_HF_MAX_SECONDS", DEFAULT_MAX_SECONDS, float, "a positive number of seconds")
    port = _setting("GRADIO_SERVER_PORT", 7860, int, "a port number")
    model, feature_extractor = load_for_inference(source)
    demo = build_app(model, feature_extractor, max_seconds=max_seconds, title=f"ast-hf: {source}")
    with stop_on_sigterm():  # SIGTERM (`docker stop`, a Space restarting) exits 0 and removes the work folder
        launch_app(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), port=port)


if __name__ == "__main__":
    main(sys.argv)
