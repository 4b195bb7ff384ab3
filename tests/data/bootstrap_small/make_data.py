"""Make data.csv: 8 simulated subjects for the bootstrap and VPC tests (run once; output committed).

One-compartment IV bolus, 100 mg at t = 0; CL_i = 1 L/h · exp(η_i), η ~ N(0, 0.09); V = 10 L; concentration
C = 100/V · exp(−CL_i/V · t) at 0.5, 2, 6, 12 h with 10 % proportional error; seed 7.  Subjects 1–4 are
dose group A, 5–8 group B (a column to stratify by).
"""

from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    """Write data.csv next to this script."""
    rng = np.random.default_rng(7)
    times = [0.5, 2.0, 6.0, 12.0]
    rows = []
    for subject in range(1, 9):
        cl = 1.0 * np.exp(0.3 * rng.standard_normal())
        group = 1 if subject <= 4 else 2
        rows.append(
            {
                "ID": subject,
                "TIME": 0.0,
                "AMT": 100.0,
                "DV": ".",
                "EVID": 1,
                "MDV": 1,
                "CMT": 1,
                "GROUP": group,
            }
        )
        for t in times:
            c = 100.0 / 10.0 * np.exp(-cl / 10.0 * t) * (1.0 + 0.1 * rng.standard_normal())
            rows.append(
                {
                    "ID": subject,
                    "TIME": t,
                    "AMT": 0.0,
                    "DV": round(c, 4),
                    "EVID": 0,
                    "MDV": 0,
                    "CMT": 1,
                    "GROUP": group,
                }
            )
    pd.DataFrame(rows).to_csv(Path(__file__).with_name("data.csv"), index=False)


if __name__ == "__main__":  # not on import (pytest imports every module for doctests)
    main()
