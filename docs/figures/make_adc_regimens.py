"""Figure for docs/adc-regimens.md: ESG401 analytes and ANC over 4 cycles of two regimens.

Run from the repository root::

    python docs/figures/make_adc_regimens.py

It writes ``docs/figures/adc_regimens.png``: conjugated antibody (ADC), free SN-38, total antibody
(TAb) and the absolute neutrophil count for 16 mg/kg Q3W and 12 mg/kg on days 1, 8, 15 of 4-week
cycles (1-h infusions, 70 kg), simulated with the composed model ``adc_esg401_friberg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "adc_regimens.png"


def simulate_regimens():
    """Time (days) and outputs of both regimens over 4 cycles.

    Returns
    -------
    dict of str to (ndarray, SimulationResult)
        Regimen label -> (times in days, result).
    """
    import pkmodel as pk

    model = pk.load_model("adc_esg401_friberg")
    regimens = {
        "16 mg/kg Q3W": (pk.q3w(16, cycles=4), 4 * 21),
        "12 mg/kg D1,8,15 q4w": (pk.d1_8_15_q4w(12, cycles=4), 4 * 28),
    }
    out = {}
    for label, (regimen, days) in regimens.items():
        times = np.arange(0.0, days * 24.0 + 1e-9, 1.0)
        out[label] = (times / 24.0, pk.simulate(model, regimen, times, method="BDF", rtol=1e-8, atol=1e-10))
    return out


def main(path: Path = OUT) -> Path:
    """Draw the four panels and save them as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = simulate_regimens()
    panels = [
        ("ADC", "conjugated antibody, µg/mL", True),
        ("SN38", "free SN-38, ng/mL", True),
        ("TAb", "total antibody, µg/mL", True),
        ("ANC", "ANC, 10^9/L", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (name, label, log) in zip(axes.ravel(), panels, strict=True):
        for regimen, (days, res) in results.items():
            keep = slice(1, None) if log else slice(None)  # zero before the first infusion has no logarithm
            ax.plot(days[keep], res.output(name)[keep, 0], label=regimen)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(1e-3, ax.get_ylim()[0]))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    anc_ax = axes[1, 1]
    for level, text in ((1.0, "grade 3"), (0.5, "grade 4")):
        anc_ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        anc_ax.text(1, level, text, va="bottom", fontsize=8, color="grey")
    for ax in axes[1]:
        ax.set_xlabel("time, days")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("ESG401 (adc_esg401_friberg, 70 kg, 1-h infusions): 4 cycles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
