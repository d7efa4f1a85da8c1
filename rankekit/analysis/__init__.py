"""Analysis of finished runs: ablation tables and plots (tools/analysis/*.py).

- :mod:`rankekit.analysis.runs`: read work dirs (dumped config, logs, summary, test results)
  and group the seeds of one experiment;
- :mod:`rankekit.analysis.ablation`: the markdown ablation table;
- :mod:`rankekit.analysis.decision`: the toy studies' decision rule (is a difference shown?);
- :mod:`rankekit.analysis.curves`: curves over iterations and the CLIP-vs-FID Pareto plot
  (matplotlib, optional extra ``plot``);
- :mod:`rankekit.analysis.memory_plan`: per-GPU memory of a config, before any GPU is rented;
- :mod:`rankekit.evaluation.stats` (used here): mean ± std over seeds and how tables print it.

The command lines (argument parsing, printing) are the scripts in ``tools/``.
"""
