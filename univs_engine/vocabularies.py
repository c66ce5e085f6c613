"""Built-in category vocabularies of the datasets UniVS is evaluated on, and the index ranges of the official
combined concept-embedding file (``datasets/concept_emb/combined_datasets_cls_emb_rn50x4.pth``, 3938 x 640).

Names are kept exactly as written in the official ``combined_datasets.txt`` (for these datasets they equal the
names of the dataset registration files); those are the strings that were embedded (after ``clean_strings``).
A short display label is derived per class. Indices are 0-based contiguous class indices (dataset id - 1 for the
YouTube-VIS / OVIS / VIPSeg / VSPW ids, which are 1..N; COCO ids are not contiguous, see `get_dataset_ids`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

# name -> (number of classes, first row) in the official combined embedding file: each dataset's classes are
# one contiguous block of rows, in the order of combined_datasets.txt (datasets sharing a class list share rows).
COMBINED_INDEX: Dict[str, Tuple[int, int]] = {
    "imagenet": (1000, 0),
    "lvis": (1203, 1000),
    "burst": (1203, 1000),
    "ytvis21": (40, 2203),
    "ovis": (25, 2243),
    "bdd_track": (8, 2268),
    "objects365": (365, 2276),
    "coco_panoptic": (133, 2641),
    "coco": (80, 2641),
    "ade20k": (150, 2774),
    "vipseg": (124, 2924),
    "vspw": (124, 2924),
    "viposeg": (124, 2924),
    "ytvis19": (40, 3048),
    "entityseg_instance": (206, 3088),
    "entityseg_panoptic": (644, 3294),
}
COMBINED_NUM_ROWS = 3938  # lines of combined_datasets.txt = rows of the official embedding file

# ---- class names, as embedded ---------------------------------------------------------------------------------
# YouTube-VIS 2021 (ids 1..40)
YTVIS21_NAMES = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck", "earless_seal",
    "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe", "horse", "leopard", "lizard",
    "monkey", "motorbike", "mouse", "parrot", "person", "rabbit", "shark", "skateboard", "snake", "snowboard",
    "squirrel", "surfboard", "tennis_racket", "tiger", "train", "truck", "turtle", "whale", "zebra",
)
# YouTube-VIS 2019 (ids 1..40)
YTVIS19_NAMES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake", "monkey",
    "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear", "motorbike",
    "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck", "zebra", "tiger",
    "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle", "earless_seal", "tennis_racket",
)
# OVIS (ids 1..25; 'Vehical' is the official spelling)
OVIS_NAMES = (
    "Person", "Bird", "Cat", "Dog", "Horse", "Sheep", "Cow", "Elephant", "Bear", "Zebra", "Giraffe",
    "Poultry", "Giant_panda", "Lizard", "Parrot", "Monkey", "Rabbit", "Tiger", "Fish", "Turtle", "Bicycle",
    "Motorcycle", "Airplane", "Boat", "Vehical",
)
# VIPSeg / VSPW / VIPOSeg (ids 1..124)
VIPSEG_NAMES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide", "handrail_or_fence",
    "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road",
    "path", "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid",
    "other_construction", "sky", "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea",
    "river", "lake", "waterfall", "water", "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag",
    "parasol_or_umbrella", "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle",
    "motorcycle", "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant", "toy",
    "ball_net", "backboard", "skateboard", "bat", "ball", "cupboard_or_showcase_or_storage_rack", "box",
    "traveling_case_or_trolley_case", "basket", "bag_or_package", "trash_can", "cage", "plate",
    "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow", "table_or_desk",
    "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster", "other_machine",
    "refrigerator", "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue",
    "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard", "other_electronic_product",
    "fruit", "food", "instrument", "train",
)
# VIPSeg thing classes (dataset ids, 1-based); the other 66 are stuff.
VIPSEG_THING_IDS = frozenset({
    3, 5, 9, 11, 42, 44, 45, 47, 48, 49, 50, 51, 52, 53, 55, 56, 57, 61, 62, 63,
    64, 65, 66, 73, 75, 77, 78, 79, 80, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93,
    96, 97, 98, 100, 101, 102, 103, 107, 108, 109, 110, 115, 116, 117, 118, 119, 123, 124,
})
# COCO panoptic: 80 things then 53 stuff classes; COCO_PANOPTIC_IDS are the dataset ids
COCO_PANOPTIC_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "bridge", "cardboard", "counter",
    "curtain", "door-stuff", "floor-wood", "flower", "fruit", "gravel", "house", "light", "mirror-stuff",
    "net", "pillow", "platform", "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf",
    "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged", "sky-other-merged",
    "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged",
    "rock-merged", "wall-other-merged", "rug-merged",
)
COCO_PANOPTIC_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148,
    149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, 185, 186, 187,
    188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200,
)

COCO_NAMES = COCO_PANOPTIC_NAMES[:80]  # the 80 COCO thing classes (same rows as the first 80 panoptic classes)
COCO_IDS = COCO_PANOPTIC_IDS[:80]

_LABEL_FIXES = {"Vehical": "vehicle"}


def _label(name: str) -> str:
    if name in _LABEL_FIXES:
        return _LABEL_FIXES[name]
    label = name.replace("-merged", "").replace("-stuff", "").replace("_", " ").replace("-", " ")
    return " ".join(label.split()).lower()


@dataclass(frozen=True)
class Vocabulary:
    key: str  # key of COMBINED_INDEX
    names: Tuple[str, ...]  # as embedded in the official file
    labels: Tuple[str, ...]  # short display labels
    isthing: Tuple[bool, ...]
    dataset_ids: Tuple[int, ...]  # category ids used by the dataset's annotation / result files

    def __len__(self) -> int:
        return len(self.names)


def _vocab(key, names, isthing=None, ids=None) -> Vocabulary:
    n = len(names)
    assert COMBINED_INDEX[key][0] == n, key
    return Vocabulary(
        key=key,
        names=tuple(names),
        labels=tuple(_label(x) for x in names),
        isthing=tuple(isthing) if isthing is not None else (True,) * n,
        dataset_ids=tuple(ids) if ids is not None else tuple(range(1, n + 1)),
    )


_VIPSEG = _vocab("vipseg", VIPSEG_NAMES, [i + 1 in VIPSEG_THING_IDS for i in range(len(VIPSEG_NAMES))])
VOCABULARIES: Dict[str, Vocabulary] = {
    "ytvis21": _vocab("ytvis21", YTVIS21_NAMES),
    "ytvis19": _vocab("ytvis19", YTVIS19_NAMES),
    "ovis": _vocab("ovis", OVIS_NAMES),
    "vipseg": _VIPSEG,
    "vspw": Vocabulary("vspw", _VIPSEG.names, _VIPSEG.labels, _VIPSEG.isthing, _VIPSEG.dataset_ids),
    "viposeg": Vocabulary("viposeg", _VIPSEG.names, _VIPSEG.labels, _VIPSEG.isthing, _VIPSEG.dataset_ids),
    "coco_panoptic": _vocab("coco_panoptic", COCO_PANOPTIC_NAMES, [i < 80 for i in range(133)], COCO_PANOPTIC_IDS),
    "coco": _vocab("coco", COCO_NAMES, None, COCO_IDS),
}

ALIASES: Dict[str, str] = {
    "ytvis_2021": "ytvis21",
    "youtube_vis_2021": "ytvis21",
    "ytvis2021": "ytvis21",
    "ytvis_2019": "ytvis19",
    "youtube_vis_2019": "ytvis19",
    "ytvis2019": "ytvis19",
    "coco_80": "coco",
    "coco_133": "coco_panoptic",
}


def vocabulary_names() -> List[str]:
    """Names accepted by `get_vocabulary` (aliases not included)."""
    return list(VOCABULARIES)


def _resolve(name: str) -> Vocabulary:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    try:
        return VOCABULARIES[key]
    except KeyError:
        raise KeyError(
            f"unknown vocabulary {name!r}; choose one of {sorted(VOCABULARIES)} (or an alias: {sorted(ALIASES)})"
        ) from None


def get_vocabulary_info(name: str) -> Vocabulary:
    return _resolve(name)


def get_vocabulary(name: str) -> List[str]:
    """Class names of a built-in vocabulary, as embedded by the official concept-embedding extraction."""
    return list(_resolve(name).names)


def get_labels(name: str) -> List[str]:
    """Short display labels, one per class."""
    return list(_resolve(name).labels)


def get_dataset_ids(name: str) -> List[int]:
    """Dataset category ids (1-based; not contiguous for COCO)."""
    return list(_resolve(name).dataset_ids)


def is_thing(name: str, index: int) -> bool:
    """Whether class `index` (0-based contiguous) of vocabulary `name` is a thing class."""
    voc = _resolve(name)
    if not 0 <= index < len(voc):
        raise IndexError(f"class index {index} out of range for {voc.key} ({len(voc)} classes)")
    return voc.isthing[index]


def thing_mask(name: str) -> torch.Tensor:
    """Bool tensor [num_classes], True for thing classes."""
    return torch.tensor(_resolve(name).isthing, dtype=torch.bool)


def combined_rows(name: str) -> slice:
    """Rows of the official combined embedding file that belong to `name` (a COMBINED_INDEX key or alias)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in COMBINED_INDEX:
        raise KeyError(f"{name!r} is not in the combined embedding index; choose one of {sorted(COMBINED_INDEX)}")
    num, start = COMBINED_INDEX[key]
    return slice(start, start + num)


