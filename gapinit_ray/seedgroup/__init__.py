"""Seed-group ASHA: early stopping that promotes or stops all seeds of a configuration together.

- :mod:`~gapinit_ray.seedgroup.core`: the pure rung book (members, groups, rungs, cutoffs, decisions);
  no Ray, tested on hand-made reports.
- :mod:`~gapinit_ray.seedgroup.state`: the shared state on disk (a snapshot plus an append-only event
  log): one writer (the scheduler), one reader API (the trials).
- :mod:`~gapinit_ray.seedgroup.ids`: :func:`~gapinit_ray.seedgroup.ids.group_id`, the one group id.
- :mod:`~gapinit_ray.seedgroup.tune`: the Ray Tune scheduler over the book.
- :mod:`~gapinit_ray.seedgroup.trial_side`: the trial's segment loop and the rung hold's decisions.
- :mod:`~gapinit_ray.seedgroup.slots`: the Train-slot actor (how many members run a Train job at once).

Nothing is imported here, so importing the core never imports Ray.
"""
