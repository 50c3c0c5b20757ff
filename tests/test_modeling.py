"""ASTModel / ASTForAudioClassification: parity with transformers' AST (an independent implementation with
the same weights), attention backends, losses, dtypes, loading of every checkpoint layout, bad input."""

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers

from ast_hf import ASTConfig, ASTForAudioClassification, ASTModel, onednn
from helpers import tiny_config

pytestmark = pytest.mark.numeric

ATOL = 1e-4  # fp32 logits


def features(batch=3, frames=128, seed=0):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ASTForAudioClassification(tiny_config(frequency_stride=10, time_stride=12)).eval()


@torch.no_grad()
def test_ours_saved_loads_in_transformers_with_same_logits(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    theirs = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
    assert type(theirs).__module__.startswith("transformers.")
    x = features()
    # transformers has one LayerNorm eps for backbone and head; ours keeps the authors' 1e-5 in the head.
    torch.testing.assert_close(model(x).logits, theirs(x).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_transformers_saved_loads_here_with_same_logits(tmp_path):
    cfg = transformers.ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 max_length=128, num_labels=4, frequency_stride=12, time_stride=10)
    torch.manual_seed(1)
    theirs = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():  # transformers zero-initialises these: give them values so they are tested
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    theirs.save_pretrained(tmp_path)
    ours = ASTForAudioClassification.from_pretrained(tmp_path).eval()
    x = features(frames=128)
    torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=ATOL, rtol=0)
    out_ours = ours.audio_spectrogram_transformer(x)
    out_theirs = theirs.audio_spectrogram_transformer(x)
    torch.testing.assert_close(out_ours.last_hidden_state, out_theirs.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(out_ours.pooler_output, out_theirs.pooler_output, atol=ATOL, rtol=0)


@torch.no_grad()
def test_transformers_4x_pytorch_model_bin_folder_loads(model, tmp_path):
    """The layout of the MIT/ast-finetuned-* checkpoints: pytorch_model.bin with 4.x parameter names."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(".attention.attention.query." in k for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    loaded = ASTForAudioClassification.from_pretrained(tmp_path).eval()
    x = features()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


@torch.no_grad()
def test_eager_and_sdpa_agree(model, tmp_path):
    model.save_pretrained(tmp_path)
    eager = ASTForAudioClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = ASTForAudioClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert ASTForAudioClassification.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
    x = features()
    torch.testing.assert_close(eager(x).logits, sdpa(x).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_outputs_attentions_and_hidden_states(model):
    out = model(features(batch=2), output_attentions=True, output_hidden_states=True)
    f, t = model.config.patch_grid()
    tokens = 2 + f * t
    assert len(out.attentions) == model.config.num_hidden_layers
    assert out.attentions[0].shape == (2, model.config.num_attention_heads, tokens, tokens)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, model.config.num_attention_heads, tokens))
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[0].shape == (2, tokens, model.config.hidden_size)
    as_tuple = model(features(batch=2), return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_pooled_output_is_mean_of_the_two_tokens(model):
    with torch.no_grad():
        out = model.audio_spectrogram_transformer(features())
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, :2].mean(1))


def test_losses_match_torch():
    torch.manual_seed(0)
    x = features(batch=4)
    single = ASTForAudioClassification(tiny_config(num_labels=5))
    labels = torch.tensor([0, 4, 2, 1])
    out = single(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    soft = torch.softmax(torch.randn(4, 5), -1)
    single.config.problem_type = "single_label_classification"
    torch.testing.assert_close(single(x, labels=soft).loss, -(soft * out.logits.log_softmax(-1)).sum(-1).mean())
    multi = ASTForAudioClassification(tiny_config(num_labels=5, problem_type="multi_label_classification"))
    targets = (torch.rand(4, 5) > 0.5).float()
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    with pytest.raises(ValueError, match="multi-label targets must have shape"):
        multi(x, labels=torch.tensor([0, 1, 2, 3]))
    regression = ASTForAudioClassification(tiny_config(num_labels=1))
    y = torch.randn(4)
    out = regression(x, labels=y)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), y))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config()).train()
    x, y = features(batch=2), torch.tensor([1, 3])
    model(x, labels=y).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    calls = []
    layer = model.audio_spectrogram_transformer.encoder.layer[0].intermediate
    layer.register_forward_hook(lambda *args: calls.append(1))
    model(x, labels=y).loss.backward()
    assert len(calls) == 2  # the layer's forward ran again during backward: activations were recomputed
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_loading_and_inference(model, tmp_path, dtype):
    model.save_pretrained(tmp_path)
    half = ASTForAudioClassification.from_pretrained(tmp_path, dtype=dtype).eval()
    assert all(p.dtype == dtype for p in half.parameters())
    x = features()
    logits = half(x.to(dtype)).logits
    assert logits.dtype == dtype
    torch.testing.assert_close(logits.float(), model(x).logits, atol=5e-2, rtol=5e-2)


@torch.no_grad()
def test_bfloat16_on_a_cpu_without_bf16_units_warns_and_float32_never_does(model):
    import warnings

    x = features()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x)
        model.to(torch.bfloat16)(x.bfloat16())
    slow = [w for w in caught if "without bf16 units" in str(w.message)]
    assert len(slow) == (0 if onednn.BF16_UNITS else 1), [str(w.message) for w in caught]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_cuda_fp16_sdpa_matches_fp32(model, tmp_path):
    model.save_pretrained(tmp_path)
    gpu = ASTForAudioClassification.from_pretrained(tmp_path, dtype=torch.float16, attn_implementation="sdpa")
    gpu = gpu.cuda().eval()
    x = features()
    torch.testing.assert_close(gpu(x.cuda().half()).logits.float().cpu(), model(x).logits, atol=2e-2, rtol=2e-2)


def test_wrong_input_shapes_are_refused(model):
    with pytest.raises(ValueError, match="mel bins last"):
        model(torch.randn(2, 128, 64))
    with pytest.raises(ValueError, match="expected \\[batch, frames, 128\\]"):
        model(torch.randn(128, 128))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(torch.randn(1, 10, 128))
    with pytest.raises(ValueError, match="input_values is required"):
        model()
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.randn(2, 128, 128), attention_mask=torch.ones(2, 100))


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_empty_batch_gives_empty_outputs(model, dtype):
    """A batch of no clips (a filter that left nothing) gives outputs of no rows, as torch's layers do; the input
    check's aminmax raised 'cannot compute aminmax over an empty dimension' instead."""
    model = model.to(dtype)
    empty = torch.zeros(0, 100, 128)
    out = model(empty, attention_mask=torch.ones(0, 100, dtype=torch.long), output_hidden_states=True)
    assert out.logits.shape == (0, model.config.num_labels) and out.logits.dtype == dtype
    assert all(hidden.shape[0] == 0 for hidden in out.hidden_states)
    backbone = model.audio_spectrogram_transformer(empty)
    assert backbone.last_hidden_state.shape == (0, 2 + 12 * 8, 64) and backbone.pooler_output.shape == (0, 64)


def test_missing_or_unexpected_weights_are_refused(model, tmp_path):
    state = safetensors.torch.load_file(_saved(model, tmp_path / "ok") / "model.safetensors")
    del state["audio_spectrogram_transformer.encoder.layer.1.output.dense.weight"]
    state["audio_spectrogram_transformer.encoder.layer.9.output.dense.weight"] = torch.zeros(1)
    bad = tmp_path / "bad"
    bad.mkdir()
    safetensors.torch.save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(bad)
    with pytest.raises(ValueError, match="missing weights.*layer.1.output.dense.weight.*unexpected weights.*layer.9"):
        ASTForAudioClassification.from_pretrained(bad)
    loose = ASTForAudioClassification.from_pretrained(bad, strict=False)  # opt out: transformers' behaviour
    assert isinstance(loose, ASTForAudioClassification)


def _saved(model, path):
    model.save_pretrained(path)
    return path


@torch.no_grad()
def test_backbone_and_classifier_checkpoints_cross_load(model, tmp_path):
    model.save_pretrained(tmp_path / "cls")
    backbone = ASTModel.from_pretrained(tmp_path / "cls").eval()
    x = features()
    torch.testing.assert_close(backbone(x).pooler_output, model.audio_spectrogram_transformer(x).pooler_output)
    backbone.save_pretrained(tmp_path / "backbone")
    fresh_head = ASTForAudioClassification.from_pretrained(tmp_path / "backbone").eval()
    torch.testing.assert_close(fresh_head.audio_spectrogram_transformer(x).pooler_output, backbone(x).pooler_output)


@torch.no_grad()
def test_new_task_gets_a_fresh_head_and_keeps_the_backbone(model, tmp_path):
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(tmp_path)
    new = ASTForAudioClassification.from_pretrained(tmp_path, num_labels=3).eval()
    assert new.classifier.dense.weight.shape == (3, model.config.hidden_size)
    assert new.config.num_labels == 3 and new.config.problem_type is None and len(new.config.id2label) == 3
    x = features()
    torch.testing.assert_close(new.audio_spectrogram_transformer(x).pooler_output,
                               model.audio_spectrogram_transformer(x).pooler_output)


@torch.no_grad()
def test_a_checkpoint_in_a_subfolder_loads_and_takes_a_fresh_head(model, tmp_path):
    """`subfolder=` (transformers' argument for a model kept below the folder or repository named): the config.json
    checked and read for `num_labels` is the subfolder's, not the top folder's."""
    model.save_pretrained(tmp_path / "model")
    x = features()
    loaded = ASTForAudioClassification.from_pretrained(tmp_path, subfolder="model").eval()
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    # a top folder with another model's config.json: num_labels is judged against the subfolder's own head
    tiny_config(num_labels=3).save_pretrained(tmp_path)
    new = ASTForAudioClassification.from_pretrained(tmp_path, subfolder="model", num_labels=3).eval()
    assert new.classifier.dense.weight.shape == (3, model.config.hidden_size) and len(new.config.id2label) == 3
    torch.testing.assert_close(new.audio_spectrogram_transformer(x).pooler_output,
                               model.audio_spectrogram_transformer(x).pooler_output)
    with pytest.raises(ValueError, match="elsewhere has no config.json"):
        ASTForAudioClassification.from_pretrained(tmp_path, subfolder="elsewhere")


def test_audioset_checkpoint_without_problem_type_becomes_multi_label(tmp_path):
    from ast_hf.labels import load_label_table

    id2label = load_label_table("audioset")
    cfg = tiny_config(num_labels=527, id2label=id2label)
    ASTForAudioClassification(cfg).save_pretrained(tmp_path)
    assert ASTConfig.from_pretrained(tmp_path).problem_type is None  # as in the MIT/ast-finetuned-audioset configs
    loaded = ASTForAudioClassification.from_pretrained(tmp_path)
    assert loaded.config.problem_type == "multi_label_classification"


@torch.no_grad()
def test_onednn_cpu_linear_matches_the_torch_path(model, monkeypatch):
    """The CPU inference fast path (oneDNN matmul, GELU fused) against plain F.linear + F.gelu."""
    from ast_hf import onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    x = features()
    monkeypatch.setattr(onednn, "ENABLED", True)
    fast = model(x, output_hidden_states=True)
    monkeypatch.setattr(onednn, "ENABLED", False)
    plain = model(x, output_hidden_states=True)
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-5, rtol=0)
    for a, b in zip(fast.hidden_states, plain.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 switches the oneDNN fast paths off")
@pytest.mark.parametrize("kernel", ["onednn", "blas"])
def test_training_uses_the_differentiable_path(model, monkeypatch, kernel):
    """Training records gradients through `onednn.differentiable_linear`: oneDNN's own autograd function where the
    training kernels are oneDNN's, torch's ops where they are torch's; inference takes the no-grad fast path of the
    host's float32 kernel."""
    from ast_hf import onednn

    calls, raw_calls = [], []
    real, real_raw = onednn._Float32Linear.apply, torch.ops.mkldnn._linear_pointwise
    monkeypatch.setenv("AST_HF_FP32_LINEAR", kernel)  # the host's probes may pick either
    monkeypatch.setenv("AST_HF_FP32_TRAINING", {"onednn": "onednn", "blas": "torch"}[kernel])
    onednn.float32_linear.cache_clear()
    monkeypatch.setattr(onednn._Float32Linear, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: raw_calls.append(1) or real_raw(*a),
                        raising=False)
    try:
        model.train()
        model(features(batch=2), labels=torch.tensor([0, 1])).loss.backward()
        assert bool(calls) == (kernel == "onednn") and model.classifier.dense.weight.grad is not None
        calls.clear()
        raw_calls.clear()
        with torch.no_grad():
            model.eval()(features(batch=1))
        assert not calls  # no autograd function in inference
        assert bool(raw_calls) == (kernel == "onednn")  # and inference takes the chosen kernel's fast path
    finally:
        onednn.float32_linear.cache_clear()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_per_head_attention_matches_sdpa(dtype, atol):
    """The CPU bf16 attention (one oneDNN matmul pair per clip and head) against torch's fused kernel in float32,
    with a key mask; float32 inputs check the algorithm exactly, bfloat16 within its rounding (8-bit mantissa)."""
    from ast_hf.onednn import attention_per_head

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    if dtype == torch.bfloat16 and not onednn.BF16_UNITS:
        pytest.skip("this CPU has no bf16 support for oneDNN (needs AVX-512 BW/VL/DQ or AVX2-VNNI-2)")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g) for _ in range(3))
    key_mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    key_mask[1, ..., 25:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2).reshape(2, 40, 48)
    got = attention_per_head(q.to(dtype), k.to(dtype), v.to(dtype), key_mask)
    assert got.dtype == dtype and got.shape == (2, 40, 48)
    torch.testing.assert_close(got.float(), want, atol=atol, rtol=0)


