"""Quality after training (issue 14): every variant trained in one tiny transformer.

``experiment.measure_train_point`` runs one point (``task: train``); ``model`` is the
transformer, ``loop`` the optimisation (AdamW, warm-up and cosine, early stop, NaN rows),
``tasks`` binds ``tasks_mqar`` (multi-query associative recall) and ``tasks_chars``
(character-level language modelling on the pydoc topics) to a point. The rows describe
themselves (learning curve included), so the report reads them without importing this package.
"""
