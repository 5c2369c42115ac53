"""deploycam's application layer: the ``deploycam`` command line and the benchmark harness.

Imports run one way: :mod:`explainer` (the eager explainer) <- :mod:`export` (exported graphs and
their runtimes) <- :mod:`deploycam` (``cli``, ``bench``). Neither library imports this package.
"""