@torch.no_grad()
def test_bfloat16_cpu_fast_path_is_as_accurate_as_transformers_bfloat16(tmp_path):
    """bf16 logits against the same model in float32: ast-hf's CPU path (oneDNN linears, per-head attention) may
    not lose more than 1.5x what transformers' own bf16 sdpa forward loses (+1e-3)."""
    torch.manual_seed(0)
    ours = ASTForAudioClassification(tiny_config()).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    x = features(batch=4)
    want = ours(x).logits
    ours_err = (ours.to(torch.bfloat16)(x.bfloat16()).logits.float() - want).abs().max().item()
    theirs_err = (theirs.to(torch.bfloat16)(x.bfloat16()).logits.float() - want).abs().max().item()
    assert ours_err <= 1.5 * theirs_err + 1e-3, (ours_err, theirs_err)


@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 switches the CPU clip grouping off")
@pytest.mark.skipif(not onednn.BF16_UNITS, reason="bf16 CPU inference takes the fast paths only with bf16 matmuls")
def test_bf16_clip_groups_hold_the_same_bytes_as_float32_ones(model, monkeypatch):
    """The per-call budget is activation bytes: a bf16 model takes twice the clips per call of a float32 one, with
    the logits it has in one call."""
    monkeypatch.setenv("AST_HF_BF16_MATMUL", "bf16")  # the bf16 encoder itself, not its float32 twin
    onednn.bf16_policy.cache_clear()
    calls = []
    backbone = model.audio_spectrogram_transformer
    backbone.encoder.layer[0].register_forward_pre_hook(lambda layer, args: calls.append(len(args[0])))
    tokens = backbone.embeddings(features(batch=1))[0].shape[1]
    monkeypatch.setattr(onednn, "CPU_TOKENS_PER_CALL", 2 * tokens)
    x = features(batch=5)
    try:
        with torch.inference_mode():
            model(x)
            assert calls == [2, 2, 1]
            calls.clear()
            model.bfloat16()
            grouped = model(x.bfloat16()).logits
            assert calls == [4, 1]
            monkeypatch.setattr(onednn, "CPU_TOKENS_PER_CALL", 100 * tokens)
            whole = model(x.bfloat16()).logits
    finally:
        onednn.bf16_policy.cache_clear()
    torch.testing.assert_close(grouped, whole, atol=0, rtol=0)  # each clip's rows alike in any group


