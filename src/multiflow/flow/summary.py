"""Parameter count of a :class:`MultiFlow`, broken down by component of Eq. 4.

The reference implementation (304 channels, 5 views, Real-IAD graph, conv fusion, one noise
condition channel) has 64,135,548 parameters. Per st-network with kernel ``k``, ``C`` channels,
``C_c`` condition channels, hidden 64, ``V`` views and ``E`` directed edges:

* input convs: ``V * ((C/2 + C_c) * 64 * k^2 + 64)``
* self convs ``f_ii``: ``V * (64 * C * k^2 + C)``
* edge ops ``f_ji``: ``E * (64 * C * k^2 + C)`` (conv fusion)
* gammas: ``V``

and there are two st-networks per block.
"""

from __future__ import annotations

from collections import OrderedDict

from multiflow.flow.model import MultiFlow

PAPER_PARAMETER_COUNT = 64_135_548


def parameter_breakdown(model: MultiFlow) -> "OrderedDict[str, int]":
    """Trainable parameter counts per component (``input_convs``, ``self_convs``, ``edge_ops``,
    ``gamma``, anything else) summed over all blocks, plus ``total``."""
    parts: OrderedDict[str, int] = OrderedDict(
        (k, 0) for k in ("input_convs", "self_convs", "edge_ops", "gamma", "other")
    )
    for name, p in model.named_parameters():
        key = next((k for k in ("in_convs", "self_convs", "edge_ops", "gamma") if f".{k}" in name), "other")
        parts["input_convs" if key == "in_convs" else key] += p.numel()
    parts["total"] = sum(v for k, v in parts.items())
    return parts


def format_breakdown(model: MultiFlow, reference: int | None = PAPER_PARAMETER_COUNT) -> str:
    """Human-readable table of :func:`parameter_breakdown`, compared with ``reference``."""
    parts = parameter_breakdown(model)
    cfg = model.config
    lines = [
        f"MultiFlow: C={cfg['channels']}, V={model.graph.n_views}, {len(model.graph.edges)} directed edges, "
        f"{cfg['n_blocks']} blocks, kernels {cfg['kernel_sizes']}, hidden {cfg['hidden']}, "
        f"fusion={cfg['fusion']}, noise={cfg['noise']} ({model.noise.condition_channels} condition channel(s)), "
        f"share_side_weights={cfg['share_side_weights']}",
    ]
    for k, v in parts.items():
        if k != "total" and (v or k != "other"):
            lines.append(f"  {k:<12} {v:>14,}")
    lines.append(f"  {'total':<12} {parts['total']:>14,}")
    if reference is not None:
        diff = parts["total"] - reference
        lines.append(f"  reference    {reference:>14,}  (difference {diff:+,})")
        if diff == 0:
            lines.append("  matches the reference implementation exactly.")
        else:
            lines.append(
                "  the reference counts C=304, V=5, the 16-edge Real-IAD graph, conv fusion, one noise "
                "condition channel and unshared weights; this configuration differs from it."
            )
    return "\n".join(lines)
