"""From run logs to answers: summaries, comparisons, sweeps and the figures the report embeds.

Each module reads only run directories (:func:`sim.open_run`), never the code that produced them:

- :mod:`.summary` -- ``valuesim analyze``: final and peak drift, polarisation, clusters, consensus,
  diversity, alignment gaps and lock-in, decision metrics and the Shapley table, with 95% intervals
  over worlds (and over runs, pooled as seeds);
- :mod:`.compare` -- ``valuesim compare``: two runs' differences at the end and along the trajectories,
  with intervals (paired when the runs share their random streams) and whether the runs' intervals overlap;
- :mod:`.sweep` -- ``valuesim sweep``: grid points as worlds of one batch where the engine allows it
  (per-world parameters, as calibration sets them), else a process pool or Ray; one tidy ``sweep.parquet``;
- :mod:`.plots` -- one function per figure, each taking a :class:`~sim.runs.reading.RunView` and returning
  a matplotlib ``Figure`` (``sim.open_run(path).plot.trajectories()``).

Nothing here is imported by ``import sim``; pandas, scipy and matplotlib load when a function is called.
"""
