"""Reader studies: radiologists judge synthetic chest X-rays in the browser.

* :mod:`.model` — the typed objects every part speaks (cases, answers, answer rows with their truth);
* :mod:`.design` — ``synthrad study create``: pairs matched by finding and state, single-image (FIR) cases,
  Likert questions; seeded; :mod:`.images` de-identifies every image;
* :mod:`.database` — the SQLite file that holds a study, its answer key and its answers (one transaction per
  answer, idempotent);
* :mod:`.service` — the use cases (reader session, current case, answer, owner views, export), shared by the
  REST routes (``services.gateway.studies_rest``) and the CLI;
* :mod:`.stats` — UAR, CAR, accuracy, TPR, TNR, FIR with 95 % CIs, Cohen's / Fleiss' kappa, Likert summaries;
  :mod:`.report` — the owner's HTML report;
* ``web/`` — the reading page and the owner page (plain HTML/JS/CSS, no external assets).

Definitions and a worked example: docs/studies.md.
"""
