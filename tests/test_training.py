"""Training: losses go down, the matcher matches, runs resume exactly, checkpoints are written atomically."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from univs_engine.config import get_config
from univs_train import state as state_mod
from univs_train import train as train_mod
from univs_train.clips import sample_clip
from univs_train.criterion import LossConfig, TrainingModel, compute_losses
from univs_train.losses import hungarian_match, mask_losses, reid_loss
from univs_train.state import TrainConfig, load_training_checkpoint, read_state_file, write_state_file
from univs_train.train import TrainOptions, train

torch.set_num_threads(1)

FAST_LOSS = dict(match_points=128, loss_points=128, prompt_tokens=16, templates=2)
QUIET = dict(progress=False, threads=None)  # no bar; the thread count as the test set it


def _tiny_config(**kw) -> TrainConfig:
    base = dict(iterations=3, stage3_iterations=1, stage3_clip_len=3, size=64, batch_images=1, batch_clips=1,
                video_frames=4, max_prompts=2, warmup=1, stage1_fraction=0.5, clip_len=2, log_every=1,
                pretrain_iterations=0, token_rows=False, loss=LossConfig(**FAST_LOSS))
    base.update(kw)
    return TrainConfig(**base)


def test_optimisation_steps_decrease_loss():
    torch.manual_seed(0)
    model = TrainingModel(get_config("small"))
    clips = [sample_clip(s, 1, size=64, video_frames=4, max_prompts=2) for s in (3, 4)]
    lc = LossConfig(**FAST_LOSS, text_prob=0.0)

    def loss():
        return compute_losses(model, clips, lc, random.Random(0), torch.Generator().manual_seed(0)).total

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = loss()
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss()
    assert torch.isfinite(first) and after < first * 0.9, (float(first), float(after))


def test_hungarian_matcher_hand_made_case():
    H = W = 16
    gt = torch.zeros(2, 1, H, W)
    gt[0, 0, :8] = 1          # top half
    gt[1, 0, :, :8] = 1       # left half
    pred = torch.full((3, 1, H // 4, W // 4), -10.0)
    pred[2, 0, :2] = 10.0     # query 2 predicts the top half
    pred[0, 0, :, :2] = 10.0  # query 0 predicts the left half
    # query 1 predicts nothing
    logits = torch.full((3, 4), -5.0)
    qi, ti = hungarian_match(pred, logits, gt, torch.tensor([1, 3]), num_points=256,
                             generator=torch.Generator().manual_seed(0))
    assert qi.tolist() == [0, 2] and ti.tolist() == [1, 0]
    # the class cost decides between two identical masks
    pred2 = torch.stack([pred[2], pred[2]])
    logits2 = torch.full((2, 4), -5.0)
    logits2[1, 1] = 5.0
    qi, ti = hungarian_match(pred2, logits2, gt[:1], torch.tensor([1]), num_points=256)
    assert qi.tolist() == [1] and ti.tolist() == [0]


def test_mask_and_reid_losses_prefer_the_right_answer():
    gt = torch.zeros(1, 2, 32, 32)
    gt[0, :, 8:24, 8:24] = 1
    good = torch.full((1, 2, 8, 8), -8.0)
    good[0, :, 2:6, 2:6] = 8.0
    g = torch.Generator().manual_seed(0)
    bce_good, dice_good = mask_losses(good, gt, 256, generator=g)
    bce_bad, dice_bad = mask_losses(-good, gt, 256, generator=g)
    assert bce_good < bce_bad and dice_good < dice_bad
    e = torch.randn(2, 1, 8)
    same = torch.stack([e[0, 0], e[0, 0]])[:, None].repeat(1, 2, 1)  # two queries, same object, two frames
    emb_good = torch.cat([same, e[1:].repeat(1, 2, 1) * -1])
    ids = torch.tensor([0, 0, 1])
    groups = torch.tensor([0, 1, 0])
    emb_bad = torch.randn(3, 2, 8)
    assert reid_loss(emb_good, ids, groups) < reid_loss(emb_bad, ids, groups)


def _weights(path: Path) -> dict:
    return load_training_checkpoint(path)["model"]


def test_resume_restores_iteration_weights_and_rng(tmp_path):
    straight = train(TrainOptions(tmp_path / "a", config=_tiny_config(), **QUIET))
    assert straight["iteration"] == 3 and Path(straight["export"]).is_file()

    first = train(TrainOptions(tmp_path / "b", config=_tiny_config(), stop_after=1, **QUIET))
    assert first["iteration"] == 1 and "export" not in first
    state = load_training_checkpoint(tmp_path / "b" / "last.pt")
    assert state["iteration"] == 1 and state["optimizer"]["state"]
    resumed = train(TrainOptions(tmp_path / "b", export=False, **QUIET))  # picks up last.pt and its config
    assert resumed["iteration"] == 3

    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in log]
    assert [r["iteration"] for r in recs] == [1, 2, 3] and [r["stage"] for r in recs] == [1, 2, 3]
    assert [r["T"] for r in recs] == [1, 2, 3]


def test_stage3_freezes_encoder():
    model = TrainingModel(get_config("small"))
    model.freeze_encoder(True)
    model.train()
    assert not model.univs.backbone.training and model.univs.decoder.training
    assert not any(p.requires_grad for p in model.univs.sem_seg_head.pixel_decoder.parameters())
    assert all(p.requires_grad for p in model.univs.decoder.parameters())
    clip = sample_clip(5, 2, size=64, video_frames=4, max_prompts=1)
    compute_losses(model, [clip], LossConfig(**FAST_LOSS), random.Random(0)).total.backward()
    assert all(p.grad is None for p in model.univs.backbone.parameters())
    assert model.univs.decoder.query_feat.weight.grad is not None


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from univs_engine import checkpoint as ckpt_mod

    dst = tmp_path / "ck" / "last.pt"
    write_state_file({"x": torch.ones(3)}, dst)
    assert torch.equal(read_state_file(dst)["x"], torch.ones(3))

    calls = []
    real_replace = os.replace

    def spy(src, d):
        calls.append((Path(src), Path(d)))
        assert Path(src).parent == Path(d).parent and Path(src).stat().st_size > 0
        return real_replace(src, d)

    monkeypatch.setattr(ckpt_mod.os, "replace", spy)
    write_state_file({"x": torch.zeros(3)}, dst)
    assert len(calls) == 1 and calls[0][1] == dst

    def broken_save(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_mod, "save_file", broken_save)
    with pytest.raises(OSError, match="no space left"):
        write_state_file({"x": torch.full((3,), 7.0)}, dst)
    monkeypatch.undo()
    assert torch.equal(read_state_file(dst)["x"], torch.zeros(3))  # previous checkpoint intact
    assert sorted(p.name for p in dst.parent.iterdir()) == ["last.pt"]  # no temp files left


def test_token_rows_extension_trains_only_used_rows_and_folds_at_export(tmp_path):
    """A finished run without token rows extended with them (and a new class weight): only the rows of the
    synthetic vocabulary change, the exported file keeps its keys, and a resumed extension is exact."""
    from safetensors import safe_open

    from univs_train.export import load_shipped

    # one thread: the sparse row updates then add in a fixed order, so "exact" is well defined
    # whatever thread count earlier tests left behind
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _extend_token_rows(tmp_path, safe_open, load_shipped)
    finally:
        torch.set_num_threads(threads)


def _extend_token_rows(tmp_path, safe_open, load_shipped):
    base = train(TrainOptions(tmp_path / "a", config=_tiny_config(), **QUIET))
    with safe_open(base["export"], "pt") as f:
        keys0 = set(f.keys())
        table0 = f.get_tensor("text_encoder.token_embedding.weight")
    for run, stop in (("b", None), ("c", 1)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "last.pt").write_bytes((tmp_path / "a" / "last.pt").read_bytes())
        extension = dict(token_rows=True, w_cls=6.0, stage3_iterations=3)
        out = train(TrainOptions(tmp_path / run, iterations=5, stop_after=stop, overrides=extension, **QUIET))
        if stop:
            out = train(TrainOptions(tmp_path / run, **QUIET))
        assert out["iteration"] == 5
    wb, wc = _weights(tmp_path / "b" / "last.pt"), _weights(tmp_path / "c" / "last.pt")
    assert "token_delta" in wb and wb.keys() == wc.keys()
    for k in wb:
        assert torch.equal(wb[k], wc[k]), (k, (wb[k].float() - wc[k].float()).abs().max().item())
    state = load_training_checkpoint(tmp_path / "b" / "last.pt")
    assert state["train_config"]["loss"]["w_cls"] == 6.0 and state["train_config"]["token_rows"]
    with safe_open(out["export"], "pt") as f:
        assert set(f.keys()) == keys0
        table = f.get_tensor("text_encoder.token_embedding.weight")
    changed = (table != table0).any(1).nonzero().flatten()
    ids = wb["token_delta_ids"]
    assert len(changed) > 0 and set(changed.tolist()) <= set(ids.tolist()) and len(ids) < 200
    _, text, emb, names = load_shipped(out["export"])
    assert emb.shape == (13, 128) and len(names) == 13


def test_class_separation_penalty_adds_its_term_only_when_weighted():
    torch.manual_seed(0)
    model = TrainingModel(get_config("small"))
    clip = sample_clip(5, 1, size=64, video_frames=4, max_prompts=1)
    off = compute_losses(model, [clip], LossConfig(**FAST_LOSS, w_class_sep=0.0), random.Random(0),
                         torch.Generator().manual_seed(0))
    on = compute_losses(model, [clip], LossConfig(**FAST_LOSS, w_class_sep=1.0), random.Random(0),
                        torch.Generator().manual_seed(0))
    assert "class_sep" not in off.parts and on.parts["class_sep"] > 0
    assert torch.isclose(on.total, off.total + on.parts["class_sep"], rtol=1e-4)


def test_entity_check_reports_things_and_stuff_apart():
    """The held-out entity check of the shipped model: stuff is labelled right (measured 1.00 on 16 val
    videos), things are reported on their own (the joint accuracy once hid that they were at chance)."""
    from univs_train.evaluate import _videos, eval_entities
    from univs_train.export import load_shipped

    model, _text, emb, _ = load_shipped(str(Path(__file__).resolve().parents[1] / "univs_engine" / "weights" / "univs_small.safetensors"))
    res = eval_entities(model, emb, _videos(3, 4, 256))
    assert res["entity_class_acc_stuff"] >= 0.9
    assert 0.0 <= res["entity_class_acc_things"] <= 1.0
    assert res["entity_mIoU_stuff"] >= 0.85 and res["entity_mIoU_things"] >= 0.5


def test_stage0_schedule_precedes_the_main_schedule():
    tc = TrainConfig(iterations=1000, pretrain_iterations=200, stage3_iterations=100, stage1_fraction=0.5, warmup=50)
    stages = [train_mod.stage_of(i, tc) for i in range(1000)]
    assert stages[:200] == [0] * 200 and stages[200:550] == [1] * 350 and stages[550:900] == [2] * 350
    assert stages[900:] == [3] * 100
    lr = [train_mod.lr_factor(i, tc) * tc.lr for i in range(1000)]
    assert lr[100] == pytest.approx(tc.pretrain_lr)
    # the main warmup starts where stage 0 ends, as in a run without stage 0
    plain = TrainConfig(iterations=800, stage3_iterations=100, stage1_fraction=0.5, warmup=50, pretrain_iterations=0)
    assert [train_mod.lr_factor(i + 200, tc) for i in range(700)] == [train_mod.lr_factor(i, plain) for i in range(700)]


def test_stage0_crops_are_the_things_and_teach_the_backbone():
    from univs_train.clips import CROP_SIZE, sample_crops
    from univs_train.synthetic import generate_video

    crops, labels = sample_crops(11, 128)
    video = generate_video(11, num_frames=1, height=128, width=128)
    visible = [int(t.category) for i, t in enumerate(video.things) if video.masks[i, 0].sum() >= 10]
    assert crops.shape == (len(visible), 3, CROP_SIZE, CROP_SIZE) and labels.tolist() == visible
    torch.manual_seed(0)
    model = TrainingModel(get_config("small"), crop_head=True)
    x, y = (torch.cat(t) for t in zip(*[sample_crops(s, 128) for s in range(4)]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.crop_loss(x, y)
    for _ in range(15):
        loss = model.crop_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(model.crop_loss(x, y)) < 0.7 * float(first.detach())
    # the head is a training device: an exported model has no trace of it
    from univs_train.export import export_tensors

    assert not any("crop_head" in k for k in export_tensors(model))


def test_clip_crops_are_the_things_of_the_first_frame():
    from univs_train.clips import clip_crops
    from univs_train.synthetic import NUM_THING_CLASSES

    clip = sample_clip(5, 2, size=128, video_frames=4, max_prompts=1)
    crops, labels = clip_crops(clip)
    visible = [int(lab) for m, lab in zip(clip.masks[:, 0], clip.labels)
               if lab < NUM_THING_CLASSES and int(m.sum()) >= 10]
    assert labels.tolist() == visible and crops.shape[0] == len(visible) and crops.max() <= 255


def test_jittered_crops_vary_scale_and_position_reproducibly():
    from univs_train.clips import JITTERED_CROP, object_crops, sample_crops
    from univs_train.synthetic import generate_video

    video = generate_video(11, num_frames=1, height=128, width=128)
    args = (video.frames[0], video.masks[:, 0], [t.category for t in video.things])
    with pytest.raises(ValueError, match="rng"):
        object_crops(*args, jitter=JITTERED_CROP)
    plain, labels = sample_crops(11, 128)
    a, la = sample_crops(11, 128, jitter=JITTERED_CROP)
    b, _ = sample_crops(11, 128, jitter=JITTERED_CROP)
    assert torch.equal(a, b) and la.tolist() == labels.tolist()  # resumable runs see the same crops
    assert not torch.equal(a, plain)
    # context = crop side / object extent: cropping the object's own mask shows how much of the crop it fills
    mask = video.masks[0, 0]
    as_frame = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    fill = {c: float(object_crops(as_frame, mask[None], [0], jitter=(c, c, 0.0))[0].mean() / 255)
            for c in (1.2, 1.5, 2.6)}
    assert fill[1.2] > 1.4 * fill[1.5] and fill[1.5] > 2.5 * fill[2.6]


def test_crop_loss_can_stay_on_after_stage0(tmp_path):
    recipe = dict(size=64, batch_images=1, batch_clips=1, video_frames=4, pretrain_iterations=2, pretrain_videos=2,
                  log_every=1, w_crop=1.0, stage3_iterations=0, token_rows=False, **FAST_LOSS)
    train(TrainOptions(tmp_path, iterations=4, export=False, overrides=recipe, **QUIET))
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == [0, 0, 2, 2]  # 2 main iterations: no stage 1
    assert all("crop_ce" in r for r in recs) and all("bce" in r for r in recs[2:])


def test_train_command_defaults_are_the_shipped_recipe():
    """`univs train --out R` is the run that made univs_engine/weights/univs_small.safetensors (its config is in the file)."""
    from safetensors import safe_open

    from univs_engine.api import small_model_path

    _, tc, extra = train_mod.parse_args(["--out", "unused"])
    assert extra == {}  # no option given: the new run's config is all there is
    with safe_open(str(small_model_path()), "pt") as f:
        shipped = json.loads(f.metadata()["train_config"])
    logging_only = ("checkpoint_minutes", "checkpoint_every", "log_every")
    ours = {k: v for k, v in train_mod.asdict(tc).items() if k not in logging_only}
    assert ours == {k: v for k, v in shipped.items() if k not in logging_only}


def test_configs_saved_before_an_extension_keep_it_off():
    tc = TrainConfig.from_dict({"iterations": 10, "loss": {"w_cls": 3.0}})
    assert (tc.pretrain_iterations, tc.stage3_iterations, tc.token_rows) == (0, 0, False)
    assert (tc.loss.w_crop, tc.loss.w_class_sep, tc.loss.w_cls) == (0.0, 0.0, 3.0)
    assert TrainConfig.from_dict(train_mod.asdict(TrainConfig())) == TrainConfig()


def test_a_schedule_without_room_for_stage0_names_the_options(tmp_path):
    with pytest.raises(ValueError, match=r"--pretrain-iterations.*is 2500.*= 400"):
        train(TrainOptions(tmp_path, iterations=1000, export=False, **QUIET))  # default stage 0 and stage 3
    assert not (tmp_path / "last.pt").exists()
