"""Side-by-side benchmarks of ast-hf against transformers' AST: `python -m benchmarks [--quick]`."""
