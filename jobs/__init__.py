"""What runs on Ray workers: method kinds (``methods``) and the rooms they share (``inference``,
``evaluation``, ``sandbox``, ``training``, ``editing``, ``rules``)."""
