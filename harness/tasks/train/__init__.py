"""The train task: every variant trained in one tiny transformer on MQAR or character modelling.

``measure`` runs a point, ``model`` is the transformer, ``loop`` the optimisation, ``data``
binds the data tasks (``data_mqar``, ``data_chars``) to a point; ``report`` and its
``report_*`` modules read the rows only.
"""
