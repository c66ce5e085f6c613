"""Training of the small UniVS model on the synthetic video world (losses, data, loop, export, checks).

Entry points: `univs_engine.training.train.train(...)` / `main(argv)` (the `univs train` command),
`univs_engine.training.export.export_model`, `univs_engine.training.evaluate.main`.
"""
