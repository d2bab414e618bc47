"""Demos, simulators, data-set exporters and benchmarks: everything that exercises the product
without being part of it. Nothing under :mod:`pseudolabel` outside this subpackage imports it,
except the CLI commands that offer it (``demo``, ``benchmark``, ``bench-infer``,
``bench-memory``, ``bench-select``).

- :mod:`.demo`: the offline demo (digits / Fashion-MNIST exports, the demo config, a whole
  campaign with a simulated reviewer through a real Label Studio).
- :mod:`.fashion`, :mod:`.composites`: Fashion-MNIST read from Debian's package, and detection /
  segmentation scenes composited from its items (with their ground truth).
- :mod:`.simulated`, :mod:`.simulated_boxes`, :mod:`.oracle`: reviewers that answer from ground
  truth (through Label Studio, or directly for the benchmarks).
- :mod:`.benchmark`, :mod:`.bench_data`: label-efficiency benchmark (strategies x seeds) on the
  built-in data sets or a user's own (``--data``).
- :mod:`.bench_infer`, :mod:`.bench_memory`, :mod:`.bench_select`, :mod:`.bench_ssl`,
  :mod:`.bench_repr`, :mod:`.scale`: throughput, memory, selection at scale (GPU k-center),
  consistency-training cost and representation benchmarks.
"""
