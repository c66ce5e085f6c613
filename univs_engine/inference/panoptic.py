"""VPS output: entity logits of one output window -> panoptic id maps with persistent segment ids."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import core  # core.to_host: the copy point tests/test_host_syncs.py counts


@dataclass
class PanopticMemory:
    """Persistent segment ids: things[entity id] and stuff[class index] -> segment id (positive); classes[entity
    id]: each entity's class in the latest window."""

    things: dict[int, int] = field(default_factory=dict)
    stuff: dict[int, int] = field(default_factory=dict)
    classes: dict[int, int] = field(default_factory=dict)


def compose_panoptic(logits, probs: torch.Tensor, things: torch.Tensor | Sequence[bool], memory: PanopticMemory,
                     overlap: float = 0.6, ids: Sequence[int] | None = None) -> list[torch.Tensor]:
    """One output window -> panoptic id maps (official save_results_vps).

    logits: accumulated entity logits at the output size, a tensor [N, F, H, W] or a sequence of F tensors
    [N, H, W] (computed lazily if it is a lazy sequence); probs [N, K] mean class probabilities; things [K]
    thing flags; ids [N] entity ids (host ints, default 0..N-1). Returns F int32 maps [H, W] on the CPU
    (0 = void). `memory` carries segment ids across windows and is updated. The window leaves the device in
    one copy (per-pixel owners and per-entity areas); segment ids are assigned on the host.

    Per entity: class = argmax prob, score = max prob x mask quality (over the window), stuff entities not
    yet known as things x0.75. Per pixel: winner = argmax score x logit, void where every sigmoid < 0.5;
    an entity owns winner pixels where its sigmoid >= 0.5; things keeping < overlap (0.5 x overlap for
    things seen before) of their own sigmoid >= 0.5 area are dropped; stuff of one class shares one id.
    """
    frames = (lambda f: logits[:, f]) if isinstance(logits, torch.Tensor) else (lambda f: logits[f])
    F_ = logits.shape[1] if isinstance(logits, torch.Tensor) else len(logits)
    N = probs.shape[0]
    ids = list(range(N)) if ids is None else [int(x) for x in ids]
    if N == 0:
        return [torch.zeros(frames(f).shape[-2:], dtype=torch.int32) for f in range(F_)]
    known = [e in memory.things for e in ids]  # snapshot: entities emitted as things in earlier windows
    isthing = torch.as_tensor(things, dtype=torch.bool).flatten().to(probs.device)
    scores, classes = _entity_scores(frames, F_, probs, isthing, torch.tensor(known).to(probs.device))
    areas, owners = _pixel_owners(frames, F_, scores)
    classes, isthing, areas, *owners = core.to_host(classes, isthing[classes], areas, *owners)
    memory.classes = dict(zip(ids, classes.tolist()))
    segment = _assign_segments(areas, isthing, classes, known, ids, memory, overlap)
    return [torch.from_numpy(segment[o + 1]) for o in owners]


def _entity_scores(frames, F_: int, probs: torch.Tensor, things: torch.Tensor, known: torch.Tensor):
    """score = max class probability x mask quality over the window, x0.75 for stuff not yet known as a
    thing -> (scores [N], classes [N])."""
    pos = tot = 0
    for f in range(F_):
        x = frames(f).float()
        pos = pos + (x > 1).flatten(1).sum(1)
        tot = tot + (x > -1).flatten(1).sum(1)
    scores, classes = probs.float().max(-1)
    scores = scores * (pos / tot.clamp(min=1))
    return torch.where(known | things[classes], scores, scores * 0.75), classes


def _pixel_owners(frames, F_: int, scores: torch.Tensor):
    """Per frame, the entity owning each pixel (-1: void) -> (areas [3, N]: winner, own sigmoid >= 0.5 and
    owned pixel counts over the window; owners: F int32 maps [H, W]), on the device."""
    N = scores.shape[0]
    areas = torch.zeros(3, N, dtype=torch.long, device=scores.device)
    owners = []
    for f in range(F_):
        x = frames(f).float()
        sig = x.sigmoid()
        winner = (scores.view(-1, 1, 1) * x).argmax(0).masked_fill((sig < 0.5).all(0), -1)
        fg = winner >= 0
        areas[0].scatter_add_(0, winner.clamp(min=0).flatten(), fg.flatten().long())
        areas[1] += (sig >= 0.5).flatten(1).sum(1)
        mine = sig.gather(0, winner.clamp(min=0)[None])[0] >= 0.5
        owner = torch.where(fg & mine, winner, -1)
        areas[2].scatter_add_(0, owner.clamp(min=0).flatten(), (owner >= 0).flatten().long())
        owners.append(owner.int())
    return areas, owners


def _assign_segments(areas: np.ndarray, isthing: np.ndarray, classes: np.ndarray, known: list[bool], ids: list[int],
                     memory: PanopticMemory, overlap: float) -> np.ndarray:
    """Segment id per entity (index k + 1; index 0 is void): things keeping enough of their own area get
    their persistent id, stuff shares its class's id -> [N + 1] int32."""
    winner_area, own_area, region_area = areas
    existing = list(memory.things.values()) + list(memory.stuff.values())
    counter = max(existing) + 1 if existing else 0
    segment = np.zeros(len(ids) + 1, dtype=np.int32)
    for k in range(len(ids)):
        if not (winner_area[k] > 0 and own_area[k] > 0 and region_area[k] > 0):
            continue
        if isthing[k]:
            thr = 0.5 * overlap if known[k] else overlap
            if float(winner_area[k]) / float(own_area[k]) < thr:
                continue
            if ids[k] not in memory.things:
                counter += 1
                memory.things[ids[k]] = counter
            segment[k + 1] = memory.things[ids[k]]
        else:
            c = int(classes[k])
            if c not in memory.stuff:
                counter += 1
                memory.stuff[c] = counter
            segment[k + 1] = memory.stuff[c]
    return segment
