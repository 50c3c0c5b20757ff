"""Sound-event detection metrics through the field's own library, `sed_eval` (never re-implemented here).

* event-based F1: an estimated event matches a reference event of the same label when its onset is within
  `collar` seconds (200 ms, DCASE) and its offset within max(collar, 20% of the reference's length);
* segment-based F1: activity compared per label in segments of `segment` seconds (1 s, DCASE).

Both are micro-averaged over labels (sed_eval's "overall"). PSDS is not computed: neither `psds_eval` 0.5.3
(`DataFrame.fillna(method=...)`) nor `sed_scores_eval` 0.0.4 (writes into read-only arrays) runs with pandas 3,
which this project pins (see docs/events.md). `sed_eval` comes with the `events` extra.
"""

from __future__ import annotations

import warnings

from .sound_events import SoundEvent


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


def event_metrics(reference: list[SoundEvent], estimated: list[SoundEvent], labels: list[str] | None = None,
                  collar: float = 0.2, segment: float = 1.0) -> dict:
    """Event-based and segment-based metrics of `estimated` against `reference` events (matched by filename).

    Returns {"event_f1", "event_precision", "event_recall", "segment_f1", "segment_precision", "segment_recall",
    "event_error_rate", "segment_error_rate"}; F-measures in [0, 1]. `labels`: the label set (default: every label
    in either list). Files present in `reference` only count as files with no detections.
    """
    sed_eval, dcase_util = _sed_eval()
    labels = sorted(set(labels) if labels is not None else {e.label for e in reference + estimated})
    event_based = sed_eval.sound_event.EventBasedMetrics(event_label_list=labels, t_collar=collar,
                                                         percentage_of_length=0.2)
    segment_based = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels, time_resolution=segment)

    def container(events, filename):
        return dcase_util.containers.MetaDataContainer(
            [{"filename": e.filename, "onset": e.onset, "offset": e.offset, "event_label": e.label}
             for e in events if e.filename == filename])

    for filename in sorted({e.filename for e in reference} | {e.filename for e in estimated}):
        ref, est = container(reference, filename), container(estimated, filename)
        event_based.evaluate(reference_event_list=ref, estimated_event_list=est)
        segment_based.evaluate(reference_event_list=ref, estimated_event_list=est)
    events, segments = event_based.results_overall_metrics(), segment_based.results_overall_metrics()
    return {"event_f1": float(events["f_measure"]["f_measure"]),
            "event_precision": float(events["f_measure"]["precision"]),
            "event_recall": float(events["f_measure"]["recall"]),
            "event_error_rate": float(events["error_rate"]["error_rate"]),
            "segment_f1": float(segments["f_measure"]["f_measure"]),
            "segment_precision": float(segments["f_measure"]["precision"]),
            "segment_recall": float(segments["f_measure"]["recall"]),
            "segment_error_rate": float(segments["error_rate"]["error_rate"])}


__all__ = ["event_metrics"]
