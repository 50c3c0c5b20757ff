"""Batch inference over many files: scores against the model run by hand on each file's windows, DataLoader
workers, 2 CPU processes under torchrun merged into one output, resume after an interruption (a hand-made
partial state and a real SIGKILL), corrupt / empty / missing files reported while the rest are done."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import load_audio, predict_files
from ast_hf.batch_inference import collect_inputs, part_paths
from helpers import RATE, noise, recording, run_cli, tone

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-5
BAD = {"corrupt.wav", "empty.wav", "missing.wav"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, trained):
    """A folder of 9 good files (0.6 to 3.1 s, one at 44.1 kHz, one FLAC), a corrupt and an empty file, a model
    folder, and a list file that also names a missing file."""
    model, fe = trained
    root = tmp_path_factory.mktemp("archive")
    audio = root / "audio"
    audio.mkdir()
    wave, _ = recording()
    pieces = {
        "speech_a.wav": wave[: int(1.0 * RATE)], "speech_b.wav": wave[int(0.5 * RATE): int(3.6 * RATE)],
        "tone_a.wav": tone(0.6, 500.0), "tone_b.wav": tone(2.3, 1500.0),
        "noise_a.wav": noise(1.7, "white", seed=50), "noise_b.flac": noise(2.9, "brown", seed=51),
        "mixed.wav": wave[int(2.5 * RATE): int(5.5 * RATE)], "long_noise.wav": wave[int(8.2 * RATE):],
    }
    for name, piece in pieces.items():
        sf.write(audio / name, piece, RATE)
    t = np.arange(int(1.9 * 44100)) / 44100
    sf.write(audio / "tone_44k.wav", (0.4 * np.sin(2 * np.pi * 900 * t)).astype(np.float32), 44100)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 20)
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    files = sorted(audio.iterdir())
    listing = root / "files.txt"
    listing.write_text("# the archive\n" + "\n".join(f"audio/{p.name}" for p in files) + "\naudio/missing.wav\n")
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    fe.save_pretrained(model_dir)
    return {"root": root, "audio": audio, "list": listing, "model_dir": model_dir, "files": files}


def reference_scores(model, fe, path, window=1.28, hop=0.64):
    """Windows cut by hand from the whole decoded file, one model call each, softmax, mean."""
    wave = load_audio(path)
    n, step = round(window * RATE), round(hop * RATE)
    starts = [0] if len(wave) <= n else list(range(0, len(wave) - n + 1, step))
    if len(wave) > n and starts[-1] + n < len(wave):
        starts.append(len(wave) - n)
    scores = []
    with torch.no_grad():
        for s in starts:
            x = fe(wave[s:s + n], sampling_rate=RATE, return_tensors="pt", padding="max_length", max_length=128)
            scores.append(model(input_values=x["input_values"]).logits.softmax(-1)[0].numpy())
    return np.mean(scores, axis=0), len(starts)


@pytest.fixture(scope="module")
def expected(archive, trained):
    model, fe = trained
    out = {}
    for path in archive["files"]:
        if path.name not in BAD:
            out[path.name] = reference_scores(model, fe, path)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def check_against_reference(records, expected, labels=("speech", "tone", "noise")):
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == sorted(expected) and len(records) == len(expected)  # each file exactly once
    for name, (scores, windows) in expected.items():
        record = by_name[name]
        assert record["windows"] == windows, name
        got = dict(zip(record["labels"], record["scores"]))
        assert sorted(got) == sorted(labels)
        np.testing.assert_allclose([got[label] for label in labels], scores, atol=ATOL, err_msg=name)


def test_folder_with_workers_matches_the_model_by_hand(archive, expected, trained, tmp_path, capsys):
    model, fe = trained
    output = tmp_path / "results.jsonl"
    summary = predict_files([archive["audio"]], model, fe, output, num_workers=2, batch_size=5, top_k=0,
                            progress=False)
    records = read_jsonl(output)
    check_against_reference(records, expected)
    assert summary.scored == len(expected) and summary.exit_code == 1
    assert set(summary.failed) == {str(archive["audio"] / name) for name in BAD - {"missing.wav"}}
    assert "corrupt.wav" in capsys.readouterr().err
    errors = read_jsonl(output.with_name("results.jsonl.errors.jsonl"))
    assert {Path(e["path"]).name for e in errors} == BAD - {"missing.wav"}
    assert any("zero-length" in e["error"] for e in errors)
    assert part_paths(output) == []
    # Records follow the input order (sorted folder listing), the durations are the files'.
    assert [r["path"] for r in records] == [str(p) for p in archive["files"] if p.name not in BAD]
    assert {Path(r["path"]).name: r["duration"] for r in records}["tone_44k.wav"] == pytest.approx(1.9, abs=1e-3)


def test_two_processes_under_torchrun_merge_into_one_output(archive, expected, tmp_path):
    output = tmp_path / "merged.jsonl"
    command = [str(REPO / ".venv/bin/torchrun"), "--standalone", "--nproc_per_node=2", "-m", "ast_hf.cli", "predict",
               str(archive["list"]), "--model", str(archive["model_dir"]), "--output", str(output),
               "--num-workers", "1", "--batch-size", "4", "--top-k", "0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode != 0, run.stderr  # three inputs failed ...
    check_against_reference(read_jsonl(output), expected)  # ... and every good file is there exactly once
    assert "missing.wav" in run.stderr and "corrupt.wav" in run.stderr
    errors = read_jsonl(output.with_name("merged.jsonl.errors.jsonl"))
    assert {Path(e["path"]).name for e in errors} == BAD
    assert part_paths(output) == []


def test_resume_keeps_finished_files_and_skips_a_cut_line(archive, expected, trained, tmp_path):
    model, fe = trained
    output = tmp_path / "results.jsonl"
    paths = collect_inputs([archive["list"]])
    good = [p for p in paths if Path(p).name not in BAD]
    # The state an interrupted 2-process run leaves: two finished files (sentinel scores, so recomputing them
    # would show), a failed one, and a line cut in the middle.
    sentinel = {"path": good[0], "duration": 1.0, "windows": 1, "labels": ["sentinel"], "scores": [0.5]}
    with open(tmp_path / "results.jsonl.part-1.jsonl", "w") as f:
        f.write(json.dumps(sentinel) + "\n")
        f.write(json.dumps(dict(sentinel, path=good[1])) + "\n")
        f.write(json.dumps({"path": good[2], "error": "ValueError: transient"}) + "\n")
        f.write(json.dumps(dict(sentinel, path=good[3]))[:25])
    summary = predict_files([archive["list"]], model, fe, output, num_workers=0, top_k=0, progress=False)
    assert summary.skipped == 2 and summary.scored == len(good) - 2
    records = {r["path"]: r for r in read_jsonl(output)}
    assert records[good[0]]["labels"] == ["sentinel"] and records[good[1]]["labels"] == ["sentinel"]
    check_against_reference([r for r in records.values() if r["labels"] != ["sentinel"]],
                            {k: v for k, v in expected.items() if k not in {Path(good[0]).name, Path(good[1]).name}})
    assert part_paths(output) == []
    # A second run has nothing left to do but still reports the failures.
    again = predict_files([archive["list"]], model, fe, output, num_workers=0, top_k=0, progress=False)
    assert again.scored == 0 and again.skipped == len(good) and again.exit_code == 1


def test_resume_after_a_real_kill_and_csv_output(archive, expected, tmp_path):
    many = tmp_path / "many.txt"
    good = [p for p in archive["files"] if p.name not in BAD]
    many.write_text("\n".join(str(p) for p in good))
    output = tmp_path / "results.csv"
    command = [sys.executable, "-m", "ast_hf.cli", "predict", str(many), "--model", str(archive["model_dir"]),
               "--output", str(output), "--num-workers", "0", "--batch-size", "1", "--top-k", "0", "--no-progress"]
    part = tmp_path / "results.csv.part-0.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 2:
            process.send_signal(signal.SIGKILL)  # no clean-up at all: a crashed job
            break
        time.sleep(0.02)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    assert not output.exists() and part.exists()
    done_before = part.read_text().count("\n")
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(good) - done_before} scored now" in resumed.stderr
    rows = list(csv.DictReader(open(output)))
    assert list(rows[0]) == ["path", "duration", "windows", "rank", "label", "score"]
    records = {}
    for row in rows:
        record = records.setdefault(row["path"], {"path": row["path"], "windows": int(row["windows"]),
                                                  "labels": [], "scores": []})
        record["labels"].append(row["label"])
        record["scores"].append(float(row["score"]))
    check_against_reference(list(records.values()), expected)
    assert part_paths(output) == []


def test_explicit_window_longer_than_a_file_is_reported_for_that_file(archive, trained, tmp_path):
    model, fe = trained
    output = tmp_path / "w.jsonl"
    summary = predict_files([archive["audio"] / "tone_a.wav", archive["audio"] / "tone_b.wav"], model, fe, output,
                            window=2.0, hop=1.0, num_workers=0, progress=False)
    assert summary.exit_code == 1 and "longer than" in summary.failed[str(archive["audio"] / "tone_a.wav")]
    assert [Path(r["path"]).name for r in read_jsonl(output)] == ["tone_b.wav"]
    with pytest.raises(ValueError, match="hop must be a positive"):
        predict_files([archive["audio"]], model, fe, output, hop=0, progress=False)
    with pytest.raises(ValueError, match="no input files"):
        predict_files([], model, fe, output, progress=False)


def test_resume_after_a_cut_line_in_the_part_it_appends_to_scores_that_file_again(archive, expected, trained,
                                                                                  tmp_path):
    """A single-process run killed mid-record leaves part-0 ending without a newline; the resumed rank 0 appends to
    that very part: its first record must start on a line of its own, and the cut file be scored again."""
    model, fe = trained
    output = tmp_path / "results.jsonl"
    good = [str(p) for p in archive["files"] if p.name not in BAD][:3]
    sentinel = {"path": good[0], "duration": 1.0, "windows": 1, "labels": ["sentinel"], "scores": [0.5]}
    with open(tmp_path / "results.jsonl.part-0.jsonl", "w") as f:
        f.write(json.dumps(sentinel) + "\n")
        f.write(json.dumps(dict(sentinel, path=good[1]))[:25])
    summary = predict_files(good, model, fe, output, num_workers=0, top_k=0, progress=False)
    assert summary.skipped == 1 and summary.scored == 2 and summary.exit_code == 0
    records = read_jsonl(output)
    assert [r["path"] for r in records] == good
    assert records[0]["labels"] == ["sentinel"]
    check_against_reference(records[1:], {Path(p).name: expected[Path(p).name] for p in good[1:]})


def test_an_output_name_with_glob_characters_is_merged(archive, trained, tmp_path):
    model, fe = trained
    output = tmp_path / "run[1]*?.jsonl"
    good = [str(p) for p in archive["files"] if p.name not in BAD][:2]
    summary = predict_files(good, model, fe, output, num_workers=0, progress=False)
    assert summary.scored == 2 and summary.exit_code == 0
    assert [r["path"] for r in read_jsonl(output)] == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # the part file is merged and deleted
    again = predict_files(good, model, fe, output, num_workers=0, progress=False)
    assert again.scored == 0 and again.skipped == 2


def test_a_file_whose_windows_cannot_be_featurised_fails_alone(archive, expected, trained, tmp_path):
    """A file of 10 ms (shorter than one 25 ms frame) and one decoded by ffmpeg that holds a NaN sample share a
    batch with good files: each is that file's failure, the good files are written."""
    model, fe = trained
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.full(160, 0.1, np.float32), RATE)
    raw = tmp_path / "nan.f32"
    wave = noise(1.5, "white", seed=7).astype(np.float32)
    wave[5000] = np.nan
    raw.write_bytes(wave.tobytes())
    nan_mkv = tmp_path / "nan.mkv"  # soundfile cannot read Matroska: decoded by ffmpeg
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", str(raw),
                    "-c:a", "pcm_f32le", str(nan_mkv)], check=True)
    good = [str(p) for p in archive["files"] if p.name not in BAD][:3]
    inputs = [good[0], str(tiny), good[1], str(nan_mkv), good[2]]
    output = tmp_path / "out.jsonl"
    summary = predict_files(inputs, model, fe, output, num_workers=0, batch_size=16, top_k=0, progress=False)
    assert summary.scored == 3 and summary.exit_code == 1
    assert "shorter than one 25 ms frame" in summary.failed[str(tiny)]
    assert "NaN or infinite" in summary.failed[str(nan_mkv)]
    records = read_jsonl(output)
    assert [r["path"] for r in records] == good
    check_against_reference(records, {Path(p).name: expected[Path(p).name] for p in good})


