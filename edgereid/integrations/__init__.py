"""edgereid inside other tools: `boxmot` (an appearance model for its trackers) and `tracklets` (per-camera
tracks -> cross-camera identities). Each module imports its host library on first use, never at import."""
