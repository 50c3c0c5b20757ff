"""`evaluate` metric module folder; `evaluate.load(ast_hf.training.metric_path())` loads ast_metrics.py."""
