import math

import torch

from reaemb_ray.model.thought_attention import LatentThoughtAttention


def reference(attn, hidden, mask, t):
    """Loop over items and positions; RoPE as explicit 2-D rotations of (x_i, x_{i+d/2}) pairs."""
    B, L, d = hidden.shape
    W = {n: getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")}
    out = torch.zeros(B, d, dtype=torch.float64)

    def rot(x, pos):
        y = x.clone()
        for i in range(d // 2):
            theta = pos * attn.rope_base ** (-2.0 * i / d)
            a, b = x[i], x[i + d // 2]
            y[i] = a * math.cos(theta) - b * math.sin(theta)
            y[i + d // 2] = a * math.sin(theta) + b * math.cos(theta)
        return y

    for b in range(B):
        pos = torch.cumsum(mask[b], 0) - 1
        q = rot(W["q_proj"](hidden[b, t - 1]).double(), float(pos[t - 1]))
        scores, values = [], []
        for j in range(t):
            if mask[b, j] == 0:
                continue
            k = rot(W["k_proj"](hidden[b, j]).double(), float(pos[j]))
            scores.append(float(q @ k) / math.sqrt(d))
            values.append(W["v_proj"](hidden[b, j]).double())
        w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
        out[b] = sum(wi * v for wi, v in zip(w, values))
    return out


def test_attention_matches_loop_reference_with_padding():
    torch.manual_seed(0)
    d, L = 16, 7
    attn = LatentThoughtAttention(d, rope_base=1000.0)
    hidden = torch.randn(3, L, d)
    mask = torch.ones(3, L, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    mask[2, :4] = 0
    t = L - 2
    r = attn(hidden, mask, t)
    assert r.shape == (3, d)
    torch.testing.assert_close(r.double(), reference(attn, hidden, mask, t), atol=1e-5, rtol=1e-5)


def test_attention_ignores_thought_eos_and_padding_content():
    torch.manual_seed(1)
    d, L = 8, 6
    attn = LatentThoughtAttention(d)
    hidden = torch.randn(2, L, d)
    mask = torch.ones(2, L, dtype=torch.long)
    mask[1, 0] = 0
    r = attn(hidden, mask, L - 2)
    changed = hidden.clone()
    changed[:, L - 2:] += 5.0  # positions >= t are not keys
    changed[1, 0] += 5.0  # a padded position is not a key
    torch.testing.assert_close(attn(changed, mask, L - 2), r)
    changed[0, 1] += 1.0  # a real prefix position is a key
    assert not torch.allclose(attn(changed, mask, L - 2)[0], r[0])


def test_rope_makes_order_matter_and_is_shift_invariant():
    torch.manual_seed(2)
    d = 8
    attn = LatentThoughtAttention(d)
    hidden = torch.randn(1, 6, d)
    mask = torch.ones(1, 6, dtype=torch.long)
    r = attn(hidden, mask, 4)
    swapped = hidden[:, [1, 0, 2, 3, 4, 5]]
    assert not torch.allclose(attn(swapped, mask, 4), r, atol=1e-6)
    # extra left padding shifts raw indices but not the positions: same output
    padded = torch.cat([torch.randn(1, 3, d), hidden], 1)
    pmask = torch.cat([torch.zeros(1, 3, dtype=torch.long), mask], 1)
    torch.testing.assert_close(attn(padded, pmask, 7), r, atol=1e-6, rtol=1e-5)