@torch.no_grad()
@pytest.mark.skipif(not onednn.ENABLED, reason="AST_HF_ONEDNN=0 switches the CPU clip grouping off")
def test_cpu_encoder_runs_clip_groups_with_unchanged_outputs(model, monkeypatch, tmp_path):
    """CPU inference runs the encoder over a few clips at a time: same logits as transformers' AST on the whole
    batch, and, with mixed lengths, each clip as it scores alone."""
    calls = []
    backbone = model.audio_spectrogram_transformer
    backbone.encoder.layer[0].register_forward_pre_hook(lambda layer, args: calls.append(len(args[0])))
    frames = 128
    tokens = backbone.embeddings(features(batch=1))[0].shape[1]
    monkeypatch.setattr(onednn, "CPU_TOKENS_PER_CALL", 2 * tokens)
    model.save_pretrained(tmp_path)
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()
    x = features(batch=5, frames=frames)
    torch.testing.assert_close(model(x).logits, theirs(x).logits, atol=ATOL, rtol=0)
    assert calls == [2, 2, 1]
    lengths = [128, 70, 100, 128, 40]
    mask = (torch.arange(frames)[None] < torch.tensor(lengths)[:, None]).long()
    batched = model(x, attention_mask=mask).logits
    for i, n in enumerate(lengths):
        torch.testing.assert_close(batched[i], model(x[i:i + 1, :n]).logits[0], atol=ATOL, rtol=0)


