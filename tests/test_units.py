"""Unit parsing is remembered per text: the remembered Unit is the one a fresh parse gives, and a text
that does not parse raises every time (errors are not remembered).

Oracle: the undecorated parser (``_parse_unit.__wrapped__``) on the same text.
"""

from __future__ import annotations

import pytest

from pkmodel.errors import UnitError
from pkmodel.units import _parse_unit, parse_unit


@pytest.mark.parametrize("text", ["mg", "mg/kg", "µg/mL", "10^9/L", "1/(mg*h)", "nmol/L", "L/h"])
def test_a_remembered_unit_is_the_freshly_parsed_one(text):
    first, again = parse_unit(text), parse_unit(text)
    fresh = _parse_unit.__wrapped__(text)
    assert again is first  # served from memory
    assert (first.scale, first.dims, first.text) == (fresh.scale, fresh.dims, fresh.text)


@pytest.mark.parametrize("text", ["furlong", "mg/(kg", "mg^x", " "])
def test_a_bad_unit_raises_every_time(text):
    messages = []
    for _ in range(2):
        with pytest.raises(UnitError) as err:
            parse_unit(text)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
