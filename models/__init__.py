"""Inference models: registry, backends, detector, aligner, embedder, age, quality, analyzer."""
