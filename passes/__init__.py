"""qc's graph passes, one per module. Each pass is a :class:`qcompiler.pass_infra.QcPass`."""
