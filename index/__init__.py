"""NamUs index: ingest, face extraction, signed FAISS bundles, publish and sync."""
