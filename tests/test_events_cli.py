"""`ast-hf detect` and `ast-hf listen`: a model trained here finds the known events of a hand-built scene (TSV,
sed_eval metrics, plot); `listen --stdin` prints the window scores of `tag_long_audio`; bad input (malformed or
unknown-label reference TSVs, a stream cut mid-sample, no microphone library) fails or warns clearly."""

import io
import json
import sys

import numpy as np
import pytest
import soundfile as sf

from ast_hf import tag_long_audio
from ast_hf.event_tsv import read_event_tsv
from helpers import RATE, recording, run_cli

THRESHOLDS = ["--label-threshold", "tone=0.4:0.3", "--label-threshold", "noise=0.6:0.4", "--label-threshold",
              "speech=0.6:0.4", "--median-filter", "5", "--min-duration", "0.5", "--merge-gap", "0.3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("events")
    model, fe = trained
    model.save_pretrained(root / "model")
    fe.save_pretrained(root / "model")
    wave, _ = recording()  # speech 0-4 s, tone 4-8 s, noise 8-12 s
    sf.write(root / "scene.wav", wave[4 * RATE:], RATE, subtype="FLOAT")  # tone 0-4 s, noise 4-8 s
    (root / "ref.tsv").write_text("filename\tonset\toffset\tevent_label\nscene.wav\t0.0\t4.0\ttone\n"
                                  "scene.wav\t4.0\t8.0\tnoise\n")
    return root


def test_detect_writes_the_events_of_a_known_scene(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "detect", files / "scene.wav", "--model", files / "model", "--events",
                         tmp_path / "out.tsv", "--plot", tmp_path / "out.png", "--reference", files / "ref.tsv",
                         "--no-progress", *THRESHOLDS)
    assert code == 0, err
    lines = (tmp_path / "out.tsv").read_text().splitlines()
    assert lines[0] == "filename\tonset\toffset\tevent_label"
    events = read_event_tsv(tmp_path / "out.tsv", ["speech", "tone", "noise"])["scene.wav"]
    assert [(e.label, e.filename) for e in events] == [("tone", "scene.wav"), ("noise", "scene.wav")]
    assert abs(events[0].onset) <= 0.3 and abs(events[0].offset - 4) <= 0.3 and abs(events[1].onset - 4) <= 0.3
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["event_f1"] == 1.0 and metrics["segment_f1"] >= 0.9
    assert (tmp_path / "out.png").stat().st_size > 10_000


def test_detect_prints_strict_json_when_a_metric_is_undefined(files, tmp_path, capsys):
    """A reference with no events for the scored file leaves the error rates undefined (NaN): the metrics line is
    still JSON that strict readers take (null there), not Python's bare NaN."""
    (tmp_path / "ref.tsv").write_text("filename\tonset\toffset\tevent_label\nother.wav\t0.0\t1.0\ttone\n")
    code, out, err = run_cli(capsys, "detect", files / "scene.wav", "--model", files / "model", "--events",
                             tmp_path / "out.tsv", "--reference", tmp_path / "ref.tsv", "--no-progress", *THRESHOLDS)
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    metrics = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name} in {line}"))
    assert metrics["event_error_rate"] is None and metrics["segment_error_rate"] is None


@pytest.mark.parametrize("text, message", [
    ("onset\toffset\n", "line 1: expected the header"),
    ("filename\tonset\toffset\tevent_label\nscene.wav\t1.0\t2.0\n", "line 2: expected 4"),
    ("filename\tonset\toffset\tevent_label\nscene.wav\t0\t1\ttone\nscene.wav\tx\t2.0\ttone\n",
     "line 3: onset 'x' is not a number"),
    ("filename\tonset\toffset\tevent_label\nscene.wav\t2.0\t1.0\ttone\n", "line 2: onset 2.0 s is not before"),
    ("filename\tonset\toffset\tevent_label\nscene.wav\t1.0\t2.0\tdog\n", "line 2: unknown event label 'dog'"),
])
def test_bad_reference_files_name_the_line_and_nothing_is_written(files, tmp_path, capsys, text, message):
    (tmp_path / "ref.tsv").write_text(text)
    code, _, err = run_cli(capsys, "detect", files / "scene.wav", "--model", files / "model", "--events",
                       tmp_path / "out.tsv", "--reference", tmp_path / "ref.tsv", "--no-progress")
    last = err.strip().splitlines()[-1]  # (above it: transformers' weight-loading bar)
    assert code == 1 and last.startswith("ast-hf detect: error: ") and message in last
    assert not (tmp_path / "out.tsv").exists()


def test_bad_detect_options_fail_clearly(files, tmp_path, capsys):
    for extra, message in ((["--label-threshold", "dog=0.3"], "unknown label 'dog'"),
                           (["--label-threshold", "tone"], "LABEL=ON"),
                           (["--median-filter", "4"], "odd"),
                           (["--off-threshold", "0.7"], "must not exceed")):
        code, _, err = run_cli(capsys, "detect", files / "scene.wav", "--model", files / "model", "--events",
                           tmp_path / "out.tsv", "--no-progress", *extra)
        assert code == 1 and message in err, (extra, err)
    assert not (tmp_path / "out.tsv").exists()


KEEP = "filename\tonset\toffset\tevent_label\nold.wav\t0.0\t1.0\ttone\n"


