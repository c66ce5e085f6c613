"""The prompt memory pool: per target, R prompt tokens (and their encodings) for each frame slot.

The official pool keeps every slot of the video although only two things are ever read: the slot of
the target's first appearance and the most recent `window` slots. This pool keeps exactly those, so
its size does not grow with video length, and reads back the same values.
"""
from __future__ import annotations

import torch


class PromptMemory:
    """Slots are absolute frame positions; `tokens`/`pe` hold the most recent slots [N, R, S, C].

    Everything a read needs stays on the tokens' device (first-appearance frames, saved first slots): reading
    the pool never waits for the device."""

    def __init__(self, tokens: torch.Tensor, pe: torch.Tensor, keep: int):
        """tokens/pe [N, R, S, C]: the first S slots (positions 0..S-1). keep: recent slots retained."""
        self.tokens, self.pe = tokens, pe
        self.start = 0  # absolute position of self.tokens[:, :, 0]
        self.keep = keep
        # first-appearance slots saved before they were dropped [N, R, C] (blank until then)
        self.first_tokens = tokens.new_zeros(tokens.shape[0], tokens.shape[1], tokens.shape[3])
        self.first_pe = self.first_tokens.clone()
        self.first_frames = torch.full((tokens.shape[0],), -1, dtype=torch.long, device=tokens.device)

    def copy(self, device=None) -> "PromptMemory":
        """An independent copy (tensors cloned, on `device` if given)."""
        move = lambda t: t.detach().to(device, copy=True)  # noqa: E731
        out = PromptMemory(move(self.tokens), move(self.pe), self.keep)
        out.start = self.start
        out.first_tokens, out.first_pe = move(self.first_tokens), move(self.first_pe)
        out.first_frames = move(self.first_frames)
        return out

    @property
    def length(self) -> int:
        """Number of slots written so far (the official pool's S)."""
        return self.start + self.tokens.shape[2]

    def set_first_frames(self, first_frames: torch.Tensor) -> None:
        self.first_frames = first_frames.clone().to(self.tokens.device)

    def add_targets(self, n: int) -> None:
        """n new targets with blank slots (and a blank saved first slot)."""
        grow = lambda t: torch.cat([t, t.new_zeros(n, *t.shape[1:])])  # noqa: E731
        self.tokens, self.pe = grow(self.tokens), grow(self.pe)
        self.first_tokens, self.first_pe = grow(self.first_tokens), grow(self.first_pe)
        self.first_frames = torch.cat([self.first_frames, self.first_frames.new_full((n,), -1)])

    def _slots(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """tokens [N, R, S, C] at one slot per target (index [N], clamped into the pool) -> [N, R, C]."""
        N, R, S, C = tokens.shape
        at = index.clamp(0, S - 1).view(N, 1, 1, 1).expand(N, R, 1, C)
        return tokens.gather(2, at)[:, :, 0]

    def append(self, n: int) -> None:
        """Open n blank slots at the end, dropping slots that can no longer be read."""
        blank = self.tokens.new_zeros(*self.tokens.shape[:2], n, self.tokens.shape[3])
        self.tokens = torch.cat([self.tokens, blank], dim=2)
        self.pe = torch.cat([self.pe, blank.clone()], dim=2)
        excess = self.tokens.shape[2] - (self.keep + 1)
        if excess > 0:
            f = self.first_frames
            dropped = ((f >= self.start) & (f < self.start + excess)).view(-1, 1, 1)
            self.first_tokens = torch.where(dropped, self._slots(self.tokens, f - self.start), self.first_tokens)
            self.first_pe = torch.where(dropped, self._slots(self.pe, f - self.start), self.first_pe)
            self.tokens, self.pe = self.tokens[:, :, excess:], self.pe[:, :, excess:]
            self.start += excess

    def write(self, valid: torch.Tensor, tokens: torch.Tensor, pe: torch.Tensor, from_slot: int) -> None:
        """Overwrite slots [from_slot:] (negative, from the end) of valid targets with [N, R, C] tokens."""
        n, keep = -from_slot, valid.view(-1, 1, 1, 1)
        for pool, new in ((self.tokens, tokens), (self.pe, pe)):
            pool[:, :, from_slot:] = torch.where(keep, new[:, :, None].expand(-1, -1, n, -1).to(pool.dtype),
                                                 pool[:, :, from_slot:])

    def recent(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The last n slots [N, R, n, C]."""
        return self.tokens[:, :, -n:], self.pe[:, :, -n:]

    def proca_tokens(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ProCA keys per target: first-appearance slot + last `window` slots -> [N, (1+w)*R, C].

        As in the official pool, a first appearance at or after the second-to-last slot (or none yet) reads the
        last slot; one already dropped reads its saved copy."""
        N, R, S, C = self.tokens.shape
        f = self.first_frames
        last = (f >= self.length - 1) | (f == -1)
        saved = ~last & ((f < -1) | (f < self.start))
        j = torch.where(last, torch.full_like(f, S - 1), f - self.start)
        first_t = torch.where(saved.view(-1, 1, 1), self.first_tokens, self._slots(self.tokens, j))
        first_p = torch.where(saved.view(-1, 1, 1), self.first_pe, self._slots(self.pe, j))
        recent_t, recent_p = self.recent(min(window, S))
        flat = lambda x: x.transpose(1, 2).reshape(N, -1, C)  # noqa: E731  slot-major, like the official
        return torch.cat([first_t, flat(recent_t)], 1), torch.cat([first_p, flat(recent_p)], 1)
