"""The quantization debugger: per-layer sensitivity, the mixed-precision plan, per-layer configs."""
import dataclasses
import itertools

import matplotlib
import pytest
import torch
from torch import nn

from quantlib.nn import QuantLinear, quantize_model
from quantlib.nn.calibrate import fixed_amax
from quantlib.nn.ptq import layer_configs
from quantlib.nn.sensitivity import (
    block_scale_stats,
    kl_divergence,
    mixed_precision_plan,
    multiple_choice_knapsack,
    plan_table,
    relative_mse,
    sensitivity_report,
)
from quantlib.qtensor import quantize
from quantlib.recipes import get_recipe
from quantlib.table import Table

matplotlib.use("Agg")
PLANTED = "2"


def planted_mlp(seed=0):
    """Four 128-wide layers; layer "2" carries weight outlier columns (every 16th input channel
    x32), its inputs' channels /32 so that the function is unchanged: every NVFP4 block and INT4
    group of that layer holds an outlier that coarsens the grid of its 15 (127) neighbours."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                      nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
    x = torch.randn(256, 128)
    ref = m(x)
    with torch.no_grad():
        m[2].weight[:, ::16] *= 32
        m[0].weight[::16] /= 32
        m[0].bias[::16] /= 32
    assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5)      # the plant is invisible in FP32
    return m, [x]


@pytest.fixture(scope="module")
def report():
    m, cal = planted_mlp()
    return sensitivity_report(m, ["bf16", "fp8", "nvfp4", "int4_g128"], cal)


def rows(report, config):
    return [r for r in report.to_dicts() if r["config"] == config]


def test_report_ranks_planted_layer_first(report):
    assert report.rows[0][0] == PLANTED
    for cfg in ("nvfp4", "int4_g128"):
        r = rows(report, cfg)
        assert r[0]["layer"] == PLANTED
        assert r[0]["error alone"] > 10 * r[1]["error alone"]
    harm = report.column("error alone")
    assert harm == sorted(harm, reverse=True)
    assert len(report) == 4 * 4 and report.layers == ["0", "2", "4", "6"]


def test_report_columns(report):
    cell = {(r["layer"], r["config"]): r for r in report.to_dicts()}
    assert cell["0", "nvfp4"]["bytes"] == 128 * 128 // 2 + 128 * 8 + 4     # codes, E4M3, FP32
    assert cell["6", "int4_g128"]["bytes"] == 32 * 128 // 2 + 32 * 4
    assert cell["0", "bf16"]["bytes"] == 2 * 128 * 128
    assert cell["0", "fp8"]["bytes"] == 128 * 128 + 128 * 4
    # QSNR of the effective weight, recomputed independently
    m, _ = planted_mlp()
    w = m[4].weight.detach()
    wq = quantize(w, "nvfp4").dequantize()
    expect = 10 * torch.log10(w.double().square().sum() / (w - wq).double().square().sum())
    assert cell["4", "nvfp4"]["weight QSNR dB"] == pytest.approx(float(expect), rel=1e-9)
    h = torch.relu(m[2](torch.relu(m[0](planted_mlp()[1][0])))).detach()     # layer 4's input
    y, yq = h @ w.T, h @ wq.T
    expect = 10 * torch.log10(y.double().square().sum() / (y - yq).double().square().sum())
    assert cell["4", "nvfp4"]["output QSNR dB"] == pytest.approx(float(expect), rel=1e-4)
    # the FP8 and BF16 rows are far less harmful than the 4-bit ones, every layer
    for n in report.layers:
        assert cell[n, "bf16"]["error alone"] < cell[n, "fp8"]["error alone"] \
            < cell[n, "nvfp4"]["error alone"]
    assert cell["0", "fp8"]["scale underflow"] is None
    assert cell["0", "nvfp4"]["scale underflow"] == 0
    assert cell["0", "nvfp4"]["act clipped %"] is None            # weight-only
    # uniform error: the model with every layer quantized
    assert report.uniform_error["nvfp4"] > report.uniform_error["fp8"]


def test_activation_outliers_and_clipping():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    x = torch.randn(128, 64)
    with torch.no_grad():                            # activation outliers into layer "2"
        m[0].weight[:3] *= 50
        m[0].bias[:3] = 10.0
    r = sensitivity_report(m, ["w8a8_int8_static"], [x], all_but=False,
                           outlier_ratio=8.0)
    cell = {row["layer"]: row for row in r.to_dicts()}
    h = torch.relu(m[0](x)).detach()
    assert cell["2"]["act amax"] == pytest.approx(float(h.abs().max()))
    ch = h.abs().amax(0)
    assert cell["2"]["outlier channels"] == int((ch > 8 * ch.median()).sum()) >= 3
    assert cell["2"]["act clipped %"] == 0.0          # max calibration never clips
    assert cell["2"]["error all but"] is None
    r2 = sensitivity_report(m, [("p90", "w8a8_int8_static", {"act_calibrator": "percentile_90"})],
                            [x], all_but=False)
    clipped = {row["layer"]: row["act clipped %"] for row in r2.to_dicts()}
    assert 5 < clipped["0"] < 15                       # the 90th percentile clips about 10%


def test_block_scale_stats():
    nv = get_recipe("nvfp4")
    x = torch.ones(1, 64)
    x[0, :16] = 1e-6                                 # E4M3 block scale rounds to 0: underflow
    x[0, 16:32] = 1e3
    assert block_scale_stats(x, quantize(x, nv)) == (1, 0)
    # a tensor amax below the block amaxes (a clipping calibrator) saturates block scales at
    # 448: values beyond 7/6 of the tensor amax clip (E2M1's top rounding interval ends at 7)
    y = torch.cat([torch.full((1, 16), v) for v in (1.0, 2.0, 3.0, 10.0)], 1)
    r = dataclasses.replace(nv, calibrator=fixed_amax(y.reshape(4, 16).amax(1), 2.0))
    assert block_scale_stats(y, quantize(y, r)) == (0, 2)
    mx = get_recipe("mxfp4")
    z = torch.ones(2, 32)
    z[1] = 1e-39                                     # E8M0 exponent clamped at 2^-127
    assert block_scale_stats(z, quantize(z, mx)) == (1, 0)
    assert block_scale_stats(z, quantize(z, "int4_g32")) == (None, None)


def test_plan_keeps_planted_layer_under_tight_budget(report):
    cell = {(r["layer"], r["config"]): r["bytes"] for r in report.to_dicts()}
    nvfp4 = sum(cell[n, "nvfp4"] for n in report.layers)
    budget = nvfp4 + cell[PLANTED, "fp8"] - cell[PLANTED, "nvfp4"]
    plan = mixed_precision_plan(report, budget_bytes=budget, configs=["bf16", "fp8", "nvfp4"])
    assert plan.choices[PLANTED] in ("fp8", "bf16")
    assert plan.bytes <= budget
    assert plan.measured_error < report.uniform_error["nvfp4"] / 5
    # predicted (sum of per-layer errors) vs measured (the model quantized with the plan)
    assert plan.measured_error == pytest.approx(plan.predicted_error, rel=0.25)
    # the plan is a mapping quantize_model takes
    q = quantize_model(report.model, plan)
    kinds = {n: type(q.get_submodule(n)) for n in report.layers}
    assert all((kinds[n] is nn.Linear) == (plan.choices[n] == "bf16") for n in report.layers)
    # for an error budget: the fewest bytes
    p2 = mixed_precision_plan(report, max_error=plan.predicted_error,
                              configs=["bf16", "fp8", "nvfp4"])
    assert p2.bytes <= plan.bytes and p2.predicted_error <= plan.predicted_error * (1 + 1e-12)


def test_uniform_prediction_matches_measurement(report):
    t = plan_table(report, uniform=["nvfp4", "fp8"])
    for r in t.to_dicts():
        assert r["measured rel_mse"] == pytest.approx(r["predicted rel_mse"], rel=0.25)


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_exact_vs_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    groups, options = 5, 3
    costs = torch.randint(1, 40, (groups, options), generator=g).tolist()
    errors = torch.rand(groups, options, generator=g, dtype=torch.float64).tolist()
    every = list(itertools.product(range(options), repeat=groups))

    def total(ch, t):
        return sum(t[i][j] for i, j in enumerate(ch))

    lo, hi = total([min(range(options), key=lambda j, i=i: costs[i][j])
                    for i in range(groups)], costs), sum(max(c) for c in costs)
    for budget in torch.linspace(lo, hi, 6).round().tolist():
        best = min(total(ch, errors) for ch in every if total(ch, costs) <= budget)
        ch, c, e = multiple_choice_knapsack(costs, errors, budget=budget)
        assert c <= budget and e == pytest.approx(best, abs=1e-12)
        assert c == total(ch, costs) and e == pytest.approx(total(ch, errors))
    for max_error in torch.linspace(0.5, 4, 5).tolist():
        ok = [total(ch, costs) for ch in every if total(ch, errors) <= max_error]
        if not ok:
            with pytest.raises(ValueError, match="max_error"):
                multiple_choice_knapsack(costs, errors, max_error=max_error)
            continue
        ch, c, e = multiple_choice_knapsack(costs, errors, max_error=max_error)
        assert c == min(ok) and e <= max_error


def test_knapsack_rounded_costs_stay_within_budget():
    g = torch.Generator().manual_seed(3)
    costs = (torch.rand(8, 4, generator=g) * 1e4 + 1).tolist()        # not integers
    errors = torch.rand(8, 4, generator=g).tolist()
    budget = sum(sorted(c)[1] for c in costs)
    every = itertools.product(range(4), repeat=8)
    best = min(sum(errors[i][j] for i, j in enumerate(ch)) for ch in every
               if sum(costs[i][j] for i, j in enumerate(ch)) <= budget)
    _, c, e = multiple_choice_knapsack(costs, errors, budget=budget, max_cells=4096)
    assert c <= budget and e >= best - 1e-12 and e <= best + 0.2
    with pytest.raises(ValueError, match="exactly one"):
        multiple_choice_knapsack(costs, errors)
    with pytest.raises(ValueError, match="fits budget"):
        multiple_choice_knapsack(costs, errors, budget=1.0)


def test_quantize_model_per_layer_configs():
    m, cal = planted_mlp()
    q = quantize_model(m, {"0": "fp8", "[46]": ("int4_g128", {"smooth": "awq"}), "2": None},
                       calibration=cal)
    assert isinstance(q[0], QuantLinear) and q[0].config.name == "fp8"
    assert type(q[2]) is nn.Linear and torch.equal(q[2].weight, m[2].weight)
    assert q[4].smooth is not None and q[6].config.name == "int4_g128"
    # the same layer as the uniform call, bit for bit
    u = quantize_model(m, "fp8")
    assert torch.equal(q[0].weight_codes, u[0].weight_codes)
    x = cal[0][:8]
    assert torch.equal(q[0](x), u[0](x))
    # an exact name wins over a pattern; unmatched layers stay in full precision
    r = layer_configs(m, {"*": "nvfp4", "4": "fp8"})
    assert {n: c.name for n, (c, _) in r.items()} == {"0": "nvfp4", "2": "nvfp4", "4": "fp8",
                                                      "6": "nvfp4"}
    assert list(layer_configs(m, {"[02]": "fp8"})) == ["0", "2"]
    with pytest.raises(ValueError, match="match no layer"):
        quantize_model(m, {"blocks.*": "fp8"})
    with pytest.raises(ValueError, match="unknown quantization config"):
        quantize_model(m, {"0": "fp7"})
    with pytest.raises(TypeError, match="config, None or"):
        quantize_model(m, {"0": ("fp8", "awq")})


def test_metrics_and_bad_input():
    a = torch.randn(10, 5, dtype=torch.float64)
    assert relative_mse(a, a) == 0 and relative_mse(a, 0 * a) == pytest.approx(1.0)
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-12)
    p, q = a.softmax(-1), (a + 1.0 * torch.randn_like(a)).softmax(-1)
    assert kl_divergence(a, q.log()) == pytest.approx(float((p * (p / q).log()).sum(-1).mean()))
    m, cal = planted_mlp()
    with pytest.raises(ValueError, match="metric"):
        sensitivity_report(m, ["fp8"], cal, metric="mae")
    with pytest.raises(ValueError, match="calibration"):
        sensitivity_report(m, ["fp8"], None)
    with pytest.raises(ValueError, match="labelled"):
        sensitivity_report(m, ["fp8", ("fp8", "nvfp4", {})], cal)


def test_top_layers(report):
    from quantlib.nn.sensitivity import top_layers
    t = top_layers(report, "nvfp4", n=2)
    assert t.column("layer")[0] == PLANTED and len(t) == 2
    assert top_layers(report, "nvfp4", n=1, worst=False).column("error alone")[0] == min(
        r["error alone"] for r in rows(report, "nvfp4"))
    with pytest.raises(ValueError, match="not in the report"):
        top_layers(report, "mxfp4")


def test_harm_by_kind():
    from quantlib.nn.sensitivity import harm_by_kind
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
                        for _ in range(3)])
    r = sensitivity_report(m, ["int4_g32"], [torch.randn(64, 32)], all_but=False)
    t = harm_by_kind(r, "int4_g32")
    assert sorted(t.column("kind")) == ["*.0", "*.2"] and t.column("layers") == [3, 3]
    for kind, mean in zip(t.column("kind"), t.column("mean error alone")):
        last = kind[-1]
        vals = [x["error alone"] for x in r.to_dicts() if x["layer"].endswith("." + last)]
        assert mean == pytest.approx(sum(vals) / 3)
    assert t.column("mean error alone") == sorted(t.column("mean error alone"), reverse=True)


def test_harm_figure(report):
    from quantlib.nn.sensitivity_plots import harm_by_depth
    fig = harm_by_depth(report)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["bf16", "fp8", "nvfp4", "int4_g128"]
    assert list(lines[2].get_ydata()) == [r["error alone"] for r in
                                          sorted(rows(report, "nvfp4"), key=lambda r: r["depth"])]


def test_split_plan_table_keeps_every_value():
    from quantlib.nn.sensitivity_plots import split_plan_table
    t = Table(["model", "bytes", "predicted kl", "measured kl", "layers per config", "val loss",
               "top1"], [["all fp8", 100, 0.1, 0.2, "fp8 2", 2.5, 0.9],
                         ["plan <= 1 MB", 90, 0.3, 0.4, "fp8 1, nvfp4 1", 2.6, 0.8]],
              title="T", digits=3)
    a, b = split_plan_table(t)
    assert a.columns == t.columns[:5] and b.columns == ["model", "val loss", "top1"]
    assert a.rows == [r[:5] for r in t.rows] and b.rows == [[r[0], *r[5:]] for r in t.rows]
    assert a.digits == b.digits == 3 and a.title.startswith("T") and b.title.startswith("T")
    with pytest.raises(ValueError, match="first must be"):
        split_plan_table(t, first=7)


@pytest.mark.parametrize("config", ["nvfp4", "w8a8_int8", "nvfp4_w4a4", ("int4_g128", "awq")])
def test_dequantized_once_is_the_reference_forward(config):
    from quantlib.nn.sensitivity import _Dequantized
    m, cal = planted_mlp()
    cfg, smooth = config if isinstance(config, tuple) else (config, None)
    q = quantize_model(m, cfg, calibration=cal, smooth=smooth)[2]
    x = torch.relu(m[0](cal[0][:32])).detach()
    assert torch.equal(_Dequantized(q)(x), q.reference_forward(x))


def test_plan_gives_fused_layers_one_choice_and_exports_as_mixed_precision(tmp_path):
    """q/k/v and gate/up run as one GEMM on a server: the plan picks one config per group, and
    the model quantized with it (fuse="auto") writes a mixed-precision checkpoint."""
    import json

    from quantlib.export import load_checkpoint, save_quantized
    from quantlib.models.hf_llama import hf_llama
    from quantlib.nn.fuse import fused_groups

    model = hf_llama()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (2, 16), generator=g) for _ in range(2)]
    report = sensitivity_report(model, ["fp8", "nvfp4"], calibration=batches)
    fp8_bytes = sum(r["bytes"] for r in report.to_dicts() if r["config"] == "fp8")
    nvfp4_bytes = sum(r["bytes"] for r in report.to_dicts() if r["config"] == "nvfp4")
    plan = mixed_precision_plan(report, budget_bytes=(fp8_bytes + nvfp4_bytes) / 2, check=False)
    assert set(plan.choices.values()) == {"fp8", "nvfp4"}
    groups = fused_groups(report.layers)
    assert groups and all(len({plan.choices[n] for n in grp}) == 1 for grp in groups)
    free = mixed_precision_plan(report, budget_bytes=(fp8_bytes + nvfp4_bytes) / 2,
                                check=False, fused=False)
    assert free.predicted_error <= plan.predicted_error     # the constraint can only cost
    qmodel = quantize_model(model, plan, fuse="auto")
    save_quantized(qmodel, tmp_path, format="compressed-tensors")
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    assert len(load_checkpoint(tmp_path)) == len(report.layers)