def slice_combined_embeddings(embeddings: torch.Tensor, name: str) -> torch.Tensor:
    """The [num_classes, D] block of the official [3938, D] embedding tensor for dataset `name`."""
    rows = combined_rows(name)
    if embeddings.dim() != 2 or embeddings.shape[0] < rows.stop:
        raise ValueError(
            f"category embeddings of shape {tuple(embeddings.shape)} do not cover rows "
            f"{rows.start}:{rows.stop} of {name!r}"
        )
    return embeddings[rows]


def dataset_key(dataset_name: str) -> str | None:
    """Map a registered dataset name (e.g. 'ytvis_2021_val', 'vipseg_val') to its COMBINED_INDEX key, following
    the official registration rules; None for datasets without categories (VOS, RefVOS, raw videos)."""
    n = dataset_name
    if n in COMBINED_INDEX:
        return n
    rules = (
        ("objects365", "objects365"),
        ("entityseg", None),
        ("lvis", "lvis"),
        ("ade20k", "ade20k"),
        ("ytvis_2019", "ytvis19"),
        ("ytvis_2021", "ytvis21"),
        ("ovis", "ovis"),
        ("mots_bdd_box_track", "bdd_track"),
        ("mots_bdd_seg_track", "bdd_track"),
        ("mots_burst", "burst"),
        ("vipseg", "vipseg"),
        ("vspw", "vspw"),
    )
    if n.startswith("coco"):
        return "coco_panoptic" if "panoptic" in n else "coco"
    for prefix, key in rules:
        if n.startswith(prefix):
            if prefix == "entityseg":
                return "entityseg_panoptic" if "panoptic" in n else "entityseg_instance"
            return key
    return None
