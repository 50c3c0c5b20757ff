"""The package surface: `import ast_hf` is instant (no torch, no transformers) and every public name resolves,
whatever was imported before it (a submodule never shadows a public function of the same package)."""

import subprocess
import sys


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_is_light_and_registers_nothing():
    out = run("import sys, ast_hf; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_every_public_name_resolves_even_after_submodule_imports():
    out = run("import ast_hf.registration, ast_hf.explanation, ast_hf.training, ast_hf.frame_level, "
              "ast_hf.sed_metrics, ast_hf.streaming, ast_hf.hear, ast_hf\n"
              "missing = [n for n in ast_hf.__all__ if getattr(ast_hf, n, None) is None]\n"
              "print(missing, callable(ast_hf.register), callable(ast_hf.explain), callable(ast_hf.frame_scores), "
              "callable(ast_hf.event_metrics))")
    assert out.strip() == "[] True True True True"


def test_cli_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "ast_hf.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("info", "convert", "predict", "detect", "listen", "embed", "explain", "export-onnx", "demo",
                    "norm-stats"):
        assert command in out.stdout