def test_training_projections_are_one_matmul_equal_to_the_three_linears(model):
    """Where autograd records, q, k and v come from one matmul over the concatenated weights: the same values and
    weight gradients as three separate linears (float32 rounding apart)."""
    attention = model.audio_spectrogram_transformer.encoder.layer[0].attention.attention
    x = torch.randn(2, 30, model.config.hidden_size)
    got = attention.projections(x, rows=30)
    batch, tokens, _ = x.shape
    want = [F.linear(x, layer.weight, layer.bias).view(batch, tokens, attention.num_heads, -1).transpose(1, 2)
            for layer in (attention.query, attention.key, attention.value)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    probe = torch.randn(3, *want[0].shape)
    layers = (attention.query, attention.key, attention.value)
    grads = {}
    for name, outputs in (("fused", got), ("separate", want)):
        sum((o * p).sum() for o, p in zip(outputs, probe, strict=True)).backward()
        grads[name] = [layer.weight.grad.clone() for layer in layers] + [layer.bias.grad.clone() for layer in layers]
        model.zero_grad(set_to_none=True)
    for g, w in zip(grads["fused"], grads["separate"], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference: the three weights as they are, queries of the first rows only
        q, k, v = attention.projections(x, rows=2)
    assert q.shape[2] == 2 and k.shape[2] == v.shape[2] == 30
    torch.testing.assert_close(q, want[0][:, :, :2], rtol=1e-5, atol=1e-6)
