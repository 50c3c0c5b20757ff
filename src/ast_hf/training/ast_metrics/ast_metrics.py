"""`evaluate` module for the AST metrics: accuracy, mAP, mean AUC and d-prime, offline.

    import evaluate
    from ast_hf.training import metric_path
    metric = evaluate.load(metric_path())                       # single-label: references are class indices
    metric = evaluate.load(metric_path(), "multilabel")         # references are 0/1 rows [classes]
    metric.compute(predictions=scores, references=targets)      # scores: [clips, classes] logits or probs
"""

import datasets
import evaluate

from ast_hf.training.metrics import classification_metrics

_DESCRIPTION = "Accuracy, mAP, mean ROC AUC and d-prime as reported by the Audio Spectrogram Transformer papers."
_CITATION = """@inproceedings{gong21b_interspeech, title={{AST: Audio Spectrogram Transformer}},
author={Yuan Gong and Yu-An Chung and James Glass}, booktitle={Proc. Interspeech 2021}, pages={571--575}}"""
_INPUTS = """
Args:
    predictions: [clips, classes] scores (logits or probabilities).
    references: class indices [clips] (config "multiclass", the default) or 0/1 rows [clips, classes]
        (config "multilabel").
Returns:
    accuracy, mAP, mAUC, d_prime, num_classes_scored.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class AstMetrics(evaluate.Metric):
    def _info(self):
        reference = (datasets.Sequence(datasets.Value("float32")) if self.config_name == "multilabel"
                     else datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": reference}))

    def _compute(self, predictions, references):
        return classification_metrics(predictions, references)
