"""Training of the small UniVS model on the synthetic video world (world, data, losses, loop, export, checks).

Not part of the installed package: pip and ComfyUI installs carry only the inference engine (`univs_engine`);
training runs from a clone of the repository, which has this folder next to `univs_engine/`.

Modules: `synthetic` (the generated video world), `clips` (training clips and crops drawn from it),
`losses` and `criterion` (the training model and its loss), `state` (the run's recipe `TrainConfig` and its
checkpoint), `train` (the loop and the `univs train` command), `export` (the shipped single-file layout),
`evaluate` (held-out checks).

    univs train --out runs/small                         # from a clone (pip install -e . or ComfyUI's git clone)
    python -m univs_train.train --out runs/small         # the same, from the repository root
    python -m univs_train.evaluate runs/small/univs_small.safetensors --videos 16
"""
