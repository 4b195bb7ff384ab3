"""Generated model documentation (pkmodel.docgen).

Oracles: the committed pages under docs/models/ are regenerated and compared byte for byte (the pages
cannot drift from the model files); equations of small models are compared with the ODEs derived by
hand; the unit conversion printed for an output is checked against a hand computation; the guard that
compares rendered equations with the model's right-hand side is shown to fire on a tampered model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp

import pkmodel as pk
from pkmodel.docgen import model_page, write_model_docs
from pkmodel.errors import ModelFileError, PkmodelError
from pkmodel.expressions import parse_expression

DOCS = Path(__file__).resolve().parent.parent / "docs" / "models"


def test_committed_model_pages_are_up_to_date(tmp_path):
    written = write_model_docs(tmp_path)
    fresh = {p.name: p.read_text(encoding="utf-8") for p in written}
    committed = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    assert set(fresh) == {f"{name}.md" for name, _ in pk.list_models()} | {"index.md"}
    stale = sorted(set(committed) - set(fresh))
    missing = sorted(set(fresh) - set(committed))
    changed = sorted(name for name in set(fresh) & set(committed) if fresh[name] != committed[name])
    assert not (stale or missing or changed), (
        f"docs/models is out of date (stale {stale}, missing {missing}, changed {changed}); regenerate "
        "it with `pkmodel docs` or pkmodel.docgen.write_model_docs()"
    )


def test_small_model_page_shows_hand_derived_equations():
    page = model_page(pk.load_model("two_compartment_iv"))
    # dCENT/dt = -(CL + Q)/V1 CENT + Q/V2 PERI ; dPERI/dt = Q/V1 CENT - Q/V2 PERI (textbook)
    assert "d(CENT)/dt = -CENT*CL/V1 - CENT*Q/V1 + PERI*Q/V2" in page
    assert "d(PERI)/dt = CENT*Q/V1 - PERI*Q/V2" in page
    assert "CP [mg/L] = CENT/V1" in page
    assert "**Linear: yes.**" in page
    assert (
        "| CL | 0.2 | L/h | [0, 10000] |  | clearance from the central compartment | illustrative |" in page
    )


def test_nonlinear_verdict_names_the_flow():
    page = model_page(pk.load_model("friberg_myelosuppression"))
    assert "**Linear: no.**" in page
    assert "- flows[0] ((input) -> PROL): rate" in page
    assert "KTR = 4/MTT" in page
    assert "| CONC | µmol/L | 0 | drug concentration driving the effect |" in page


def test_output_unit_conversion_is_printed():
    # SN38 = SN38_C [nmol] * MW_SN38 [g/mol] / V1S [L] = ng/L; 1 ng/L = 0.001 ng/mL
    page = model_page(pk.load_model("adc_dar8_sn38"))
    assert "SN38 [ng/mL] = 0.001*MW_SN38*SN38_C/V1S" in page
    # nmol * g/mol / L = ng/L = 1e-6 µg/mL
    assert "TAb [µg/mL] = 1.0e-6*MW_AB*(DAR0_C + DAR1_C" in page


def test_composed_page_lists_its_parts_and_connection():
    page = model_page(pk.load_model("adc_esg401_friberg"))
    assert (
        "Composed of [adc_esg401](adc_esg401.md), [friberg_myelosuppression](friberg_myelosuppression.md)."
        in page
    )
    assert "Output `SN38` drives input `CONC` (molar mass 392.4 g/mol)." in page
    assert "CONC = 0.00254841997961*SN38" in page  # 1/392.4, ng/mL -> µmol/L


def test_rendered_equations_are_checked_against_the_model():
    model = pk.load_model("one_compartment_iv")
    model.rhs_exprs = {"CENT": -2 * model.symbols["CL"] / model.symbols["V"] * model.symbols["CENT"]}
    with pytest.raises(
        PkmodelError, match=r"rendered equation for d\(CENT\)/dt of model one_compartment_iv differs"
    ):
        model_page(model)


def test_write_model_docs_subset_and_bad_arguments(tmp_path):
    paths = write_model_docs(tmp_path, ["one_compartment_iv", pk.load_model("friberg_myelosuppression")])
    assert [p.name for p in paths] == ["one_compartment_iv.md", "friberg_myelosuppression.md"]
    assert not (tmp_path / "index.md").exists()  # the index is written only for the whole library
    with pytest.raises(PkmodelError, match="models must be a list of model names"):
        write_model_docs(tmp_path, "adc_esg401")
    with pytest.raises(PkmodelError, match=r"cannot document 42: give a model name"):
        write_model_docs(tmp_path, [42])
    with pytest.raises(ModelFileError, match="no model file 'no_such_model'"):
        write_model_docs(tmp_path, ["no_such_model"])


def test_rendered_equation_parses_back_to_the_model_rhs():
    model = pk.load_model("one_compartment_oral")
    line = next(x for x in model_page(model).splitlines() if x.startswith("d(CENT)/dt = "))
    parsed = parse_expression(line.split(" = ", 1)[1], model.symbols)
    assert sp.simplify(parsed - model.rhs_exprs["CENT"]) == 0
