"""Category-guided inference (VIS / VPS / VSS): helpers on hand-worked cases, the bounded clip loop against
a literal (unbounded, padded-resolution) transcription of the official bookkeeping, panoptic composition
and semantic labels on hand-made inputs, the Tracks driver and cancellation. Tiny random model, CPU."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from univs_engine.config import get_config
from univs_engine.inference.category import Vocabulary, run_category_task
from univs_engine.inference.core import (Cancelled, ClipGeometry, TensorFrames, mask_quality, semantic_map,
                                         temporal_consistency)
from univs_engine.inference.entity import EntityClipLoop, EntityState
from univs_engine.inference.matching import (bisoftmax_match, bisoftmax_similarity, box_nms_keep, mask_nms_keep,
                                             max_overlap, video_box_iou)
from univs_engine.inference.panoptic import PanopticMemory, compose_panoptic
from univs_engine.inference.semantic import SemanticClipLoop
from univs_engine.modeling.position_encoding import frame_phase
from univs_engine.modeling.prompt_encoder import mask_box, sample_mask_prompts
from univs_engine.presets import TaskSettings, get_settings
from univs_engine.results import Tracks

K = 6
THINGS = [True, True, True, False, False, False]
HW, IMG = (64, 64), (60, 56)


def settings(task: str, **kw) -> TaskSettings:
    """The official R50 settings of a task with some fields replaced."""
    return replace(get_settings(task), **kw)


def geometry(L: int, out_size=None) -> ClipGeometry:
    return ClipGeometry(L, IMG, HW, tuple(out_size or IMG))


def frames_of(vid, out_size=None, frame_ids=None) -> TensorFrames:
    return TensorFrames(vid, IMG, out_size, frame_ids)


class StubModel(torch.nn.Module):
    """The small config's decoder over fixed random encoder features (frames carry their own index), so
    the loops run without the image encoder; `encode_frames` records what it was asked for."""

    def __init__(self, decoder, features):
        super().__init__()
        self.cfg, self.dec, self.features = decoder.cfg, decoder, features
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
        self.encoded: list[int] = []

    @property
    def decoder(self):
        return self.dec

    def encode_frames(self, frames):
        idx = frames[:, 0, 0, 0].long()
        self.encoded += idx.tolist()
        return self.features[0][idx], [f[idx] for f in self.features[1:]]


class AppearingObject(torch.nn.Module):
    """Wraps a decoder: from frame `start` on, learnable query 0 sees a new, confident object (a small
    square, class 1, a distinctive embedding), so later clips have something new to detect."""

    def __init__(self, decoder, start=4):
        super().__init__()
        self.inner, self.start = decoder, start
        self.cfg, self.num_queries = decoder.cfg, decoder.num_queries

    def embed_levels(self, *a):
        return self.inner.embed_levels(*a)

    def visual_prompt_queries(self, *a):
        return self.inner.visual_prompt_queries(*a)

    def forward(self, levels, mask_features, *a, **kw):
        out = self.inner(levels, mask_features, *a, **kw)
        if int(levels.frame_indices[0]) >= self.start:
            m = torch.full_like(out.pred_masks[0], -8.0)
            m[:, 1:4, 2:5] = 8.0
            out.pred_masks[0] = m
            out.pred_logits[0] = torch.tensor([-5.0, 5.0] + [-5.0] * (out.pred_logits.shape[1] - 2))
            e = torch.zeros_like(out.pred_embds[0])
            e[:, :4] = torch.tensor([3.0, -3.0, 3.0, -3.0])
            out.pred_embds[0] = e
        return out


MAX_FRAMES = 40


@pytest.fixture(scope="module")
def model():
    from univs_engine.modeling.mask_decoder import VideoMaskDecoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only spin (and crawl on a busy machine)

    torch.manual_seed(0)
    cfg = get_config("small").with_(num_queries=12, dec_layers=2)  # fewer ops: the loops are under test
    dec = VideoMaskDecoder(cfg).eval()
    g = torch.Generator().manual_seed(4)
    C, (H, W) = cfg.hidden_dim, HW
    feats = [torch.randn(MAX_FRAMES, C, H // s, W // s, generator=g) for s in (4, 32, 16, 8)]
    yield StubModel(dec, feats).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def emb(model):
    return torch.randn(K, model.cfg.text_dim, generator=torch.Generator().manual_seed(1))


def video(n):
    """Fake frames [n, 3, H, W] whose value is the frame index (see StubModel)."""
    return torch.arange(n).float().view(-1, 1, 1, 1).expand(-1, 3, *HW)


# ------------------------------------------------------------------------------------------ settings
def test_official_r50_defaults():
    vis = get_settings("instance")
    assert (vis.clip_len, vis.stride, vis.memory_frames, vis.prompt_tokens) == (5, 1, 5, 128)
    assert (vis.box_nms, vis.new_object, vis.consistency, vis.stability, vis.overlap, vis.class_threshold,
            vis.topk) == (0.85, 0.1, 0.25, 0.25, 0.8, 0.25, 35)
    assert vis.out_window == 10 and vis.window == 5 and vis.consistency_slots == 5
    vps = get_settings("panoptic")
    assert (vps.prompt_tokens, vps.box_nms, vps.new_object, vps.consistency, vps.overlap, vps.class_threshold,
            vps.topk) == (64, 0.75, 0.05, 0.05, 0.6, 0.15, 100)
    assert get_settings("vis_ovis").class_threshold == 0.2
    p = get_settings("vps", "small")
    assert (p.clip_len, p.box_nms, p.class_threshold) == (3, 0.75, 0.15)
    with pytest.raises(ValueError):
        get_settings("nope")
    with pytest.raises(ValueError, match="clip_len"):
        TaskSettings(clip_len=0)


# ------------------------------------------------------------------------------------------ helpers
def test_box_nms_is_the_official_non_greedy_rule():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 8], [20, 20, 30, 30]], dtype=torch.float)
    iou = video_box_iou(boxes[:, None], boxes[:, None])[..., 0]
    assert iou[0, 1] == pytest.approx(0.9) and iou[0, 2] == pytest.approx(0.8) and iou[1, 2] == pytest.approx(8 / 9)
    # box 2 overlaps the (dropped) box 1 by 0.889 >= 0.85: dropped too (greedy NMS would keep it)
    assert box_nms_keep(boxes[:, None], 0.85).tolist() == [True, False, False, True]
    # IoU over a clip is the max over frames
    two = torch.stack([boxes[[0, 3]], boxes[[3, 3]]], 1)  # query 1 equals query 0 on frame 1 only
    assert box_nms_keep(two, 0.85).tolist() == [True, False]
    assert video_box_iou(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)).item() == 0  # empty boxes


def test_mask_nms_and_overlap():
    m = torch.zeros(3, 4, 4, dtype=torch.bool)
    m[0, :2] = True          # 8 px
    m[1, :3] = True          # 12 px, IoU with 0 = 8/12
    m[2, 2:] = True          # IoU with 1 = 4/16
    assert mask_nms_keep(m, 0.6).tolist() == [True, False, True]
    q = m[:, None].flatten(2)            # [3, 1, 16]
    assert max_overlap(q, q[:1]).tolist() == pytest.approx([1.0, 8 / 12, 0.0])
    assert max_overlap(q, q[:0]).tolist() == [0, 0, 0]


def test_bisoftmax_matching_hand_case():
    r = 10 ** 0.5
    tracks = torch.tensor([[[r, 0.0]], [[0.0, r]]])
    queries = torch.tensor([[[0.0, r]], [[r, 0.0]], [[-r, -r]]])
    S = torch.tensor([[0.0, 10.0, -10.0], [10.0, 0.0, -10.0]])  # the dot products, by hand
    bi = bisoftmax_similarity(tracks, queries, 0.1)
    expect = (S.softmax(1) + S.softmax(0)) / 2
    expect[expect < 0.1] = 0
    assert torch.allclose(bi, expect)
    assert bi[0, 1].item() == pytest.approx(1 / (1 + math.exp(-10) + math.exp(-20)), abs=1e-6)
    assert bi[0, 0] == 0  # e^-10-ish similarities fall under the threshold
    # a query unlike every track still gets 1/2 from the softmax over tracks: (0 + 1/2) / 2
    assert bi[:, 2].tolist() == pytest.approx([0.25, 0.25], abs=1e-6)
    rows, cols, sim = bisoftmax_match(tracks, queries, 0.1)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert sim.tolist() == pytest.approx(expect[[0, 1], [1, 0]].tolist())
    # one track: the softmax over tracks is 1 everywhere, so every query scores >= 0.5 (official quirk)
    one = bisoftmax_similarity(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[1.0, 0]], [[0, 1.0]], [[-1.0, 0]]]), 0.1)
    e = torch.tensor([math.e ** 2, 1, math.e ** -2])
    assert one[0].tolist() == pytest.approx(((e / e.sum()) + 1) / 2, abs=1e-6)
    r, c, s1 = bisoftmax_match(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[1.0, 0]], [[0, 1.0]]]), 0.1)
    assert c.tolist() == [0]
    # multi-slot tracks: mean over every (slot, frame) pair; blank slots count as zero dot products
    t = torch.tensor([[[1.0, 0], [0, 0], [1.0, 0]]])
    qq = torch.tensor([[[1.0, 0], [1.0, 0]], [[0, 1.0], [0, 1.0]]])
    sims = torch.einsum("ntc,mfc->nmtf", t, qq).flatten(2)
    assert torch.allclose(bisoftmax_similarity(t, qq, 0.0), ((sims.softmax(1) + sims.softmax(0)) / 2).mean(-1))
    e0, e1, e2 = bisoftmax_match(torch.zeros(0, 3, 2), qq, 0.1)
    assert len(e0) == len(e1) == len(e2) == 0


def test_temporal_consistency_weights_recent_slots_and_skips_blanks():
    e1, e2 = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    prev = torch.stack([torch.zeros(3), e1 * 3, e2 * 0.5])[None]   # slot 1 blank
    cur = torch.stack([e1, e1 * 2])[None]
    w2, w3 = math.exp(5 * 2 / 3), math.exp(5)
    assert temporal_consistency(prev, cur).item() == pytest.approx(w2 / (w2 + w3), abs=1e-6)


def test_mask_quality_counts_confident_pixels():
    x = torch.tensor([[[3.0, 0.5, -0.5, -3.0]]])
    assert mask_quality(x).item() == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------ panoptic / semantic
def _entity_logits(cols, H=4, W=6):
    x = torch.full((H, W), -5.0)
    x[1:, cols] = 5.0        # row 0: every entity below 0.5 -> void
    return x


def test_compose_panoptic_hand_case():
    probs = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.9]])  # thing, thing, stuff
    things = [True, True, False]
    logits = torch.stack([_entity_logits([0, 1, 2]), _entity_logits([2, 3]), _entity_logits([3, 4, 5])])
    mem = PanopticMemory()
    (m,) = compose_panoptic(logits[:, None], probs, things, mem, overlap=0.6)
    # scores 0.9, 0.8 and 0.9 x 0.75 (stuff not known as a thing); score x logit decides each pixel:
    # column 2 -> entity 0, column 3 -> entity 1 (4.0 > 3.375), columns 4-5 -> the stuff.
    # Entity 1 keeps 3 of its 6 pixels (0.5 < 0.6): dropped, its column is void.
    expect = torch.tensor([[0, 0, 0, 0, 0, 0]] + [[1, 1, 1, 0, 2, 2]] * 3, dtype=torch.int32)
    assert torch.equal(m, expect)
    assert mem.things == {0: 1} and mem.stuff == {2: 2}
    # next window: ids persist, a second stuff entity of the same class shares the stuff segment, and a new
    # thing gets max(id) + 2 (the official counter starts at max + 1 and pre-increments)
    probs2 = torch.cat([probs, torch.tensor([[0.0, 0.0, 0.95]])])
    logits2 = torch.cat([logits, _entity_logits([5])[None]])
    (m2,) = compose_panoptic(logits2[:, None], probs2, things, mem, overlap=0.5)
    expect2 = torch.tensor([[0] * 6] + [[1, 1, 1, 4, 2, 2]] * 3, dtype=torch.int32)
    assert torch.equal(m2, expect2)
    assert mem.things == {0: 1, 1: 4} and mem.stuff == {2: 2}
    # a lazy per-frame sequence gives the same maps as the dense tensor; quality spans the window
    seq = [logits2, logits2]
    maps = compose_panoptic(seq, probs2, things, PanopticMemory(), overlap=0.5)
    dense = compose_panoptic(torch.stack([logits2, logits2], 1), probs2, things, PanopticMemory(), overlap=0.5)
    assert all(torch.equal(a, b) for a, b in zip(maps, dense))
    assert compose_panoptic(torch.zeros(0, 2, 4, 6), torch.zeros(0, 3), things, PanopticMemory())[1].shape == (4, 6)


def test_semantic_argmax_hand_case():
    probs = torch.tensor([[0.6, 0.0], [0.0, 0.9]])
    logits = torch.tensor([[3.0, 3.0, -3.0], [-3.0, 3.0, 0.5]]).view(2, 1, 1, 3)
    # quality: query 0 -> 1, query 1 -> 1/2; pixel 1: 0.6 s(3) > 0.45 s(3) although 0.9 > 0.6
    labels = semantic_map(probs * mask_quality(logits)[:, None], [(slice(None), logits)])
    assert labels.flatten().tolist() == [0, 0, 1]


def test_semantic_loop_matches_dense_formula(model, emb):
    L, T = 7, 3
    vid = video(L)
    s = settings("semantic", clip_len=T)
    out_size = (30, 50)
    loop = SemanticClipLoop(model, s, geometry(L, out_size), emb, max_elements=3 * 30 * 50)  # 3-query chunks
    outs = []
    loop.hooks["clip_output"] = lambda call, out: outs.append((call, out))
    got = list(loop.run(lambda a, b: vid[a:b]))
    assert [f for f, _ in got] == list(range(L)) and [c for c, _ in outs] == [0, 3, 6]
    Ql = model.decoder.num_queries
    for call, out in outs:
        m = F.interpolate(out.pred_masks[:Ql], HW, mode="bilinear", align_corners=False)[..., :IMG[0], :IMG[1]]
        m = F.interpolate(m, out_size, mode="nearest")
        labels = semantic_map(out.pred_logits[:Ql].sigmoid() * mask_quality(m)[:, None], [(slice(None), m)])
        for t in range(m.shape[1]):
            assert torch.equal(got[call + t][1], labels[t])
    assert loop.max_frames_held <= 5


# ------------------------------------------------------------------------------------------ literal official
def literal_official(model, task: str, s: TaskSettings, L, image_size, padded, emb, things, gen, frames):
    """Line-by-line bookkeeping of the official entity inference: padded-resolution logits, every
    slot of the prompt pool and of the embeddings/probabilities kept, masks trimmed only at output windows.
    Returns the output windows as (start, ids, padded logits, occurrence, mean probs, quality)."""
    T, st_, mem = s.clip_len, min(s.stride, s.clip_len), s.memory_frames
    W = s.out_window
    Hp, Wp = padded
    dec = model.decoder
    Ql = dec.num_queries
    up = lambda x: F.interpolate(x, padded, mode="bilinear", align_corners=False)  # noqa: E731
    tg = None
    wins = []
    is_last = False
    things = torch.tensor(things)
    for i in range(0, L, st_):
        if is_last and i + T > L:
            break
        is_last = i + T >= L
        n = min(T, L - i)
        mf, multi = model.encode_frames(frames(i, i + n))
        levels = dec.embed_levels(multi, torch.arange(i, i + n))
        prompts = None
        if tg is not None and len(tg["ids"]):
            feat, pos, _ = levels.prompt_level
            R, N, C = s.prompt_tokens, len(tg["ids"]), feat.shape[1]
            cfg = model.cfg
            phase = lambda a, k: frame_phase(torch.tensor([a]), n, cfg.pe_variant, cfg.num_frames_pe)[0]  # noqa: E731
            created = "pf" not in tg
            if not created:
                z = torch.zeros(N, R, st_, C)
                tg["pf"], tg["pp"] = torch.cat([tg["pf"], z], 2), torch.cat([tg["pp"], z], 2)
            if created or T == 1:
                app = torch.nonzero((tg["first"] <= max(0, i - 1)) & (tg["first"] != -1)).flatten()
                for k in range(st_):
                    if "pf" not in tg:
                        tg["pf"], tg["pp"] = torch.zeros(N, R, T + st_, C), torch.zeros(N, R, T + st_, C)
                    j = -(n + st_) + k
                    enc = sample_mask_prompts(feat[k], pos[k], (tg["logits"][app, j] > 0).float(), R,
                                              phase(i - st_ + k, k), boxes=tg["boxes"][app, j], generator=gen)
                    tg["pf"][app, :, j], tg["pp"][app, :, j] = enc.tokens, enc.pe
            for k in range(n - st_):
                j = -n + k
                mk = (tg["logits"][:, j] > 0).float()
                enc = sample_mask_prompts(feat[k], pos[k], mk, R, phase(i + k, k), boxes=tg["boxes"][:, j],
                                          generator=gen)
                v = mk.flatten(1).sum(1) > 0
                S = tg["pf"].shape[2]
                tg["pf"][v, :, S + j:] = enc.tokens[v][:, :, None]
                tg["pp"][v, :, S + j:] = enc.pe[v][:, :, None]
            S = tg["pf"].shape[2]
            fi = [min(int(f), S - 1) for f in tg["first"]]
            w = min(s.window, S)
            flat = lambda x: x[:, :, -w:].transpose(1, 2).reshape(N, -1, C)  # noqa: E731
            mt = torch.cat([torch.stack([tg["pf"][o, :, f] for o, f in enumerate(fi)]), flat(tg["pf"])], 1)
            mp = torch.cat([torch.stack([tg["pp"][o, :, f] for o, f in enumerate(fi)]), flat(tg["pp"])], 1)
            prompts = dec.visual_prompt_queries(tg["pf"][:, :, -n:], tg["pp"][:, :, -n:], mt, mp)
        out = dec(levels, mf, prompts, emb, s.self_attn_mask)
        probs_all, masks_all, embds_all = out.pred_logits.sigmoid(), out.pred_masks, out.pred_embds
        # ---- write_prompt_predictions
        if prompts is not None:
            pm, pe = up(masks_all[Ql:]), embds_all[Ql:]
            thr = s.consistency * (0.5 if i < T else 1)
            sim = temporal_consistency(tg["embds"][:, -max(int(mem / st_), 3):], pe)
            ok = sim > thr
            cur = pm[:, :, :image_size[0], :image_size[1]]
            q = mask_quality(cur)
            if task == "instance":
                sc = tg["probs"].mean(1).max(-1).values * sim * q
                sg = cur.sigmoid().flatten(1)
                ids = (sc[:, None] * sg).argmax(0)
                ids[(sg < 0.5).sum(0) == len(sg)] = -1
                own = (ids[None] - torch.arange(len(sg))[:, None]) == 0
                ok = ok & (own.sum(1) / (sg > 0.5).sum(1).clamp(min=1) > s.overlap_entity) & \
                    ((own & (sg > 0.5)).sum(1) > 0)
            if ok.sum():
                tg["occ"][ok, -n:] += pm[ok].flatten(-2).gt(0).any(-1).float()
                tg["logits"][ok, -n:] += pm[ok]
                tg["boxes"][ok, -n:] = mask_box(tg["logits"][ok, -n:] > 0) / torch.tensor([Wp, Hp, Wp, Hp])
                nb = (tg["embds"][ok, -1] != 0).any(-1)
                tg["embds"][ok, -1] = (tg["embds"][ok, -1] + pe[ok].mean(1)) / (nb[:, None] + 1.0)
                tg["quality"][ok] += q[ok]
        # ---- detect newly
        lp, lm, le = probs_all[:Ql], masks_all[:Ql], embds_all[:Ql]
        h4, w4 = lm.shape[-2:]
        q = mask_quality(lm)
        lp = lp * q[:, None]
        boxes = mask_box(lm > 0) / torch.tensor([w4, h4, w4, h4])
        first = tg is None
        if task == "instance":
            keep = torch.arange(Ql)
            if s.stability > 0:
                keep = keep[q > s.stability]
            keep = keep[lp[keep].max(-1).values.argsort(descending=True, stable=True)[:s.topk]]
            if len(keep) > 1:
                b = video_box_iou(boxes[keep], boxes[keep]).amax(-1)
                keep = keep[torch.triu(b, 1).max(0).values < s.box_nms]
            cands, cls_thr = keep, s.class_threshold
        else:
            cands, cls_thr = torch.arange(Ql), 2 * s.class_threshold
        if first:
            if task == "instance":
                new = cands[lp[cands].max(-1).values > max(s.class_threshold, 0.1)]
            else:
                sc, lab = lp.max(-1)
                o = sc.argsort(descending=True, stable=True)[:100]
                th, sf = o[things[lab[o]]][:70], o[~things[lab[o]]][:30]
                if len(th):
                    b = video_box_iou(boxes[th], boxes[th]).amax(-1)
                    th = th[torch.triu(b, 1).max(0).values < s.box_nms]
                if len(sf):
                    mm = (lm[sf, 0] > 0).flatten(1).float()
                    inter = mm @ mm.t()
                    iou = inter / (mm.sum(1)[:, None] + mm.sum(1)[None] - inter).clamp(min=1)
                    sf = sf[torch.triu(iou, 1).max(0).values < 0.6]
                new = torch.cat([th, sf])
                new = new[sc[new] > s.class_threshold]
        else:
            rows, cols, sim = bisoftmax_match(tg["embds"][:, -3:], le[cands], s.new_object)
            m = sim > s.new_object
            r, c = rows[m], cands[cols[m]]
            tg["probs"][r, -1] = 0.5 * (tg["probs"][r, -1] + lp[c])
            nb = (tg["embds"][r, -1] != 0).any(-1)
            tg["embds"][r, -1] = (tg["embds"][r, -1] + le[c].mean(1)) / (nb[:, None] + 1.0)
            strong = sim > (2 if task == "instance" else 1) * s.new_object
            r, c = rows[strong], cands[cols[strong]]
            mm = up(lm[c])
            tg["occ"][r, -n:] += mm.flatten(-2).gt(0).any(-1).float()
            tg["logits"][r, -n:] += mm
            tg["quality"][r] += q[c]
            gds = F.interpolate(tg["logits"][:, -n:], (h4, w4), mode="bilinear", align_corners=False) > 0
            new = []
            for k in cands.tolist():
                if k in c.tolist() or lp[k].max() <= cls_thr:
                    continue
                a = (lm[k] > 0).flatten(1).float()
                if len(gds) == 0:
                    new.append(k)  # detect_after_empty_start
                    continue
                bb = gds.flatten(2).float()
                inter = torch.einsum("tp,ntp->nt", a, bb)
                iou = inter / (a.sum(-1)[None] + bb.sum(-1) - inter).clamp(min=1)
                if iou.max() < 0.5:
                    new.append(k)
            new = torch.tensor(new, dtype=torch.long)
        # ---- write newly
        M = len(new)
        nm, nb_ = up(lm[new]) if M else torch.zeros(0, n, Hp, Wp), boxes[new]
        if first:
            tg = dict(ids=torch.arange(M), first=torch.full((M,), i), probs=lp[new][:, None].clone(),
                      logits=nm, boxes=nb_, embds=le[new].mean(1, keepdim=True), occ=torch.ones(M, n),
                      quality=q[new].clone())
        elif M:
            def pad(x, t):
                return torch.cat([torch.zeros(M, t - x.shape[1], *x.shape[2:]), x], 1)
            tg["probs"] = torch.cat([tg["probs"], pad(lp[new][:, None], tg["probs"].shape[1])])
            tg["logits"] = torch.cat([tg["logits"], pad(nm, tg["logits"].shape[1])])
            tg["boxes"] = torch.cat([tg["boxes"], pad(nb_, tg["boxes"].shape[1])])
            tg["embds"] = torch.cat([tg["embds"], pad(le[new].mean(1, keepdim=True), tg["embds"].shape[1])])
            tg["occ"] = torch.cat([tg["occ"], pad(torch.ones(M, n), tg["occ"].shape[1])])
            tg["quality"] = torch.cat([tg["quality"], q[new]])
            tg["ids"] = torch.cat([tg["ids"], torch.arange(M) + len(tg["ids"])])
            tg["first"] = torch.cat([tg["first"], torch.full((M,), i)])
            if "pf" in tg:
                z = torch.zeros(M, *tg["pf"].shape[1:])
                tg["pf"], tg["pp"] = torch.cat([tg["pf"], z]), torch.cat([tg["pp"], z])
        # ---- output windows
        if (i > mem and i % W == mem) or is_last:
            Fh = tg["logits"].shape[1]
            f_ = Fh if is_last else W
            wins.append((i + n - Fh, tg["ids"].clone(), tg["logits"][:, :f_].clone(), tg["occ"][:, :f_].clone(),
                         tg["probs"].mean(1), tg["quality"].clone()))
            tg["logits"], tg["occ"] = tg["logits"][:, W:], tg["occ"][:, W:]
        if not is_last:
            p = min(st_, L - i - T)
            N = len(tg["ids"])
            tg["logits"] = torch.cat([tg["logits"], torch.zeros(N, p, Hp, Wp)], 1)
            tg["occ"] = torch.cat([tg["occ"], torch.zeros(N, p)], 1)
            tg["boxes"] = torch.cat([tg["boxes"], torch.zeros(N, p, 4)], 1)
            tg["embds"] = torch.cat([tg["embds"], tg["embds"][:, -3:].mean(1, keepdim=True)], 1)
            tg["probs"] = torch.cat([tg["probs"], tg["probs"][:, -1:]], 1)
    return wins


@pytest.mark.parametrize("task,class_threshold,clip_len,stride", [
    ("instance", 0.02, 3, 1), ("panoptic", 0.02, 3, 1), ("instance", 0.6, 3, 1),  # official stride 1
    ("panoptic", 0.02, 1, 1), ("instance", 0.02, 3, 2)])                            # other clip shapes
@torch.no_grad()
def test_bounded_loop_matches_literal_official(model, emb, task, class_threshold, clip_len, stride):
    """Same windows as the literal transcription: bounded state, 1/4-resolution accumulation and the
    trimmed prompt pool change nothing (up to float rounding)."""
    L = 12
    vid = video(L)
    kw = dict(clip_len=clip_len, stride=stride, prompt_tokens=8, memory_frames=2, stability=0.0,
              class_threshold=class_threshold, new_object=0.05, output_window=4)
    s = settings(task, box_nms=1.01, **kw)
    model = StubModel(AppearingObject(model.decoder), model.features)
    loop = EntityClipLoop(model, task, s, geometry(L), emb, THINGS, torch.Generator().manual_seed(3))
    log = {"new": [], "matched": 0, "dropped": 0}
    loop.hooks["new"] = lambda call, index: log["new"].append(len(index))
    loop.hooks["matched"] = lambda **kw: log.__setitem__("matched", log["matched"] + len(kw["rows"]))
    loop.hooks["tracked"] = lambda **kw: log.__setitem__("dropped", log["dropped"] + int((~kw["keep"]).sum()))
    ours = list(loop.run(lambda a, b: vid[a:b]))
    ref = literal_official(model, task, s, L, IMG, HW, emb, THINGS, torch.Generator().manual_seed(3),
                           lambda a, b: vid[a:b])
    assert len(ours) == len(ref) == (3 if clip_len == 1 else 2)  # W = 4: frames 0-3 at clip 6, ...
    if class_threshold > 0.5:  # the official rule: an empty first clip means nothing is ever detected
        strict = EntityClipLoop(model, task, replace(s, detect_after_empty_start=False), geometry(7), emb, THINGS)
        assert [w.ids.numel() for w in strict.run(lambda a, b: vid[a:b])] == [0]
    if class_threshold < 0.5:  # detection at the first clip, matching, a new entity at frame 4
        assert log["new"][0] >= 2 and log["new"][4 // stride] == 1 and log["matched"] > 0, log
        assert log["dropped"] > 0, log  # some prompt predictions fail the consistency / overlap tests
    else:  # nothing until the object appears: the memory pool starts at clip 5, slots offset from frames
        assert log["new"][:5] == [0, 0, 0, 0, 1] and sum(log["new"]) == 1, log
        assert ours[0].ids.tolist() == [0] and loop.state.first.tolist() == [4]
    covered = []
    for w, (start, ids, logits, occ, probs, quality) in zip(ours, ref):
        assert w.start == start and torch.equal(w.ids, ids)
        assert torch.equal(w.occurrence, occ)
        assert torch.allclose(w.probs, probs, atol=1e-6) and torch.allclose(w.quality, quality, atol=1e-5)
        for j in range(w.num_frames):
            assert (w.padded_logits(j) - logits[:, j]).abs().max() < 1e-3
        covered += list(w.frames)
    assert covered == list(range(L))


def test_match_continuity_keeps_a_lost_entity_off_other_objects(model, emb):
    """With match_continuity, a matched learnable query whose masks do not overlap the entity's accumulated masks
    adds nothing (the entity does not jump to another object); an overlapping one is added as officially (0)."""
    n, (h4, w4) = 3, (HW[0] // 4, HW[1] // 4)
    low = torch.full((2, n, h4, w4), -5.0)
    low[0, :, :4, :4] = 3.0    # where the entity is: it continues
    low[1, :, -4:, -4:] = 3.0  # another object
    for c, added in ((0.0, [True, True]), (0.1, [True, False])):
        logits = torch.full((2, n, h4, w4), -5.0)
        logits[:, :2, :4, :4] = 5.0  # both entities seen top-left on the clip's first two frames
        st = EntityState(ids=torch.arange(2), first=torch.zeros(2, dtype=torch.long), logits=logits,
                         occurrence=torch.ones(2, n), boxes=torch.zeros(2, n, 4), embds=torch.zeros(2, 1, 8),
                         prob_sum=torch.zeros(2, K), prob_last=torch.zeros(2, K), quality=torch.zeros(2))
        before = st.logits.clone()
        loop = EntityClipLoop(model, "instance", settings("instance", match_continuity=c), geometry(n), emb)
        loop._add_masks(st, torch.arange(2), low, torch.ones(2), n)
        assert [not torch.equal(st.logits[r], before[r]) for r in range(2)] == added
        assert st.quality.tolist() == [1.0, float(added[1])] and st.occurrence[1, -1].item() == 1 + added[1]


@torch.no_grad()
def test_state_stays_bounded(model, emb):
    L = 24
    vid = video(L)
    s = settings("panoptic", clip_len=3, prompt_tokens=8, memory_frames=2, class_threshold=0.02,
                                output_window=4)
    loop = EntityClipLoop(model, "panoptic", s, geometry(L), emb, THINGS)
    held = []
    loop.hooks["window"] = lambda call, window: held.append(loop.frames_held)
    model.encoded.clear()
    wins = list(loop.run(lambda a, b: vid[a:b]))
    assert [f for w in wins for f in w.frames] == list(range(L))
    assert [w.num_frames for w in wins[:-1]] == [4] * (len(wins) - 1) and len(wins) == 5
    # held frames <= output window + memory + T + stride, whatever the video length
    assert loop.max_frames_held <= 4 + 2 + 3 + 1 and max(held) <= 4 + 2 + 3
    st = loop.state
    assert st.num > 0 and st.memory.tokens.shape[2] <= s.window + 3 + 1
    assert st.embds.shape[1] == 3 and st.boxes.shape[1] <= 4
    assert sorted(model.encoded) == list(range(L))  # each frame encoded once
    # the official schedule: 10-frame windows, emitted at clips 15, 25, 35, ... (> memory, = memory mod 10)
    official = get_settings("instance")
    assert [i for i in range(50) if official.is_output_clip(i)] == [15, 25, 35, 45]
    assert [i for i in range(20) if s.is_output_clip(i)] == [6, 10, 14, 18]


# ------------------------------------------------------------------------------------------ driver
@pytest.mark.parametrize("task", ["instance", "semantic", "panoptic"])
def test_run_category_task_fills_tracks(model, emb, task):
    L, out = 12, (45, 42)
    vid = video(L)
    names = [f"class{k}" for k in range(K)]
    s = settings(task, clip_len=3, prompt_tokens=8, memory_frames=2, stability=0.0, class_threshold=0.02,
                 output_window=4)
    seen = []
    tracks = run_category_task(model, task, frames_of(vid, out), Vocabulary.of(emb, names, THINGS), s,
                               progress=lambda d, t: seen.append((d, t)))
    assert seen == [(d, L) for d in range(1, L + 1)]
    assert (tracks.num_frames, tracks.height, tracks.width) == (L, *out)
    assert len(tracks) > 0
    for info in tracks.legend():
        assert info["label"] == names[info["category"]]
        if task == "semantic":
            assert info["id"] == info["category"] + 1
    for f in range(L):
        objs = tracks.objects_in(f)
        if task != "instance":  # semantic classes and panoptic segments never overlap
            total = sum(tracks.area(f, o) for o in objs)
            assert total == (tracks.id_map(f) > 0).sum()
    if task == "semantic":
        assert all(len(tracks.objects_in(f)) >= 1 for f in range(L))  # every pixel has a class
    if task == "panoptic":
        stuff = [o for o in tracks.legend() if not o["isthing"]]
        assert len({o["category"] for o in stuff}) == len(stuff)  # one segment per stuff class


def test_instance_ids_scores_and_frame_mapping(model, emb):
    L = 9
    vid = video(L)
    s = settings("instance", clip_len=3, prompt_tokens=8, stability=0.0, class_threshold=0.02)
    tracks = Tracks(20, *IMG)
    run_category_task(model, "instance", frames_of(vid, frame_ids=range(10, 19)), Vocabulary.of(emb), s, tracks)
    assert len(tracks) > 0
    for info in tracks.legend():
        assert info["first_frame"] >= 10 and info["last_frame"] <= 18
        assert 0 < info["score"] <= 1 and info["category"] in range(K)


def test_cancel_stops_early(model, emb):
    L = 30
    vid = video(L)
    encoded = []

    class Frames(TensorFrames):
        def __call__(self, a, b):
            encoded.append(b)
            return vid[a:b]

    frames = Frames(vid, IMG)
    for task in ("instance", "semantic"):
        encoded.clear()
        done = []
        s = settings(task, clip_len=3, prompt_tokens=8, memory_frames=2, stability=0.0, class_threshold=0.02,
                     output_window=4)
        with pytest.raises(Cancelled) as err:
            run_category_task(model, task, frames, Vocabulary.of(emb), s, progress=lambda d, t: done.append(d),
                              cancel=lambda: len(done) >= 5)
        assert len(done) == 5 and max(encoded) < L  # stopped long before the end of the video
        assert err.value.tracks.num_frames == L and err.value.tracks.segmented_frames() == list(range(5))
        assert all(err.value.tracks.objects_in(f) == [] for f in range(5, L))
    # a loop polled with cancel already set does no work at all
    loop = EntityClipLoop(model, "instance", settings("instance", clip_len=3), geometry(L), emb)
    encoded.clear()
    assert list(loop.run(frames, cancel=lambda: True)) == [] and encoded == []


def test_real_small_model_end_to_end(emb):
    """The whole network (image encoder + pixel decoder + decoder) through the panoptic driver."""
    from univs_engine.modeling.univs import build_univs

    torch.manual_seed(0)
    net = build_univs(get_config("small"))
    vid = torch.randn(5, 3, *HW, generator=torch.Generator().manual_seed(9))
    s = settings("panoptic", clip_len=3, prompt_tokens=8, class_threshold=0.02)
    tracks = run_category_task(net, "panoptic", frames_of(vid, (30, 28)), Vocabulary.of(emb, None, THINGS), s)
    assert tracks.num_frames == 5 and len(tracks) > 0


def test_preset_pe_variant_runs_as_a_model_configured_with_it(model, emb):
    """Swin-L VIS runs FixedT (official launch scripts) on a checkpoint whose config says ArbitraryT: the
    setting must give exactly what a FixedT-configured model gives, and differ from ArbitraryT."""
    import copy

    assert get_settings("vis", "swinl").pe_variant == "FixedT"
    assert get_settings("vis", "swinb").pe_variant is None  # the model config's (ArbitraryT)
    L = 8
    vid = video(L)

    def run(m, **kw):
        s = settings("instance", clip_len=3, prompt_tokens=8, memory_frames=2, stability=0.0,
                     class_threshold=0.02, **kw)
        tr = run_category_task(m, "instance", frames_of(vid, HW), Vocabulary.of(emb, None, THINGS), s)
        return {o: np.stack([tr.mask(f, o) for f in range(L)]) for o in tr.object_ids}

    fixed_model = copy.deepcopy(model)
    fixed_model.cfg = fixed_model.dec.cfg = model.cfg.with_(pe_variant="FixedT")
    by_setting, by_config, arbitrary = run(model, pe_variant="FixedT"), run(fixed_model), run(model)
    assert by_setting.keys() == by_config.keys()
    assert all(np.array_equal(by_setting[o], by_config[o]) for o in by_setting)
    assert by_setting.keys() != arbitrary.keys() or any(not np.array_equal(by_setting[o], arbitrary[o]) for o in by_setting)
