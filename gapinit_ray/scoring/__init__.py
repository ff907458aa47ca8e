"""Scoring of generated text: COCO caption metrics and question answering, apart from generation.

* :mod:`~gapinit_ray.scoring.captions` — :func:`~gapinit_ray.scoring.captions.score_captions` (the
  official COCO caption metrics through pycocoevalcap) and which metrics can run here;
* :mod:`~gapinit_ray.scoring.java` — the Java processes those metrics run (PTB tokenizer, METEOR,
  SPICE): started, checked and ended here, never leaked;
* :mod:`~gapinit_ray.scoring.java_lease` — a machine-wide limit on concurrent heavy JVMs (file locks);
* :mod:`~gapinit_ray.scoring.answers` — VQA / POPE answers (:mod:`gapinit_ray.qa_metrics`);
* :mod:`~gapinit_ray.scoring.common` — errors, warnings and id ordering shared by the above.

Generation and the split-level entry point stay in :mod:`gapinit_ray.evaluate`.
"""
