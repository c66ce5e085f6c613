"""The prompt memory pool: per target, R prompt tokens (and their encodings) for each frame slot.

The official pool keeps every slot of the video although only two things are ever read: the slot of
the target's first appearance and the most recent `window` slots. This pool keeps exactly those, so
its size does not grow with video length, and reads back the same values.
"""
from __future__ import annotations

import torch


class PromptMemory:
    """Slots are absolute frame positions; `tokens`/`pe` hold the most recent slots [N, R, S, C]."""

    def __init__(self, tokens: torch.Tensor, pe: torch.Tensor, keep: int):
        """tokens/pe [N, R, S, C]: the first S slots (positions 0..S-1). keep: recent slots retained."""
        self.tokens, self.pe = tokens, pe
        self.start = 0  # absolute position of self.tokens[:, :, 0]
        self.keep = keep
        self.first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # saved first-appearance slots
        self.first_frames = torch.full((tokens.shape[0],), -1, dtype=torch.long)

    def copy(self, device=None) -> "PromptMemory":
        """An independent copy (tensors cloned, on `device` if given)."""
        move = lambda t: t.detach().to(device, copy=True)  # noqa: E731
        out = PromptMemory(move(self.tokens), move(self.pe), self.keep)
        out.start = self.start
        out.first = {k: (move(t), move(p)) for k, (t, p) in self.first.items()}
        out.first_frames = self.first_frames.clone()
        return out

    @property
    def length(self) -> int:
        """Number of slots written so far (the official pool's S)."""
        return self.start + self.tokens.shape[2]

    def set_first_frames(self, first_frames: torch.Tensor) -> None:
        self.first_frames = first_frames.clone().cpu()

    def append(self, n: int) -> None:
        """Open n blank slots at the end, dropping slots that can no longer be read."""
        blank = self.tokens.new_zeros(*self.tokens.shape[:2], n, self.tokens.shape[3])
        self.tokens = torch.cat([self.tokens, blank], dim=2)
        self.pe = torch.cat([self.pe, blank.clone()], dim=2)
        excess = self.tokens.shape[2] - (self.keep + 1)
        if excess > 0:
            for obj, f in enumerate(self.first_frames.tolist()):
                if self.start <= f < self.start + excess:
                    j = f - self.start
                    self.first[obj] = (self.tokens[obj, :, j].clone(), self.pe[obj, :, j].clone())
            self.tokens, self.pe = self.tokens[:, :, excess:], self.pe[:, :, excess:]
            self.start += excess

    def write(self, valid: torch.Tensor, tokens: torch.Tensor, pe: torch.Tensor, from_slot: int) -> None:
        """Overwrite slots [from_slot:] (negative, from the end) of valid targets with [N, R, C] tokens."""
        n = -from_slot
        self.tokens[valid, :, from_slot:] = tokens[valid][:, :, None].expand(-1, -1, n, -1)
        self.pe[valid, :, from_slot:] = pe[valid][:, :, None].expand(-1, -1, n, -1)

    def recent(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The last n slots [N, R, n, C]."""
        return self.tokens[:, :, -n:], self.pe[:, :, -n:]

    def proca_tokens(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ProCA keys per target: first-appearance slot + last `window` slots -> [N, (1+w)*R, C].

        As in the official pool, a first appearance at or after the second-to-last slot reads the last
        slot."""
        N, R, S, C = self.tokens.shape
        first_t, first_p = [], []
        for obj, f in enumerate(self.first_frames.tolist()):
            if f >= self.length - 1 or f < 0:
                j = S - 1 if f >= self.length - 1 or f == -1 else None
            else:
                j = f - self.start if f >= self.start else None
            if j is None:
                t, p = self.first[obj]
            else:
                t, p = self.tokens[obj, :, j], self.pe[obj, :, j]
            first_t.append(t)
            first_p.append(p)
        recent_t, recent_p = self.recent(min(window, S))
        flat = lambda x: x.transpose(1, 2).reshape(N, -1, C)  # noqa: E731  slot-major, like the official
        return (torch.cat([torch.stack(first_t), flat(recent_t)], 1),
                torch.cat([torch.stack(first_p), flat(recent_p)], 1))
