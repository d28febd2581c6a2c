"""Training of the project's own models (``namus-edge train ...``).

Sits beside ``index`` and ``export`` in the layer order: imports ``namus_edge.models`` and
``namus_edge.core`` only. PyTorch is an optional extra (``pip install "namus-edge[training]"``)
imported only by the modules that train; the runtime never imports this package.
"""