def test_one_path_given_as_a_string_is_one_input(archive, trained, tmp_path, monkeypatch):
    """A str is an iterable of characters: predict_files("tone_a.wav", ...) tagged "t", "o", ... and, through ".",
    every audio file below the working folder. One str or Path is one input."""
    model, fe = trained
    monkeypatch.chdir(archive["audio"])
    assert collect_inputs("tone_a.wav") == collect_inputs(Path("tone_a.wav")) == ["tone_a.wav"]
    output = tmp_path / "one.jsonl"
    summary = predict_files("tone_a.wav", model, fe, output, num_workers=0, progress=False)
    assert summary.scored == 1 and summary.failed == {} and summary.exit_code == 0
    assert [r["path"] for r in read_jsonl(output)] == ["tone_a.wav"]


def test_a_list_file_with_a_byte_order_mark_names_its_first_file(archive, tmp_path):
    """A list saved with a UTF-8 byte-order mark (Windows editors) glued the mark to its first path, which then
    failed as 'no such audio file' though the file is there."""
    first, second = [p for p in archive["files"] if p.name not in BAD][:2]
    listing = tmp_path / "files.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{first}\n{second}\n".encode())
    assert collect_inputs([listing]) == [str(first), str(second)]


@pytest.mark.parametrize("name,text,message", [
    ("notes.csv", "name,value\nx,1\n", "its header is name,value"),
    ("short.csv", "path,duration,windows,rank,label,score\na.wav,1.0\n", "line 2 is not a row"),
    ("notes.jsonl", '{"a": 1}\n{"path": "x.wav", "duration": 1.0, "windows": 1, "labels": [], "scores": []}\n',
     "line 1 is not a record"),
    ("notes.jsonl", "just some text\n", "line 1 is not a record"),
])
def test_an_existing_output_that_is_no_results_file_is_refused_and_kept(archive, trained, tmp_path, capsys, name,
                                                                         text, message):
    """--output naming another CSV crashed with KeyError 'path' (a traceback); another JSONL was replaced by the
    results, its lines that were no records dropped without a word. Both are refused, the file left as it was."""
    model, fe = trained
    output = tmp_path / name
    output.write_text(text)
    good = [str(p) for p in archive["files"] if p.name not in BAD][:1]
    with pytest.raises(ValueError, match=f"{output} exists but is not a results file.*{message}"):
        predict_files(good, model, fe, output, num_workers=0, progress=False)
    code, _, err = run_cli(capsys, "predict", *good, "--model", archive["model_dir"], "--output", output,
                           "--num-workers", "0", "--no-progress")
    assert code == 1 and "not a results file" in err and "Traceback" not in err
    assert output.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_empty_existing_output_is_filled(archive, trained, tmp_path):
    model, fe = trained
    good = [str(p) for p in archive["files"] if p.name not in BAD][:2]
    for name in ("empty.jsonl", "empty.csv"):
        output = tmp_path / name
        output.touch()
        assert predict_files(good, model, fe, output, num_workers=0, progress=False).scored == 2
        assert predict_files(good, model, fe, output, num_workers=0, progress=False).skipped == 2


