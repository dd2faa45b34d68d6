"""Retrieval on embeddings (numpy only): distances, k-reciprocal re-ranking, CMC/mAP metrics, the `Gallery` and
its file format, search reports and the TensorBoard projector export."""
