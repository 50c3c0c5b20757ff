"""The small label rules every module shares: dataset-name keys, the generic `LABEL_i` names, label CSVs."""

import pytest
import torch

from ast_hf.labels import dataset_for_name, dataset_key, generic_id2label, generic_label, load_label_table
from helpers import run_cli
from test_convert import original_state_dict


def test_dataset_names_compare_without_case_dashes_or_underscores():
    assert dataset_key("ESC-50") == dataset_key("esc_50") == "esc50"
    assert dataset_for_name("Speech_Commands").name == "speechcommands"
    assert dataset_for_name("audio set") is None  # spaces are not ignored: no silent guessing


def test_recipes_and_converter_use_the_same_key():
    from ast_hf.convert import _resolve_labels
    from ast_hf.training.recipes import get_recipe

    assert get_recipe("Speech-Commands").name == "speechcommands"
    id2label, dataset, _ = _resolve_labels("ESC_50", 50)
    assert dataset.name == "esc50" and len(id2label) == 50


def test_generic_label_names_are_transformers_own():
    from transformers import PretrainedConfig

    assert generic_label(3) == "LABEL_3"
    assert generic_id2label(3) == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert generic_id2label(4) == PretrainedConfig(num_labels=4).id2label


def test_an_unquoted_comma_in_a_label_csv_names_the_line(tmp_path, capsys):
    table = tmp_path / "lab.csv"
    table.write_text("index,mid,display_name\n0,/m/1,Speech\n1,/m/2,Bird vocalization, bird call\n2,/m/3,Dog\n")
    with pytest.raises(ValueError, match=r"lab.csv, line 3: 1 field\(s\) more than the header.*quote"):
        load_label_table(table)
    # `ast-hf convert --labels` reports it as one clean error line, and writes nothing.
    torch.save(original_state_dict(64, 1, 3, (12, 12), seed=12), tmp_path / "three.pth")
    code, _, err = run_cli(capsys, "convert", tmp_path / "three.pth", tmp_path / "out", "--labels", table,
                           "--fstride", 10, "--tstride", 10, "--input-tdim", 128)
    assert code == 1 and "Traceback" not in err and "line 3" in err and "quote" in err
    assert not (tmp_path / "out").exists()


def test_a_negative_index_in_a_label_csv_names_the_line(tmp_path):
    """It was refused as a gap with no index named ("missing []")."""
    table = tmp_path / "lab.csv"
    table.write_text("index,mid,display_name\n0,/m/1,Speech\n-1,/m/2,Dog\n1,/m/3,Cat\n")
    with pytest.raises(ValueError, match=r"lab.csv, line 3: index -1 is negative"):
        load_label_table(table)
