"""The other half of the interaction matrix's cells (tests/test_matrix.py runs the first half and says how)."""
import pytest

from tests.test_matrix import CELLS, _halves, _name, run_cell

HALF = _halves(CELLS)[1]


@pytest.mark.parametrize("cell", HALF, ids=[_name(c) for c in HALF])
@pytest.mark.usefixtures("no_plots")  # figures are tested elsewhere
def test_cell(cell, tmp_path):
  run_cell(cell, tmp_path)
