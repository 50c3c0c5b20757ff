"""The DCASE TSV of events: reading (sorted, files without events), an atomic round trip, and errors that name the
file and line."""

from __future__ import annotations

import pytest

from ast_hf.event_tsv import EventTableError, SoundEvent, read_event_tsv, write_event_tsv

HEADER = "filename\tonset\toffset\tevent_label\n"
LABELS = ["dog", "speech"]


def test_tsv_reads_events_sorted_and_files_without_events(tmp_path):
    path = tmp_path / "gt.tsv"
    path.write_text(HEADER + "a.wav\t2.5\t3.0\tspeech\na.wav\t0.25\t1.0\tdog\nb.wav\n\nc.wav\t\t\t\n")
    table = read_event_tsv(path, LABELS)
    assert table == {"a.wav": [SoundEvent(0.25, 1.0, "dog", "a.wav"), SoundEvent(2.5, 3.0, "speech", "a.wav")],
                     "b.wav": [], "c.wav": []}
    written = write_event_tsv(tmp_path / "out.tsv", table)
    assert written.read_text().splitlines()[:2] == ["filename\tonset\toffset\tevent_label", "a.wav\t0.250\t1.000\tdog"]
    assert read_event_tsv(written) == table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.tsv", "out.tsv"]  # no temporary file left


@pytest.mark.parametrize("rows, message", [
    ("a.wav\t1.0\t2.0\n", r"line 3: expected 4 tab-separated fields .* got 3"),
    ("a.wav\t1.0\t2.0\tcat\n", r"line 3: unknown event label 'cat'; known labels: dog, speech"),
    ("a.wav\t2.0\t2.0\tdog\n", r"line 3: onset 2.0 s is not before offset 2.0 s"),
    ("a.wav\t-0.5\t2.0\tdog\n", r"line 3: onset '-0.5' must be a finite time >= 0 seconds"),
    ("a.wav\tsoon\t2.0\tdog\n", r"line 3: onset 'soon' is not a number of seconds"),
    ("a.wav\t1.0\tnan\tdog\n", r"line 3: offset 'nan' must be a finite time"),
    ("\t1.0\t2.0\tdog\n", r"line 3: the filename is empty"),
])
def test_tsv_errors_name_the_file_and_line(tmp_path, rows, message):
    path = tmp_path / "bad.tsv"
    path.write_text(HEADER + "ok.wav\t0.0\t1.0\tdog\n" + rows)
    with pytest.raises(EventTableError, match=message) as error:
        read_event_tsv(path, LABELS)
    assert str(path) in str(error.value)


def test_tsv_without_header_or_file_is_refused(tmp_path):
    path = tmp_path / "bare.tsv"
    path.write_text("a.wav\t0.0\t1.0\tdog\n")
    with pytest.raises(EventTableError, match=r"bare.tsv, line 1: expected the header"):
        read_event_tsv(path)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_event_tsv(tmp_path / "missing.tsv")


def test_a_tsv_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Spreadsheet programs save UTF-8 with a BOM before the header; the header is still the header."""
    path = tmp_path / "excel.tsv"
    path.write_text(HEADER.replace("\n", "\r\n") + "a.wav\t0.5\t1.0\tdog\r\n", encoding="utf-8-sig")
    assert read_event_tsv(path, LABELS) == {"a.wav": [SoundEvent(0.5, 1.0, "dog", "a.wav")]}


@pytest.mark.parametrize("table, message", [
    ({"a\tb.wav": [SoundEvent(0.0, 1.0, "dog")]}, r"file name 'a\\tb.wav' cannot be written"),
    ({"": []}, r"file name '' cannot be written"),
    ({"a.wav": [SoundEvent(0.0, 1.0, "dog\nspeech")]}, r"event label 'dog\\nspeech' cannot be written"),
    ({"a.wav": [SoundEvent(0.0, 1.0, "")]}, r"event label '' cannot be written"),
    ({"a.wav": [SoundEvent(2.0, 1.0, "dog")]}, r"0 <= onset < offset"),
    ({"a.wav": [SoundEvent(-1.0, 1.0, "dog")]}, r"0 <= onset < offset"),
    ({"a.wav": [SoundEvent(float("nan"), 1.0, "dog")]}, r"finite times"),
])
def test_rows_the_reader_would_refuse_are_not_written(tmp_path, table, message):
    path = tmp_path / "out.tsv"
    path.write_text("old\n")
    with pytest.raises(ValueError, match=message):
        write_event_tsv(path, {"ok.wav": [SoundEvent(0.0, 1.0, "dog")], **table})
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_an_event_shorter_than_a_millisecond_reads_back(tmp_path):
    """A live window's last step can be one sample (62.5 us): to the millisecond its onset would equal its offset."""
    table = {"a.wav": [SoundEvent(1.0, 2.0, "dog", "a.wav"), SoundEvent(5.72, 5.720063, "speech", "a.wav")]}
    written = write_event_tsv(tmp_path / "out.tsv", table)
    assert written.read_text().splitlines()[1] == "a.wav\t1.000\t2.000\tdog"  # the usual rows keep milliseconds
    assert read_event_tsv(written, LABELS) == table
