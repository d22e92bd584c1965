"""Models and text: loading the spec's model, generation settings and batched generation, backends, answers."""
