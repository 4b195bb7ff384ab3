"""Model files: loading, validation messages, hostile input, derived numerics."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import pkmodel as pk
from pkmodel.expressions import parse_expression

BASE = {
    "model": {"name": "base"},
    "parameters": {
        "CL": {"value": 1.0, "unit": "L/h", "bounds": [0, 100]},
        "V": {"value": 10.0, "unit": "L"},
    },
    "compartments": {"CENT": {"unit": "mg", "dose": True}},
    "flows": [{"from": "CENT", "rate": "CL/V*CENT"}],
    "outputs": {"CP": {"expr": "CENT/V", "unit": "mg/L"}},
}


def variant(path: str, value):
    """BASE with one entry replaced; path like 'flows.0.rate'."""
    data = copy.deepcopy(BASE)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_base_loads_and_derives_linear_system():
    m = pk.load_model(BASE)
    K, b = m.linear_system()
    CL, V = sp.symbols("CL V", real=True)
    assert sp.simplify(K[0, 0] + CL / V) == 0 and b[0] == 0


HOSTILE_RATES = [
    ("__import__('os').system('touch PWNED')", "double underscores"),
    ("CENT.real", "attribute access"),
    ("CENT.__class__", "double underscores"),
    ("(lambda: 1)()", "only the functions"),
    ("[x for x in (1,)]", "comprehensions"),
    ("f'CL'", "f-strings"),
    ("open('x')", "function 'open' is not allowed"),
    ("CL[0]", "indexing"),
    ("UNKNOWN*CENT", "unknown name 'UNKNOWN'"),
    ("CLL/V*CENT", "did you mean CL"),
    ("CL/V*CENT +", "syntax error"),
    ("10**10**10", "power towers|out of range"),
    ("CENT*1e999", "out of range"),
    ("exp(CENT)", "must be dimensionless"),
    ("CL*CENT", "unit"),
    ("CL/V*CENT + CL", "unit mismatch in a sum"),
    ("(x := 3)", "assignment expressions"),
    ("CL if V else CENT", "condition must be a comparison"),
    ("'text'", "not a number"),
    ("CL/0", "division by zero"),
    ("1 < CL < 2", "chained comparisons"),
    ("exp(x=1)", "keyword arguments"),
    ("min(CENT)", "at least two arguments"),
    ("getattr(CL, 'real')", "not allowed"),
    ("*CL", "syntax error|starred"),
    ("CL/V*CENT; import os", "syntax error"),
]


@pytest.mark.parametrize(("rate", "message"), HOSTILE_RATES)
def test_hostile_rate_expressions_are_refused(rate, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pk.ModelFileError, match=message) as info:
        pk.load_model(variant("flows.0.rate", rate), name="hostile.toml")
    assert "hostile.toml" in str(info.value) and "flows[0].rate" in str(info.value)
    assert not Path("PWNED").exists() and not Path("x").exists()


def test_payload_creating_a_file_executes_nothing(tmp_path):
    target = tmp_path / "created_by_payload"
    payloads = [
        f"__import__('pathlib').Path('{target}').touch()",
        f"open('{target}', 'w')",
        f"exec(\"open('{target}','w')\")",
        f"eval(\"open('{target}','w')\")",
        "().__class__.__base__.__subclasses__()",
    ]
    for text in payloads:
        path = tmp_path / "evil.toml"
        path.write_text(
            '[compartments]\nA = { unit = "mg", dose = true }\n[[flows]]\nfrom = "A"\n'
            f"rate = {text!r}\n".replace("'", "'"),
            encoding="utf-8",
        )
        with pytest.raises(pk.ModelFileError):
            pk.load_model(path)
    assert not target.exists()


HOSTILE_FILES = [
    (variant("flows.0.to", "NOWHERE"), "flows[0].to", "not a declared compartment"),
    (variant("parameters.CL.bounds", [2, 100]), "parameters.CL", "outside its bounds"),
    (variant("parameters.CL.bounds", [100, 0]), "parameters.CL.bounds", "lower < upper"),
    (variant("parameters.CL", {"value": 1.0}), "parameters.CL", "missing required field.*unit"),
    (variant("parameters.CL.unit", "furlong"), "parameters.CL", "unknown unit symbol 'furlong'"),
    (variant("parameters.CL.value", "1.0"), "parameters.CL", "must be a number"),
    (variant("parameters.CL.colour", "red"), "parameters.CL", "unknown field"),
    (variant("outputs.CP.unit", "mg"), "outputs.CP", "different quantity"),
    (variant("compartments.CL", {"unit": "mg"}), "compartments.CL", "declared twice"),
    (variant("compartments.t", {"unit": "mg"}), "compartments.t", "reserved"),
    (variant("compartments.2X", {"unit": "mg"}), "compartments.2X", "not a valid name"),
    (
        variant("derived", {"A": {"expr": "B", "unit": "L"}, "B": {"expr": "A", "unit": "L"}}),
        "derived",
        "cycle",
    ),
    (variant("derived", {"KEL": {"expr": "CL/V", "unit": "1/min"}}), "derived.KEL", "factor 0.0166667"),
    (variant("modle", {}), None, "unknown section"),
    (variant("model.time_unit", "d"), "model.time_unit", "hours"),
    (variant("compartments.CENT.initial", "CENT"), "compartments.CENT.initial", "may not depend"),
    (variant("flows.0", {"rate": "1"}), "flows[0]", "needs 'from', 'to' or 'produces'"),
    (variant("compartments", {}), "compartments", "at least one compartment"),
    (variant("compartments.CENT.molar_mass", -5), "compartments.CENT.molar_mass", "must be > 0"),
    (variant("flows.0.produces", {"NOPE": 1}), "flows[0].produces", "not a declared compartment"),
]


@pytest.mark.parametrize(("data", "key", "message"), HOSTILE_FILES)
def test_invalid_model_files_name_key_and_rule(data, key, message):
    with pytest.raises(pk.ModelFileError, match=message) as info:
        pk.load_model(data, name="bad.toml")
    if key:
        assert f"key '{key}" in str(info.value)


def test_toml_syntax_error_names_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[parameters\nCL = 1", encoding="utf-8")
    with pytest.raises(pk.ModelFileError, match=r"broken.toml.*not valid TOML"):
        pk.load_model(path)


def test_unknown_shipped_model_lists_names():
    with pytest.raises(pk.ModelFileError, match="one_compartment_iv"):
        pk.load_model("no_such_model")


def test_indexed_species_expand_and_sum():
    data = {
        "parameters": {"K": {"value": 0.1, "unit": "1/h"}, "V": {"value": 2.0, "unit": "L"}},
        "compartments": {"A{n}": {"for": {"n": "0..3"}, "unit": "mg", "dose": True}},
        "flows": [{"for": {"n": "1..3"}, "from": "A{n}", "to": "A{n-1}", "rate": "{n}*K*A{n}"}],
        "outputs": {
            "TOTAL": {"expr": "sum{n=0..3}(A{n})/V", "unit": "mg/L"},
            "MEAN": {"expr": "sum{n=1..3}(n*A{n})/sum{n=0..3}(A{n})", "unit": "1"},
        },
    }
    m = pk.load_model(data)
    assert m.state_names == ("A0", "A1", "A2", "A3")
    K, _ = m.linear_system()
    k = sp.Symbol("K", real=True)
    assert K == sp.Matrix([[0, k, 0, 0], [0, -k, 2 * k, 0], [0, 0, -2 * k, 3 * k], [0, 0, 0, -3 * k]])
    A = sp.symbols("A0:4", real=True)
    assert sp.simplify(m.output_exprs["MEAN"] - (A[1] + 2 * A[2] + 3 * A[3]) / sum(A)) == 0


def test_linearity_names_the_flow_that_breaks_it():
    data = variant("flows.0.rate", "VMAX*CENT/V/(KM + CENT/V)")
    data["parameters"]["VMAX"] = {"value": 5.0, "unit": "mg/h"}
    data["parameters"]["KM"] = {"value": 1.0, "unit": "mg/L"}
    m = pk.load_model(data)
    assert not m.is_linear
    assert "flows[0]" in m.linearity.reasons[0] and "not linear in the amounts" in m.linearity.reasons[0]
    with pytest.raises(pk.PkmodelError, match="nonlinear"):
        m.linear_system()
    with pytest.raises(pk.SimulationError, match="needs a linear model"):
        pk.simulate(m, pk.parse_regimen("10 mg once"), [1.0], engine="exact")
    timed = pk.load_model(variant("flows.0.rate", "CL/V*CENT*(2 if t > 24 else 1)"))
    assert "depends on t" in timed.linearity.reasons[0]


def test_jacobian_matches_finite_differences():
    data = variant("flows.0.rate", "VMAX*CENT/V/(KM + CENT/V)")
    data["parameters"]["VMAX"] = {"value": 5.0, "unit": "mg/h"}
    data["parameters"]["KM"] = {"value": 1.0, "unit": "mg/L"}
    m = pk.load_model(data)
    num = m.numeric
    p = np.array([[m.parameters[n].value] for n in m.argument_names])
    x = np.array([[7.0]])
    h = 1e-6
    fd = (num.rhs(0.0, x + h, p) - num.rhs(0.0, x - h, p)) / (2 * h)
    assert num.jacobian(0.0, x, p)[0, 0, 0] == pytest.approx(fd[0, 0], rel=1e-8)


def test_covariate_switch_and_unit_conversion_of_outputs():
    data = copy.deepcopy(BASE)
    data["covariates"] = {"WT": {"value": 70, "unit": "kg"}, "APGR": {"value": 7, "unit": "1"}}
    data["parameters"]["WT_REF"] = {"value": 70, "unit": "kg", "fixed": True}
    data["parameters"]["TVCL"] = {"value": 1.0, "unit": "L/h"}
    data["derived"] = {"CLI": {"expr": "TVCL*(WT/WT_REF)^0.75*(0.5 if APGR < 5 else 1)", "unit": "L/h"}}
    data["flows"][0]["rate"] = "CLI/V*CENT"
    data["outputs"]["CP_NG"] = {"expr": "CENT/V", "unit": "ng/mL"}
    m = pk.load_model(data)
    r = pk.simulate(
        m, pk.parse_regimen("100 mg once"), [10.0], parameters={"WT": [70.0, 140.0, 70.0], "APGR": [7, 7, 3]}
    )
    k = np.array([1.0, 2.0**0.75, 0.5]) / 10.0
    assert np.allclose(r.output("CP")[0], 10.0 * np.exp(-k * 10.0), rtol=1e-12)
    assert np.allclose(r.output("CP_NG")[0], 1000.0 * r.output("CP")[0], rtol=1e-12)
    with pytest.raises(pk.ModelFileError, match="dimensionless"):
        bad = copy.deepcopy(data)
        bad["derived"]["CLI"]["expr"] = "TVCL*(WT/70)^0.75"
        pk.load_model(bad)


def test_parse_expression_grammar_round_trip():
    x, y = sp.symbols("x y")
    assert parse_expression("x^2 + max(x, y)", {"x": x, "y": y}) == x**2 + sp.Max(x, y)
    assert parse_expression("exp(log(x))", {"x": sp.Symbol("x", positive=True)}) == sp.Symbol(
        "x", positive=True
    )


def test_composed_file(tmp_path):
    (tmp_path / "pk.toml").write_text(
        '[compartments]\nCENT = { unit = "mg", dose = true }\n[parameters]\nCL = { value = 1.0, unit = "L/h" }\n'
        'V = { value = 10.0, unit = "L" }\n[[flows]]\nfrom = "CENT"\nrate = "CL/V*CENT"\n'
        '[outputs]\nCP = { expr = "CENT/V", unit = "mg/L" }\n',
        encoding="utf-8",
    )
    (tmp_path / "pd.toml").write_text(
        '[parameters]\nKOUT = { value = 0.1, unit = "1/h" }\nSLOPE = { value = 0.01, unit = "L/µg" }\n'
        '[inputs]\nCONC = { unit = "µg/L" }\n[compartments]\nR = { unit = "1", initial = "1" }\n'
        '[[flows]]\nto = "R"\nrate = "KOUT*(1 - SLOPE*CONC)"\n[[flows]]\nfrom = "R"\nrate = "KOUT*R"\n'
        '[outputs]\nRESP = { expr = "R", unit = "1" }\n',
        encoding="utf-8",
    )
    (tmp_path / "pkpd.toml").write_text(
        '[model]\nname = "pkpd"\n[compose]\nmodels = ["pk.toml", "pd.toml"]\n'
        'connect = [{ output = "CP", input = "CONC" }]\n[parameters]\nSLOPE = { value = 0.02 }\n',
        encoding="utf-8",
    )
    m = pk.load_model(tmp_path / "pkpd.toml")
    assert m.connections == (("CP", "CONC"),)
    assert m.parameters["SLOPE"].value == 0.02 and not m.inputs
    # CONC (µg/L) = 1000 × CP (mg/L): the production term is KOUT*(1 - SLOPE*1000*CENT/V)
    rhs_r = m.rhs_exprs["R"]
    s = {n: sp.Symbol(n, real=True) for n in ("KOUT", "SLOPE", "CENT", "V", "R")}
    expected = s["KOUT"] * (1 - s["SLOPE"] * 1000 * s["CENT"] / s["V"]) - s["KOUT"] * s["R"]
    assert sp.simplify(rhs_r - expected) == 0
    # the composed model equals the PD model driven by the PK output as an external input
    times = np.linspace(0, 48, 49)
    reg = pk.parse_regimen("20 mg once")
    joint = pk.simulate(m, reg, times, rtol=1e-10, atol=1e-12)
    pk_only = pk.simulate(pk.load_model(tmp_path / "pk.toml"), reg, np.linspace(0, 48, 4801))
    pd_model = pk.load_model(tmp_path / "pd.toml")
    driven = pk.simulate(
        pd_model,
        None,
        times,
        parameters={"SLOPE": 0.02},
        inputs={"CONC": lambda t: 1000 * 2.0 * np.exp(-0.1 * t)},
        rtol=1e-10,
        atol=1e-12,
    )
    assert np.allclose(joint.output("RESP"), driven.output("RESP"), rtol=1e-7)
    assert pk_only.output("CP")[0, 0] == 2.0
