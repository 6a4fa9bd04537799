"""``attnbench-advise``: the answer for one user's setting, with its evidence.

:func:`~harness.advise.answer.advise` reads the stored rows of this machine at the setting,
measures what is missing with the suite's own measurement (stored like a sweep's rows), and
ranks every arm with the report's "Which attention?" rule (:mod:`harness.analysis.which`).
Modules: :mod:`.setting` (the setting and its checks), :mod:`.lookup` (stored rows),
:mod:`.plan` (the points to measure), :mod:`.run` (measuring them), :mod:`.quality` (trained
quality), :mod:`.answer` (the steps), :mod:`.render` (the words).
"""
