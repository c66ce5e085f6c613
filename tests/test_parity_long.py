"""Stage (h): 12 frames end to end through the official VOS driver's clip loop, with its random draws replayed.

The reference (README section (h)) is the official driver run on 12 uint8 frames in 2-frame clips (11 clips, stride
1, memory 5, R = 32), prompted by a frame-0 mask larger than R cells. On every key frame but frame 1 the prompt
covers more than R cells of the 1/8 grid, so which 32 cells become tokens is a random draw: the official run made
22 ``torch.randperm`` calls (per clip one point draw, then one cell draw), all recorded. The port runs the whole
model (encoder, pixel decoder, decoder, ``PromptedClipLoop``) from the uint8 frames, its prompt sampler drawing
from the recorded permutations (``RecordedDraws``), each checked to be over the same count as the official one —
so a mask that differs on a key frame is reported at the clip whose prompt it changes, before it spreads.

Compared: every frame's mask exactly; logits (frames 0, 5, 11) within 1e-4 on every pixel; per-frame logit sums
within the same bound summed over the pixels that can be non-zero; the driver's final embeddings and boxes.
A mask pixel may differ only where the official logit sits at the threshold: non-zero and |logit| < 1e-4, so that
a within-bound error could cross 0 (exact zeros are written by the driver's region assignment, not rounded, and
must stay <= 0). Only frames with stored logits can have such pixels; their count is asserted small and printed.

Full set: everything whole. Reduced set (tests/reference_reduced): frames, prompt, masks and cell draws whole;
logits a fixed strided subset; point draws only every 53rd element (their first, the one the point uses, kept).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import reference_r50, REDUCED, load_reference
from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop
from univs_engine.presets import TaskSettings
from univs_engine.io.video import preprocess_frames

TOL = 1e-4
R = 32
NAME = "univs_r50_h_vos_long.safetensors"
DEVICE = os.environ.get("UNIVS_TEST_DEVICE", "cpu")  # e.g. cuda: the same parity check on a GPU
LOGIT_FRAMES = (0, 5, 11)  # frames whose full logits the reference stores
POINT_LINES = (420, 424)   # prompt_encoder.py lines of the official point draws (481: the cell draw)
MAX_POINT_MISS = 2         # point-pool pixels that may differ (key-frame pixels at the threshold)


class RecordedDraws:
    """A PermutationDraw (modeling.prompt_encoder) that returns the official run's permutations in order.

    Each call must be over the same n as the recorded one, which is the official count of point candidates or
    of mask cells: a mismatch names the clip and key frame whose mask differs from the official one."""

    def __init__(self, ref):
        self.ref, self.k = ref, 0
        self.perms: list[torch.Tensor] = []
        self.point_misses: dict[int, tuple[int, int]] = {}  # clip -> (official n, ours)

    def __call__(self, n: int) -> torch.Tensor:
        k = self.k
        assert k < len(self.ref["rng_index"]), f"draw {k}: the official run made only {k} draws"
        _, fn, n_ref, line, call, key_frame = self.ref["rng_index"][k].tolist()
        assert fn == 0, (k, fn)  # randperm
        if n != n_ref and line in POINT_LINES and abs(n - n_ref) <= MAX_POINT_MISS:
            return self._near_point_draw(k, n, n_ref, call)
        assert n == n_ref, (f"draw {k} (clip {call}, key frame {key_frame}, official prompt_encoder.py:{line}): "
                            f"official n = {n_ref}, ours {n}: the key frame's mask differs")
        key = f"rng_{k:03d}_randperm"
        perm = self.ref[key]
        if key in self.ref.reductions:  # reduced set: a point draw, of which only the first element is used
            assert line in POINT_LINES, (key, line)
            rest = torch.ones(n, dtype=torch.bool)
            rest[perm[0]] = False
            perm = torch.cat([perm[:1], torch.nonzero(rest).flatten()])
        else:
            assert torch.equal(perm.sort().values, torch.arange(n)), key
        self.k += 1
        self.perms.append(perm)
        return perm

    def _near_point_draw(self, k: int, n: int, n_ref: int, call: int) -> torch.Tensor:
        """A point pool one or two pixels off the official one: a key-frame mask pixel whose logit sits at the
        threshold (such pixels may differ, see test_masks_and_logits_match_every_frame) came out the other way on
        this CPU. The point only fills the tokens of an object with no cell, so the run goes on with a valid
        permutation of n; test_prompt_cells_are_the_official_ones then checks everything but that point."""
        first = min(int(self.ref[f"rng_{k:03d}_randperm"][0]), n - 1)
        perm = torch.cat([torch.tensor([first]), torch.arange(n)[torch.arange(n) != first]])
        self.point_misses[call] = (n_ref, n)
        self.k += 1
        self.perms.append(perm)
        return perm


@pytest.fixture(scope="module")
def h():
    return load_reference(NAME)


@pytest.fixture(scope="module")
def r50():
    return reference_r50(DEVICE).eval()


def key_cells(mask: torch.Tensor) -> torch.Tensor:
    """The official sampler's cells of a [256, 256] mask: nearest to 32x32, >= min(0.5, max) -> flat indices."""
    cells = F.interpolate(mask.float()[None, None], size=(32, 32), mode="nearest")[0, 0]
    return torch.nonzero((cells >= min(0.5, float(cells.max()))).flatten()).flatten()


