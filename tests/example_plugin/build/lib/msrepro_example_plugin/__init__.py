"""An outside package that adds a clusterer to msrepro without editing it (see README, "Extending")."""
