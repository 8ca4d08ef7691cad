"""Search: per-layer widths (sensitivity, ILP, random baseline) and quantization recipes, scored on
integer models in onnxruntime (:mod:`~qcompiler.autotune.candidates`); ``qc search`` and
``qcompiler.search`` run :func:`~qcompiler.autotune.search.search`. Imports core, passes and targets;
only the CLI and ``qcompiler.search`` import it."""
