"""Method kinds, one module each, and their registry (``jobs.methods.registry``): see docs/design.md."""
