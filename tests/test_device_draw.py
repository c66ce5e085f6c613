"""Prompt cell draws that read nothing back from the device (modeling.prompt_encoder.DeviceDraw): the same
choices as the official permutation draws where those are fixed (tiling, empty objects) and the same
distributions where they are random (a point uniform over its pool, R distinct cells uniform over the cells)."""
import torch

from univs_engine.modeling.prompt_encoder import (DeviceDraw, default_draw, pick_points, randperm_draw,
                                                  sample_mask_prompts, token_cells)


def flags_of(counts, M=40):
    """Rows of M cells with counts[i] True cells at scattered places."""
    g = torch.Generator().manual_seed(5)
    rows = torch.zeros(len(counts), M, dtype=torch.bool)
    for i, n in enumerate(counts):
        rows[i, torch.randperm(M, generator=g)[:n]] = True
    return rows


def test_fixed_choices_equal_the_permutation_path():
    """Fewer cells than R: the row-major cell list tiled (no randomness); no cells: flagged empty."""
    flags = flags_of([0, 1, 3, 5])
    dev_idx, dev_empty = token_cells(flags, 6, DeviceDraw(torch.Generator().manual_seed(0)))
    ref_idx, ref_empty = token_cells(flags, 6, randperm_draw(torch.Generator().manual_seed(0)))
    assert dev_empty.tolist() == ref_empty.tolist() == [True, False, False, False]
    assert torch.equal(dev_idx[1:], ref_idx[1:])


def test_drawn_cells_are_distinct_cells_of_the_object():
    flags = flags_of([6, 9, 40])
    idx, empty = token_cells(flags, 6, DeviceDraw(torch.Generator().manual_seed(1)))
    assert not empty.any()
    for row, cells in zip(idx, flags):
        assert len(set(row.tolist())) == 6 and cells[row].all()


def test_draws_are_uniform():
    """2000 draws: each of 10 cells is taken with probability R/10 = 0.3, each of 7 pool pixels with 1/7
    (binomial sd 20.5 and 15.6 draws; the bound is 5 sd)."""
    draw = DeviceDraw(torch.Generator().manual_seed(2))
    flags = flags_of([10])
    hits = torch.zeros(40)
    pool = flags_of([7])
    picks = torch.zeros(40)
    coords = torch.stack([torch.arange(40.0), torch.zeros(40)], -1)
    for _ in range(2000):
        hits[token_cells(flags, 3, draw)[0][0]] += 1
        picks[pick_points(pool, coords, draw)[0, 0].long()] += 1
    assert (hits[~flags[0]] == 0).all() and ((hits[flags[0]] - 600).abs() < 5 * 20.5).all(), hits[flags[0]]
    assert (picks[~pool[0]] == 0).all() and ((picks[pool[0]] - 2000 / 7).abs() < 5 * 15.6).all(), picks[pool[0]]


def test_a_seed_repeats_and_empty_pools_fall_back():
    masks = (torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(4)) > 0.6).float()
    masks[1] = 0
    feat, pos = torch.randn(8, 4, 6), torch.randn(8, 4, 6)
    runs = [sample_mask_prompts(feat, pos, masks, 5, torch.tensor(0.3),
                                draw=DeviceDraw(torch.Generator().manual_seed(9))) for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].points, runs[1].points)
    assert runs[0].valid.tolist() == [True, False, True] and (runs[0].tokens[1] == 0).all()


def test_default_draw_reads_counts_on_the_cpu_only():
    assert not isinstance(default_draw(torch.device("cpu")), DeviceDraw)
    assert isinstance(default_draw(torch.device("cuda")), DeviceDraw)
    assert isinstance(default_draw(torch.device("mps")), DeviceDraw)
