"""The MolPhenix training recipe (``pip install phenix[train]``): simulator, model, recipe, export, report.

Modules: ``molecules`` (the simulator's molecules), ``simulator`` (the generative screen), ``model``
(towers, concentration encodings, losses), ``recipe`` (split, averaging, training, evaluation),
``export`` (ONNX + manifest), ``report`` (metrics and plots), ``ablation`` and ``plots`` (docs/science.md).
"""
