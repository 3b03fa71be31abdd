import pytest
import torch

from multiflow.errors import ConfigError
from multiflow.flow.fusion import (
    ConvEdge,
    CrossAttentionEdge,
    EdgeOperator,
    SelfAttentionEdge,
    get_fusion,
    make_conv,
)


def _h(seed):
    return torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("cls", [ConvEdge, SelfAttentionEdge, CrossAttentionEdge])
def test_shapes_and_dependence(cls, randomise):
    op = randomise(cls(4, 6, 3, 2).double())
    h_i, h_j, h_i2, h_j2 = _h(0), _h(1), _h(2), _h(3)
    out = op(h_i, h_j)
    assert out.shape == (2, 6, 3, 3)
    depends_on_source = not torch.allclose(out, op(h_i, h_j2))
    depends_on_target = not torch.allclose(out, op(h_i2, h_j))
    assert depends_on_source
    assert depends_on_target == (cls is CrossAttentionEdge)


def test_attention_matches_definition(randomise):
    """Cross attention: softmax(Q_i K_i^T / sqrt(d)) V_j, then LayerNorm, ReLU, conv (one head)."""
    op = randomise(CrossAttentionEdge(4, 6, 1, 1).double())
    h_i, h_j = _h(0), _h(1)
    t_i, t_j = h_i.flatten(2).transpose(1, 2), h_j.flatten(2).transpose(1, 2)
    wq, wk, wv = op.attn.in_proj_weight.chunk(3)
    bq, bk, bv = op.attn.in_proj_bias.chunk(3)
    q, k, v = t_i @ wq.T + bq, t_i @ wk.T + bk, t_j @ wv.T + bv
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
    a = a @ op.attn.out_proj.weight.T + op.attn.out_proj.bias
    a = torch.relu(op.norm(a)).transpose(1, 2).reshape(2, 4, 3, 3)
    torch.testing.assert_close(op(h_i, h_j), op.conv(a), rtol=1e-10, atol=1e-12)


def test_replicate_padding():
    conv = make_conv(1, 1, 3).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    out = conv(torch.ones(1, 1, 4, 4, dtype=torch.float64))
    assert torch.equal(out, torch.full_like(out, 9.0))  # zero padding would give 4 / 6 at the border


def test_errors():
    with pytest.raises(ConfigError):
        get_fusion("transformer")
    with pytest.raises(ConfigError):
        make_conv(2, 2, 4)
    with pytest.raises(ConfigError):
        SelfAttentionEdge(6, 2, 3, 4)


class _GatedContext(EdgeOperator):
    """A new operator in one class: the source's global mean, gated per pixel by the target.
    It uses ``source_present`` (the contract's argument) to refuse to pool over an absent view."""

    def __init__(self, hidden, out_channels, kernel_size, heads=1):
        super().__init__()
        self.gate = make_conv(hidden, hidden, 1)
        self.conv = make_conv(hidden, out_channels, kernel_size)
        self.calls_with_absent = 0

    def forward(self, h_target, h_source, *, source_present=None):
        pooled = h_source.mean(dim=(2, 3), keepdim=True)
        if source_present is not None:
            self.calls_with_absent += int((~source_present).sum())
            pooled = torch.where(source_present[:, None, None, None], pooled, torch.zeros_like(pooled))
        return self.conv(torch.sigmoid(self.gate(h_target)) * pooled.expand_as(h_source))


def test_a_registered_operator_plugs_into_the_flow(monkeypatch, randomise):
    """One class + one FUSIONS entry: the flow builds, runs the per-edge strategy, passes the
    present mask to the operator and keeps the missing-view and invertibility properties."""
    from multiflow.flow import MultiFlow, ViewGraph
    from multiflow.flow.fusion import FUSIONS

    monkeypatch.setitem(FUSIONS, "gated_context", _GatedContext)
    model = randomise(MultiFlow(4, ViewGraph.ring(4), fusion="gated_context", n_blocks=1, kernel_sizes=(3,),
                                hidden=4).double()).eval()
    ops = [m for m in model.modules() if isinstance(m, _GatedContext)]
    assert ops and not any(m.can_fuse for m in model.modules() if hasattr(m, "can_fuse"))
    x = torch.randn(2, 4, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.tensor([[True, False, True, True], [True, True, True, True]])
    out = model(x, present=p)
    assert sum(m.calls_with_absent for m in ops) > 0
    junk = torch.where(p[:, :, None, None, None], x, 1e3 * x)
    assert torch.equal(model(junk, present=p).z[p], out.z[p])
    back, _ = model.inverse(out.z, present=p)
    torch.testing.assert_close(back[p], x[p], rtol=0, atol=1e-11)
    assert not torch.allclose(model(x).z[:, 0], out.z[:, 0])  # view 1 is a neighbour of view 0
