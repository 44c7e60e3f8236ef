"""Jobs: each builds on a ``RunConfig``, owns its outputs (a run directory through ``runs``), and composes
library functions. The CLI, the notebooks and papermill call jobs; library modules never import them."""