def test_ctrl_c_says_where_the_finished_files_are_kept(archive, tmp_path):
    """Ctrl-C ended with 'no partial output was left behind', though the finished files are kept in the part file
    on purpose (the next run resumes from them); now the message names it, and the exit code stays 130."""
    many = tmp_path / "many.txt"
    many.write_text("\n".join(str(p) for p in archive["files"] if p.name not in BAD))
    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "ast_hf.cli", "predict", str(many), "--model", str(archive["model_dir"]),
               "--output", str(output), "--num-workers", "0", "--batch-size", "1", "--no-progress"]
    part = tmp_path / "results.jsonl.part-0.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 1:
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = process.communicate(timeout=240)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert process.returncode == 130, err
    assert f"the files finished so far are kept in {part}" in err and "no partial output" not in err
    assert part.exists() and not output.exists()


def test_macos_metadata_files_in_a_folder_are_not_taken_for_audio(tmp_path):
    """A folder copied from a Mac onto another disk holds "._clip.wav" beside "clip.wav" (AppleDouble metadata, a
    few hundred bytes): they were collected, failed to decode, and made the run exit 1. An explicitly named one is
    still taken as given."""
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "clip.wav", tone(0.5, 440.0), RATE)
    (folder / "._clip.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)
    assert collect_inputs([folder]) == [str(folder / "clip.wav")]
    assert collect_inputs([folder / "._clip.wav"]) == [str(folder / "._clip.wav")]


def test_an_output_that_is_neither_jsonl_nor_csv_and_list_entries_with_a_tilde(archive, trained, tmp_path,
                                                                                 monkeypatch):
    """--output results.json was written as JSON lines without a word (not the single JSON value a .json reader
    expects); it is refused naming the two formats, before any file is tagged. A list entry "~/x.wav" is in the
    home folder (it was joined to the list's folder)."""
    model, fe = trained
    with pytest.raises(ValueError, match=r"results\.json: give a file name ending in \.jsonl .* or \.csv"):
        predict_files([archive["audio"]], model, fe, tmp_path / "results.json", progress=False)
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text("~/clips/a.wav\nb.wav\n")
    assert collect_inputs([listing]) == [str(tmp_path / "home" / "clips" / "a.wav"), str(listing.parent / "b.wav")]
