"""Efficient attention (Shen et al. 2021) against a direct evaluation of its formula."""

from __future__ import annotations

import torch

from attnkit.attention.efficient import EfficientAttention


def test_equals_its_formula_and_ignores_padded_tokens():
    torch.manual_seed(0)
    attn = EfficientAttention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        out = attn(x)
        q, k, v = attn.qkv(x).reshape(5, 3, 2, 4).unbind(1)  # [N, H, D] each
        expected = torch.zeros(5, 2, 4)
        for h in range(2):
            rho_q = torch.exp(q[:, h]) / torch.exp(q[:, h]).sum(1, keepdim=True)  # per token
            rho_k = torch.exp(k[:, h]) / torch.exp(k[:, h]).sum(0, keepdim=True)  # per feature
            for n in range(5):
                for d in range(4):  # out[n, d] = sum_j rho_q[n, j] sum_m rho_k[m, j] v[m, d]
                    expected[n, h, d] = sum(
                        rho_q[n, j] * sum(rho_k[m, j] * v[m, h, d] for m in range(5))
                        for j in range(4)
                    )
        assert torch.allclose(out[0], attn.proj(expected.reshape(5, 8)), atol=1e-6)
        padded = torch.cat([x, torch.randn(1, 3, 8) * 50], dim=1)
        mask = torch.tensor([[False] * 5 + [True] * 3])
        assert torch.allclose(attn(padded, key_padding_mask=mask)[:, :5], out, atol=1e-6)
