"""Decision protocols: AI agents acting upon humans (``advice``: manipulation trials) and on their behalf
(``delegation``: principal-agent shopping), with the metrics and tables of their trials.

Decision domains are data (``agents/domains/*.yaml``, read by :mod:`.domains`); the persuasion tactics
and the cognitive biases they play on are a table (:mod:`.tactics`).
"""
