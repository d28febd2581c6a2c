"""namus-edge: on-device face search against the NamUs missing-persons index.

One import name, one layer order (enforced by import-linter in ``make lint``, see ``.importlinter``)::

    namus_edge.cli, .demo, .install    the application: root CLI, demo, installer
    namus_edge.review                  reviewer console (server side)
    namus_edge.edge                    device runtime: sources, pipeline, tracker, decision, MQTT, service
    namus_edge.index | .export         NamUs ingest, signed bundles, sync | ONNX/TensorRT export
    namus_edge.models                  inference: registry, backends, detector, aligner, embedder, age
    namus_edge.core                    config tree, errors, filesystem helpers, optional-extra checks

A layer imports only the layers below it. The repository keeps the product's folders
(``edge/``, ``models/``, ...); ``setup.py`` maps them under this package with ``package_dir``.
"""

__version__ = "0.2.0"
