"""ASTConfig: interoperability with transformers' ASTConfig and validation."""

import pytest
import transformers

from ast_hf import ASTConfig
from helpers import tiny_config


def test_defaults_match_transformers():
    ours, theirs = ASTConfig(), transformers.ASTConfig()
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                  "layer_norm_eps", "patch_size", "qkv_bias", "frequency_stride", "time_stride", "max_length",
                  "num_mel_bins", "initializer_range", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.model_type == theirs.model_type


def test_ours_loads_in_transformers_and_back(tmp_path):
    cfg = tiny_config(frequency_stride=12, time_stride=8, max_length=300, num_labels=7)
    cfg.save_pretrained(tmp_path)
    theirs = transformers.ASTConfig.from_pretrained(tmp_path)
    for field in ("hidden_size", "num_hidden_layers", "frequency_stride", "time_stride", "max_length",
                  "layer_norm_eps"):
        assert getattr(theirs, field) == getattr(cfg, field)
    assert theirs.num_labels == 7
    theirs.save_pretrained(tmp_path / "back")
    again = ASTConfig.from_pretrained(tmp_path / "back")
    assert again.max_length == 300 and again.time_stride == 8 and again.num_labels == 7
    # transformers keeps the field it does not use, so the authors' head eps survives the round trip.
    assert again.head_layer_norm_eps == 1e-5 and again.layer_norm_eps == 1e-6


def test_transformers_config_loads_here(tmp_path):
    theirs = transformers.ASTConfig(hidden_size=384, num_attention_heads=6, max_length=512, layer_norm_eps=1e-6)
    theirs.save_pretrained(tmp_path)
    ours = ASTConfig.from_pretrained(tmp_path)
    assert (ours.hidden_size, ours.num_attention_heads, ours.max_length, ours.layer_norm_eps) == (384, 6, 512, 1e-6)


def test_separate_head_eps_round_trips(tmp_path):
    cfg = tiny_config()
    cfg.save_pretrained(tmp_path)
    again = ASTConfig.from_pretrained(tmp_path)
    assert again.layer_norm_eps == 1e-6 and again.head_layer_norm_eps == 1e-5


def test_patch_grid():
    cfg = ASTConfig()
    assert cfg.patch_grid() == (12, 101)  # 1214 tokens with cls + dist, as the released models
    assert cfg.patch_grid(512) == (12, 50)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        cfg.patch_grid(10)


@pytest.mark.parametrize("bad", [dict(hidden_size=65, num_attention_heads=4), dict(max_length=8)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(Exception, match="num_attention_heads|patch"):
        ASTConfig(**bad)


def _value_error(raised: BaseException) -> BaseException:
    """The ValueError behind a config error (`@strict` wraps those of its class validators)."""
    return raised if isinstance(raised, ValueError) else raised.__cause__


@pytest.mark.parametrize("bad, field", [(dict(num_attention_heads=0), "num_attention_heads"),
                                        (dict(hidden_size=0), "hidden_size"),
                                        (dict(hidden_size=-64), "hidden_size"),
                                        (dict(intermediate_size=0), "intermediate_size"),
                                        (dict(num_hidden_layers=-1), "num_hidden_layers"),
                                        (dict(patch_size=(16.5, 16)), "patch_size"),
                                        (dict(patch_size=16.5), "patch_size"),
                                        # input between patches: adapt_patch_grid refused these, the config did not
                                        (dict(frequency_stride=17), "frequency_stride"),
                                        (dict(patch_size=(16, 4), time_stride=5), "time_stride"),
                                        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
                                        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
                                        (dict(attention_probs_dropout_prob=float("nan")),
                                         "attention_probs_dropout_prob"),
                                        (dict(layer_norm_eps=-1e-6), "layer_norm_eps"),
                                        (dict(classifier_layer_norm_eps=0.0), "classifier_layer_norm_eps")])
def test_bad_sizes_raise_value_error_naming_the_field(bad, field):
    with pytest.raises(Exception) as raised:
        ASTConfig(**bad)
    error = _value_error(raised.value)
    assert isinstance(error, ValueError) and field in str(error)


def test_whole_float_patch_sizes_are_accepted():
    assert ASTConfig(patch_size=(16.0, 16)).patch_size == 16
    assert ASTConfig(num_hidden_layers=0).num_hidden_layers == 0


def test_whole_float_sizes_become_integers_and_fractional_ones_are_refused():
    """`max_length=5.12 * 100` is 512 frames: the model builds and runs (float fields reached torch and failed
    there with a TypeError); a fractional count is refused naming the field."""
    import torch

    from ast_hf import ASTForAudioClassification

    cfg = ASTConfig(hidden_size=64.0, num_attention_heads=4, intermediate_size=128, num_hidden_layers=1,
                    max_length=5.12 * 100, frequency_stride=10.0, num_labels=3)
    assert (cfg.max_length, cfg.hidden_size, cfg.frequency_stride) == (512, 64, 10)
    assert all(type(v) is int for v in (cfg.max_length, cfg.hidden_size, cfg.frequency_stride))
    model = ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 512, 128)).logits.shape == (1, 3)
    for field in ("max_length", "time_stride", "num_mel_bins"):
        with pytest.raises(Exception) as raised:
            ASTConfig(**{field: 100.5})
        error = _value_error(raised.value)
        assert isinstance(error, ValueError) and field in str(error) and "whole number" in str(error)
