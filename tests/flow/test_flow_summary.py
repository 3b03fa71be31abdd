from multiflow.cli import main
from multiflow.flow import MultiFlow, ViewGraph
from multiflow.flow.summary import format_breakdown, parameter_breakdown


def test_breakdown_matches_formula():
    c, hid, v = 6, 4, 5
    g = ViewGraph.real_iad()
    model = MultiFlow(c, g, n_blocks=2, hidden=hid, kernel_sizes=(3, 5))
    parts = parameter_breakdown(model)
    e = len(g.edges)
    exp = {"input_convs": 0, "self_convs": 0, "edge_ops": 0}
    for k in (3, 5):
        for cin, cout in ((c // 2 + 1, 2 * (c - c // 2)), (c - c // 2 + 1, 2 * (c // 2))):
            exp["input_convs"] += v * (cin * hid * k * k + hid)
            exp["self_convs"] += v * (hid * cout * k * k + cout)
            exp["edge_ops"] += e * (hid * cout * k * k + cout)
    for key, val in exp.items():
        assert parts[key] == val, key
    assert parts["gamma"] == 2 * 2 * v and parts["other"] == 0
    assert parts["total"] == sum(p.numel() for p in model.parameters())
    assert "difference" in format_breakdown(model)


def test_params_command(capsys):
    assert main(["params", "--channels", "8", "--views", "3", "--noise", "none"]) == 0
    out = capsys.readouterr().out
    model = MultiFlow(8, ViewGraph.real_iad(n_side=2), noise="none")
    assert f"{sum(p.numel() for p in model.parameters()):,}" in out
    assert main(["params", "--views", "0"]) == 1
