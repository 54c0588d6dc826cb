"""The generator's serving copy: Linear weights prepacked for oneDNN, everything else shared."""

from __future__ import annotations

import copy

import pytest

from runtime.generation.packed import packed_bytes, packing_supported, serving_copy


@pytest.fixture(scope="module")
def served(tiny_base):
    if not packing_supported(tiny_base.model):
        pytest.skip("oneDNN prepacking is not available on this CPU for this dtype")
    return serving_copy(tiny_base.model, batch_hint=8)


def test_serving_copy_packs_linears_and_shares_everything_else(tiny_base, served):
    import torch

    model = tiny_base.model
    packed = [m for m in served.modules() if type(m).__name__ == "PackedLinear"]
    plain = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert len(packed) == len(plain) > 0
    assert not any(type(m).__name__ == "PackedLinear" for m in model.modules())  # the original stays plain
    # norms and embeddings are the same tensors, not copies; only the packed weights cost memory
    assert served.model.embed_tokens.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert served.model.norm.weight.data_ptr() == model.model.norm.weight.data_ptr()
    assert packed_bytes(served) == sum(m.weight.numel() * m.weight.element_size() for m in plain)


def test_serving_copy_computes_the_same_logits_and_greedy_tokens(tiny_base, served):
    import torch

    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 8]])
    with torch.inference_mode():
        mine, theirs = served(input_ids=ids).logits, tiny_base.model(input_ids=ids).logits
        ours = served.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tiny_base.tokenizer.pad_token_id)
        reference = tiny_base.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                             do_sample=False, pad_token_id=tiny_base.tokenizer.pad_token_id)
    assert torch.allclose(mine, theirs, atol=1e-4)
    assert torch.equal(ours, reference)


def test_deep_copies_of_the_original_are_still_plain_and_trainable(tiny_base, served):
    import torch

    clone = copy.deepcopy(tiny_base.model)
    assert not any(type(m).__name__ == "PackedLinear" for m in clone.modules())
    ids = torch.tensor([[1, 5, 9, 33]])
    loss = clone(input_ids=ids, labels=ids).loss
    loss.backward()
    assert clone.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_packed_linear_turns_back_into_a_plain_linear(served):
    import torch

    packed = served.model.layers[0].mlp.up_proj
    plain = packed.to_linear()
    x = torch.randn(3, packed.in_features)
    with torch.inference_mode():
        assert type(plain) is torch.nn.Linear
        assert torch.allclose(plain(x), packed(x), atol=1e-5)


def test_dense_weights_can_be_dropped_for_models_the_generator_owns(tiny_base):
    model = copy.deepcopy(tiny_base.model)
    if not packing_supported(model):
        pytest.skip("oneDNN prepacking is not available here")
    owned = serving_copy(model, keep_dense=False)
    packed = owned.model.layers[0].self_attn.q_proj
    assert packed.weight is None
    with pytest.raises(RuntimeError, match="dropped its dense weight"):
        packed.to_linear()
