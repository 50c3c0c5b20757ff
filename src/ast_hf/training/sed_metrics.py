"""Sound event detection metrics through `sed_eval` (Mesaros, Heittola and Virtanen 2016), the DCASE library.

`sed_scores(reference, estimated, labels)` scores {file: [SoundEvent]} tables:

* event-based: an estimated event matches a reference event of the same label when its onset is within
  `t_collar` (200 ms) and its offset within max(`t_collar`, `percentage_of_length` x the reference's length)
  (DCASE: 20%);
* segment-based: activity per label in 1 s segments.

F1 is reported micro-averaged over all events / segments (`*_f1`, sed_eval's overall figure) and as the mean
over classes (`*_f1_macro`); error rates likewise from sed_eval. `sed_eval` is a training extra
(`pip install sed_eval`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..event_tsv import SoundEvent


def _container(name: str, events: Sequence[SoundEvent]):
    import dcase_util

    return dcase_util.containers.MetaDataContainer(
        [{"filename": name, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in events])


def sed_scores(reference: Mapping[str, Sequence[SoundEvent]], estimated: Mapping[str, Sequence[SoundEvent]],
               labels: Sequence[str], t_collar: float = 0.2, percentage_of_length: float = 0.2,
               segment_seconds: float = 1.0) -> dict[str, float]:
    """Event-based and segment-based F1 / error rate of `estimated` against `reference` over the reference's files.

    Returns:
        {"event_f1", "event_f1_macro", "event_error_rate", "segment_f1", "segment_f1_macro",
        "segment_error_rate"}, F1 in [0, 1].
    """
    with warnings.catch_warnings():  # dcase_util imports pkg_resources, deprecated; not ours to fix
        warnings.simplefilter("ignore")
        import sed_eval
    events = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(labels), t_collar=t_collar,
                                                    percentage_of_length=percentage_of_length)
    segments = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(labels), time_resolution=segment_seconds)
    for name, truth in reference.items():
        ref, est = _container(name, truth), _container(name, estimated.get(name, []))
        events.evaluate(reference_event_list=ref, estimated_event_list=est)
        segments.evaluate(reference_event_list=ref, estimated_event_list=est)
    out = {}
    for prefix, metric in (("event", events), ("segment", segments)):
        overall, classwise = metric.results_overall_metrics(), metric.results_class_wise_average_metrics()
        # sed_eval gives NaN when nothing was estimated (precision 0 / 0); with reference events that F1 is 0
        out[f"{prefix}_f1"] = float(np.nan_to_num(overall["f_measure"]["f_measure"]))
        out[f"{prefix}_f1_macro"] = float(np.nan_to_num(classwise["f_measure"]["f_measure"]))
        out[f"{prefix}_error_rate"] = float(overall["error_rate"]["error_rate"])
    return out


__all__ = ["sed_scores"]
