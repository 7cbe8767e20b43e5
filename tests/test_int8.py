import pytest
import torch

from patcher.engine.cpu.int8 import _FBGEMM, Int8Rows


def _rows(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_repeated_rows_are_stored_once_and_the_product_is_the_same_as_without():
    distinct = _rows(40, 48)
    rows = torch.cat([distinct, distinct[:10], distinct[5:25]])                   # 30 repeats
    keys = _rows(3, 48, seed=1)
    plain, unique = Int8Rows(rows[:50]), Int8Rows(rows[:50], unique=True)
    plain.append(rows[50:]), unique.append(rows[50:])                             # repeats of rows stored earlier
    assert len(unique) == len(plain) == 70
    assert unique._stored == 40, "each distinct row stored once"
    assert torch.equal(unique.times(keys), plain.times(keys))
    assert torch.allclose(plain.times(keys), keys @ rows.t(), rtol=0.05, atol=0.15)


def test_a_width_that_is_not_a_multiple_of_16_is_padded_not_misread():
    # torch's int8 product gave wrong sums for widths 8, 24 and 40 and crashed for 300
    for width in (8, 24, 300):
        rows, keys = _rows(20, width), _rows(2, width, seed=1)
        exact = keys @ rows.t()
        assert torch.allclose(Int8Rows(rows).times(keys), exact, rtol=0.05, atol=0.05 * exact.abs().max())


def test_a_selection_of_rows_multiplies_as_those_rows_of_the_whole_copy():
    distinct = _rows(40, 48)
    rows = torch.cat([distinct, distinct[:10]])
    keys = _rows(2, 48, seed=1)
    picked = torch.tensor([45, 3, 3, 17, 49, 0])
    for unique in (False, True):
        whole = Int8Rows(rows, unique=unique)
        part = whole.select(picked)
        assert len(part) == len(picked)
        assert torch.equal(part.times(keys), whole.times(keys)[:, picked]), "the same int8 rows, not quantized again"
    assert Int8Rows(rows, unique=True).select(picked)._stored == 5, "rows 45 and 5, 49 and 9 are one; 3 twice"


@pytest.mark.skipif(not _FBGEMM, reason="FBGEMM's int8 product is for x86 CPUs")
def test_whole_blocks_multiply_through_fbgemm_as_closely_as_the_rest(monkeypatch):
    monkeypatch.setattr(Int8Rows, "BLOCK", 16)
    distinct = _rows(60, 48)
    rows = torch.cat([distinct, distinct[:10]])
    keys = _rows(3, 48, seed=1)
    packed = Int8Rows(rows[:30], unique=True, packed=True)
    plain = Int8Rows(rows[:30], unique=True)                  # the same column scales: from the first rows
    packed.append(rows[30:]), plain.append(rows[30:])         # blocks packed as the stored rows fill them
    assert len(packed._blocks) == 3 and packed._stored == 60, "48 of the 60 distinct rows in whole blocks"
    exact = keys @ rows.t()
    tolerance = 0.03 * exact.abs().max()
    assert (packed.times(keys) - exact).abs().max() < tolerance
    assert (packed.times(keys) - plain.times(keys)).abs().max() < tolerance
    assert not torch.equal(packed.times(keys)[:, :48], plain.times(keys)[:, :48]), "the blocks are FBGEMM's"
    assert torch.equal(packed.times(keys)[:, 60:], packed.times(keys)[:, :10]), "repeats read their stored row"
    picked = torch.tensor([45, 3, 3, 17, 69, 0])
    assert torch.equal(packed.select(picked).times(keys), plain.select(picked).times(keys)), "a selection: torch's"
