"""Performance data and the learned cost model.

- :mod:`uhop.perf.telemetry`: one row per measurement (features, times, validation, versions) in
  the kernel store's database; :func:`~uhop.perf.telemetry.record_measurements` is the tuner hook.
- :mod:`uhop.perf.pgstore`: the PostgreSQL store (``UHOP_STORE=postgresql://...``).
- :mod:`uhop.perf.collect`: seeded collection suites; :mod:`uhop.perf.family`: a tiled kernel
  family that gives the model many configs per problem.
- :mod:`uhop.perf.features`: problem, candidate and hardware-manifest features.
- :mod:`uhop.perf.model`: gradient-boosted ranking + quantile models; ``rank``/``prune``/``predict``.
"""
