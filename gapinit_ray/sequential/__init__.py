"""Seeds until the answer is known: the sequential phase of a sweep with a ``sequential`` section.

Owns: which comparisons a spec asks for and where each stands (:mod:`.comparisons`, pure: no Ray) and
the rounds of extra seeds on Ray Tune (:mod:`.driver`). The record of rounds, looks and verdicts it
writes belongs to the results store (:mod:`gapinit_ray.results.looks`, its text and figure
:mod:`gapinit_ray.results.looks_text`); the statistics are :mod:`gapinit_ray.results.anytime` (pure). May import ``spec``, ``plan``, ``results``, ``names``,
``atomic``, ``errors``; the driver also the sweep's trial side (``sweep_trainable``, ``sweep_callback``).

How it composes with seed-group ASHA: the grid's initial seeds (``search.seed``) run as any sweep does,
under its scheduler, so seed-group ASHA picks the configurations worth comparing on them; a comparison
whose arm was stopped at a rung is closed ("not compared"), and only comparisons whose arms both ran to
the end get more seeds. Those run in rounds (one Tune experiment each, FIFO: their configurations were
already judged), each adding the next seed of the fixed sequence (:func:`~gapinit_ray.spec.sequential.seed_sequence`)
to every arm of an open comparison, so seeds stay paired across arms.
"""
