"""Library modules of the benchmark scripts.

A benchmark is a script in ``benchmarks/`` (argument parsing, ``main``, its BENCHMARKS.md section);
what a script is built from, or what more than one script uses, is a module here and is imported:

* :mod:`benchmarks.lib.data`: one synthetic class's cached features, masks, labels, defect codes and
  sample ids (:class:`~benchmarks.lib.data.CachedClass`);
* :mod:`benchmarks.lib.results`: results folders: the settings guard and where training state goes;
* :mod:`benchmarks.lib.curve_plan`, :mod:`~benchmarks.lib.curve_cells`,
  :mod:`~benchmarks.lib.curve_report`: the learning curve's grid, cells and report
  (``benchmarks/learning_curve.py`` is the script).
"""
