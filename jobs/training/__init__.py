"""What the training method kinds share: options, data, adapters, DeepSpeed configs, guards, the Ray Train runner.

See docs/training.md. Submodules import their heavy dependencies lazily.
"""
