"""`model.gradient_checkpointing`: the layers recompute in the backward pass, and the gradients are the ones
without it (policy and the critic, whose backbone is a copy of the policy's decoder)."""

from __future__ import annotations

import torch

from dvpo_lab.config import ModelConfig
from dvpo_lab.models.build import build_critic, build_policy, build_tokenizer


def _grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    cfg = ModelConfig(name="tiny", gradient_checkpointing=checkpointing)
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok).train()
    torch.manual_seed(0)  # the value head's random init
    critic = build_critic(policy, n_out=3, init_std=0.01).train()
    ids = torch.tensor([tok("12+34=46\n", add_special_tokens=False)["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    pos = mask.cumsum(-1) - 1
    recomputed = 0

    def count(*_):
        nonlocal recomputed
        recomputed += 1

    # a forward pre-hook on the first layer's attention fires once per forward: twice per step when the backward
    # recomputes the layer (a post-hook would not: torch stops the recomputation early, once it has the tensors the
    # backward needs). Not a hook on the layer itself: transformers >= 5.24 checkpoints the layer's `forward`, so
    # the layer's own hooks stay outside the recomputation and fire once either way.
    policy.get_decoder().layers[0].self_attn.register_forward_pre_hook(count)
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    values = critic(ids, mask, pos, num_positions=ids.shape[1])
    (logits.log_softmax(-1).mean() + values.square().mean()).backward()
    pol = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    cri = {n: p.grad.clone() for n, p in critic.named_parameters() if p.grad is not None}
    return pol, cri, recomputed


def test_checkpointing_recomputes_layers_and_keeps_the_gradients():
    pol, cri, calls = _grads(False)
    pol_ckpt, cri_ckpt, calls_ckpt = _grads(True)
    assert calls == 1 and calls_ckpt == 2, (calls, calls_ckpt)  # the backward ran the layer again
    assert pol.keys() == pol_ckpt.keys() and cri.keys() == cri_ckpt.keys() and len(pol) > 5
    for n in pol:
        torch.testing.assert_close(pol_ckpt[n], pol[n], rtol=1e-5, atol=1e-7, msg=n)
    for n in cri:
        torch.testing.assert_close(cri_ckpt[n], cri[n], rtol=1e-5, atol=1e-7, msg=n)
