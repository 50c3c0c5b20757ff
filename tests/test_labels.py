"""The small label rules every module shares: dataset-name keys and the generic `LABEL_i` names."""

from ast_hf.labels import dataset_for_name, dataset_key, generic_id2label, generic_label


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