@pytest.fixture(scope="module")
def run(h, r50, make_weights):
    """The port's loop over the 12 frames with the recorded draws: per-frame logits, embeddings, boxes and
    what each clip's prompt sampler saw."""
    frames, size = preprocess_frames(h["frames_uint8_thwc"], min_size=256, max_size=1333, device=DEVICE)
    assert size == (256, 256) and tuple(frames.shape) == (12, 3, 256, 256)  # no resize, no padding
    emb = make_weights.make_tensor("clip_cls_text_emb", (3938, 640)).to(DEVICE)
    draws = RecordedDraws(h)
    loop = PromptedClipLoop(r50, TaskSettings(clip_len=2, stride=1, memory_frames=5, prompt_tokens=R),
                            ClipGeometry(12, (256, 256), (256, 256), (256, 256)), class_embeddings=emb, draw=draws)
    latest: dict[int, torch.Tensor] = {0: h["prompt_mask_frame0"].float()}  # frame -> logits after the last clip
    boxes: dict[int, torch.Tensor] = {}
    seen = []  # per prompt encoding: (clip, key frame, PromptTokens, the mask it encoded, draws made so far)

    def on_state(call, state):
        for j, f in enumerate(range(state.end - 2, state.end)):
            latest[f] = state.logits[0, j - 2].clone().cpu()
            boxes[f] = state.boxes[0, j - 2].clone().cpu()

    def on_tokens(call, frame, tokens):  # the mask it encoded is the key frame's after the previous clip
        seen.append((call, frame, tokens, latest[frame] > 0, draws.k))

    loop.hooks["state"] = on_state
    loop.hooks["prompt_tokens"] = on_tokens
    mask = h["prompt_mask_frame0"].float()[None].to(DEVICE)
    with torch.no_grad():
        out = list(loop.run(lambda a, b: frames[a:b], 1, {0: (torch.tensor([0]), mask)}))
    assert [f for f, _, _ in out] == list(range(12))
    assert draws.k == len(h["rng_index"]), f"{draws.k} draws, the official run made {len(h['rng_index'])}"
    return {"logits": torch.stack([o[1][0].cpu() for o in out]), "embds": torch.stack([o[2][0].cpu() for o in out]),
            "boxes": torch.stack([boxes[f] for f in range(12)]), "tokens": seen, "draws": draws}


def test_prompt_cells_are_the_official_ones(h, run):
    """Each clip encodes its key frame's mask from the official cells: same count, same 32 drawn cells."""
    assert [c for c, *_ in run["tokens"]] == list(range(11))  # one encoding per clip, key frame = clip start
    for call, frame, tok, mask, k in run["tokens"]:
        assert frame == call == int(h["vpe_key_frame"][call])
        cells = key_cells(mask)
        assert len(cells) == int(h["prompt_cells_per_frame"][frame]), frame
        assert k == 2 * call + 2  # the point draw and the cell draw of this call were used
        drawn = cells[run["draws"].perms[2 * call + 1][:R]]
        if call == 1:  # frame 1 is still empty: all 1024 cells, the object invalid, its tokens zero
            assert not bool(tok.valid[0]) and not tok.tokens.any() and not tok.pe.any()
            continue
        assert bool(tok.valid[0])
        assert torch.equal(drawn, h["vpe_dense_cell_idx"][call]), call
        if call in run["draws"].point_misses:  # the point is not the official one: it must still be in the mask
            x, y = (tok.points[0].cpu() * 256).long().tolist()
            assert bool(mask[y, x]), (call, run["draws"].point_misses[call])
            continue
        assert torch.allclose(tok.points[0].cpu(), h["vpe_point_coords"][call]), call
    print(f"\npoint pools off by a threshold pixel (clip: official n, ours): {run['draws'].point_misses}")


def at_threshold(official: torch.Tensor) -> torch.Tensor:
    """Pixels whose official logit could cross 0 within the bound: non-zero and |logit| < TOL."""
    return (official != 0) & (official.abs() < TOL)


def test_masks_and_logits_match_every_frame(h, run):
    logits = run["logits"]
    ours = logits > 0
    official = h["pred_masks"]
    report = []
    for t in range(12):
        flips = ours[t] != official[t]
        line = f"frame {t:2d}: {int(flips.sum())} mask pixels differ"
        allowed = torch.zeros_like(flips)
        if t in LOGIT_FRAMES:
            key = f"mask_logits_t{t}"
            err = (h.pick(key, logits[t]) - h[key]).abs().max().item()
            at = at_threshold(h[key])
            if key in h.reductions:  # only the stored subset of pixels is known to sit at the threshold
                allowed.view(-1)[torch.arange(0, 256 * 256, h.reductions[key]["step"])] = at
            else:
                allowed = at
            line += f", max logit error {err:.2e}, {int(at.sum())} pixels at the threshold"
            assert err < TOL, line
        report.append(line)
        assert not (flips & ~allowed).any(), "\n".join(report)
        assert int((flips & allowed).sum()) <= 2, line
    print("\n" + "\n".join(report))


def test_logit_sums_match_every_frame(h, run):
    """Frames without stored logits: the per-frame sums, within TOL per pixel that can be non-zero."""
    logits = run["logits"].double()
    support = ((logits != 0) | h["pred_masks"]).flatten(1).sum(1)
    err = (logits.flatten(1).sum(1) - h["mask_logits_sum"]).abs()
    assert (err <= TOL * support.clamp(min=1)).all(), list(zip(err.tolist(), support.tolist()))


def test_final_embeddings_and_boxes_match(h, run):
    assert (run["embds"] - h["vos_embds"][0]).abs().max() < TOL
    assert (run["boxes"] - h["vos_boxes"][0]).abs().max() < TOL
