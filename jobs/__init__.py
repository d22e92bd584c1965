"""Job kinds (one module each) and the components they share: execution, evaluation, metrics."""
