"""The VQ bottleneck on tiny random dimensions: rates, padding, round trips, growth, merge."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from whisperforge.models.vq import (
    BOTTLENECK_PARTS,
    N_AUDIO_CTX,
    VQ_PRESETS,
    RotaryEmbedding,
    VQConfig,
    WhisperVQ,
    code_space,
    codebook_usage,
    deepen,
    frame_mask,
    freeze_parts,
    grow_codebook,
    init_from_states,
    merge_codebooks,
    preset_config,
    preset_for_width,
    refine_codebook,
    tokens_for_samples,
)

D = 32


def _model(seed: int = 0, **overrides) -> WhisperVQ:
    torch.manual_seed(seed)
    values = dict(d_model=D, n_heads=2, n_layers=2, codebook_size=64, codebook_dim=8)
    return WhisperVQ(VQConfig(**(values | overrides))).eval()


def _states(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, N_AUDIO_CTX, D, generator=torch.Generator().manual_seed(seed))


def test_token_rates():
    assert tokens_for_samples(11 * 16000) == 275  # jfk.wav
    assert tokens_for_samples(30 * 16000) == 750
    assert all(tokens_for_samples(n * 16000) == 25 * n for n in range(1, 31))
    assert tokens_for_samples(1) == 1 and tokens_for_samples(641) == 2
    assert frame_mask(torch.tensor([176000, 480000, 1])).sum(1).tolist() == [550, 1500, 1]


def test_forward_shapes_padding_gets_the_mask_code():
    model = _model()
    lengths = torch.tensor([11 * 16000, 30 * 16000])
    out = model(_states(), frame_mask(lengths))
    assert out.features.shape == (2, N_AUDIO_CTX, D)
    assert out.codes.shape == (2, 750)
    assert out.token_mask.sum(1).tolist() == [275, 750]
    mask_id = model.config.mask_id
    assert (out.codes[0, 275:] == mask_id).all()
    assert (out.codes[out.token_mask] < mask_id).all()
    assert torch.equal(model.quantize(_states(), frame_mask(lengths)), out.codes)


def test_padding_content_is_ignored():
    model = _model()
    mask = frame_mask(torch.tensor([8 * 16000, 8 * 16000]))
    states = _states()
    noisy = states.clone()
    noisy[~mask] = 100 * torch.randn(int((~mask).sum()), D)
    a, b = model(states, mask), model(noisy, mask)
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.features, b.features)


def test_quantize_dequantize_round_trip():
    model = _model()
    mask = frame_mask(torch.tensor([5 * 16000, 30 * 16000]))
    out = model(_states(), mask)
    torch.testing.assert_close(model.dequantize(out.codes), out.features)
    # a short row is padded with the mask code to a full window
    torch.testing.assert_close(model.dequantize(out.codes[:1, :125]), out.features[:1])
    ids = torch.arange(model.config.n_ids)
    torch.testing.assert_close(model.embed_ids(ids), model.vq.project_out(model.codebook[ids]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 65\)"):
        model.dequantize(torch.tensor([[3, 65]]))


def test_training_updates_codebook_from_real_tokens_only():
    model = _model().train()
    before = model.vq.codebook.clone()
    mask = frame_mask(torch.tensor([10 * 16000, 4 * 16000]))
    model.quantize(_states(), mask)  # inference never touches the EMA state
    assert torch.equal(model.vq.codebook, before)
    out = model(_states(), mask)
    assert not torch.equal(model.vq.codebook, before)
    assert out.commitment.item() > 0 and out.loss.requires_grad
    (out.features.square().mean() + out.loss).backward()
    assert model.mlp[0].weight.grad.abs().sum() > 0  # straight-through to the MLP
    assert model.mask_code.grad.abs().sum() > 0


def test_rotary_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(8)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    scores = rope(q) @ rope(k).transpose(-1, -2)  # (20, 20)
    torch.testing.assert_close(scores[0, 0, 3, 1], scores[0, 0, 12, 10])
    torch.testing.assert_close(rope(q).norm(dim=-1), q.norm(dim=-1))


def test_codebook_usage():
    usage = codebook_usage(torch.tensor([[0, 0, 1, 3, 3, 3], [3, 3, 3, 3, 3, 3]]), 4, mask_id=3)
    assert (usage.n_tokens, usage.used, usage.dead_codes) == (3, 2, 1)
    assert usage.utilisation == pytest.approx(2 / 3)
    assert usage.perplexity == pytest.approx(
        math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    )
    assert codebook_usage(torch.tensor([3]), 4, mask_id=3).dead_codes == 3


def test_config_checks_and_presets():
    with pytest.raises(ValueError, match="heads of even width"):
        VQConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown VQConfig fields"):
        VQConfig.from_dict({"d_model": 64, "n_heads": 1, "width": 3})
    assert VQConfig.from_dict(VQConfig().to_dict()) == VQConfig()
    assert VQConfig().n_ids == 2049 and VQConfig().tokens_per_second == 25
    assert preset_config("medium").d_model == 1024 and preset_for_width(384) == "tiny"
    assert set(VQ_PRESETS) == {"tiny", "base", "small", "medium", "large-v3"}
    with pytest.raises(ValueError, match="available: tiny"):
        preset_config("huge")


def test_grow_tiles_the_small_codebook_with_noise():
    small = _model(codebook_size=512)
    big = grow_codebook(small, 2048, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert big.config.codebook_size == 2048 and big.config.n_ids == 2049
    parent = small.vq.codebook[torch.arange(2048) % 512]
    cos = F.cosine_similarity(big.vq.codebook, parent, dim=-1)
    assert cos.min() > 0.99 and not torch.equal(big.vq.codebook, parent)
    torch.testing.assert_close(big.vq.codebook.norm(dim=-1), torch.ones(2048))
    torch.testing.assert_close(big.mask_code, small.mask_code)
    torch.testing.assert_close(big.mlp[0].weight, small.mlp[0].weight)
    assert bool(big.vq._codebook.initted)


def test_merge_layout_new_codes_mask_then_old_codes():
    small = _model(codebook_size=512)
    large = grow_codebook(small, 2048, generator=torch.Generator().manual_seed(0))
    merged = merge_codebooks(large, small).eval()
    cfg = merged.config
    assert (cfg.n_ids, cfg.mask_id, cfg.merged_codes) == (2561, 2048, 512)
    torch.testing.assert_close(merged.codebook[:2048], large.vq.codebook)
    torch.testing.assert_close(merged.codebook[2048], large.mask_code)
    torch.testing.assert_close(merged.codebook[2049:], small.vq.codebook)
    # the search reaches the old part: make its codes the exact directions of real tokens
    states, mask = _states(1), frame_mask(torch.tensor([512 * 640]))
    directions = F.normalize(large.vq.project_in(large._pool(states)[0, :512]), dim=-1)
    small.vq._codebook.embed.copy_(directions.detach()[None])
    merged = merge_codebooks(large, small).eval()
    codes = merged.quantize(states, mask)[0]
    assert codes[:512].tolist() == list(range(2049, 2561))
    assert (codes[512:] == 2048).all()
    # ids from both parts (and the mask) decode
    ids = torch.tensor([[0, 2047, 2048, 2049, 2560]])
    assert torch.isfinite(merged.dequantize(ids)).all()
    torch.testing.assert_close(
        merged.embed_ids(torch.tensor(2049 + 7)), merged.vq.project_out(small.vq.codebook[7])
    )


def test_merge_rejects_mismatched_models():
    with pytest.raises(ValueError, match="codebook_dim differs"):
        merge_codebooks(_model(codebook_dim=8), _model(codebook_dim=16))
    merged = merge_codebooks(_model(), _model(seed=1))
    with pytest.raises(ValueError, match="not been merged"):
        grow_codebook(merged, 4096)


def _structured_states(windows: int = 12, seed: int = 3):
    """States as a Whisper encoder's look to the bottleneck: a positional pattern (a function
    of the frame index) plus content of constant length in a 4-dimensional subspace, through
    a final LayerNorm; each window's audio ends at a different frame."""
    g = torch.Generator().manual_seed(seed)
    positions = 0.3 * torch.randn(N_AUDIO_CTX, D, generator=g)
    basis = torch.linalg.qr(torch.randn(D, 4, generator=g))[0]
    slow = torch.randn(windows, N_AUDIO_CTX // 20, 4, generator=g).repeat_interleave(20, 1)
    content = 2.0 * F.normalize(slow, dim=-1) @ basis.T  # changes every 20 frames
    gamma, beta = 1 + 0.2 * torch.rand(D, generator=g), 0.1 * torch.randn(D, generator=g)
    lengths = torch.randint(300, N_AUDIO_CTX, (windows,), generator=g) * 320
    mask = frame_mask(lengths)
    normalised = F.layer_norm(positions + torch.where(mask[..., None], content, 0.0), (D,))
    return normalised * gamma + beta, mask, gamma, beta, positions


def test_init_from_states_starts_near_a_linear_code_of_the_states():
    states, mask, gamma, beta, positions = _structured_states()
    fitted = _model(codebook_size=256, codebook_dim=8)
    with torch.no_grad():
        fitted.ln_post.weight.copy_(gamma)
        fitted.ln_post.bias.copy_(beta)
    random = _model(codebook_size=256, codebook_dim=8)
    random.load_state_dict(fitted.state_dict())
    fit = init_from_states(fitted, states, mask, tokens_per_step=1000.0)
    assert fit["variance_kept"] > 0.95 and fit["codes_used"] > 200
    torch.testing.assert_close(fitted.positions.weight, ((states - beta) / gamma).mean(0))
    book = fitted.vq._codebook
    assert bool(book.initted) and float(book.cluster_size.sum()) == pytest.approx(1000.0)
    for block in fitted.blocks:  # the blocks start as identities
        assert not block.out.weight.any() and not block.mlp[-1].weight.any()
    random.train()  # the library's k-means on the first batch, as without init_from_states
    random(states[:4], mask[:4])
    fitted.eval(), random.eval()

    def error(model):
        with torch.no_grad():
            feats = model(states, mask).features
        return F.mse_loss(feats[mask], states[mask]).item(), F.mse_loss(
            feats[~mask], states[~mask]).item()  # fmt: skip

    (real, padding), (real_random, _) = error(fitted), error(random)
    variance = states[mask].var(0).sum().item() / D
    assert real < 0.1 * variance and real < 0.1 * real_random
    assert padding < 0.1 * variance  # the mask code stands for the padding frames


def test_quantizer_settings_change_without_changing_the_ids():
    from whisperforge.models.vq import with_quantizer_settings

    torch.manual_seed(0)
    vq = WhisperVQ(VQConfig(d_model=32, n_heads=2, codebook_size=16, codebook_dim=8)).eval()
    states = torch.randn(2, N_AUDIO_CTX, 32)
    copy = with_quantizer_settings(vq, threshold_ema_dead_code=0.25, commitment_weight=0.5)
    assert copy.config.threshold_ema_dead_code == 0.25 and copy.config.commitment_weight == 0.5
    assert copy.vq._codebook.threshold_ema_dead_code == 0.25  # the library trains with it
    assert not copy.training and vq.config.threshold_ema_dead_code == 2.0
    torch.testing.assert_close(copy.quantize(states), vq.quantize(states), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not quantizer settings"):
        with_quantizer_settings(vq, codebook_size=32)


def test_swap_to_neighbours_reads_the_next_nearest_code():
    model = _model()
    lengths = torch.tensor([11 * 16000, 30 * 16000])
    states = _states()
    real = frame_mask(lengths)
    x = model._pool(states)
    mask = model.token_mask(real, 2, x.device)
    quantized, codes, _, _ = model._quantize(x, mask)
    assert torch.equal(model.swap_to_neighbours(x, quantized, codes, mask, 0.0), quantized)
    swapped = model.swap_to_neighbours(x, quantized, codes, mask, 1.0)
    # every real token now reads the code nearest to it after its own; padding is untouched
    z = F.normalize(model.vq.project_in(x[mask]), dim=-1)
    sims = z @ F.normalize(model.vq.codebook, dim=-1).T
    second = sims.topk(2, dim=-1).indices[:, 1]
    assert torch.equal(sims.argmax(-1), model._ids_to_rows(codes[mask]))
    expected = model.vq.get_output_from_indices(second)
    assert torch.allclose(swapped[mask], expected, atol=1e-5)
    assert torch.equal(swapped[~mask], quantized[~mask])
    torch.manual_seed(3)
    half = model.swap_to_neighbours(x, quantized, codes, mask, 0.5)
    changed = (half != quantized).any(-1)
    assert not changed[~mask].any() and 0.4 < changed[mask].float().mean() < 0.6
    # the straight-through gradient to the pooled states is kept
    x = x.detach().requires_grad_()
    model.train()
    out = model.swap_to_neighbours(x, *model._quantize(x, mask)[:2], mask, 1.0)
    out[mask].sum().backward()
    assert x.grad is not None and x.grad[mask].abs().sum() > 0
    # forward: only in training mode; codes stay the nearest ones
    model.eval()
    assert torch.equal(model(states, real, swap=1.0).features, model(states, real).features)
    twin = copy.deepcopy(model).train()
    model.train()
    torch.manual_seed(0)
    out = model(states, real, swap=1.0)
    torch.manual_seed(0)
    plain = twin(states, real)
    assert torch.equal(out.codes, plain.codes)
    assert not torch.allclose(out.features, plain.features)
    with pytest.raises(ValueError, match="swap share"):
        model.swap_to_neighbours(x, quantized, codes, mask, 1.5)


def test_deepen_appends_identity_blocks_that_train():
    shallow = _model(n_layers=1)
    deep = deepen(shallow, 3, generator=torch.Generator().manual_seed(0))
    assert deep.config.n_layers == 3 and len(deep.blocks) == 3
    states, mask = _states(), frame_mask(torch.tensor([11 * 16000, 30 * 16000]))
    a, b = shallow(states, mask), deep.eval()(states, mask)
    torch.testing.assert_close(b.features, a.features)
    assert torch.equal(b.codes, a.codes)
    torch.testing.assert_close(deep.vq.codebook, shallow.vq.codebook)
    # the new blocks learn: their zeroed output projections get gradients
    deep.train()(states, mask).features.pow(2).mean().backward()
    assert deep.blocks[2].out.weight.grad.abs().sum() > 0
    assert deep.blocks[2].mlp[2].weight.grad.abs().sum() > 0
    again = deepen(shallow, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.blocks[2].qkv.weight, deep.blocks[2].qkv.weight)
    assert deepen(shallow, 1).config == shallow.config
    with pytest.raises(ValueError, match="n_layers 1 is below the source's 3; blocks only grow"):
        deepen(deep, 1)


def test_bottleneck_parts_cover_every_weight_once_and_freeze():
    model = _model()
    for name, _ in model.named_parameters():
        owners = [part for part, prefixes in BOTTLENECK_PARTS.items() if name.startswith(prefixes)]
        assert len(owners) == 1, (name, owners)
    total = sum(w.numel() for w in model.parameters())
    left = freeze_parts(model, ["after_codes"])
    assert 0 < left < total
    assert not model.blocks[0].out.weight.requires_grad and model.mlp[0].weight.requires_grad
    with pytest.raises(ValueError, match="unknown bottleneck parts"):
        freeze_parts(model, ["decoder"])


def _searched_rows(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return (vectors @ F.normalize(codes, dim=-1).T).argmax(-1)


def test_refine_moves_each_code_to_the_mean_of_its_vectors():
    model = _model(kmeans_init=False, codebook_size=512)
    states = _states(3)
    mask = frame_mask(torch.tensor([30 * 16000, 7 * 16000, 16000]))
    real = model.token_mask(mask, 3, states.device)
    vectors = code_space(model, states, mask)
    assert vectors.shape == (int(real.sum()), 8)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(vectors)))
    ids = model.quantize(states, mask)
    old = model.vq.codebook.detach().clone()
    rows = _searched_rows(vectors, old)
    assert rows.tolist() == ids[real].tolist()  # the vectors the codebook is searched with
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vq._cod")}
    single = copy.deepcopy(model)

    result = refine_codebook(single, vectors, iterations=1)
    used = rows.unique()
    assert result.vectors == len(vectors) and result.codes_moved == len(used) < 512
    for code in used.tolist():
        mean = F.normalize(vectors[rows == code].mean(0), dim=0)
        torch.testing.assert_close(single.vq.codebook[code], mean)
    unused = torch.ones(512, dtype=torch.bool)
    unused[used] = False
    torch.testing.assert_close(single.vq.codebook[unused], old[unused])
    assert result.error_after < result.error_before
    before = (2 - 2 * (vectors @ F.normalize(old, dim=-1).T).max(-1).values).mean()
    assert result.error_before == pytest.approx(float(before), abs=1e-5)
    for key, value in single.state_dict().items():
        if key in others:
            torch.testing.assert_close(value, others[key])  # only the codebook moves
    new_ids = single.quantize(states, mask)[real]
    changed = float((new_ids != ids[real]).float().mean())
    assert result.ids_changed == pytest.approx(changed) and changed > 0
    # Lloyd steps never raise the distortion
    more = refine_codebook(copy.deepcopy(model), vectors, iterations=4)
    assert more.error_after <= result.error_after + 1e-6

    with pytest.raises(ValueError, match="iterations must be at least 1"):
        refine_codebook(model, vectors, iterations=0)
    with pytest.raises(ValueError, match=r"expected vectors \(n > 0, 8\)"):
        refine_codebook(model, vectors[:, :4])
    with pytest.raises(ValueError, match="expected vectors"):
        refine_codebook(model, vectors[:0])


def test_refine_a_euclidean_codebook_takes_plain_means():
    model = _model(kmeans_init=False, codebook_size=16, use_cosine_sim=False)
    states = _states(2)
    vectors = code_space(model, states)
    assert not torch.allclose(vectors.norm(dim=-1), torch.ones(len(vectors)))
    rows = torch.cdist(vectors, model.vq.codebook.detach()).argmin(-1)
    assert rows.tolist() == model.quantize(states).flatten().tolist()
    result = refine_codebook(model, vectors)
    code = int(rows[0])
    torch.testing.assert_close(model.vq.codebook[code], vectors[rows == code].mean(0))
    assert result.error_after < result.error_before
