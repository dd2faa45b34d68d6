"""The runtime: `Runtime` (preprocess -> batch -> backend -> postprocess in one loop), its `Output`, the shared
`Preprocessor` and the `DynamicBatcher` for many callers; backends live in `edgereid.backends`."""
from edgereid.runtime.runtime import Runtime

__all__ = ["Runtime"]