@pytest.mark.parametrize("extra, message", [
    (["--window", "0.1"], "the window (0.1 s) is shorter than one patch"),
    (["--window", "0.6", "--hop", "0.6"], "give a hop of at most 0.5 s"),
    (["--hop", "0"], "hop must be a positive"),
])
def test_bad_window_or_hop_fails_once_and_keeps_the_events_file(files, tmp_path, capsys, extra, message):
    (tmp_path / "keep.tsv").write_text(KEEP)
    code, out, err = run_cli(capsys, "detect", files / "scene.wav", files / "scene.wav", "--model", files / "model",
                             "--events", tmp_path / "keep.tsv", "--no-progress", *extra)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("ast-hf detect: error: ") and message in last, err
    assert "skipped" not in err and "wrote" not in out
    assert (tmp_path / "keep.tsv").read_text() == KEEP


def test_detect_writes_nothing_when_no_file_was_scored(files, tmp_path, capsys):
    (tmp_path / "keep.tsv").write_text(KEEP)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(range(256)) * 4)
    code, out, err = run_cli(capsys, "detect", tmp_path / "empty.wav", tmp_path / "corrupt.wav", "--model",
                             files / "model", "--events", tmp_path / "keep.tsv", "--no-progress")
    assert code == 1 and "skipped" in err and "2 of 2 files failed" in err and "nothing written" in err
    assert "wrote" not in out and (tmp_path / "keep.tsv").read_text() == KEEP
    # one file scored: the events file is written, the failure still reported
    code, out, err = run_cli(capsys, "detect", files / "scene.wav", tmp_path / "empty.wav", "--model",
                             files / "model", "--events", tmp_path / "keep.tsv", "--no-progress")
    assert code == 1 and "1 of 2 files failed" in err and "wrote" in out
    assert "old.wav" not in (tmp_path / "keep.tsv").read_text()


def test_listen_events_of_a_short_stream_end_by_the_stream_end(files, capsys, monkeypatch):
    pcm = (np.random.default_rng(0).standard_normal(RATE // 2) * 3000).astype("<i2")  # 0.5 s < the 1.28 s window
    code, out, err = stdin_run(capsys, monkeypatch, pcm.tobytes(), "--stdin", "--model", files / "model",
                               "--print", "events", "--threshold", "0")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and all(r["offset"] <= 0.5 and r["delay"] >= 0 for r in rows), rows


def stdin_run(capsys, monkeypatch, data: bytes, *argv):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return run_cli(capsys, "listen", *argv)


def test_listen_stdin_prints_the_window_scores_of_tag_long_audio(files, trained, capsys, monkeypatch):
    wave = sf.read(files / "scene.wav", dtype="float32")[0][: 3 * RATE]
    pcm = np.clip(np.round(wave * 32768), -32768, 32767).astype("<i2")
    tags = tag_long_audio(*trained, pcm.astype(np.float32) / 32768, sampling_rate=RATE, hop=0.5,
                          progress=False)
    code, out, err = stdin_run(capsys, monkeypatch, pcm.tobytes(), "--stdin", "--model", files / "model", "--hop",
                               "0.5", "--top-k", "0", "--block", "0.07")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == list(range(len(tags.starts))) and all(r["latency"] >= 0 for r in rows)
    for row, expected in zip(rows, tags.scores):
        got = {item["label"]: item["score"] for item in row["labels"]}
        assert np.allclose([got[label] for label in tags.labels], expected, atol=1e-4)
    # f32le at 8 kHz is resampled; a stream cut mid-sample warns with the bytes dropped.
    data = (wave[::2].astype("<f4")).tobytes() + b"\x01\x02\x03"
    code, out, err = stdin_run(capsys, monkeypatch, data, "--stdin", "--format", "f32le", "--sampling-rate",
                               "8000", "--model", files / "model", "--print", "both", *THRESHOLDS)
    assert code == 0 and "dropped the last 3 byte(s)" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["type"] for r in rows} == {"window", "event"}
    assert [r["label"] for r in rows if r["type"] == "event"].count("tone") == 1


def test_listen_bad_sources_fail_clearly(files, capsys, monkeypatch):
    code, _, err = stdin_run(capsys, monkeypatch, b"\x01", "--stdin", "--model", files / "model")
    assert code == 1 and "no samples" in err and "dropped the last 1 byte(s)" in err
    code, _, err = stdin_run(capsys, monkeypatch, b"", "--stdin", "--model", files / "model", "--sampling-rate",
                             "0")
    assert code == 1 and "--sampling-rate" in err
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        code, _, err = run_cli(capsys, "listen", "--model", files / "model")
        assert code == 1 and "sounddevice" in err and "--stdin" in err


def test_listen_realtime_paces_a_file(files, tmp_path, capsys):
    import time

    wave = sf.read(files / "scene.wav", dtype="float32")[0][: round(1.5 * RATE)]
    sf.write(tmp_path / "short.wav", wave, RATE)
    started = time.perf_counter()
    code, out, err = run_cli(capsys, "listen", "--realtime", tmp_path / "short.wav", "--model", files / "model",
                         "--hop", "0.2")
    assert code == 0, err
    assert time.perf_counter() - started >= 1.4
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["start"] for r in rows] == [0.0, 0.2, 0.22]  # 1.28 s windows, then one aligned to the end (1.5 s)
