"""Sound-event detection metrics through the field's own library, `sed_eval` (never re-implemented here).

`event_metrics(reference, estimated, labels)` scores {file name: [SoundEvent]} tables over the reference's files:

* event-based: an estimated event matches a reference event of the same label when its onset is within `collar`
  seconds (200 ms, DCASE) and its offset within max(`collar`, 20% of the reference's length);
* segment-based: activity compared per label in segments of `segment` seconds (1 s, DCASE).

F1 is reported micro-averaged over all events / segments (`*_f1`, sed_eval's "overall") and as the mean over
labels (`*_f1_macro`). sed_eval gives NaN F1 when nothing was estimated (precision 0 / 0); against reference
events that is an F1 of 0, reported as such, in the micro F1 and in every label's share of the macro mean (sed_eval's
own class average, a `nanmean`, would leave such a label out). The error rate (S + D + I) / N has no value
without reference events (N = 0): then it is NaN when something was detected (0.0 when nothing was); NaN is not
valid JSON, so write it as null. PSDS is not computed: neither `psds_eval` 0.5.3
(`DataFrame.fillna(method=...)`) nor `sed_scores_eval` 0.0.4 (writes into read-only arrays) runs with pandas 3,
which this project pins (see docs/events.md). `sed_eval` comes with the `events` and `train` extras.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from .event_tsv import SoundEvent


def _sed_eval():
    try:
        with warnings.catch_warnings():  # dcase_util imports pkg_resources, deprecated by setuptools
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import dcase_util
            import sed_eval
    except ImportError as error:
        raise ImportError(f"event metrics need sed_eval: pip install 'ast-hf[events]' ({error})") from error
    return sed_eval, dcase_util


def event_metrics(reference: Mapping[str, Sequence[SoundEvent]], estimated: Mapping[str, Sequence[SoundEvent]],
                  labels: Sequence[str], collar: float = 0.2, segment: float = 1.0) -> dict[str, float]:
    """Event-based and segment-based metrics of `estimated` against `reference`, both {file name: events}.

    Every file of `reference` is scored (a file missing from `estimated` has no detections); files only in
    `estimated` are not. `labels`: the label set. The macro mean (`*_f1_macro`) is over the labels with reference
    events or detections, an undefined F1 (nothing detected, or nothing to detect) counting as 0; a label with
    neither has no F1 and is left out (0.0 when no label has any).

    Raises:
        ValueError: an event of a scored file whose label is not in `labels`.

    Returns:
        {"event_f1", "event_f1_macro", "event_precision", "event_recall", "event_error_rate", and the same five
        for "segment_"}: F-measures, precision and recall in [0, 1], error rates >= 0; an error rate is NaN when
        the reference holds no events (no segments with activity) but something was detected.
    """
    known = set(labels)
    for table_name, table in (("reference", reference), ("estimated", estimated)):
        for name in reference:  # only the files scored
            unknown = sorted({e.label for e in table.get(name, [])} - known)
            if unknown:  # sed_eval would fail deep inside with "'cat' is not in list"
                raise ValueError(f"the {table_name} events of {name!r} have label(s) {unknown} outside the label set "
                                 f"{sorted(known)}")
    sed_eval, dcase_util = _sed_eval()
    event_based = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(labels), t_collar=collar,
                                                         percentage_of_length=0.2)
    segment_based = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(labels), time_resolution=segment)

    def container(name: str, events: Sequence[SoundEvent]):
        return dcase_util.containers.MetaDataContainer(
            [{"filename": name, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in events])

    for name, truth in reference.items():
        ref, est = container(name, truth), container(name, estimated.get(name, []))
        event_based.evaluate(reference_event_list=ref, estimated_event_list=est)
        segment_based.evaluate(reference_event_list=ref, estimated_event_list=est)

    def zero_if_nan(value) -> float:
        return 0.0 if value is None or math.isnan(float(value)) else float(value)

    out = {}
    for prefix, metric in (("event", event_based), ("segment", segment_based)):
        with warnings.catch_warnings():  # "mean of empty slice" when nothing was estimated: that NaN is F1 0 below
            warnings.simplefilter("ignore", RuntimeWarning)
            overall, classwise = metric.results_overall_metrics(), metric.results_class_wise_metrics()
        scored = [zero_if_nan(classwise[label]["f_measure"]["f_measure"]) for label in labels
                  if classwise[label]["count"]["Nref"] > 0 or classwise[label]["count"]["Nsys"] > 0]
        out[f"{prefix}_f1"] = zero_if_nan(overall["f_measure"]["f_measure"])
        out[f"{prefix}_f1_macro"] = sum(scored) / len(scored) if scored else 0.0
        out[f"{prefix}_precision"] = zero_if_nan(overall["f_measure"]["precision"])
        out[f"{prefix}_recall"] = zero_if_nan(overall["f_measure"]["recall"])
        # sed_eval divides by N + eps: 4.5e15 for insertions against no reference events, where the rate is undefined
        no_reference = metric.overall["Nref"] == 0 and metric.overall["Nsys"] > 0
        out[f"{prefix}_error_rate"] = math.nan if no_reference else float(overall["error_rate"]["error_rate"])
    return out


__all__ = ["event_metrics"]
